//! The arguments of each tool, as types: the JSON Schema agents are shown
//! and the validation of a call come from the same declaration.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde::Deserialize;
use serde_json::Value;

use crate::api::{Capability, TrustLevel};

/// The arguments of a tool.
pub trait Arguments: for<'de> Deserialize<'de> + JsonSchema {
    /// Whether this version runs a tool with these arguments.
    const IMPLEMENTED: bool = true;
}

/// The JSON Schema of an arguments type: self-contained (no `$ref`s), as
/// MCP clients expect an `inputSchema`.
pub fn schema_of<A: Arguments>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator();
    let schema: Schema = generator.into_root_schema_for::<A>();
    let mut schema = schema.to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("title");
    }
    schema
}

/// No arguments (an empty object).
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

impl Arguments for NoArguments {}

/// A capability to check.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CapabilityQuery {
    /// A capability such as `inject.network`.
    pub capability: Capability,
}

impl Arguments for CapabilityQuery {}

/// A file of the workspace.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePath {
    /// A path relative to the workspace.
    pub path: String,
}

impl Arguments for WorkspacePath {}

/// A file of the workspace and what to write into it.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceWrite {
    /// A path relative to the workspace.
    pub path: String,
    /// UTF-8 text, at most 1 MiB.
    pub content: String,
}

impl Arguments for WorkspaceWrite {}

/// A message for another session of the namespace.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionMessage {
    /// The recipient: a session of your namespace.
    pub target: String,
    /// What to send: any JSON value.
    pub message: Value,
}

impl Arguments for SessionMessage {}

/// A session whose messages to show.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// A session `sessions_list` shows.
    pub session: String,
    /// The newest this many (default 20, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

impl Arguments for HistoryQuery {}

/// How many inbox messages to read.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboxRead {
    /// At most this many, oldest first (default 10, at most 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

impl Arguments for InboxRead {}

/// Messages of your inbox, by id.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MessageIds {
    /// The ids of the messages you are done with.
    pub ids: Vec<String>,
}

impl Arguments for MessageIds {}

/// A message of your inbox to forward under your Gateway's rules.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForwardMessage {
    /// The id of the message of your inbox you forward: its sender is the
    /// request's source.
    pub message_id: String,
    /// The session to forward to.
    pub target: String,
    /// What is asked of it (`query`, `summarize`, `execute`, ...).
    pub action: String,
    /// What the target is sent: any JSON value.
    pub payload: Value,
}

impl Arguments for ForwardMessage {}

/// The answer to a request.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAnswer {
    /// The request's id (`requestId` of the message that brought it).
    pub request_id: String,
    /// The answer: any JSON value.
    pub result: Value,
}

impl Arguments for RequestAnswer {}

/// More capabilities, asked of a person.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ElevationAsk {
    /// The capabilities you need (`inject.network`, ...; never `*`).
    pub capabilities: Vec<Capability>,
    /// Why: the person deciding reads this.
    pub reason: String,
    /// For how long, as `30m` or `2h` (default 1h, at most 24h).
    #[serde(default)]
    pub duration: Option<String>,
}

impl Arguments for ElevationAsk {}

/// A child session to create.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SpawnChild {
    /// Its name: lowercase letters, digits and '-'.
    pub name: String,
    /// At most yours.
    pub trust_level: TrustLevel,
    /// What it is to do.
    pub prompt: String,
    /// Its agent image, if not yours (the SecurityPolicy must allow it).
    #[serde(default)]
    pub image: Option<String>,
}

impl Arguments for SpawnChild {}

/// The arguments of a tool this version does not run yet: it is never
/// listed, and calling it is refused like an unknown tool.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
pub struct Unimplemented {}

impl Arguments for Unimplemented {
    const IMPLEMENTED: bool = false;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::{ToolCall, ToolId};

    #[test]
    fn schemas_are_self_contained_objects() {
        let schema = ToolId::SecurityCheck.input_schema();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["required"], json!(["capability"]));
        assert_eq!(schema["additionalProperties"], false);
        let capabilities = schema["properties"]["capability"]["oneOf"]
            .as_array()
            .unwrap();
        assert!(
            capabilities.iter().any(|c| c["const"] == "inject.network"),
            "{schema}"
        );
        assert!(!schema.to_string().contains("$ref"), "{schema}");
        assert_eq!(
            ToolId::MemoryWrite.input_schema()["required"],
            json!(["path", "content"])
        );
    }

    #[test]
    fn calls_are_validated_by_their_types() {
        assert_eq!(
            ToolCall::parse(ToolId::MemoryRead, json!({"path": "notes"})).ok(),
            Some(ToolCall::MemoryRead(WorkspacePath {
                path: "notes".into()
            }))
        );
        for (id, bad) in [
            (ToolId::MemoryRead, json!({})),
            (ToolId::MemoryRead, json!({"path": 7})),
            (ToolId::SecurityCheck, json!({"capability": "root"})),
            (ToolId::SecurityWhoami, json!({"extra": true})),
        ] {
            assert!(ToolCall::parse(id, bad.clone()).is_err(), "{id:?} {bad}");
        }
    }

    #[test]
    fn only_tools_with_arguments_are_implemented() {
        let implemented: Vec<&str> = ToolId::all()
            .filter(|id| id.implemented())
            .map(|id| id.tool().name)
            .collect();
        assert_eq!(
            implemented,
            [
                "security_whoami",
                "security_check",
                "security_request",
                "sessions_list",
                "sessions_history",
                "sessions_send",
                "sessions_spawn",
                "memory_read",
                "memory_write",
                "config_get",
                "gateway_forward",
                "gateway_respond",
                "gateway_queue",
                "inbox_read",
                "inbox_ack",
                "inbox_reply"
            ]
        );
    }
}
