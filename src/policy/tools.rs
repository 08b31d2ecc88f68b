//! The A2A tools, what each needs (SPEC §1), and tool rule matching.
//!
//! A tool with no entry here is unknown and always denied (fail closed).

use std::fmt;

use serde::{Serialize, Serializer};

use crate::api::{Capability, ToolRules};

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
}

const fn tool(name: &'static str, requires: Requirement) -> Tool {
    Tool { name, requires }
}

const fn needs(capability: Capability) -> Requirement {
    Requirement::Capability(capability)
}

/// Every known tool and what it needs.
pub const TOOLS: [Tool; 16] = [
    tool("security_whoami", Requirement::Nothing),
    tool("security_check", Requirement::Nothing),
    tool("security_request", Requirement::Nothing),
    tool("sessions_list", needs(Capability::A2aCall)),
    tool("sessions_history", needs(Capability::A2aCall)),
    tool("sessions_send", needs(Capability::CrossInject)),
    tool("sessions_spawn", needs(Capability::SessionSpawn)),
    tool("http_fetch", needs(Capability::InjectNetwork)),
    tool("exec_command", needs(Capability::InjectExec)),
    tool("memory_read", needs(Capability::InjectTools)),
    tool("memory_write", needs(Capability::InjectTools)),
    tool("config_get", needs(Capability::InjectTools)),
    tool("config_set", needs(Capability::ConfigWrite)),
    tool("gateway_forward", Requirement::Gateway),
    tool("gateway_respond", Requirement::Gateway),
    tool("gateway_queue", Requirement::Gateway),
];

/// The index of a known tool in [`TOOLS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToolId(u8);

impl ToolId {
    /// The known tool called `name`, or `None` for an unknown tool.
    #[inline]
    pub fn lookup(name: &str) -> Option<ToolId> {
        TOOLS
            .iter()
            .position(|tool| tool.name == name)
            .map(|index| ToolId(index as u8))
    }

    /// Every known tool.
    pub fn all() -> impl Iterator<Item = ToolId> {
        (0..TOOLS.len() as u8).map(ToolId)
    }

    /// The tool this id names.
    #[inline]
    pub fn tool(self) -> &'static Tool {
        &TOOLS[self.0 as usize]
    }
}

/// A set of known tools.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ToolSet(u32);

impl ToolSet {
    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(self, id: ToolId) -> bool {
        self.0 & (1 << id.0) != 0
    }

    /// Adds a tool.
    pub fn insert(&mut self, id: ToolId) {
        self.0 |= 1 << id.0;
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
