//! The `SecurityPolicy` custom resource: the policy of a namespace. The one
//! named `default` governs its namespace; without it the built-in profiles apply.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Capability, Enforcement, NetworkMode, RateLimit, ToolRules, TrustLevel};

/// The name of the SecurityPolicy that governs its namespace.
pub const DEFAULT_POLICY_NAME: &str = "default";

/// The security policy of a namespace: enforcement mode, defaults, trust
/// level profiles and peer-to-peer settings.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "wopr.dev",
    version = "v1alpha1",
    kind = "SecurityPolicy",
    namespaced,
    status = "SecurityPolicyStatus",
    shortname = "wpolicy",
    category = "wopr",
    derive = "PartialEq",
    doc = "The security policy of a namespace; the one named `default` governs it.",
    printcolumn(
        name = "Enforcement",
        type_ = "string",
        json_path = ".spec.enforcement"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicySpec {
    /// enforce (block violations, the default) or warn (allow, audit as would_deny).
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Settings for every trust level, below the per-level ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<PolicyDefaults>,
    /// Per trust level: capabilities, sandbox and tools. A level left out
    /// keeps its built-in profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_levels: Option<TrustLevelProfiles>,
    /// Peer-to-peer settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p: Option<P2pPolicy>,
    /// Audit settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditPolicy>,
    /// How much each session's inbox holds until its agent acknowledges
    /// messages; senders past a limit are refused, with the limit named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<InboxPolicy>,
    /// What agents may spawn with `sessions_spawn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn: Option<SpawnPolicy>,
    /// How the namespace's session pods take operator-level changes (a new
    /// sidecar image, controller flags); the controller's
    /// `--update-policy` when absent. Changes of a Session's own sandbox
    /// (its spec, this policy) always replace its pod at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_policy: Option<UpdatePolicy>,
    /// The model providers the namespace's sessions may reach through the
    /// egress service, each with the Secret (in this namespace) holding its
    /// API key. Only the egress service reads those Secrets; no session
    /// pod ever holds a key. Read from the policy named `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.name == p.name))")
        .message("spec.providers: each name may appear only once"))]
    pub providers: Vec<ProviderConfig>,
}

/// A model provider the egress service calls for the namespace's sessions.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'openai-compatible' || has(self.baseURL)")
    .message("an openai-compatible provider needs a baseURL"))]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfig {
    /// The name Sessions use in `spec.provider.name` and `fallback[].name`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The API the provider speaks.
    #[serde(rename = "type")]
    pub type_: ProviderType,
    /// Where the API is (`https://api.openai.com/v1`, ...); the type's
    /// public API when absent, required for `openai-compatible`. An
    /// `https://` or `http://` URL: plain http is allowed for servers in
    /// the cluster and for test servers, but it carries the API key
    /// unencrypted, so use https for anything else.
    #[serde(default, rename = "baseURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')")
        .message("baseURL must start with https:// or http://"))]
    pub base_url: Option<String>,
    /// The Secret key holding the provider's API key.
    pub secret_ref: SecretKeyRef,
}

/// The API a model provider speaks.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderType {
    /// OpenAI's API (`/v1/chat/completions`, bearer key).
    Openai,
    /// Anthropic's API (`/v1/messages`, `x-api-key`).
    Anthropic,
    /// Any server speaking OpenAI's API at `baseURL`.
    OpenaiCompatible,
}

/// A key of a Secret in the policy's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in its data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What one trust level may ask of model providers. Fields left out keep
/// the built-in value of the level.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelPolicy {
    /// `provider:model` patterns the level may use (`*` matches any run of
    /// characters: `openai:gpt-4o-mini`, `anthropic:*haiku*`, `*`); empty:
    /// no model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub allow: Option<Vec<String>>,
    /// Most tokens one request may ask for (`max_tokens`); 0 for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_request: Option<u32>,
    /// Tokens (in and out) one session may use per minute; 0 for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Tokens (in and out) one session may use per UTC day; 0 for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
}

/// How session pods take operator-level changes. Pods are immutable, so a
/// change means a new pod, and the agent in the old one loses its work.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.type == 'Rolling' || !has(self.maxUnavailable)")
    .message("maxUnavailable is only for type Rolling"))]
#[serde(rename_all = "camelCase")]
pub struct UpdatePolicy {
    /// Immediate, Rolling or OnRestart.
    #[serde(rename = "type")]
    pub type_: UpdateType,
    /// Rolling: how many of the namespace's session pods may be replaced
    /// at a time (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_unavailable: Option<u32>,
}

impl UpdatePolicy {
    /// Rolling, one pod at a time: the default.
    pub const DEFAULT: UpdatePolicy = UpdatePolicy {
        type_: UpdateType::Rolling,
        max_unavailable: None,
    };

    /// Rolling's budget: `maxUnavailable`, at least 1.
    pub fn max_unavailable(&self) -> u32 {
        self.max_unavailable.unwrap_or(1).max(1)
    }
}

/// When a session pod takes an operator-level change.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateType {
    /// Replace every outdated pod at once.
    Immediate,
    /// Replace outdated pods a few at a time per namespace (`maxUnavailable`),
    /// each once the one before is Ready.
    Rolling,
    /// Never replace a running pod for it; the change takes effect when the
    /// pod is next recreated (deleted, evicted, failed, or its Session changed).
    OnRestart,
}

impl std::str::FromStr for UpdateType {
    type Err = super::NameError;

    fn from_str(value: &str) -> Result<UpdateType, super::NameError> {
        match value {
            "Immediate" => Ok(UpdateType::Immediate),
            "Rolling" => Ok(UpdateType::Rolling),
            "OnRestart" => Ok(UpdateType::OnRestart),
            other => Err(super::NameError::UpdateType(other.to_owned())),
        }
    }
}

/// Settings for every trust level.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDefaults {
    /// Sandbox defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxPolicy>,
    /// Tool rules; a trust level's own rules take precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolRules>,
}

/// The profile of each trust level.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct TrustLevelProfiles {
    /// The owner profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<TrustLevelProfile>,
    /// The trusted profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted: Option<TrustLevelProfile>,
    /// The semi-trusted profile.
    #[serde(
        rename = "semi-trusted",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub semi_trusted: Option<TrustLevelProfile>,
    /// The untrusted profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untrusted: Option<TrustLevelProfile>,
}

impl TrustLevelProfiles {
    /// The profile configured for `level`, if any.
    pub fn get(&self, level: TrustLevel) -> Option<&TrustLevelProfile> {
        match level {
            TrustLevel::Owner => self.owner.as_ref(),
            TrustLevel::Trusted => self.trusted.as_ref(),
            TrustLevel::SemiTrusted => self.semi_trusted.as_ref(),
            TrustLevel::Untrusted => self.untrusted.as_ref(),
        }
    }
}

/// What one trust level gets. Fields left out keep the built-in value.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrustLevelProfile {
    /// The capabilities of this level (replaces the built-in list). `*` is
    /// honoured for owner only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub capabilities: Option<Vec<Capability>>,
    /// Sandbox settings of this level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxPolicy>,
    /// Tool rules of this level; an `allow` overrides a `deny` of this level
    /// and of `defaults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolRules>,
    /// What this level may ask of model providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<ModelPolicy>,
}

/// Sandbox settings in a policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPolicy {
    /// Whether sessions must run sandboxed. Untrusted sessions always are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The widest network mode sessions may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    /// Default resource requests and limits for the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Keep each session's agent from starting until its sidecar has
    /// verified the sandbox from inside the pod (network isolation, a pids
    /// limit). A Session can ask for it too, but not turn it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_verified_isolation: Option<bool>,
}

/// Peer-to-peer settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct P2pPolicy {
    /// Trust level of a peer without a grant (used only with autoAccept).
    #[serde(default = "default_discovery_trust")]
    pub discovery_trust: TrustLevel,
    /// Accept peers that have no Grant, at discoveryTrust. Dangerous; off by default.
    #[serde(default)]
    pub auto_accept: bool,
    /// How long a peer's previous key keeps working after it rotates.
    #[serde(default = "default_key_rotation_grace_period")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')")
        .message("keyRotationGracePeriod must not be negative"))]
    pub key_rotation_grace_period: Duration,
    /// Largest injected payload in bytes.
    #[serde(default = "default_payload_size_limit")]
    #[schemars(range(min = 1))]
    pub payload_size_limit: u64,
    /// Rate limits for injections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<P2pRateLimits>,
}

impl Default for P2pPolicy {
    fn default() -> Self {
        P2pPolicy {
            discovery_trust: default_discovery_trust(),
            auto_accept: false,
            key_rotation_grace_period: default_key_rotation_grace_period(),
            payload_size_limit: default_payload_size_limit(),
            rate_limits: None,
        }
    }
}

fn default_discovery_trust() -> TrustLevel {
    TrustLevel::Untrusted
}

fn default_key_rotation_grace_period() -> Duration {
    std::time::Duration::from_secs(24 * 3600).into()
}

fn default_payload_size_limit() -> u64 {
    1024 * 1024
}

/// Limits of each session's inbox (messages not yet acknowledged).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InboxPolicy {
    /// The largest message, in bytes of its payload's JSON (default 64 KiB).
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 1, max = 16777216))]
    pub max_message_bytes: u64,
    /// Messages waiting at most (default 1000).
    #[serde(default = "default_max_messages")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_messages: u64,
    /// Bytes of payloads waiting at most (default 16 MiB).
    #[serde(default = "default_max_inbox_bytes")]
    #[schemars(range(min = 1))]
    pub max_bytes: u64,
}

impl Default for InboxPolicy {
    fn default() -> Self {
        InboxPolicy {
            max_message_bytes: default_max_message_bytes(),
            max_messages: default_max_messages(),
            max_bytes: default_max_inbox_bytes(),
        }
    }
}

fn default_max_message_bytes() -> u64 {
    64 * 1024
}

fn default_max_messages() -> u64 {
    1000
}

fn default_max_inbox_bytes() -> u64 {
    16 * 1024 * 1024
}

/// What agents may spawn (`sessions_spawn`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SpawnPolicy {
    /// Children one session may have at a time (default 5; 0 turns
    /// spawning off).
    #[serde(default = "default_max_children")]
    #[schemars(range(max = 100))]
    pub max_children: u32,
    /// Agent images a spawned session may run besides its parent's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub images: Vec<String>,
}

impl Default for SpawnPolicy {
    fn default() -> Self {
        SpawnPolicy {
            max_children: default_max_children(),
            images: Vec::new(),
        }
    }
}

fn default_max_children() -> u32 {
    5
}

/// Injection rate limits.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct P2pRateLimits {
    /// Per target session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_session: Option<RateLimit>,
    /// Per source peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_peer: Option<RateLimit>,
}

/// Audit settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditPolicy {
    /// How long the control plane keeps audit events.
    #[serde(default = "default_audit_retention")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')")
        .message("retention must be a positive duration such as 720h"))]
    pub retention: Duration,
    /// Also record denials as Kubernetes Events on the Session (rate limited).
    #[serde(default = "default_true")]
    pub denial_events: bool,
}

fn default_audit_retention() -> Duration {
    std::time::Duration::from_secs(30 * 24 * 3600).into()
}

fn default_true() -> bool {
    true
}

/// SecurityPolicy condition: the cluster refuses trust-level escalation at
/// admission (every one of [`ESCALATION_POLICIES`](super::ESCALATION_POLICIES)
/// is installed, bound and denies). It describes the cluster, not the
/// policy, so every SecurityPolicy carries it where an administrator looks.
pub const ESCALATION_GUARDED: &str = "EscalationGuarded";

/// Observed state of a SecurityPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicyStatus {
    /// Conditions: Ready (the policy is readable and governs its namespace)
    /// and EscalationGuarded (the cluster refuses trust-level escalation at
    /// admission).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
