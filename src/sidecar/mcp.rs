//! MCP on the pod's loopback, on the official Rust SDK (`rmcp`): streamable
//! HTTP at `/mcp`, every protocol revision the SDK speaks (sessions for the
//! ones that have them, single exchanges for 2026-07-28), loopback Host and
//! Origin only, and the tools of the same [`ToolEngine`] as the gRPC socket.
//!
//! The tool list follows the policy: clients are told
//! `notifications/tools/list_changed` whenever it changes (a grant added,
//! revoked or expired, a policy edited, the policy gone stale), on their
//! session's stream (up to 2025-11-25) or their `subscriptions/listen`
//! stream (2026-07-28).
//!
//! The session's inbox is the resource [`INBOX_URI`]: reading it is the
//! `inbox_read` tool (audited as such), and clients that subscribe to it
//! (`resources/subscribe` on a session, or `resourceSubscriptions` on a
//! 2026-07-28 listen stream) are told `notifications/resources/updated`
//! when a message arrives.
//!
//! Every refusal leaves an audit line: the engine audits tool calls; the
//! JSON-RPC framing this server checks before the SDK sees a request
//! (malformed JSON, batches, a wrong version, an oversized body) and any
//! HTTP refusal of the SDK (a foreign Origin, an unknown session) are
//! audited here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, CustomRequest,
    CustomResult, ErrorCode, ErrorData, Implementation, ListResourcesResult, ListToolsResult,
    MetaObject, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, ResourceUpdatedNotificationParam,
    ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter, Tool,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer, SubscriptionContext};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::engine::{ToolEngine, ToolError};
use super::mcp_sessions::CappedSessions;
use crate::audit::{MAX_TOOL_NAME_BYTES, truncated};
use crate::contract;
use crate::policy::ToolId;

/// JSON-RPC error code of a call over a rate limit.
const RATE_LIMITED: ErrorCode = ErrorCode(-32000);

/// The tools an agent may call now, as the MCP server announces them.
pub type ToolList = watch::Receiver<Vec<ToolId>>;

/// The MCP endpoint at [`contract::MCP_PATH`], refusing bodies over `max_body_bytes`.
/// `tool_list` changes whenever the tools the engine lists do; cancelling
/// `streams_end` ends every open stream, so a graceful shutdown does not
/// wait on clients that listen for changes.
pub fn router(
    engine: Arc<ToolEngine>,
    tool_list: ToolList,
    max_body_bytes: usize,
    streams_end: CancellationToken,
) -> Router {
    let server = McpServer {
        engine: engine.clone(),
        tool_list,
        session_end: Arc::default(),
    };
    let config = StreamableHttpServerConfig::default()
        .with_json_response(true)
        .with_max_request_body_bytes(max_body_bytes)
        .with_cancellation_token(streams_end)
        .with_allowed_origins([
            "http://localhost:*",
            "http://127.0.0.1:*",
            "http://[::1]:*",
            "https://localhost:*",
            "https://127.0.0.1:*",
            "https://[::1]:*",
        ]);
    let service = StreamableHttpService::new(
        move || {
            Ok(McpServer {
                session_end: Arc::default(),
                ..server.clone()
            })
        },
        Arc::new(CappedSessions::default()),
        config,
    );
    let front_door = FrontDoor {
        engine,
        max_body_bytes,
    };
    Router::new()
        .route_service(contract::MCP_PATH, service)
        .layer(middleware::from_fn_with_state(
            Arc::new(front_door),
            check_and_audit,
        ))
}

/// Keeps `tool_list` equal to what `engine` lists, recomputing it whenever
/// a policy arrives or the one in force goes stale. Runs until the process ends.
pub async fn follow_tool_list(engine: Arc<ToolEngine>, tool_list: watch::Sender<Vec<ToolId>>) {
    let mut received = engine.policy().changes();
    loop {
        tool_list.send_if_modified(|listed| {
            let now = engine.list();
            let changed = *listed != now;
            *listed = now;
            changed
        });
        let stale_at = engine.policy().stale_at();
        tokio::select! {
            changed = received.changed() => if changed.is_err() { return },
            () = async {
                match stale_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// One MCP server per client session (cheap: everything is shared).
/// The session's inbox, as an MCP resource.
pub const INBOX_URI: &str = "wopr://inbox";
/// The tool that reads it, and how many messages one read shows.
const INBOX_READ: &str = "inbox_read";
const INBOX_RESOURCE_LIMIT: u32 = 100;

#[derive(Clone)]
struct McpServer {
    engine: Arc<ToolEngine>,
    tool_list: ToolList,
    /// Cancelled when this session's server goes (its session closed,
    /// evicted or idle too long), ending the tasks that notify its client.
    session_end: Arc<SessionEnd>,
}

/// Cancels its token when dropped.
#[derive(Default)]
struct SessionEnd(CancellationToken);

impl Drop for SessionEnd {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl McpServer {
    fn tools(&self) -> Vec<Tool> {
        self.engine
            .list()
            .into_iter()
            .map(|id| {
                let schema = match id.input_schema() {
                    Value::Object(schema) => schema,
                    _ => serde_json::Map::new(),
                };
                Tool::new(id.tool().name, id.tool().description, Arc::new(schema))
            })
            .collect()
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new("wopr-sidecar", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Only the tools your security policy allows are listed; call security_whoami to see your policy.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        // The engine audits every call, refused or not.
        Audited::mark(&context);
        let answer = self.engine.call(&request.name, &arguments).await;
        let meta = json!({ contract::AUDIT_ID_MCP_META: answer.audit_id });
        let mut result = match answer.result {
            Ok(result) => CallToolResult::structured(result),
            // The tool exists for this caller: the model sees why it failed
            // or which rule refused it, and can change its call.
            Err(failure @ (ToolError::Failed(_) | ToolError::Refused(_))) => {
                CallToolResult::error(vec![ContentBlock::text(failure.to_string())])
            }
            Err(failure @ ToolError::RateLimited(_)) => {
                return Err(ErrorData::new(
                    RATE_LIMITED,
                    failure.to_string(),
                    Some(meta),
                ));
            }
            Err(failure) => return Err(ErrorData::invalid_params(failure.to_string(), Some(meta))),
        };
        if let Value::Object(meta) = meta {
            result.meta = Some(MetaObject(meta));
        }
        Ok(result.into())
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        let method = truncated(&request.method, MAX_TOOL_NAME_BYTES);
        Audited::mark(&context);
        self.engine
            .audit_bad_request(format!("MCP: unknown method {method:?}"));
        Err(ErrorData::new(
            ErrorCode::METHOD_NOT_FOUND,
            format!("method not found: {method}"),
            None,
        ))
    }

    /// A client of a revision with sessions: tell it of every change of
    /// the tool list on its session's stream, until it goes.
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let mut changes = self.tool_list.clone();
        changes.mark_unchanged();
        let peer = context.peer;
        let ended = self.session_end.0.clone();
        tokio::spawn(ended.run_until_cancelled_owned(async move {
            while changes.changed().await.is_ok() {
                if peer.notify_tool_list_changed().await.is_err() {
                    return;
                }
            }
        }));
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::builder().tools_list_changed();
        let inbox = requested.resource_subscriptions.as_ref();
        if inbox.is_some_and(|uris| uris.iter().any(|uri| uri == INBOX_URI)) {
            accepted = accepted.resource_subscription(INBOX_URI);
        }
        Some(accepted.build())
    }

    /// A 2026-07-28 client's `subscriptions/listen`: tell it of every change
    /// of the tool list, and of every message arriving in the inbox if it
    /// subscribed to it, until it ends the subscription.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.tool_list.clone();
        changes.mark_unchanged();
        let subscribed = context.accepted().resource_subscriptions.is_some();
        let mut arrivals = self.engine.inbox().arrivals();
        arrivals.mark_unchanged();
        loop {
            let sink = context.sink();
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() || sink.notify_tool_list_changed().await.is_err() {
                        return Ok(());
                    }
                }
                arrived = arrivals.changed(), if subscribed => {
                    if arrived.is_err() || sink.notify_resource_updated(INBOX_URI).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let inbox = Resource::new(INBOX_URI, "inbox")
            .with_description(
                "Messages other sessions sent you, oldest first, until you acknowledge them (inbox_ack); subscribe to hear of new ones",
            )
            .with_mime_type("application/json");
        Ok(ListResourcesResult::with_all_items(vec![inbox]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        Audited::mark(&context);
        if request.uri != INBOX_URI {
            let uri = truncated(&request.uri, MAX_TOOL_NAME_BYTES);
            self.engine
                .audit_bad_request(format!("MCP: unknown resource {uri:?}"));
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri}"),
                None,
            ));
        }
        let answer = self
            .engine
            .call(INBOX_READ, &json!({"limit": INBOX_RESOURCE_LIMIT}))
            .await;
        match answer.result {
            Ok(messages) => {
                let contents = ResourceContents::text(messages.to_string(), INBOX_URI)
                    .with_mime_type("application/json");
                Ok(ReadResourceResult::new(vec![contents]).into())
            }
            Err(refused) => Err(ErrorData::invalid_request(refused.to_string(), None)),
        }
    }

    /// A client of a revision with sessions subscribes to the inbox: tell
    /// it of every message that arrives, on its session's stream, until it
    /// goes.
    #[allow(deprecated)] // the legacy revisions' way; 2026-07-28 clients listen
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if request.uri != INBOX_URI {
            let uri = truncated(&request.uri, MAX_TOOL_NAME_BYTES);
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri}"),
                None,
            ));
        }
        let mut arrivals = self.engine.inbox().arrivals();
        arrivals.mark_unchanged();
        let peer = context.peer;
        let ended = self.session_end.0.clone();
        tokio::spawn(ended.run_until_cancelled_owned(async move {
            while arrivals.changed().await.is_ok() {
                let updated = ResourceUpdatedNotificationParam::new(INBOX_URI);
                if peer.notify_resource_updated(updated).await.is_err() {
                    return;
                }
            }
        }));
        Ok(())
    }
}

/// Set on a request whose answer a handler has audited already, so the
/// front door does not audit the same refusal twice.
#[derive(Clone, Default)]
struct Audited(Arc<AtomicBool>);

impl Audited {
    /// Marks the HTTP request behind `context` (the SDK hands its handlers
    /// the request's parts) as audited.
    fn mark(context: &RequestContext<RoleServer>) {
        let marker = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Audited>());
        if let Some(Audited(audited)) = marker {
            audited.store(true, Ordering::Relaxed);
        }
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the front door needs.
struct FrontDoor {
    engine: Arc<ToolEngine>,
    max_body_bytes: usize,
}

/// Checks the JSON-RPC framing of a POST before the SDK sees it, answering
/// with the precise JSON-RPC error, and audits every refusal, this layer's
/// or the SDK's (any 4xx answer no handler audited).
async fn check_and_audit(
    State(door): State<Arc<FrontDoor>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let audited = Audited::default();
    parts.extensions.insert(audited.clone());
    let request = if parts.method == axum::http::Method::POST {
        let bytes = match to_bytes(body, door.max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(_) => {
                let message = format!("request body larger than {} bytes", door.max_body_bytes);
                return refuse(&door.engine, StatusCode::PAYLOAD_TOO_LARGE, -32600, message);
            }
        };
        if let Err(refusal) = check_framing(&bytes) {
            return refuse(&door.engine, refusal.status, refusal.code, refusal.message);
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        Request::from_parts(parts, body)
    };
    let response = next.run(request).await;
    if !response.status().is_client_error() || audited.is_set() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let reason = String::from_utf8_lossy(&bytes);
    door.engine.audit_bad_request(format!(
        "MCP: refused with HTTP {}: {}",
        parts.status.as_u16(),
        reason.chars().take(200).collect::<String>()
    ));
    Response::from_parts(parts, Body::from(bytes))
}

/// Why a body is refused before the SDK sees it.
struct Refusal {
    status: StatusCode,
    code: i64,
    message: String,
}

/// Whether a body is one well-formed JSON-RPC 2.0 message (and a
/// `tools/call` names its tool): a malformed one is HTTP 400, a call
/// without a tool name a JSON-RPC error with HTTP 200.
fn check_framing(bytes: &Bytes) -> Result<(), Refusal> {
    let refusal = |status, code, message: String| Refusal {
        status,
        code,
        message,
    };
    let message: Value = serde_json::from_slice(bytes).map_err(|error| {
        refusal(
            StatusCode::BAD_REQUEST,
            -32700,
            format!("parse error: {error}"),
        )
    })?;
    let Some(object) = message.as_object() else {
        let reason = "invalid request: expected one JSON-RPC object (batches are not supported)";
        return Err(refusal(StatusCode::BAD_REQUEST, -32600, reason.into()));
    };
    if object.get("jsonrpc") != Some(&json!("2.0")) {
        let reason = "invalid request: \"jsonrpc\" must be \"2.0\"";
        return Err(refusal(StatusCode::BAD_REQUEST, -32600, reason.into()));
    }
    let names_its_tool = object
        .get("params")
        .and_then(|params| params.get("name"))
        .is_some_and(Value::is_string);
    if object.get("method") == Some(&json!("tools/call")) && !names_its_tool {
        let reason = "params.name must be a string";
        return Err(refusal(StatusCode::OK, -32602, reason.into()));
    }
    Ok(())
}

/// A JSON-RPC error answered with `status`, audited.
fn refuse(engine: &ToolEngine, status: StatusCode, code: i64, message: String) -> Response {
    engine.audit_bad_request(format!("MCP: {message}"));
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
