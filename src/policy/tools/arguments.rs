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

    /// What the schema cannot say: sizes, forbidden characters, forms.
    /// The error is what the agent is told.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
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

impl Arguments for WorkspacePath {
    fn validate(&self) -> Result<(), String> {
        plain_text("path", &self.path, MAX_ARG_BYTES)
    }
}

/// A file of the workspace and what to write into it.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceWrite {
    /// A path relative to the workspace.
    pub path: String,
    /// UTF-8 text, at most 1 MiB.
    pub content: String,
}

impl Arguments for WorkspaceWrite {
    fn validate(&self) -> Result<(), String> {
        plain_text("path", &self.path, MAX_ARG_BYTES)
    }
}

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

/// The longest URL `http_fetch` takes.
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// The most headers an `http_fetch` request may set.
pub const MAX_FETCH_HEADERS: usize = 64;
/// The longest header value, and the longest name, an `http_fetch` takes.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The largest request body of `http_fetch`, and the largest `stdin` of
/// `exec_command`.
pub const MAX_SENT_BYTES: usize = 1024 * 1024;
/// The methods `http_fetch` sends.
pub const FETCH_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// An HTTP request to make through the egress service.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// An `http` or `https` URL, without user or password.
    pub url: String,
    /// GET (the default), HEAD, POST, PUT, PATCH, DELETE or OPTIONS.
    #[serde(default)]
    pub method: Option<String>,
    /// Request headers; credentials (`Authorization`, `Cookie`, ...) and
    /// hop-by-hop headers are removed.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// A UTF-8 request body, at most 1 MiB.
    #[serde(default)]
    pub body: Option<String>,
}

impl FetchRequest {
    /// The method, upper case (GET when none was given).
    pub fn method(&self) -> String {
        self.method
            .as_deref()
            .map_or_else(|| "GET".to_owned(), str::to_ascii_uppercase)
    }
}

impl Arguments for FetchRequest {
    fn validate(&self) -> Result<(), String> {
        fetchable_url(&self.url)?;
        let method = self.method();
        if !FETCH_METHODS.contains(&method.as_str()) {
            return Err(format!(
                "method {method:?} is not one of {}",
                FETCH_METHODS.join(", ")
            ));
        }
        if self.headers.len() > MAX_FETCH_HEADERS {
            return Err(format!("more than {MAX_FETCH_HEADERS} headers"));
        }
        for (name, value) in &self.headers {
            let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
            if name.is_empty() || name.len() > MAX_HEADER_BYTES || !name.bytes().all(token) {
                return Err(format!(
                    "header name {name:?} is not a valid HTTP header name"
                ));
            }
            if value.len() > MAX_HEADER_BYTES
                || value.bytes().any(|c| matches!(c, b'\r' | b'\n' | 0))
            {
                return Err(format!(
                    "header {name:?}: a value has at most {MAX_HEADER_BYTES} bytes and no CR, LF or NUL"
                ));
            }
        }
        if self
            .body
            .as_ref()
            .is_some_and(|body| body.len() > MAX_SENT_BYTES)
        {
            return Err(format!("body larger than {MAX_SENT_BYTES} bytes"));
        }
        Ok(())
    }
}

/// `url` as `http_fetch` may fetch it, the first URL as every redirect:
/// at most [`MAX_URL_BYTES`], `http` or `https`, a host, no user or
/// password (`http://allowed@evil/` is a URL of `evil`, not of `allowed`).
/// The host comes out normalized (`http://0x7f.1/` is `127.0.0.1`), so the
/// rules and the SSRF guard judge what would be connected to.
pub fn fetchable_url(url: &str) -> Result<url::Url, String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!("URL longer than {MAX_URL_BYTES} bytes"));
    }
    let parsed = url::Url::parse(url).map_err(|error| format!("invalid URL {url:?}: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "URL scheme {:?} refused: only http and https",
            parsed.scheme()
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("URLs with a user or password are refused".into());
    }
    if parsed.host().is_none() {
        return Err(format!("URL {url:?} has no host"));
    }
    Ok(parsed)
}

/// The longest command, argument or working directory `exec_command` takes.
pub const MAX_ARG_BYTES: usize = 4096;
/// The most arguments of one command.
pub const MAX_ARGS: usize = 1024;
/// The longest an `exec_command` may run, in seconds, and how long when
/// the call does not say.
pub const MAX_EXEC_SECONDS: u32 = 600;
pub const DEFAULT_EXEC_SECONDS: u32 = 30;
/// Where a command may run: the workspace or a temporary directory.
pub const EXEC_DIRECTORIES: [&str; 2] = ["/workspace", "/tmp"];

/// A command to run in the session's own agent container.
#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandRun {
    /// The program (argv\[0\]), run without a shell.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// The working directory: `/workspace` (the default), `/tmp`, or a
    /// directory below one of them.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Seconds before the command and every process it started are
    /// killed: 1 to 600, 30 by default.
    #[serde(default)]
    pub timeout: Option<u32>,
    /// Text written to the command's standard input, at most 1 MiB.
    #[serde(default)]
    pub stdin: Option<String>,
}

impl CommandRun {
    /// The working directory.
    pub fn cwd(&self) -> &str {
        self.cwd.as_deref().unwrap_or(EXEC_DIRECTORIES[0])
    }

    /// The timeout in seconds.
    pub fn timeout_seconds(&self) -> u32 {
        self.timeout.unwrap_or(DEFAULT_EXEC_SECONDS)
    }
}

impl Arguments for CommandRun {
    fn validate(&self) -> Result<(), String> {
        if self.command.is_empty() {
            return Err("command is empty".into());
        }
        if self.args.len() > MAX_ARGS {
            return Err(format!("more than {MAX_ARGS} arguments"));
        }
        let words = std::iter::once(("command", &self.command))
            .chain(self.args.iter().map(|arg| ("argument", arg)))
            .chain(self.cwd.iter().map(|cwd| ("cwd", cwd)));
        for (what, word) in words {
            plain_text(what, word, MAX_ARG_BYTES)?;
        }
        let cwd = self.cwd();
        let below = |root: &str| {
            cwd == root
                || cwd
                    .strip_prefix(root)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        let lexical = std::path::Path::new(cwd).components().all(|c| {
            !matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        });
        if !lexical || !EXEC_DIRECTORIES.into_iter().any(below) {
            return Err(format!(
                "cwd {cwd:?} refused: a directory in {} without '.' or '..'",
                EXEC_DIRECTORIES.join(" or ")
            ));
        }
        let timeout = self.timeout_seconds();
        if !(1..=MAX_EXEC_SECONDS).contains(&timeout) {
            return Err(format!(
                "timeout {timeout} s: from 1 to {MAX_EXEC_SECONDS} seconds"
            ));
        }
        if self
            .stdin
            .as_ref()
            .is_some_and(|stdin| stdin.len() > MAX_SENT_BYTES)
        {
            return Err(format!("stdin larger than {MAX_SENT_BYTES} bytes"));
        }
        Ok(())
    }
}

/// `text` is at most `max` bytes and holds no NUL (which no path, program
/// or argument can hold).
fn plain_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!("{what} longer than {max} bytes"));
    }
    if text.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    Ok(())
}

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
                "http_fetch",
                "exec_command",
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
