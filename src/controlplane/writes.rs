//! What the control plane writes to the Kubernetes API: the
//! ApprovalRequests of forwards and elevations that wait for a person, the
//! Sessions agents spawn, and when Grants were last used. Behind a trait so
//! tests can watch what it writes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{ApprovalRequest, Grant, Session};
use crate::cluster::{FIELD_MANAGER, create_once, describe};

/// Why an object was not written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// One of that name exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The API server refused or could not be reached (its answer, in one line).
    #[error("{0}")]
    Failed(String),
}

/// Creates objects for the broker.
#[tonic::async_trait]
pub trait ClusterWriter: Send + Sync + 'static {
    /// Creates `request`; filing the same request again is not an error.
    async fn file(&self, request: &ApprovalRequest) -> Result<(), WriteError>;

    /// Creates `session` (a child an agent spawned).
    async fn create_session(&self, session: &Session) -> Result<(), WriteError>;

    /// Sets the Grant `namespace/grant`'s `status.lastUsedAt` to `at`; a
    /// Grant deleted meanwhile is not an error.
    async fn record_grant_use(
        &self,
        namespace: &str,
        grant: &str,
        at: Timestamp,
    ) -> Result<(), WriteError>;
}

/// Writes with the Kubernetes API, as the operator's field manager.
pub struct KubeWriter(pub Client);

#[tonic::async_trait]
impl ClusterWriter for KubeWriter {
    async fn file(&self, request: &ApprovalRequest) -> Result<(), WriteError> {
        create_once(&self.0, request)
            .await
            .map(drop)
            .map_err(|error| WriteError::Failed(describe(&error)))
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

    /// A merge patch of that one field, not a server-side apply: the
    /// controller applies the Grant's `state` and conditions as the same
    /// field manager, and an apply drops whatever that manager applied
    /// before and leaves out (decisions.md, "Grant status").
    async fn record_grant_use(
        &self,
        namespace: &str,
        grant: &str,
        at: Timestamp,
    ) -> Result<(), WriteError> {
        let grants: Api<Grant> = Api::namespaced(self.0.clone(), namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = json!({"status": {"lastUsedAt": Time(at)}});
        match grants
            .patch_status(grant, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(WriteError::Failed(describe(&error))),
        }
    }
}
