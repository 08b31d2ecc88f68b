//! Errors of the controller, each with a stable reason for metrics and events.

/// Why a reconcile failed. Transient: the reconcile is retried with a
/// per-object exponential backoff (`controller::retry`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {}", describe(.0))]
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

/// One line about a Kubernetes client error: the API server's status code,
/// reason and message, or for a transport error its root cause ("Connection
/// refused", a TLS failure). kube's own Display of an API error appends a
/// debug dump of the whole Status.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", status.reason)
            };
            format!("{}{reason}: {}", status.code, status.message)
        }
        other => {
            let mut root: &dyn std::error::Error = other;
            while let Some(cause) = root.source() {
                root = cause;
            }
            root.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    #[test]
    fn api_errors_are_one_line() {
        let status = Status::failure("namespaces \"wopr-system\" not found", "NotFound")
            .with_code(404)
            .boxed();
        let line = describe(&kube::Error::Api(status));
        assert_eq!(line, "404 NotFound: namespaces \"wopr-system\" not found");
        assert_eq!(
            Error::from(kube::Error::Api(
                Status::failure("no", "Forbidden").with_code(403).boxed()
            ))
            .to_string(),
            "Kubernetes API call failed: 403 Forbidden: no"
        );
    }
}
