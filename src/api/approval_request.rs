//! The `ApprovalRequest` custom resource: a forward or elevation waiting for
//! a human decision.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Capability, SourceRef};

/// The largest payload an ApprovalRequest carries, in bytes (64 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// A forward or an elevation that waits for a person to approve or deny it.
/// Created by the control plane; its spec never changes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wopr.dev",
    version = "v1alpha1",
    kind = "ApprovalRequest",
    namespaced,
    status = "ApprovalRequestStatus",
    shortname = "wapproval",
    category = "wopr",
    derive = "PartialEq",
    doc = "A forward or elevation request waiting for a human decision.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".spec.gateway"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target"),
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".spec.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self == oldSelf")
        .message("ApprovalRequest spec is immutable; create a new request instead"),
    validation = Rule::new("self.type != 'forward' || (has(self.gateway) && has(self.target))")
        .message("a forward request needs gateway and target"),
    validation = Rule::new("self.type != 'elevation' || (has(self.requestedCapabilities) && size(self.requestedCapabilities) > 0 && has(self.duration))")
        .message("an elevation request needs requestedCapabilities and duration"),
    validation = Rule::new("self.type != 'peer' || has(self.target)")
        .message("a peer request needs target"),
)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequestSpec {
    /// forward (a gateway forward) or elevation (a security_request).
    #[serde(rename = "type")]
    pub request_type: ApprovalType,
    /// The Gateway the forward goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Who asked.
    pub source: SourceRef,
    /// The session the request is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The action (`query`, `summarize`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The message to deliver when approved (at most 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PAYLOAD_BYTES))]
    pub payload: Option<String>,
    /// For an elevation: the capabilities asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub requested_capabilities: Vec<Capability>,
    /// Why the source asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub reason: Option<String>,
    /// For an elevation: how long the Grant lasts once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// When the request expires if nobody decides (RFC 3339).
    pub expires_at: Time,
}

/// What is being asked for.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalType {
    /// A gateway forward.
    Forward,
    /// More capabilities for a session.
    Elevation,
    /// A peer without a Grant that asked to reach a session
    /// (`p2p.autoAccept: false`): approving it grants the peer `inject`
    /// towards that session.
    Peer,
}

/// Observed state of an ApprovalRequest.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequestStatus {
    /// Pending, Approved, Denied, Expired or Completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ApprovalState>,
    /// Who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When the decision was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
}

/// Where an ApprovalRequest is in its life.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalState {
    /// Waiting for a decision.
    Pending,
    /// Approved, not yet delivered.
    Approved,
    /// Denied.
    Denied,
    /// Nobody decided in time.
    Expired,
    /// Approved and delivered.
    Completed,
}
