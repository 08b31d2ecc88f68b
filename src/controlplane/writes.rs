//! What the control plane writes to the Kubernetes API: the
//! ApprovalRequests of forwards, elevations and peers that wait for a
//! person, the Sessions agents spawn, the Grants of claimed invites, peer
//! Grants' key rotations, and when Grants were last used. Behind a trait so
//! tests can watch what it writes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{ApprovalRequest, Grant, PreviousKey, Session};
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

    /// Creates `grant` (a claimed invite's); whether this call created it
    /// (one of that name existing is not an error).
    /// (Writers for tests of other writes make none.)
    async fn create_grant(&self, grant: &Grant) -> Result<bool, WriteError> {
        let name = grant.metadata.name.as_deref().unwrap_or_default();
        Err(WriteError::Failed(format!(
            "this writer makes no Grants ({name})"
        )))
    }

    /// Moves the peer Grant `namespace/grant` to `public_key`, with
    /// `previous_keys` (the old key last) as its `previousKeys`, if the
    /// Grant is still at `resource_version` (a change meanwhile fails:
    /// the caller decides again).
    async fn rotate_peer_key(
        &self,
        (namespace, grant): (&str, &str),
        resource_version: &str,
        public_key: &str,
        previous_keys: &[PreviousKey],
    ) -> Result<(), WriteError> {
        let _ = (resource_version, public_key, previous_keys);
        Err(WriteError::Failed(format!(
            "this writer changes no Grants ({namespace}/{grant})"
        )))
    }

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

    async fn create_grant(&self, grant: &Grant) -> Result<bool, WriteError> {
        create_once(&self.0, grant)
            .await
            .map_err(|error| WriteError::Failed(describe(&error)))
    }

    /// A merge patch of the key fields, with the resource version read
    /// (a conflict when someone changed the Grant since).
    async fn rotate_peer_key(
        &self,
        (namespace, grant): (&str, &str),
        resource_version: &str,
        public_key: &str,
        previous_keys: &[PreviousKey],
    ) -> Result<(), WriteError> {
        let grants: Api<Grant> = Api::namespaced(self.0.clone(), namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = json!({
            "metadata": {"resourceVersion": resource_version},
            "spec": {"subject": {"peer": {"publicKey": public_key}}, "previousKeys": previous_keys},
        });
        grants
            .patch(grant, &params, &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|error| WriteError::Failed(describe(&error)))
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
