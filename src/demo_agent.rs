//! The demo agent (`wopr-operator demo-agent`): a small program that uses
//! its sidecar as a real agent would, over MCP with the official Rust SDK,
//! and says what happened in one readable line per step. It ships in the
//! operator's image, so a fresh cluster can show the security model working
//! without any other image: asked the same things, an untrusted session is
//! refused what a trusted one is given.
//!
//! It asks who it is (`security_whoami`), says the prompt its pod gave it
//! (`WOPR_PROMPT`) and whether whoami agrees, lists its tools, calls
//! `security_check` (every session may), then calls each tool of
//! `--try-tools`, and with `--remember` has its sidecar write a file of the
//! workspace and read it back, then reads it itself and tries to write it
//! (the workspace is read-only to the agent); and again whenever the
//! sidecar says the tool list changed (a grant added, revoked or expired),
//! until it is told to stop (or, with `--once`, not again).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use rmcp::model::{CallToolRequestParams, CallToolResult, SubscriptionFilter};
use rmcp::service::{NotificationContext, RoleClient, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::contract::{self, env};

/// Flags of `wopr-operator demo-agent`.
#[derive(Args, Debug, Clone)]
pub struct DemoAgentArgs {
    /// The sidecar's MCP endpoint (the pod gives the agent its URL).
    #[arg(long, env = env::AGENT_MCP_URL, default_value = contract::MCP_URL)]
    pub mcp_url: String,
    /// Tools to call after the checks, each once with no arguments: what
    /// the policy denies is refused.
    #[arg(long, value_delimiter = ',', default_value = "config_get")]
    pub try_tools: Vec<String>,
    /// The system prompt the pod gives the agent.
    #[arg(long, env = env::PROMPT)]
    pub prompt: Option<String>,
    /// Text to remember: written to the workspace by the sidecar
    /// (`memory_write`), read back (`memory_read`), then read by the agent
    /// itself from its read-only mount.
    #[arg(long)]
    pub remember: Option<String>,
    /// The workspace as the agent's container sees it.
    #[arg(long, default_value = contract::WORKSPACE_DIR)]
    pub workspace: PathBuf,
    /// The capability `security_check` asks about.
    #[arg(long, default_value = "inject.tools")]
    pub check_capability: String,
    /// Seconds to keep trying to reach the sidecar at start.
    #[arg(long, default_value_t = 60)]
    pub connect_timeout_seconds: u64,
    /// Go through the steps once and exit (`kubectl exec` into an agent
    /// container), instead of staying to follow tool-list changes.
    #[arg(long)]
    pub once: bool,
}

/// Why the demo agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoAgentError {
    #[error("cannot reach the sidecar's MCP endpoint at {url} within {seconds} s: {error}")]
    Unreachable {
        url: String,
        seconds: u64,
        error: String,
    },
}

/// The client's handler: it passes on the sidecar's word that the tool
/// list changed (revisions before 2026-07-28 send it on the session's
/// stream).
struct Listener {
    changed: mpsc::UnboundedSender<()>,
}

impl ClientHandler for Listener {
    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        let _ = self.changed.send(());
    }
}

type Client = RunningService<RoleClient, Listener>;

/// Runs the tour, then again on every tool-list change, until `shutdown`
/// completes. Each line goes to stdout.
pub async fn run(
    args: DemoAgentArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoAgentError> {
    tokio::pin!(shutdown);
    let (changed, mut changes) = mpsc::unbounded_channel();
    let client = tokio::select! {
        client = connect(&args, changed.clone()) => client?,
        () = &mut shutdown => return Ok(()),
    };
    say(&format!(
        "connected to {} (MCP {})",
        args.mcp_url,
        client
            .peer_info()
            .map(|info| info.protocol_version.to_string())
            .unwrap_or_else(|| "unknown revision".to_owned())
    ));
    for line in tour(&client, &args).await {
        say(&line);
    }
    if args.once {
        return Ok(());
    }
    forward_list_changes(&client, changed);
    loop {
        tokio::select! {
            Some(()) = changes.recv() => {
                say("the sidecar says my tools changed; again:");
                for line in tour(&client, &args).await {
                    say(&line);
                }
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

fn say(line: &str) {
    println!("demo-agent: {line}");
}

/// Connects, retrying every second for `--connect-timeout-seconds`.
async fn connect(
    args: &DemoAgentArgs,
    changed: mpsc::UnboundedSender<()>,
) -> Result<Client, DemoAgentError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.connect_timeout_seconds);
    loop {
        let transport = StreamableHttpClientTransport::from_uri(args.mcp_url.as_str());
        let listener = Listener {
            changed: changed.clone(),
        };
        match listener.serve(transport).await {
            Ok(client) => return Ok(client),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(DemoAgentError::Unreachable {
                    url: args.mcp_url.clone(),
                    seconds: args.connect_timeout_seconds,
                    error: error.to_string(),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// On the 2026-07-28 revision, list changes come on a `subscriptions/listen`
/// stream the client opens; earlier ones reach [`Listener`]. Either way
/// they end up on `changed`.
fn forward_list_changes(client: &Client, changed: mpsc::UnboundedSender<()>) {
    let peer = client.peer().clone();
    tokio::spawn(async move {
        let filter = SubscriptionFilter::builder().tools_list_changed().build();
        let Ok(mut subscription) = peer.listen(filter).await else {
            return;
        };
        while let Ok(Some(_)) = subscription.next().await {
            if changed.send(()).is_err() {
                return;
            }
        }
    });
}

/// One pass: who am I, what may I use, and what happens when I use it.
/// One line per step.
async fn tour(client: &Client, args: &DemoAgentArgs) -> Vec<String> {
    let mut lines = Vec::new();
    let whoami = call(client, "security_whoami", Map::new()).await;
    lines.push(match &whoami {
        Ok(result) => describe_whoami(structured(result)),
        Err(error) => format!("whoami: {error}"),
    });
    lines.push(describe_prompt(
        args.prompt.as_deref(),
        whoami.as_ref().ok().map(structured),
    ));
    lines.push(match client.list_all_tools().await {
        Ok(tools) => format!(
            "my tools: {}",
            tools
                .iter()
                .map(|tool| tool.name.as_ref())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(error) => format!("my tools: cannot list them: {error}"),
    });
    let query = arguments(json!({"capability": args.check_capability}));
    lines.push(describe_call(
        "security_check",
        &args.check_capability,
        call(client, "security_check", query).await,
    ));
    for tool in &args.try_tools {
        lines.push(describe_call(
            tool,
            "",
            call(client, tool, Map::new()).await,
        ));
    }
    if let Some(text) = &args.remember {
        lines.extend(remember(client, &args.workspace, text).await);
    }
    lines
}

/// The file `--remember` writes, in the workspace.
const MEMORY_FILE: &str = "demo-agent-memory.md";

/// The sidecar writes `text` and reads it back; then the agent reads the
/// file from its own mount of the workspace, and tries to write it.
async fn remember(client: &Client, workspace: &Path, text: &str) -> Vec<String> {
    let written = call(
        client,
        "memory_write",
        arguments(json!({"path": MEMORY_FILE, "content": text})),
    )
    .await;
    let read = call(
        client,
        "memory_read",
        arguments(json!({"path": MEMORY_FILE})),
    )
    .await;
    let mine = workspace.join(MEMORY_FILE);
    let shown = mine.display();
    vec![
        describe_call("memory_write", MEMORY_FILE, written),
        describe_call("memory_read", MEMORY_FILE, read),
        match tokio::fs::read_to_string(&mine).await {
            Ok(content) => format!("read {shown} myself: {:?}", cut(&content)),
            Err(error) => format!("read {shown} myself: {error}"),
        },
        match tokio::fs::write(&mine, text).await {
            Ok(()) => format!("write {shown} myself: written"),
            Err(error) => format!("write {shown} myself: refused: {error}"),
        },
    ]
}

fn arguments(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

async fn call(
    client: &Client,
    name: &str,
    arguments: Map<String, Value>,
) -> Result<CallToolResult, ServiceError> {
    client
        .call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(arguments))
        .await
}

fn structured(result: &CallToolResult) -> &Value {
    result.structured_content.as_ref().unwrap_or(&Value::Null)
}

fn describe_whoami(me: &Value) -> String {
    let text = |value: &Value| value.as_str().unwrap_or("?").to_owned();
    let capabilities = me["capabilities"]
        .as_array()
        .map(|all| all.iter().map(text).collect::<Vec<_>>().join(", "))
        .filter(|all| !all.is_empty())
        .unwrap_or_else(|| "none".to_owned());
    format!(
        "I am {}/{}: trust level {}, capabilities {capabilities}, network {}, mode {}",
        text(&me["namespace"]),
        text(&me["session"]),
        text(&me["trustLevel"]),
        text(&me["network"]),
        text(&me["enforcement"]),
    )
}

/// The prompt the pod gave (`given`), and whether `security_whoami` (when
/// it answered) says the same.
fn describe_prompt(given: Option<&str>, whoami: Option<&Value>) -> String {
    let show = |prompt: Option<&str>| prompt.map_or("none".to_owned(), |p| format!("{:?}", cut(p)));
    let mine = format!("my prompt ({}): {}", env::PROMPT, show(given));
    match whoami.map(|me| me["prompt"].as_str()) {
        Some(said) if said == given => format!("{mine}; security_whoami says the same"),
        Some(said) => format!("{mine}; but security_whoami says {}", show(said)),
        None => mine,
    }
}

/// `call NAME [ARGUMENT]: ALLOWED ...` or `...: DENIED ...`: a refusal by
/// the policy is an MCP error; a tool that ran and failed is a result
/// marked as an error.
fn describe_call(
    name: &str,
    argument: &str,
    result: Result<CallToolResult, ServiceError>,
) -> String {
    let call = if argument.is_empty() {
        format!("call {name}")
    } else {
        format!("call {name} {argument}")
    };
    match result {
        Ok(result) if result.is_error == Some(true) => {
            format!("{call}: allowed, and the tool failed: {}", text_of(&result))
        }
        Ok(result) => format!("{call}: ALLOWED: {}", text_of(&result)),
        Err(ServiceError::McpError(error)) => format!("{call}: DENIED: {}", error.message),
        Err(error) => format!("{call}: no answer: {error}"),
    }
}

/// A result's structured content as one line of JSON (its text when it
/// has none), cut to a readable length.
fn text_of(result: &CallToolResult) -> String {
    let full = match &result.structured_content {
        Some(value) => value.to_string(),
        None => result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|text| text.text.clone()))
            .collect::<Vec<_>>()
            .join(" "),
    };
    cut(&full)
}

/// `text` cut to a readable length.
fn cut(text: &str) -> String {
    const LONGEST: usize = 200;
    match text.char_indices().nth(LONGEST) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
