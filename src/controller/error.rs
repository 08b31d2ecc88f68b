//! Errors of the controller, each with a stable reason for metrics and events.

/// Why a reconcile failed. Transient: the reconcile is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    /// An object has no namespace (every wopr.dev object is namespaced).
    #[error("{kind} {name} has no namespace")]
    NoNamespace {
        /// The kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
}

impl Error {
    /// A stable CamelCase reason (metrics label, event reason).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.is_conflict() => "Conflict",
            Error::Kube(kube::Error::Api(_)) => "ApiError",
            Error::Kube(_) => "KubeClientError",
            Error::NoNamespace { .. } => "NoNamespace",
        }
    }
}
