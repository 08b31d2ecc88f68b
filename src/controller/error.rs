//! Errors of the controller, each with a stable reason for metrics and events.

/// Why a reconcile failed. Transient: the reconcile is retried with a
/// per-object exponential backoff (`controller::retry`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {}", crate::cluster::describe(.0))]
    Kube(#[from] kube::Error),
    /// The controller's decision could not be written to the audit store.
    #[error("cannot record the decision in the audit store: {0}")]
    Store(#[from] crate::store::StoreError),
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
            Error::Store(_) => "StoreError",
            Error::NoNamespace { .. } => "NoNamespace",
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    #[test]
    fn api_errors_are_one_line() {
        let forbidden = Status::failure("no", "Forbidden").with_code(403).boxed();
        assert_eq!(
            Error::from(kube::Error::Api(forbidden)).to_string(),
            "Kubernetes API call failed: 403 Forbidden: no"
        );
    }
}
