//! What a command's failure means to a script: one error type, one line on
//! stderr, and the exit code its kind documents (README, `--help`).

use std::process::ExitCode;

/// Why a command failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or a value in it is wrong (exit 1).
    #[error("{0}")]
    Usage(String),
    /// What the command names does not exist (exit 2).
    #[error("{0}")]
    NotFound(String),
    /// The API server or the control plane refused the request: RBAC,
    /// admission, a conflict (exit 3).
    #[error("{0}")]
    Refused(String),
    /// No cluster or control plane could be reached (exit 4).
    #[error("{0}")]
    Unreachable(String),
    /// A check failed (exit 5): `security verify`, `security audit --verify`;
    /// the output says which.
    #[error("failing checks: {}", .0.join(", "))]
    ChecksFailed(Vec<String>),
}

impl CliError {
    /// The documented exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Usage(_) => 1,
            CliError::NotFound(_) => 2,
            CliError::Refused(_) => 3,
            CliError::Unreachable(_) => 4,
            CliError::ChecksFailed(_) => 5,
        })
    }

    /// A Kubernetes API error about `what` (`session "x"`), by what it
    /// means: 404 not found; a gateway or timeout status unreachable; any
    /// other answer of the server (RBAC, admission, conflict) refused; no
    /// answer unreachable.
    pub fn from_kube(what: &str, error: kube::Error) -> CliError {
        let line = crate::cluster::describe(&error);
        match &error {
            kube::Error::Api(status) if status.code == 404 => {
                CliError::NotFound(format!("{what} not found"))
            }
            kube::Error::Api(status) if matches!(status.code, 502..=504) => {
                CliError::Unreachable(format!("the API server is unavailable: {line}"))
            }
            // Server-side apply found a field another manager owns.
            kube::Error::Api(status) if status.reason == "Conflict" => CliError::Refused(format!(
                "{what}: refused: {line} (pass --force-conflicts to take the fields over)"
            )),
            kube::Error::Api(_) => CliError::Refused(format!("{what}: refused: {line}")),
            _ => CliError::Unreachable(format!("cannot reach the cluster: {line}")),
        }
    }

    /// A control-plane answer, by its gRPC code.
    pub fn from_status(status: tonic::Status) -> CliError {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::NotFound => CliError::NotFound(message),
            tonic::Code::InvalidArgument => CliError::Usage(message),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                CliError::Unreachable(format!("the control plane is unavailable: {message}"))
            }
            _ => CliError::Refused(format!("the control plane refused: {message}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("no", reason).with_code(code).boxed())
    }

    #[test]
    fn each_api_answer_has_its_exit_code() {
        let code = |error| {
            format!(
                "{:?}",
                CliError::from_kube("session \"a\"", error).exit_code()
            )
        };
        assert_eq!(
            code(api_error(404, "NotFound")),
            format!("{:?}", ExitCode::from(2))
        );
        for refused in [400, 401, 403, 409, 422, 500] {
            assert_eq!(
                code(api_error(refused, "x")),
                format!("{:?}", ExitCode::from(3))
            );
        }
        assert_eq!(
            code(api_error(503, "ServiceUnavailable")),
            format!("{:?}", ExitCode::from(4))
        );
    }

    #[test]
    fn an_apply_conflict_says_how_to_take_the_fields_over() {
        let error = CliError::from_kube("securitypolicy \"default\"", api_error(409, "Conflict"));
        assert!(
            error
                .to_string()
                .ends_with("(pass --force-conflicts to take the fields over)")
        );
        let exists = CliError::from_kube("session \"a\"", api_error(409, "AlreadyExists"));
        assert!(
            !exists.to_string().contains("--force-conflicts"),
            "{exists}"
        );
    }

    #[test]
    fn not_found_names_the_object() {
        let error = CliError::from_kube("session \"ghost\"", api_error(404, "NotFound"));
        assert_eq!(error.to_string(), "session \"ghost\" not found");
    }
}
