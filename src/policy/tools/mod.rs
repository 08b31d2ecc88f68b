//! The A2A tools: the one registry of what each tool is called, what it
//! needs (SPEC §1), what it does, and the type of its arguments, whose
//! JSON Schema agents are shown and whose deserialization validates a call.
//! The policy engine, the sidecar's tool list and its dispatch all derive
//! from [`declare_tools!`]'s one list: adding a tool is one line here (and
//! its handler in its family's file of `sidecar/tools/`, whose exhaustive
//! match then asks for it).
//!
//! A tool with no entry is unknown and always denied (fail closed).

pub mod argument_rules;
pub mod arguments;

use std::fmt;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::api::{Capability, ToolRules};
use arguments::*;

/// What a tool needs before it may be called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Always available (the `security_*` tools).
    Nothing,
    /// This capability.
    Capability(Capability),
    /// The caller must be a gateway session.
    Gateway,
}

/// A known tool.
#[derive(Debug, PartialEq, Eq)]
pub struct Tool {
    /// The tool's name as agents call it.
    pub name: &'static str,
    /// What calling it needs.
    pub requires: Requirement,
    /// What it does, as agents are told.
    pub description: &'static str,
}

const fn needs(capability: Capability) -> Requirement {
    Requirement::Capability(capability)
}

/// Declares every tool once: its id, name, requirement, argument type and
/// description. Generates [`ToolId`], [`TOOLS`] and [`ToolCall`].
macro_rules! declare_tools {
    ($( $id:ident = $name:literal, $requires:expr, $arguments:ty, $description:literal; )*) => {
        /// A known tool.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ToolId { $( #[doc = $description] $id ),* }

        /// Every known tool, in the order of [`ToolId`].
        pub const TOOLS: [Tool; [$($name),*].len()] = [
            $( Tool { name: $name, requires: $requires, description: $description } ),*
        ];

        impl ToolId {
            const ALL: [ToolId; [$($name),*].len()] = [$( ToolId::$id ),*];

            /// JSON Schema of the tool's arguments object.
            pub fn input_schema(self) -> Value {
                match self { $( ToolId::$id => schema_of::<$arguments>() ),* }
            }

            /// Whether this version runs the tool (its arguments are known).
            pub fn implemented(self) -> bool {
                match self { $( ToolId::$id => <$arguments as Arguments>::IMPLEMENTED ),* }
            }
        }

        /// A call of a known tool with its arguments, parsed and validated.
        #[derive(Debug, PartialEq)]
        pub enum ToolCall { $( #[doc = $description] $id($arguments) ),* }

        impl ToolCall {
            /// Parses and validates `arguments` for the tool `id`; the error
            /// says what is wrong.
            pub fn parse(id: ToolId, arguments: Value) -> Result<ToolCall, String> {
                match id {
                    $( ToolId::$id => {
                        let arguments: $arguments =
                            serde_json::from_value(arguments).map_err(|error| error.to_string())?;
                        arguments.validate()?;
                        Ok(ToolCall::$id(arguments))
                    } )*
                }
            }
        }
    };
}

declare_tools! {
    SecurityWhoami = "security_whoami", Requirement::Nothing, NoArguments,
        "Your trust level, capabilities, sandbox, network, enforcement mode, provider and prompt.";
    SecurityCheck = "security_check", Requirement::Nothing, CapabilityQuery,
        "Whether you hold a capability, and why.";
    SecurityRequest = "security_request", Requirement::Nothing, ElevationAsk,
        "Ask a person for more capabilities for a while.";
    SessionsList = "sessions_list", needs(Capability::A2aCall), NoArguments,
        "The sessions you may reach.";
    SessionsHistory = "sessions_history", needs(Capability::A2aCall), HistoryQuery,
        "The message history of a session you may reach.";
    SessionsSend = "sessions_send", needs(Capability::CrossInject), SessionMessage,
        "Send a message to another session.";
    SessionsSpawn = "sessions_spawn", needs(Capability::SessionSpawn), SpawnChild,
        "Start a child session at your trust level or lower.";
    HttpFetch = "http_fetch", needs(Capability::InjectNetwork), FetchRequest,
        "Fetch an http or https URL through the egress service (private and internal addresses are refused).";
    ExecCommand = "exec_command", needs(Capability::InjectExec), CommandRun,
        "Run a command (no shell) in your own sandbox; its exit code and output come back.";
    MemoryRead = "memory_read", needs(Capability::InjectTools), WorkspacePath,
        "Read a UTF-8 file of your workspace.";
    MemoryWrite = "memory_write", needs(Capability::InjectTools), WorkspaceWrite,
        "Write a UTF-8 file of your workspace (where it is writable).";
    ConfigGet = "config_get", needs(Capability::InjectTools), NoArguments,
        "Your session's effective security configuration.";
    ConfigSet = "config_set", needs(Capability::ConfigWrite), Unimplemented,
        "Change your session's configuration.";
    GatewayForward = "gateway_forward", Requirement::Gateway, ForwardMessage,
        "Forward a message of your inbox to a session, under your Gateway's rules (some wait for a person's approval).";
    GatewayRespond = "gateway_respond", Requirement::Gateway, RequestAnswer,
        "Send the result of one of your forwarded requests to whoever first sent it.";
    GatewayQueue = "gateway_queue", Requirement::Gateway, NoArguments,
        "Your gateway's requests waiting for approval.";
    InboxRead = "inbox_read", Requirement::Nothing, InboxRead,
        "The messages other sessions sent you, oldest first, until you acknowledge them.";
    InboxAck = "inbox_ack", Requirement::Nothing, MessageIds,
        "Acknowledge messages of your inbox: they are not shown again.";
    InboxReply = "inbox_reply", Requirement::Nothing, RequestAnswer,
        "Answer a request a gateway forwarded to you: the answer goes back to that gateway.";
}

impl ToolId {
    /// The known tool called `name`, or `None` for an unknown tool.
    #[inline]
    pub fn lookup(name: &str) -> Option<ToolId> {
        ToolId::ALL.into_iter().find(|id| id.tool().name == name)
    }

    /// Every known tool.
    pub fn all() -> impl Iterator<Item = ToolId> {
        ToolId::ALL.into_iter()
    }

    /// The tool this id names.
    #[inline]
    pub fn tool(self) -> &'static Tool {
        &TOOLS[self as usize]
    }

    /// The tool's name as agents call it.
    #[inline]
    pub fn name(self) -> &'static str {
        self.tool().name
    }
}

impl fmt::Display for ToolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of known tools.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ToolSet(u32);

impl ToolSet {
    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(self, id: ToolId) -> bool {
        self.0 & (1 << id as u8) != 0
    }

    /// Adds a tool.
    pub fn insert(&mut self, id: ToolId) {
        self.0 |= 1 << id as u8;
    }

    /// The tools of the set, in the order of [`TOOLS`].
    pub fn iter(self) -> impl Iterator<Item = ToolId> {
        ToolId::all().filter(move |id| self.contains(*id))
    }
}

impl FromIterator<ToolId> for ToolSet {
    fn from_iter<I: IntoIterator<Item = ToolId>>(iter: I) -> Self {
        let mut set = ToolSet::default();
        for id in iter {
            set.insert(id);
        }
        set
    }
}

impl fmt::Debug for ToolSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|id| id.tool().name))
            .finish()
    }
}

impl Serialize for ToolSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().map(|id| id.tool().name))
    }
}

/// Whether a tool rule entry names `tool`: `*`, the tool's name, a prefix
/// ending in `*`, or the name of the capability the tool needs.
pub fn entry_matches(entry: &str, tool: &Tool) -> bool {
    if entry == "*" || entry == tool.name {
        return true;
    }
    if let Some(prefix) = entry.strip_suffix('*') {
        return tool.name.starts_with(prefix);
    }
    matches!(tool.requires, Requirement::Capability(capability) if capability.as_str() == entry)
}

fn any_matches(entries: &[String], tool: &Tool) -> bool {
    entries.iter().any(|entry| entry_matches(entry, tool))
}

/// What one policy layer says of a tool: `Some(true)` when an `allow` entry
/// names it (an allow overrides a deny of the same layer), `Some(false)` when
/// only a `deny` entry does, `None` when the layer does not mention it.
pub fn policy_layer_verdict(rules: &ToolRules, tool: &Tool) -> Option<bool> {
    if any_matches(&rules.allow, tool) {
        Some(true)
    } else if any_matches(&rules.deny, tool) {
        Some(false)
    } else {
        None
    }
}

/// Whether a session's own rules keep `tool`: a session's rules only narrow,
/// so a deny entry removes the tool and a non-empty allow list keeps only
/// the tools it names.
pub fn session_keeps(rules: &ToolRules, tool: &Tool) -> bool {
    !any_matches(&rules.deny, tool) && (rules.allow.is_empty() || any_matches(&rules.allow, tool))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> ToolRules {
        ToolRules {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            rules: None,
        }
    }

    fn known(name: &str) -> &'static Tool {
        ToolId::lookup(name).expect("known tool").tool()
    }

    #[test]
    fn lookup_knows_every_tool_and_nothing_else() {
        for id in ToolId::all() {
            assert_eq!(ToolId::lookup(id.tool().name), Some(id));
        }
        assert_eq!(ToolId::lookup("rm_rf"), None);
        assert_eq!(ToolId::lookup(""), None);
        assert_eq!(ToolId::lookup("SECURITY_WHOAMI"), None);
    }

    #[test]
    fn entries_match_names_prefixes_wildcards_and_capabilities() {
        let config_set = known("config_set");
        assert!(entry_matches("*", config_set));
        assert!(entry_matches("config_set", config_set));
        assert!(entry_matches("config_*", config_set));
        assert!(entry_matches("config.write", config_set));
        assert!(!entry_matches("config.write", known("config_get")));
        assert!(!entry_matches("memory_*", config_set));
        assert!(!entry_matches("config", config_set));
    }

    #[test]
    fn policy_allow_overrides_deny_of_the_same_layer() {
        let layer = rules(&["http_fetch"], &["*"]);
        assert_eq!(
            policy_layer_verdict(&layer, known("http_fetch")),
            Some(true)
        );
        assert_eq!(
            policy_layer_verdict(&layer, known("exec_command")),
            Some(false)
        );
        assert_eq!(
            policy_layer_verdict(&rules(&[], &[]), known("exec_command")),
            None
        );
    }

    #[test]
    fn session_rules_only_narrow() {
        let only_memory = rules(&["memory_*"], &["memory_write"]);
        assert!(session_keeps(&only_memory, known("memory_read")));
        assert!(!session_keeps(&only_memory, known("memory_write")));
        assert!(!session_keeps(&only_memory, known("http_fetch")));
        assert!(session_keeps(&rules(&[], &[]), known("http_fetch")));
    }
}
