//! What the broker writes to the Kubernetes API: the ApprovalRequests of
//! forwards and elevations that wait for a person, and the Sessions agents
//! spawn. Behind a trait so the broker's tests can watch what it writes.

use kube::Client;

use crate::api::{ApprovalRequest, Session};
use crate::cluster::{create_once, describe};

/// Why an object was not created.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// One of that name exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The API server refused or could not be reached.
    #[error("{0}")]
    Failed(String),
}

/// Creates objects for the broker.
#[tonic::async_trait]
pub trait ClusterWriter: Send + Sync + 'static {
    /// Creates `request`; filing the same request again is not an error.
    async fn file(&self, request: &ApprovalRequest) -> Result<(), String>;

    /// Creates `session` (a child an agent spawned).
    async fn create_session(&self, session: &Session) -> Result<(), WriteError>;
}

/// Writes with the Kubernetes API, as the operator's field manager.
pub struct KubeWriter(pub Client);

#[tonic::async_trait]
impl ClusterWriter for KubeWriter {
    async fn file(&self, request: &ApprovalRequest) -> Result<(), String> {
        create_once(&self.0, request)
            .await
            .map(drop)
            .map_err(|error| describe(&error))
    }

    async fn create_session(&self, session: &Session) -> Result<(), WriteError> {
        match create_once(&self.0, session).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(WriteError::Exists(format!(
                "a session named {}",
                session.metadata.name.as_deref().unwrap_or_default()
            ))),
            Err(error) => Err(WriteError::Failed(describe(&error))),
        }
    }
}
