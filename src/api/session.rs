//! The `Session` custom resource: one AI agent, its trust level and its sandbox.

use k8s_openapi::api::core::v1::{
    AppArmorProfile, CSIVolumeSource, ConfigMapVolumeSource, EnvVar,
    PersistentVolumeClaimVolumeSource, ResourceRequirements, SeccompProfile, SecretVolumeSource,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{AccessPattern, ArgumentRules, Capability, NetworkMode, ToolRules, TrustLevel};

/// The longest prompt, in bytes of UTF-8: one environment variable holds
/// it, and Linux refuses to start a program with one over 128 KiB. The
/// CRD's rule says the same number.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;

/// An AI agent session: its trust level, who may inject into it, which tools
/// it may use and the sandbox it runs in.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wopr.dev",
    version = "v1alpha1",
    kind = "Session",
    namespaced,
    status = "SessionStatus",
    shortname = "wses",
    category = "wopr",
    derive = "PartialEq",
    doc = "An AI agent session with a trust level, tool rules and a hardened sandbox.",
    printcolumn(name = "Trust", type_ = "string", json_path = ".spec.trustLevel"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Pod", type_ = "string", json_path = ".status.podName"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "self.trustLevel != 'untrusted' || !has(self.sandbox) || !has(self.sandbox.enabled) || self.sandbox.enabled"
).message("sandbox.enabled: false is not allowed for trustLevel untrusted; untrusted sessions always run sandboxed"))]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    /// Who this session is: owner, trusted, semi-trusted or untrusted. Sets
    /// the capability profile, sandbox and network defaults.
    pub trust_level: TrustLevel,
    /// The system prompt given to the agent: the environment variable
    /// WOPR_PROMPT of its container, and `security_whoami`'s `prompt`. A new
    /// prompt replaces the pod. At most 64 KiB of UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PROMPT_BYTES))]
    #[x_kube(validation = Rule::new("size(bytes(self)) <= 65536").message(
        "prompt is over 65536 bytes of UTF-8 (it is given to the agent as an environment variable)"
    ))]
    pub prompt: Option<String>,
    /// The model provider the agent uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// Who may inject into this session. Defaults to `trust:trusted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub access: Vec<AccessPattern>,
    /// Tool rules for this session. They can only narrow what the
    /// SecurityPolicy permits: `allow` restricts to these tools, `deny` removes tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolRules>,
    /// The sandbox the agent runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSpec>,
}

impl SessionSpec {
    /// A Session spec with only a trust level: everything else defaulted.
    pub fn for_trust_level(trust_level: TrustLevel) -> SessionSpec {
        SessionSpec {
            trust_level,
            prompt: None,
            provider: None,
            access: Vec::new(),
            tools: None,
            sandbox: None,
        }
    }
}

/// A model provider.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    /// Provider name (`anthropic`, `openai`, ...).
    #[schemars(length(min = 1))]
    pub name: String,
    /// Model name; the provider's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Providers to try, in order, when this one fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<ProviderFallback>,
}

/// A fallback provider.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderFallback {
    /// Provider name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Model name; the provider's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// The sandbox the agent container runs in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new(
    "!has(self.egress) || size(self.egress) == 0 || (has(self.network) && self.network == 'restricted')"
).message("egress is only allowed with network: restricted"))]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// Run sandboxed (read-only root, no privileges, seccomp, limits). A
    /// session may turn the sandbox on; it cannot turn it off where its trust
    /// level requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The agent container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The agent container's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The agent container's arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables for the agent container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Resource requests and limits; default 512Mi memory / 500m CPU limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The workspace: mounted read-only at /workspace in the agent
    /// container and writable in the sidecar, which writes it for the agent
    /// (memory_write). Without one, the pod gets an empty workspace that
    /// lasts as long as the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceVolume>,
    /// Network mode: none, restricted (control plane plus `egress`) or full.
    /// Can only be narrower than the trust level allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    /// Egress allow-list for `network: restricted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub egress: Vec<EgressRule>,
    /// RuntimeClass for the pod (for example gVisor or Kata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// Seccomp profile for the agent container; RuntimeDefault when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<SeccompProfile>,
    /// AppArmor profile for the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_armor_profile: Option<AppArmorProfile>,
    /// Keep the agent from starting until the sidecar has verified what the
    /// sandbox promises from inside the pod: no route to the API server or
    /// the kubelet for `network: none` and `restricted`, no pids limit
    /// found missing (the NetworkIsolated and PidsLimited conditions). On
    /// when the SecurityPolicy says so, whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_verified_isolation: Option<bool>,
}

/// The volume at /workspace (read-only to the agent, writable by its
/// sidecar): exactly one source. ConfigMaps and Secrets are read-only to
/// both; `readOnly` on a claim or CSI volume makes it so too. Only sources
/// that Pod Security "restricted" admits are offered (no hostPath, no nfs).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new(
    "[has(self.persistentVolumeClaim), has(self.configMap), has(self.secret), has(self.csi)].filter(x, x).size() == 1"
).message("workspace needs exactly one of persistentVolumeClaim, configMap, secret or csi"))]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceVolume {
    /// A PersistentVolumeClaim of the session's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    /// A ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    /// A Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    /// A CSI volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi: Option<CSIVolumeSource>,
}

/// One destination a restricted sandbox may reach.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Destination network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`).
    #[x_kube(validation = Rule::new("isCIDR(self)").message("cidr must be a CIDR such as 10.0.0.0/8"))]
    #[schemars(length(max = 64))]
    pub cidr: String,
    /// Destination ports; every port when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EgressPort>,
}

/// A destination port.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressPort {
    /// Port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// TCP (default), UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PortProtocol>,
}

/// A transport protocol.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

/// Observed state of a Session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    /// Pending, Ready, Failed or Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SessionPhase>,
    /// Ready, SandboxReady, PolicyResolved, UpToDate, NetworkIsolated and PidsLimited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The security context in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<EffectiveSummary>,
    /// The sandbox pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Hash of the effective security context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Session condition: the sidecar found the sandbox's network isolation
/// holding (`network: none` or `restricted`), from inside the pod.
pub const NETWORK_ISOLATED: &str = "NetworkIsolated";
/// Session condition: the sidecar found a pids limit over the pod.
pub const PIDS_LIMITED: &str = "PidsLimited";

/// Lifecycle phase of a Session.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionPhase {
    /// Waiting for the sandbox.
    Pending,
    /// The sandbox runs with its policy.
    Ready,
    /// The session is invalid or its sandbox failed.
    Failed,
    /// Being deleted.
    Terminating,
}

/// The effective security context of a Session, as shown in its status.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveSummary {
    /// The trust level.
    pub trust_level: TrustLevel,
    /// Capabilities from the trust level profile and active grants.
    pub capabilities: Vec<Capability>,
    /// Tools the agent can call.
    pub tools: Vec<String>,
    /// Whether the agent runs sandboxed.
    pub sandbox: bool,
    /// The network mode.
    pub network: NetworkMode,
    /// The argument rules its calls are held to (`tools.rules` of the
    /// Session, its trust level and the policy's defaults, combined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<ArgumentRules>,
}
