//! A fake egress service: the `wopr.v1alpha1.Models` gRPC service over TLS
//! (the test leaf), answering canned replies in the request's dialect, for
//! the model proxy's tests. It checks what the real one would: the bearer
//! token and the session (refusing others with `unauthenticated` /
//! `permission_denied`); and what only a test can: that the dialect fits
//! the body and that no agent credential was forwarded (refused with
//! `invalid_argument`, so the test fails). Tests read every request it
//! got, and how many of its replies were cancelled by the caller.
//!
//! The canned reply is chosen by the request's `model`: [`HANG`] never
//! answers; [`DRIP`] sends a head, then a chunk every 50 ms until the
//! caller goes; any other model gets a completion with a tool call in its
//! dialect, streamed as server-sent events when the body asks to stream,
//! in chunks sent 20 ms apart, then an outcome with [`INPUT_TOKENS`] and
//! [`OUTPUT_TOKENS`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use wopr_operator::proto::v1alpha1::model_reply::Reply;
use wopr_operator::proto::v1alpha1::models_server::{Models, ModelsServer};
use wopr_operator::proto::v1alpha1::{
    Dialect, ListModelsRequest, ListModelsResponse, ModelLink, ModelOutcome, ModelReply,
    ModelRequest, ReplyHead,
};
use wopr_operator::tls::server::incoming;

use super::NAMESPACE;

/// The model whose call is never answered.
pub const HANG: &str = "hang-forever";
/// The model whose reply drips until the caller goes.
pub const DRIP: &str = "drip-forever";
/// What every canned outcome counts.
pub const INPUT_TOKENS: u64 = 42;
pub const OUTPUT_TOKENS: u64 = 17;
/// The provider and the policy hash every canned outcome names.
pub const PROVIDER: &str = "fake-provider";
pub const POLICY_HASH: &str = "sha256:fake-egress-policy";
/// The models the fake lists, first link first (the third link names no
/// model, so it lists none).
pub fn links() -> Vec<ModelLink> {
    [
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-3-5-haiku-latest"),
        ("openai", ""),
    ]
    .into_iter()
    .map(|(provider, model)| ModelLink {
        provider: provider.into(),
        model: model.into(),
    })
    .collect()
}

/// A request the fake got: its bearer token and the message.
#[derive(Clone, Debug)]
pub struct Seen {
    pub bearer: Option<String>,
    pub request: ModelRequest,
}

/// A running fake egress service.
pub struct FakeModels {
    pub address: SocketAddr,
    /// Every `Call` it got.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// How many of its replies the caller cancelled before they ended.
    pub cancelled: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeModels {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Service {
    token: String,
    session: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    cancelled: Arc<AtomicUsize>,
}

impl FakeModels {
    /// Serves `session`'s calls carrying `token`, on a free loopback port.
    pub async fn start(session: &str, token: &str) -> FakeModels {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = Service {
            token: token.into(),
            session: session.into(),
            seen: Arc::default(),
            cancelled: Arc::default(),
        };
        let (seen, cancelled) = (service.seen.clone(), service.cancelled.clone());
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ModelsServer::new(service))
                .serve_with_incoming(incoming(listener, super::tls::server_cert()))
                .await
                .unwrap();
        });
        FakeModels {
            address,
            seen,
            cancelled,
            server,
        }
    }

    /// The requests it got so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until `count` replies were cancelled.
    pub async fn wait_for_cancelled(&self, count: usize) {
        for _ in 0..1000 {
            if self.cancelled.load(Ordering::SeqCst) >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} replies cancelled, not {count}",
            self.cancelled.load(Ordering::SeqCst)
        );
    }
}

impl Service {
    fn check<T>(
        &self,
        request: &tonic::Request<T>,
        session: &str,
    ) -> Result<Option<String>, tonic::Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        if bearer.as_deref() != Some(format!("Bearer {}", self.token).as_str()) {
            return Err(tonic::Status::unauthenticated("a wrong or missing token"));
        }
        if session != self.session {
            return Err(tonic::Status::permission_denied(format!(
                "the token is not session {session:?}'s"
            )));
        }
        Ok(bearer)
    }
}

type Replies = ReceiverStream<Result<ModelReply, tonic::Status>>;

#[tonic::async_trait]
impl Models for Service {
    type CallStream = Replies;

    async fn call(
        &self,
        request: tonic::Request<ModelRequest>,
    ) -> Result<tonic::Response<Replies>, tonic::Status> {
        let bearer = self.check(&request, &request.get_ref().session)?;
        let message = request.into_inner();
        self.seen.lock().unwrap().push(Seen {
            bearer,
            request: message.clone(),
        });
        if message.namespace != NAMESPACE {
            return Err(tonic::Status::permission_denied("another namespace"));
        }
        let forbidden = ["authorization", "x-api-key"];
        if let Some(name) = message
            .headers
            .keys()
            .find(|name| forbidden.contains(&name.as_str()))
        {
            return Err(tonic::Status::invalid_argument(format!(
                "the agent's credential header {name} was forwarded"
            )));
        }
        let body: Value = serde_json::from_slice(&message.body)
            .map_err(|error| tonic::Status::invalid_argument(format!("not JSON: {error}")))?;
        let dialect = Dialect::try_from(message.dialect).unwrap_or(Dialect::Unspecified);
        let fits = match dialect {
            // Anthropic's requests carry max_tokens and a top-level system
            // or none; OpenAI's need neither. The header says it surely.
            Dialect::AnthropicMessages => message.headers.contains_key("anthropic-version"),
            Dialect::OpenaiChat => !message.headers.contains_key("anthropic-version"),
            Dialect::Unspecified => false,
        };
        if !fits {
            return Err(tonic::Status::invalid_argument(format!(
                "the dialect {dialect:?} does not fit the request"
            )));
        }
        let model = body["model"].as_str().unwrap_or_default().to_owned();
        let streamed = body["stream"].as_bool().unwrap_or(false);
        let (replies, stream) = mpsc::channel(4);
        let cancelled = self.cancelled.clone();
        tokio::spawn(async move {
            let ended = match model.as_str() {
                HANG => {
                    replies.closed().await;
                    false
                }
                DRIP => drip(&replies).await,
                _ => answer(&replies, dialect, &model, streamed).await,
            };
            if !ended {
                cancelled.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(stream)))
    }

    async fn list_models(
        &self,
        request: tonic::Request<ListModelsRequest>,
    ) -> Result<tonic::Response<ListModelsResponse>, tonic::Status> {
        self.check(&request, &request.get_ref().session)?;
        Ok(tonic::Response::new(ListModelsResponse { models: links() }))
    }
}

type Sender = mpsc::Sender<Result<ModelReply, tonic::Status>>;

/// Sends `reply`; false when the caller has gone.
async fn send(replies: &Sender, reply: Reply) -> bool {
    replies
        .send(Ok(ModelReply { reply: Some(reply) }))
        .await
        .is_ok()
}

fn head(content_type: &str) -> Reply {
    Reply::Head(ReplyHead {
        status: 200,
        content_type: content_type.into(),
        headers: [("x-fake-egress".to_owned(), "yes".to_owned())].into(),
    })
}

/// A head, then a chunk every 50 ms until the caller goes: whether it
/// ended otherwise (never).
async fn drip(replies: &Sender) -> bool {
    if !send(replies, head("text/event-stream")).await {
        return false;
    }
    loop {
        tokio::select! {
            () = replies.closed() => return false,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if !send(replies, Reply::Chunk(b": still thinking\n\n".to_vec())).await {
            return false;
        }
    }
}

/// The canned answer of `model` in `dialect`: whether it was sent whole.
async fn answer(replies: &Sender, dialect: Dialect, model: &str, streamed: bool) -> bool {
    let (content_type, chunks) = match (dialect, streamed) {
        (Dialect::AnthropicMessages, false) => {
            ("application/json", halves(&anthropic_message(model)))
        }
        (Dialect::AnthropicMessages, true) => ("text/event-stream", anthropic_events(model)),
        (_, false) => ("application/json", halves(&openai_completion(model))),
        (_, true) => ("text/event-stream", openai_events(model)),
    };
    if !send(replies, head(content_type)).await {
        return false;
    }
    for chunk in chunks {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !send(replies, Reply::Chunk(chunk.into_bytes())).await {
            return false;
        }
    }
    let outcome = ModelOutcome {
        decision: "allowed".into(),
        reason: format!("answered by {PROVIDER}:{model}"),
        provider: PROVIDER.into(),
        model: model.into(),
        input_tokens: INPUT_TOKENS,
        output_tokens: OUTPUT_TOKENS,
        latency_ms: 60,
        fallback: vec![format!("down-provider:{model} (503)")],
        streamed,
        enforcement: "enforce".into(),
        policy_hash: POLICY_HASH.into(),
    };
    send(replies, Reply::Outcome(outcome)).await
}

/// `body` as JSON cut in two chunks (so the proxy must not wait for one).
fn halves(body: &Value) -> Vec<String> {
    let text = body.to_string();
    let (first, second) = text.split_at(text.len() / 2);
    vec![first.to_owned(), second.to_owned()]
}

/// The tool the canned answers call, and its arguments.
pub const TOOL: &str = "get_weather";
pub const TOOL_ARGUMENTS: &str = r#"{"city":"Paris"}"#;

fn openai_completion(model: &str) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": TOOL, "arguments": TOOL_ARGUMENTS},
                }],
            },
            "finish_reason": "tool_calls",
        }],
        "usage": {"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS, "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS},
    })
}

fn openai_events(model: &str) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let (first, second) = TOOL_ARGUMENTS.split_at(8);
    [
        chunk(json!({"role": "assistant", "content": "Let me check. "}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": TOOL, "arguments": first}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": second}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
    ]
    .iter()
    .map(|event| format!("data: {event}\n\n"))
    .chain(["data: [DONE]\n\n".to_owned()])
    .collect()
}

fn anthropic_message(model: &str) -> Value {
    json!({
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": TOOL, "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS},
    })
}

fn anthropic_events(model: &str) -> Vec<String> {
    let mut message = anthropic_message(model);
    message["content"] = json!([]);
    message["stop_reason"] = Value::Null;
    message["usage"]["output_tokens"] = json!(1);
    let (first, second) = TOOL_ARGUMENTS.split_at(8);
    [
        ("message_start", json!({"type": "message_start", "message": message})),
        ("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}})),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        ("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": TOOL, "input": {}}})),
        ("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": first}})),
        ("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": second}})),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
        ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": OUTPUT_TOKENS}})),
        ("message_stop", json!({"type": "message_stop"})),
    ]
    .iter()
    .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
    .collect()
}
