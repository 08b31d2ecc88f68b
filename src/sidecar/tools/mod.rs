//! The tools' handlers, one file per family of the registry
//! ([`crate::policy::tools`]): `security_*`, `memory_*`, `config_*`,
//! `sessions_*`, `inbox_*`, `gateway_*`, `http_fetch` (made by the
//! egress service) and `exec_command` (run by the control plane). A call reaches [`run`] decided,
//! parsed and rate-limited, and the engine audits what it answers: a
//! handler only does its tool's work.
//!
//! Where a new tool goes: its line in `declare_tools!` (name, requirement,
//! arguments), its handler in its family's file here (a new file for a new
//! family: `http.rs` for `http_fetch`, `exec.rs` for `exec_command`), and
//! its arm in [`run`], which the exhaustive match asks for.

mod config;
mod exec;
mod gateway;
mod http;
mod inbox;
mod memory;
mod security;
mod sessions;

use std::time::Duration;

use serde_json::Value;

pub use security::whoami_without_policy;

use super::engine::ToolError;
use super::inbox::Inbox;
use super::models::Egress;
use super::policy_state::Served;
use super::workspace::Workspace;
use crate::api::Capability;
use crate::audit::FetchRecord;
use crate::policy::ToolCall;
use crate::policy::tools::arguments::{
    CommandRun, ForwardMessage, RequestAnswer, SpawnChild, Unimplemented,
};
use crate::proto::v1alpha1::ExecResponse;

/// Sends messages to other sessions, and acknowledges this session's,
/// through the control plane's broker.
#[tonic::async_trait]
pub trait Messenger: Send + Sync {
    /// Sends `message` to the session `target`; what the agent is answered.
    async fn send(&self, target: &str, message: &Value) -> Result<Value, ToolError>;

    /// Acknowledges the messages `ids` of this session's inbox; how many
    /// were pending.
    async fn ack(&self, ids: &[String]) -> Result<u64, ToolError>;

    /// The other sessions whose access list admits this one.
    async fn list(&self) -> Result<Value, ToolError>;

    /// The newest `limit` messages sent to `target`, one of those.
    async fn history(&self, target: &str, limit: u32) -> Result<Value, ToolError>;

    /// Forwards a message of this gateway session's inbox (`gateway_forward`).
    async fn forward(&self, forward: ForwardMessage) -> Result<Value, ToolError>;

    /// Answers a request forwarded to this session (`inbox_reply`).
    async fn reply(&self, answer: RequestAnswer) -> Result<Value, ToolError>;

    /// Sends the result of one of this gateway's requests to its source
    /// (`gateway_respond`).
    async fn respond(&self, answer: RequestAnswer) -> Result<Value, ToolError>;

    /// This gateway's requests waiting for approval (`gateway_queue`).
    async fn queue(&self) -> Result<Value, ToolError>;

    /// Creates a child session (`sessions_spawn`).
    async fn spawn(&self, child: SpawnChild) -> Result<Value, ToolError>;

    /// Runs `run` in this session's own agent container, by the control
    /// plane (`exec_command`): the command's end as the control plane
    /// answered it.
    async fn exec(&self, run: CommandRun) -> Result<ExecResponse, ToolError>;

    /// Asks a person for more capabilities for `duration` (`security_request`).
    async fn elevate(
        &self,
        capabilities: &[Capability],
        reason: &str,
        duration: Duration,
    ) -> Result<Value, ToolError>;
}

/// What a handler may use: the policy the call runs under and the
/// session's own resources.
pub struct Scope<'a> {
    /// The policy in force (and the pod's provider).
    pub served: &'a Served,
    /// The system prompt the agent was given, as its pod says.
    pub prompt: Option<&'a str>,
    pub workspace: &'a Workspace,
    pub inbox: &'a Inbox,
    /// The way to the broker; without one, every message tool fails.
    pub messenger: Option<&'a dyn Messenger>,
    /// The egress service, which makes `http_fetch` calls; without one,
    /// they fail.
    pub egress: Option<&'a Egress>,
}

/// What a call came to: its result, and what its audit event records
/// besides the decision: `http_fetch`'s figures, or words its reason adds
/// (`exec_command`: the exit code, truncation, duration).
pub struct Ran {
    pub result: Result<Value, ToolError>,
    pub fetch: Option<FetchRecord>,
    pub summary: Option<String>,
}

impl From<Result<Value, ToolError>> for Ran {
    /// A call whose event records nothing besides the decision.
    fn from(result: Result<Value, ToolError>) -> Ran {
        Ran {
            result,
            fetch: None,
            summary: None,
        }
    }
}

impl Scope<'_> {
    /// The way to the broker, or why there is none.
    fn messenger(&self) -> Result<&dyn Messenger, ToolError> {
        self.messenger
            .ok_or_else(|| ToolError::Failed("no connection to the control plane's broker".into()))
    }
}

/// Runs a parsed call: one arm per tool of the registry, each its
/// family's handler.
pub async fn run(call: ToolCall, scope: &Scope<'_>) -> Ran {
    let result = match call {
        ToolCall::HttpFetch(request) => return http::fetch(scope, request).await,
        ToolCall::SecurityWhoami(_) => Ok(security::whoami(scope)),
        ToolCall::SecurityCheck(query) => Ok(security::check(scope, query)),
        ToolCall::SecurityRequest(ask) => security::request(scope, ask).await,
        ToolCall::MemoryRead(path) => memory::read(scope, path),
        ToolCall::MemoryWrite(write) => memory::write(scope, write),
        ToolCall::ConfigGet(_) => Ok(config::get(scope)),
        ToolCall::SessionsList(_) => sessions::list(scope).await,
        ToolCall::SessionsHistory(query) => sessions::history(scope, query).await,
        ToolCall::SessionsSend(message) => sessions::send(scope, message).await,
        ToolCall::SessionsSpawn(child) => sessions::spawn(scope, child).await,
        ToolCall::InboxRead(read) => Ok(inbox::read(scope, read)),
        ToolCall::InboxAck(ids) => inbox::ack(scope, ids).await,
        ToolCall::InboxReply(answer) => inbox::reply(scope, answer).await,
        ToolCall::GatewayForward(forward) => gateway::forward(scope, forward).await,
        ToolCall::GatewayRespond(answer) => gateway::respond(scope, answer).await,
        ToolCall::GatewayQueue(_) => gateway::queue(scope).await,
        ToolCall::ExecCommand(run) => return exec::run(scope, run).await,
        // Not run by this version: never listed, refused like unknown tools.
        ToolCall::ConfigSet(Unimplemented {}) => Err(ToolError::NotAvailable(
            "not implemented by this sidecar".into(),
        )),
    };
    Ran::from(result)
}
