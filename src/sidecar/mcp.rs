//! MCP (JSON-RPC 2.0 over streamable HTTP) on the pod's loopback, so agents
//! such as claude-code use the tools without adapters. Stateless: every
//! request is a POST answered with one JSON response.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::engine::{ToolEngine, ToolError};

/// MCP revisions this server speaks, newest first.
pub const PROTOCOL_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// JSON-RPC error codes.
mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const RATE_LIMITED: i64 = -32000;
}

struct McpState {
    engine: Arc<ToolEngine>,
    max_body_bytes: usize,
}

/// The MCP endpoint at `/mcp`, refusing bodies over `max_body_bytes`.
pub fn router(engine: Arc<ToolEngine>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(
            "/mcp",
            post(handle).get(|| async { StatusCode::METHOD_NOT_ALLOWED }),
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::new(McpState {
            engine,
            max_body_bytes,
        }))
}

fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(State(state): State<Arc<McpState>>, headers: HeaderMap, body: Body) -> Response {
    let engine = &state.engine;
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if let Some(origin) = origin.filter(|origin| !is_local_origin(origin)) {
        engine.audit_bad_request(format!("MCP request from origin {origin:?} refused"));
        return reply(
            StatusCode::FORBIDDEN,
            error(Value::Null, code::INVALID_REQUEST, "origin not allowed"),
        );
    }
    let Ok(bytes) = to_bytes(body, state.max_body_bytes).await else {
        let message = format!("request body larger than {} bytes", state.max_body_bytes);
        engine.audit_bad_request(format!("MCP: {message}"));
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            error(Value::Null, code::INVALID_REQUEST, message),
        );
    };
    let message: Value = match serde_json::from_slice(&bytes) {
        Ok(message) => message,
        Err(parse_error) => {
            engine.audit_bad_request(format!("MCP: malformed JSON: {parse_error}"));
            return reply(
                StatusCode::BAD_REQUEST,
                error(
                    Value::Null,
                    code::PARSE_ERROR,
                    format!("parse error: {parse_error}"),
                ),
            );
        }
    };
    match dispatch(engine, &message) {
        Dispatched::Accepted => StatusCode::ACCEPTED.into_response(),
        Dispatched::Reply(body) => reply(StatusCode::OK, body),
        Dispatched::BadRequest(body) => reply(StatusCode::BAD_REQUEST, body),
    }
}

/// Whether a browser `Origin` is this machine (guards against DNS rebinding).
fn is_local_origin(origin: &str) -> bool {
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

enum Dispatched {
    /// A notification: 202, no body.
    Accepted,
    /// A JSON-RPC response (result or error).
    Reply(Value),
    /// Not a valid JSON-RPC request.
    BadRequest(Value),
}

fn dispatch(engine: &ToolEngine, message: &Value) -> Dispatched {
    let invalid = |reason: &str| {
        engine.audit_bad_request(format!("MCP: invalid request: {reason}"));
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        Dispatched::BadRequest(error(
            id,
            code::INVALID_REQUEST,
            format!("invalid request: {reason}"),
        ))
    };
    let Some(object) = message.as_object() else {
        return invalid("expected one JSON-RPC object (batches are not supported)");
    };
    if object.get("jsonrpc") != Some(&json!("2.0")) {
        return invalid("\"jsonrpc\" must be \"2.0\"");
    }
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return invalid("\"method\" must be a string");
    };
    let Some(id) = object.get("id").cloned() else {
        return Dispatched::Accepted;
    };
    if !(id.is_string() || id.is_number()) {
        return invalid("\"id\" must be a string or a number");
    }
    let params = object.get("params").cloned().unwrap_or_else(|| json!({}));
    let result = match method {
        "initialize" => Ok(initialize(&params)),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(list_tools(engine)),
        "tools/call" => call_tool(engine, &params),
        other => {
            engine.audit_bad_request(format!("MCP: unknown method {other:?}"));
            Err((code::METHOD_NOT_FOUND, format!("method not found: {other}")))
        }
    };
    Dispatched::Reply(match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => error(id, code, message),
    })
}

fn initialize(params: &Value) -> Value {
    let requested = params.get("protocolVersion").and_then(Value::as_str);
    let version = requested
        .filter(|requested| PROTOCOL_VERSIONS.contains(requested))
        .unwrap_or(PROTOCOL_VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "wopr-sidecar", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Only the tools your security policy allows are listed; call security_whoami to see your policy."
    })
}

fn list_tools(engine: &ToolEngine) -> Value {
    let tools: Vec<Value> = engine
        .list()
        .into_iter()
        .map(|id| json!({"name": id.tool().name, "description": id.tool().description, "inputSchema": id.input_schema()}))
        .collect();
    json!({"tools": tools})
}

fn call_tool(engine: &ToolEngine, params: &Value) -> Result<Value, (i64, String)> {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        engine.audit_bad_request("MCP: tools/call without a tool name".into());
        return Err((code::INVALID_PARAMS, "params.name must be a string".into()));
    };
    let arguments = params
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !arguments.is_object() {
        engine.audit_bad_request(format!(
            "MCP: tools/call {name}: arguments is not an object"
        ));
        return Err((
            code::INVALID_PARAMS,
            "params.arguments must be an object".into(),
        ));
    }
    match engine.call(name, &arguments) {
        Ok(result) => Ok(json!({
            "content": [{"type": "text", "text": result.to_string()}],
            "structuredContent": result,
            "isError": false
        })),
        Err(failure @ ToolError::Failed(_)) => Ok(json!({
            "content": [{"type": "text", "text": failure.to_string()}],
            "isError": true
        })),
        Err(failure @ ToolError::RateLimited(_)) => Err((code::RATE_LIMITED, failure.to_string())),
        Err(failure) => Err((code::INVALID_PARAMS, failure.to_string())),
    }
}
