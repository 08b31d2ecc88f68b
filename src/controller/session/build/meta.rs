//! Names, labels, annotations and owner references shared by every child
//! of a Session.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::{Session, TrustLevel};
use crate::contract::child_name;

pub use crate::contract::SESSION_LABEL;
/// Label carrying the Session's trust level.
pub const TRUST_LEVEL_LABEL: &str = "wopr.dev/trust-level";
/// Annotation with the hash of the pod as built; a different hash means the
/// pod must be replaced (pods are immutable).
pub const POD_TEMPLATE_HASH_ANNOTATION: &str = "wopr.dev/pod-template-hash";
/// Annotation with the hash of the pod as built with fixed reference
/// settings: it changes with the Session and its policy only, so a pod
/// whose template hash changed but not this one has an operator-level
/// change (`controller::session::rollout`).
pub const SESSION_HASH_ANNOTATION: &str = "wopr.dev/session-hash";
/// Labels selecting the control-plane pods (set by the chart).
pub const CONTROL_PLANE_POD_LABELS: [(&str, &str); 1] =
    [("app.kubernetes.io/name", "wopr-operator")];

/// Labels selecting the egress service's pods (set by the chart).
pub const EGRESS_POD_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "wopr-operator"),
    ("app.kubernetes.io/component", "egress"),
];

/// The labels of every child of `session`.
pub fn child_labels(session: &str, trust_level: TrustLevel) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "wopr-session"),
        ("app.kubernetes.io/instance", session),
        ("app.kubernetes.io/component", "sandbox"),
        ("app.kubernetes.io/part-of", "wopr"),
        (
            crate::cluster::MANAGED_BY_LABEL,
            crate::cluster::FIELD_MANAGER,
        ),
        (SESSION_LABEL, session),
        (TRUST_LEVEL_LABEL, trust_level.as_str()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// The selector matching the pods of `session`.
pub fn session_selector(session: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(SESSION_LABEL.to_owned(), session.to_owned())])
}

/// Metadata of a child of `session`: name, namespace, labels and a
/// controller owner reference, so deleting the Session deletes the child.
pub fn child_meta(session: &Session) -> ObjectMeta {
    let name = session.name_any();
    ObjectMeta {
        name: Some(child_name(&name)),
        namespace: session.namespace(),
        labels: Some(child_labels(&name, session.spec.trust_level)),
        owner_references: session.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}
