//! Talking to the Kubernetes API the same way from every role: one field
//! manager for every server-side apply, errors shown in one line, and the
//! start-up checks of what the operator needs from the cluster
//! ([`preflight`]), whether the cluster guards trust levels at admission
//! ([`escalation`]), who a username is and what it may do ([`access`]),
//! and leader election with a Lease ([`lease`]).

pub mod access;
pub mod escalation;
pub mod lease;
pub mod preflight;

use std::collections::BTreeMap;

use kube::api::{ObjectMeta, PatchParams, PostParams};
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "wopr-operator";

/// The label naming who manages an object: [`FIELD_MANAGER`] on every
/// object the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// The metadata of an object the operator creates on its own (a request's
/// ApprovalRequest or Grant, a claimed invite's Grant, an ingress key's
/// Secret): its name, namespace, `labels`, and the operator as its manager.
pub fn managed_meta(name: &str, namespace: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let mut all: BTreeMap<String, String> = labels
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    all.insert(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned());
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(all),
        ..ObjectMeta::default()
    }
}

/// Parameters of every server-side apply: one field manager, forced.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Creates `object` in its namespace as the operator's field manager:
/// `Ok(false)` when one of that name exists already (a retry).
pub async fn create_once<K>(client: &Client, object: &K) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let namespace = object.meta().namespace.as_deref().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api.create(&params, object).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
        Err(error) => Err(error),
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
        other => root_cause(other),
    }
}

/// The innermost cause of `error`: what went wrong ("Connection refused"),
/// without the layers that wrapped it.
pub fn root_cause(error: &dyn std::error::Error) -> String {
    let mut root = error;
    while let Some(cause) = root.source() {
        root = cause;
    }
    root.to_string()
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
    }
}
