//! Types shared by several custom resources: trust levels, capabilities,
//! network modes, enforcement, tool rules, rate limits and access patterns.

use std::{borrow::Cow, fmt, str::FromStr};

use super::NameError;
use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A trust level, highest first: owner > trusted > semi-trusted > untrusted.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "kebab-case")]
pub enum TrustLevel {
    /// Unknown or discovered sources: message only, always sandboxed, no network, no tools.
    Untrusted,
    /// Limited tools, sandboxed, restricted network.
    SemiTrusted,
    /// Tools and inter-session calls, no sandbox by default.
    Trusted,
    /// Everything (`*`).
    Owner,
}

impl TrustLevel {
    /// Every level, lowest first.
    pub const ALL: [TrustLevel; 4] = [
        TrustLevel::Untrusted,
        TrustLevel::SemiTrusted,
        TrustLevel::Trusted,
        TrustLevel::Owner,
    ];

    /// The name used in manifests and access patterns (`semi-trusted`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            TrustLevel::Untrusted => "untrusted",
            TrustLevel::SemiTrusted => "semi-trusted",
            TrustLevel::Trusted => "trusted",
            TrustLevel::Owner => "owner",
        }
    }
}

impl fmt::Display for TrustLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TrustLevel {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustLevel::ALL
            .into_iter()
            .find(|level| level.as_str() == s)
            .ok_or_else(|| NameError::TrustLevel(s.to_owned()))
    }
}

/// What a session or source may do.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum Capability {
    /// Send messages to sessions.
    #[serde(rename = "inject")]
    Inject,
    /// Use tools (memory, config read, ...).
    #[serde(rename = "inject.tools")]
    InjectTools,
    /// Make network requests (`http_fetch`).
    #[serde(rename = "inject.network")]
    InjectNetwork,
    /// Execute commands (`exec_command`).
    #[serde(rename = "inject.exec")]
    InjectExec,
    /// Create sessions (`sessions_spawn`).
    #[serde(rename = "session.spawn")]
    SessionSpawn,
    /// Inject into other sessions (`sessions_send`).
    #[serde(rename = "cross.inject")]
    CrossInject,
    /// Change configuration (`config_set`).
    #[serde(rename = "config.write")]
    ConfigWrite,
    /// Use the inter-session A2A tools (`sessions_list`, `sessions_history`).
    #[serde(rename = "a2a.call")]
    A2aCall,
    /// Every capability. Owner only.
    #[serde(rename = "*")]
    All,
}

impl Capability {
    /// Every capability, the wildcard last.
    pub const ALL: [Capability; 9] = [
        Capability::Inject,
        Capability::InjectTools,
        Capability::InjectNetwork,
        Capability::InjectExec,
        Capability::SessionSpawn,
        Capability::CrossInject,
        Capability::ConfigWrite,
        Capability::A2aCall,
        Capability::All,
    ];

    /// The name used in manifests (`inject.tools`, `*`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Inject => "inject",
            Capability::InjectTools => "inject.tools",
            Capability::InjectNetwork => "inject.network",
            Capability::InjectExec => "inject.exec",
            Capability::SessionSpawn => "session.spawn",
            Capability::CrossInject => "cross.inject",
            Capability::ConfigWrite => "config.write",
            Capability::A2aCall => "a2a.call",
            Capability::All => "*",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|cap| cap.as_str() == s)
            .ok_or_else(|| NameError::Capability(s.to_owned()))
    }
}

/// Network mode: none (only the control plane), restricted (plus the
/// session's egress allow-list) or full. A session may only narrow what its
/// trust level allows.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// No traffic except to the control plane.
    None,
    /// The control plane plus the session's `egress` allow-list.
    Restricted,
    /// No egress restriction.
    Full,
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::name_of(self))
    }
}

impl FromStr for NetworkMode {
    type Err = NameError;

    fn from_str(value: &str) -> Result<NetworkMode, NameError> {
        super::from_name(value).ok_or_else(|| NameError::NetworkMode(value.to_owned()))
    }
}

/// Whether violations are blocked or only audited.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Block every violation (the default).
    #[default]
    Enforce,
    /// Allow, but audit every violation as `would_deny`.
    Warn,
}

/// Tool allow/deny rules. An entry is a tool name (`http_fetch`), a prefix
/// ending in `*` (`sessions_*`), `*` for every tool, or a capability name
/// (`config.write`) meaning every tool that needs that capability.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolRules {
    /// Tools explicitly allowed. In a SecurityPolicy an allow overrides a deny
    /// of the same layer; in a Session it narrows what the policy permits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 128)))]
    pub allow: Vec<String>,
    /// Tools denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 128)))]
    pub deny: Vec<String>,
    /// Rules on the arguments of calls, checked before every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<ArgumentRules>,
}

/// Rules on the arguments of tool calls (`tools.rules`), per tool. Layers
/// combine per field: an allow-list (`allowHosts`, `allowCommands`,
/// `paths`) is the most specific layer's that sets one (the Session's,
/// then its trust level's, then the policy's `defaults`), so a Session may
/// set its own (below trusted only with `use` on sandboxoverrides.wopr.dev);
/// a deny-list (`denyHosts`, `denyArgs`) is every layer's together.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct ArgumentRules {
    /// Where `http_fetch` may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_fetch: Option<HostRules>,
    /// What `exec_command` may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_command: Option<CommandRules>,
    /// Which workspace files `memory_read` may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_read: Option<PathRules>,
    /// Which workspace files `memory_write` may write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_write: Option<PathRules>,
}

/// Hosts `http_fetch` may and may not reach. An entry is a host
/// (`api.github.com`), `*.suffix` (any host below `suffix`, not `suffix`
/// itself), `*` (any host), an IP address or a CIDR. Only an address or a
/// CIDR entry lets a URL reach a private, loopback, link-local or metadata
/// address: the SSRF guard refuses those otherwise, whatever the host.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostRules {
    /// The hosts allowed; absent: any host the guard admits; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub allow_hosts: Option<Vec<String>>,
    /// The hosts refused, whatever `allowHosts` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub deny_hosts: Vec<String>,
}

/// Commands `exec_command` may run. Patterns are globs where `*` matches
/// any run of characters (`python3`, `/usr/bin/*`, `git`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CommandRules {
    /// Patterns `command` (argv\[0\], as given) must match; absent: any
    /// command; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub allow_commands: Option<Vec<String>>,
    /// Patterns no argument may match (`--upload-pack*`, `*://*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub deny_args: Vec<String>,
}

/// Workspace files a memory tool may touch: globs over the path relative
/// to the workspace, where `*` matches any run of characters, `/` included
/// (`notes/*`, `*.md`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PathRules {
    /// The paths allowed; absent: the whole workspace; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 1024)))]
    pub paths: Option<Vec<String>>,
}

/// A rate limit in events per minute.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Events allowed per minute (at least 1); bursts up to this many.
    #[x_kube(validation = Rule::new("self >= 1").message("perMinute must be at least 1"))]
    pub per_minute: u32,
}

/// Who may inject into a session: `*`, `trust:<level>` (that level or
/// higher), `session:<name>`, `peer:<public-key>` or `type:<source-type>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AccessPattern {
    /// Anyone.
    Anyone,
    /// Sources at this trust level or higher.
    Trust(TrustLevel),
    /// The session with this name (same namespace).
    Session(String),
    /// The peer with this public key.
    Peer(String),
    /// Sources of this type (`p2p`, `gateway`, `api`, ...).
    SourceType(String),
}

impl AccessPattern {
    /// The regular expression the CRD schema checks access entries against.
    pub const SCHEMA_PATTERN: &'static str =
        r"^(\*|trust:(owner|trusted|semi-trusted|untrusted)|(session|peer|type):.+)$";
}

impl TryFrom<String> for AccessPattern {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl FromStr for AccessPattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(AccessPattern::Anyone);
        }
        let invalid = || NameError::AccessPattern(s.to_owned());
        let (kind, value) = s.split_once(':').ok_or_else(invalid)?;
        if value.is_empty() {
            return Err(invalid());
        }
        match kind {
            "trust" => value.parse().map(AccessPattern::Trust),
            "session" => Ok(AccessPattern::Session(value.to_owned())),
            "peer" => Ok(AccessPattern::Peer(value.to_owned())),
            "type" => Ok(AccessPattern::SourceType(value.to_owned())),
            _ => Err(invalid()),
        }
    }
}

impl From<AccessPattern> for String {
    fn from(pattern: AccessPattern) -> Self {
        pattern.to_string()
    }
}

impl fmt::Display for AccessPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessPattern::Anyone => f.write_str("*"),
            AccessPattern::Trust(level) => write!(f, "trust:{level}"),
            AccessPattern::Session(name) => write!(f, "session:{name}"),
            AccessPattern::Peer(key) => write!(f, "peer:{key}"),
            AccessPattern::SourceType(kind) => write!(f, "type:{kind}"),
        }
    }
}

impl JsonSchema for AccessPattern {
    fn schema_name() -> Cow<'static, str> {
        "AccessPattern".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": Self::SCHEMA_PATTERN,
            "description": "`*`, `trust:<level>` (that level or higher), `session:<name>`, `peer:<public-key>` or `type:<source-type>`."
        })
    }
}

/// Where an injection or request comes from, as recorded on ApprovalRequests
/// and audit events.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    /// The source type (`p2p`, `session`, `gateway`, `api`, ...).
    #[serde(rename = "type")]
    pub source_type: String,
    /// Who: a session name or a peer public key.
    pub identity: String,
    /// The trust level the source had when the request was made.
    pub trust_level: TrustLevel,
}
