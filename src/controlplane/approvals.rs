//! Where the broker files the ApprovalRequests of forwards that wait for
//! a person: the Kubernetes API in production, behind a trait so the
//! broker's tests can watch what it files.

use kube::api::PostParams;
use kube::{Api, Client};

use crate::api::ApprovalRequest;
use crate::cluster::{FIELD_MANAGER, describe};

/// Files ApprovalRequests.
#[tonic::async_trait]
pub trait ApprovalDesk: Send + Sync + 'static {
    /// Creates `request`; filing the same request again is not an error.
    async fn file(&self, request: &ApprovalRequest) -> Result<(), String>;
}

/// Files ApprovalRequests with the Kubernetes API.
pub struct KubeDesk(pub Client);

#[tonic::async_trait]
impl ApprovalDesk for KubeDesk {
    async fn file(&self, request: &ApprovalRequest) -> Result<(), String> {
        let namespace = request.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<ApprovalRequest> = Api::namespaced(self.0.clone(), namespace);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match api.create(&params, request).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
            Err(error) => Err(describe(&error)),
        }
    }
}
