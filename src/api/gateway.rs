//! The `Gateway` custom resource: the only path from untrusted input to
//! privileged sessions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{RateLimit, TrustLevel};

/// Marks a session as a gateway and says where it may forward requests.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wopr.dev",
    version = "v1alpha1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    shortname = "wgate",
    category = "wopr",
    derive = "PartialEq",
    doc = "A gateway session and the rules for forwarding untrusted input to privileged sessions.",
    printcolumn(name = "Session", type_ = "string", json_path = ".spec.session"),
    printcolumn(name = "Level", type_ = "string", json_path = ".spec.trustLevel"),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.pending"),
    printcolumn(
        name = "Last Decision",
        type_ = "string",
        json_path = ".status.lastDecision.decision"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The Session (same namespace) that acts as the gateway.
    #[schemars(length(min = 1))]
    pub session: String,
    /// The highest trust level of Session this Gateway may route to: its
    /// `session` and every target of its rules must be at or below it.
    /// Writing the Gateway needs `use` on this level, as writing a Session
    /// at it does; a Gateway whose session is above it serves nothing, and
    /// a forward to a target above it is refused. `semi-trusted` (what
    /// `edit` may use) when absent.
    #[serde(default = "default_trust_level")]
    pub trust_level: TrustLevel,
    /// What the gateway may forward. A forward must match at least one rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_rules: Vec<ForwardRule>,
    /// How long a forward waits for human approval before it expires.
    #[serde(default = "default_approval_timeout")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')")
        .message("approvalTimeout must be a positive duration such as 5m"))]
    pub approval_timeout: Duration,
}

fn default_trust_level() -> TrustLevel {
    TrustLevel::SemiTrusted
}

fn default_approval_timeout() -> Duration {
    std::time::Duration::from_secs(300).into()
}

/// One forwarding rule.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ForwardRule {
    /// Sessions this rule may forward to (`*` for any).
    #[schemars(length(min = 1))]
    pub allow_forward_to: Vec<String>,
    /// Actions this rule allows (`query`, `summarize`, ...; `*` for any).
    /// Every action when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_actions: Vec<String>,
    /// Queue each forward as an ApprovalRequest for a human to decide.
    #[serde(default)]
    pub require_approval: bool,
    /// Forwards allowed per minute under this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl ForwardRule {
    /// Whether `allowForwardTo` lists `session` (by name or `*`).
    pub fn lists_target(&self, session: &str) -> bool {
        self.allow_forward_to
            .iter()
            .any(|entry| entry == "*" || entry == session)
    }
}

impl GatewaySpec {
    /// Whether the Gateway names `session`: as its gateway session or as a
    /// target of one of its rules.
    pub fn names(&self, session: &str) -> bool {
        self.session == session || self.forward_rules.iter().any(|r| r.lists_target(session))
    }
}

/// Observed state of a Gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Forwards of this gateway waiting for a person's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u32>,
    /// Forwards recorded under each rule (by its position in forwardRules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<RuleForwards>,
    /// The last decision on one of its forwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<GatewayDecision>,
    /// Conditions (Ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// How many forwards went under one rule.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleForwards {
    /// The rule's position in forwardRules, from 0.
    pub rule: u32,
    /// Forwards recorded under it (within the audit retention).
    pub forwarded: u64,
}

/// A decision on a forward that waited for approval.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayDecision {
    /// The request (its ApprovalRequest's name).
    pub request_id: String,
    /// approved, denied or expired.
    pub decision: String,
    /// When it was carried out.
    pub at: Time,
}
