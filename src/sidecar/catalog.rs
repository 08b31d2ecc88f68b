//! The tools this sidecar implements, with JSON Schemas for their arguments.
//! Tools the policy knows but that are not here are never listed and are
//! refused like unknown ones.

use serde_json::{Value, json};

/// A tool the sidecar can run.
pub struct CatalogEntry {
    /// Its name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// JSON Schema of its arguments object.
    pub input_schema: fn() -> Value,
}

fn no_arguments() -> Value {
    json!({"type": "object", "properties": {}, "additionalProperties": false})
}

fn capability_argument() -> Value {
    json!({
        "type": "object",
        "properties": {"capability": {"type": "string", "description": "a capability such as inject.network"}},
        "required": ["capability"],
        "additionalProperties": false
    })
}

fn path_argument() -> Value {
    json!({
        "type": "object",
        "properties": {"path": {"type": "string", "description": "a path relative to the workspace"}},
        "required": ["path"],
        "additionalProperties": false
    })
}

fn path_and_content() -> Value {
    json!({
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "a path relative to the workspace"},
            "content": {"type": "string", "description": "UTF-8 text, at most 1 MiB"}
        },
        "required": ["path", "content"],
        "additionalProperties": false
    })
}

/// Every implemented tool.
pub const CATALOG: [CatalogEntry; 5] = [
    CatalogEntry {
        name: "security_whoami",
        description: "Your trust level, capabilities, sandbox, network, enforcement mode and provider.",
        input_schema: no_arguments,
    },
    CatalogEntry {
        name: "security_check",
        description: "Whether you hold a capability, and why.",
        input_schema: capability_argument,
    },
    CatalogEntry {
        name: "memory_read",
        description: "Read a UTF-8 file of your workspace.",
        input_schema: path_argument,
    },
    CatalogEntry {
        name: "memory_write",
        description: "Write a UTF-8 file of your workspace (where it is writable).",
        input_schema: path_and_content,
    },
    CatalogEntry {
        name: "config_get",
        description: "Your session's effective security configuration.",
        input_schema: no_arguments,
    },
];

/// The implemented tool called `name`.
pub fn entry(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|entry| entry.name == name)
}
