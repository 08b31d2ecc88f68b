//! The custom resources of `wopr.dev/v1alpha1`, their CRDs, and a parser
//! for manifests that reports which field was wrong.

// `#[kube(printcolumn(type_ = ..), printcolumn(type_ = ..))]` repeats keys
// inside one attribute, which this lint mistakes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

mod approval_request;
mod common;
mod gateway;
mod grant;
mod manifest;
mod names;
mod security_policy;
mod session;
mod source_type;

pub use approval_request::*;
pub use common::*;
pub use gateway::*;
pub use grant::*;
pub use manifest::{ManifestError, WoprObject, parse_manifests};
pub use names::{MAX_LABEL, NameError, check_label, from_name, name_of};
pub use security_policy::*;
pub use session::*;
pub use source_type::SourceType;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every custom resource.
pub const GROUP: &str = "wopr.dev";
/// The API version of every custom resource.
pub const VERSION: &str = "v1alpha1";

/// Who may write what (charts/wopr-operator/templates/escalation.yaml):
/// writing an object at a trust level needs the verb `use` on this virtual
/// resource of [`GROUP`], named by the level, as RBAC's `escalate` guards
/// Roles. Nothing serves it; only RBAC rules name it.
pub const TRUST_LEVELS_RESOURCE: &str = "trustlevels";
/// The names of [`TRUST_LEVELS_RESOURCE`]: every trust level, lowest first.
pub const TRUST_LEVEL_NAMES: [&str; 4] = [
    TrustLevel::ALL[0].as_str(),
    TrustLevel::ALL[1].as_str(),
    TrustLevel::ALL[2].as_str(),
    TrustLevel::ALL[3].as_str(),
];
/// The ClusterRole the chart ships that holds `use` on
/// [`TRUST_LEVELS_RESOURCE`] named `level` and every level below:
/// `wopr-trust-{level}`.
pub fn trust_level_role(level: TrustLevel) -> String {
    format!("wopr-trust-{level}")
}
/// The virtual resource whose `use` lets a Session below trusted loosen its
/// sandbox (sandbox off, full network, its own seccomp or AppArmor profile
/// or RuntimeClass).
pub const SANDBOX_OVERRIDES_RESOURCE: &str = "sandboxoverrides";
/// The ValidatingAdmissionPolicies that guard trust levels, one per kind
/// written, each bound by a ValidatingAdmissionPolicyBinding of its name.
pub const ESCALATION_POLICIES: [&str; 4] = [
    "wopr-escalation-sessions",
    "wopr-escalation-grants",
    "wopr-escalation-gateways",
    "wopr-escalation-securitypolicies",
];

/// Every CRD, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        SecurityPolicy::crd(),
        Session::crd(),
        Grant::crd(),
        Gateway::crd(),
        ApprovalRequest::crd(),
    ]
}

/// The file name a CRD is committed under in `crds/` (`sessions.wopr.dev.yaml`).
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as a YAML document (with its leading `---`).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    Ok(format!("---\n{}", serde_saphyr::to_string(crd)?))
}
