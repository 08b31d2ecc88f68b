//! Fakes around the egress service, for its integration tests and the
//! full-stack ones: a control plane serving `Policy.Watch` to known tokens
//! (and pushing whatever policy the test sets), a model provider of either
//! dialect that checks the key it gets and records every request, static
//! keys, and an in-process egress service over TLS with a client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use wopr_operator::audit::MemorySink;
use wopr_operator::clock::Clock;
use wopr_operator::egress::credentials::{CredentialError, Credentials};
use wopr_operator::egress::fetch::resolver::SystemResolver;
use wopr_operator::egress::fetch::service::FetchService;
use wopr_operator::egress::fetch::{Fetcher, Settings as FetchSettings};
use wopr_operator::egress::metrics::ModelMetrics;
use wopr_operator::egress::service::{ModelsService, Settings};
use wopr_operator::egress::sessions::ControlPlane;
use wopr_operator::egress::upstream::{Timeouts, Upstream, system_roots};
use wopr_operator::proto::v1alpha1 as pb;
use wopr_operator::proto::v1alpha1::fetch_client::FetchClient;
use wopr_operator::proto::v1alpha1::models_client::ModelsClient;
use wopr_operator::proto::v1alpha1::policy_server::{Policy, PolicyServer};
use wopr_operator::proto::v1alpha1::{model_reply::Reply, policy_update::Update};
use wopr_operator::shutdown;

use super::tls;

/// A control plane that knows a few sidecars' tokens and serves the
/// policy the test sets for each session.
#[derive(Clone)]
pub struct FakeControlPlane {
    /// Where it listens (TLS with the test leaf).
    pub address: SocketAddr,
    state: Arc<ControlPlaneState>,
}

/// The policy served to each session, by namespace and name.
type Served = HashMap<(String, String), watch::Sender<Option<Update>>>;

#[derive(Default)]
struct ControlPlaneState {
    tokens: Mutex<HashMap<String, (String, String)>>,
    policies: Mutex<Served>,
    watches: AtomicUsize,
    silent: AtomicBool,
}

impl ControlPlaneState {
    fn policy(&self, namespace: &str, session: &str) -> watch::Sender<Option<Update>> {
        self.policies
            .lock()
            .unwrap()
            .entry((namespace.to_owned(), session.to_owned()))
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }
}

impl FakeControlPlane {
    /// Serving on a free loopback port.
    pub async fn start() -> FakeControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(ControlPlaneState::default());
        let service = PolicyServer::new(Watches(state.clone()));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(wopr_operator::tls::server::incoming(
                    listener,
                    tls::server_cert(),
                ))
                .await
                .unwrap();
        });
        FakeControlPlane { address, state }
    }

    /// `token` is the projected token of `namespace/session`'s sidecar.
    pub fn admit(&self, token: &str, namespace: &str, session: &str) {
        self.state
            .tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), (namespace.to_owned(), session.to_owned()));
    }

    /// Serves (and pushes to open watches) `context` for its session.
    pub fn serve(&self, context: pb::SecurityContext) {
        self.state
            .policy(&context.namespace, &context.session)
            .send_replace(Some(Update::Context(context)));
    }

    /// Says no policy can be served for the session.
    pub fn unavailable(&self, namespace: &str, session: &str, reason: &str) {
        self.state
            .policy(namespace, session)
            .send_replace(Some(Update::Unavailable(reason.to_owned())));
    }

    /// Stops (or resumes) heartbeats, and new watches get no first update:
    /// a hung control plane, whose open watches go stale.
    pub fn fall_silent(&self, silent: bool) {
        self.state.silent.store(silent, Ordering::SeqCst);
    }

    /// The watches opened (accepted) so far.
    pub fn watches(&self) -> usize {
        self.state.watches.load(Ordering::SeqCst)
    }

    /// How the egress service reaches it.
    pub fn target(&self) -> ControlPlane {
        ControlPlane {
            address: self.address.to_string(),
            tls: tls::client_tls(),
        }
    }
}

struct Watches(Arc<ControlPlaneState>);

#[tonic::async_trait]
impl Policy for Watches {
    type WatchStream = ReceiverStream<Result<pb::PolicyUpdate, tonic::Status>>;

    async fn watch(
        &self,
        request: tonic::Request<pb::WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| tonic::Status::unauthenticated("missing bearer token"))?
            .to_owned();
        let asked = request.into_inner();
        let Some((namespace, session)) = self.0.tokens.lock().unwrap().get(&token).cloned() else {
            return Err(tonic::Status::unauthenticated(
                "the token does not authenticate",
            ));
        };
        if (namespace.as_str(), session.as_str())
            != (asked.namespace.as_str(), asked.session.as_str())
        {
            return Err(tonic::Status::permission_denied(format!(
                "the caller is the sidecar of {namespace}/{session}, not of {}/{}",
                asked.namespace, asked.session
            )));
        }
        self.0.watches.fetch_add(1, Ordering::SeqCst);
        let mut policy = self.0.policy(&namespace, &session).subscribe();
        let heartbeat = Duration::from_secs(u64::from(asked.heartbeat_seconds.max(1)));
        let state = self.0.clone();
        let (updates, stream) = mpsc::channel(8);
        tokio::spawn(async move {
            let current = |policy: &watch::Receiver<Option<Update>>| {
                policy
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| Update::Unavailable("no such session".into()))
            };
            // A silent control plane answers nothing, not even a first update.
            let mut next = (!state.silent.load(Ordering::SeqCst)).then(|| current(&policy));
            loop {
                if let Some(update) = next.take() {
                    let sent = updates
                        .send(Ok(pb::PolicyUpdate {
                            update: Some(update),
                        }))
                        .await;
                    if sent.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = policy.changed() => {
                        if changed.is_err() { return; }
                        next = Some(current(&policy));
                    }
                    () = tokio::time::sleep(heartbeat) => {
                        if !state.silent.load(Ordering::SeqCst) {
                            next = Some(Update::Heartbeat(pb::Heartbeat {}));
                        }
                    }
                    () = updates.closed() => return,
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(stream)))
    }

    async fn report_isolation(
        &self,
        _request: tonic::Request<pb::IsolationReport>,
    ) -> Result<tonic::Response<pb::IsolationReportAck>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }
}

/// The policy a session gets, with the model rules given.
pub fn context(
    namespace: &str,
    session: &str,
    enforcement: &str,
    models: pb::ModelPolicy,
) -> pb::SecurityContext {
    pb::SecurityContext {
        namespace: namespace.into(),
        session: session.into(),
        trust_level: "trusted".into(),
        network: "none".into(),
        enforcement: enforcement.into(),
        policy_hash: format!("hash-of-{}", models.allow.join(",")),
        models: Some(models),
        ..pb::SecurityContext::default()
    }
}

/// A provider of the namespace, by name, type, URL and Secret key.
pub fn provider(name: &str, kind: &str, base_url: &str) -> pb::ProviderConfig {
    pb::ProviderConfig {
        name: name.into(),
        r#type: kind.into(),
        base_url: base_url.into(),
        secret_name: format!("{name}-key"),
        secret_key: "apiKey".into(),
    }
}

/// A chain link.
pub fn link(provider: &str, model: &str) -> pb::ModelLink {
    pb::ModelLink {
        provider: provider.into(),
        model: model.into(),
    }
}

/// The dialect a fake provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    OpenAi,
    Anthropic,
}

/// What a fake provider does with the next requests.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answers (streamed when asked), reporting 7 tokens in and 5 out
    /// (OpenAI) or 11 in and 3 out (Anthropic), so a test sees whose
    /// usage an outcome counts.
    Answer,
    /// Answers this status and error body, with `retry-after` if given.
    Fail {
        status: u16,
        retry_after: Option<String>,
    },
    /// Refuses with 400, echoing the key it got in the error's message
    /// (as some providers' "invalid key" errors do).
    EchoKey,
    /// Never answers.
    Hang,
    /// Streams a first event, then nothing more, ever.
    Stall,
    /// Streams this many content chunks of one token each, then usage
    /// (OpenAI only: for benchmarks of the per-chunk cost).
    Chunks(usize),
}

/// One request a fake provider received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

/// A model provider on loopback (plain HTTP).
#[derive(Clone)]
pub struct FakeProvider {
    pub address: SocketAddr,
    pub speaks: Speaks,
    state: Arc<ProviderState>,
}

struct ProviderState {
    speaks: Speaks,
    key: String,
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Vec<Seen>>,
    streams_dropped: Arc<AtomicUsize>,
}

impl FakeProvider {
    /// A provider expecting `key`.
    pub async fn start(speaks: Speaks, key: &str) -> FakeProvider {
        let state = Arc::new(ProviderState {
            speaks,
            key: key.to_owned(),
            behaviour: Mutex::new(Behaviour::Answer),
            seen: Mutex::new(Vec::new()),
            streams_dropped: Arc::new(AtomicUsize::new(0)),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeProvider {
            address,
            speaks,
            state,
        }
    }

    /// Its base URL as a SecurityPolicy names it.
    pub fn base_url(&self) -> String {
        match self.speaks {
            Speaks::OpenAi => format!("http://{}/v1", self.address),
            Speaks::Anthropic => format!("http://{}", self.address),
        }
    }

    /// Does `behaviour` from now on.
    pub fn behave(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many of its streamed answers were dropped before their end
    /// (the connection closed under them).
    pub fn streams_dropped(&self) -> usize {
        self.state.streams_dropped.load(Ordering::SeqCst)
    }
}

/// Counts a streamed body dropped before its end.
struct DropGuard {
    dropped: Arc<AtomicUsize>,
    finished: Arc<AtomicBool>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::SeqCst) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn answer(
    State(state): State<Arc<ProviderState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let headers: HashMap<String, String> = headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    state.seen.lock().unwrap().push(Seen {
        path: uri.path().to_owned(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let (path, key_ok) = match state.speaks {
        Speaks::OpenAi => (
            "/v1/chat/completions",
            headers.get("authorization") == Some(&format!("Bearer {}", state.key)),
        ),
        Speaks::Anthropic => (
            "/v1/messages",
            headers.get("x-api-key") == Some(&state.key)
                && headers.contains_key("anthropic-version"),
        ),
    };
    if uri.path() != path {
        return (StatusCode::NOT_FOUND, "no such path").into_response();
    }
    if !key_ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "wrong key", "type": "authentication_error"}})),
        )
            .into_response();
    }
    let behaviour = state.behaviour.lock().unwrap().clone();
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let streamed = body["stream"].as_bool().unwrap_or(false);
    match behaviour {
        Behaviour::Fail {
            status,
            retry_after,
        } => {
            let mut response = (
                StatusCode::from_u16(status).unwrap(),
                Json(json!({"error": {"message": format!("failing with {status}"), "type": "api_error"}})),
            )
                .into_response();
            if let Some(retry_after) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", retry_after.parse().unwrap());
            }
            response
        }
        Behaviour::EchoKey => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": format!("bad request with key {}", state.key), "type": "invalid_request_error"}})),
        )
            .into_response(),
        Behaviour::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Behaviour::Answer if body.get("tools").is_some() && !streamed => {
            Json(whole_tool_call(state.speaks, &model)).into_response()
        }
        Behaviour::Answer if body.get("tools").is_some() => {
            sse(tool_call_events(state.speaks, &model), false, &state)
        }
        Behaviour::Answer if !streamed => Json(whole_answer(state.speaks, &model)).into_response(),
        Behaviour::Answer => sse(events(state.speaks, &model), false, &state),
        Behaviour::Stall => sse(events(state.speaks, &model)[..1].to_vec(), true, &state),
        Behaviour::Chunks(count) => sse(chunks(&model, count), false, &state),
    }
}

fn sse(events: Vec<String>, stall: bool, state: &ProviderState) -> Response {
    let finished = Arc::new(AtomicBool::new(false));
    let guard = DropGuard {
        dropped: state.streams_dropped.clone(),
        finished: finished.clone(),
    };
    let chunks = events
        .into_iter()
        .map(|event| Ok::<_, std::io::Error>(Bytes::from(event)));
    let body = futures::stream::iter(chunks)
        .chain(futures::stream::once(async move {
            if stall {
                std::future::pending::<()>().await;
            }
            finished.store(true, Ordering::SeqCst);
            Ok(Bytes::new())
        }))
        .map(move |chunk| {
            // The stream holds the guard: it counts the stream dropped early.
            let _held = &guard;
            chunk
        });
    let mut response = Response::new(Body::from_stream(body));
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    response
}

fn whole_answer(speaks: Speaks, model: &str) -> Value {
    match speaks {
        Speaks::OpenAi => json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        }),
        Speaks::Anthropic => json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "hello"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 11, "output_tokens": 3}
        }),
    }
}

/// The answer to a request offering tools: a call of the first one,
/// `get_weather {"city": "Paris"}` (what tests/models/*.py ask for).
fn whole_tool_call(speaks: Speaks, model: &str) -> Value {
    match speaks {
        Speaks::OpenAi => json!({
            "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        }),
        Speaks::Anthropic => json!({
            "id": "msg_2", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 11, "output_tokens": 3}
        }),
    }
}

/// [`whole_tool_call`] streamed, after the text `Let me check.`.
fn tool_call_events(speaks: Speaks, model: &str) -> Vec<String> {
    let data = |value: Value| format!("data: {value}\n\n");
    let event = |name: &str, value: Value| format!("event: {name}\ndata: {value}\n\n");
    match speaks {
        Speaks::OpenAi => {
            let chunk = |delta: Value, finish: Value| {
                data(
                    json!({"id": "c2", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
                )
            };
            vec![
                chunk(
                    json!({"role": "assistant", "content": "Let me check."}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":"}}]}),
                    Value::Null,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                    Value::Null,
                ),
                chunk(json!({}), json!("tool_calls")),
                data(
                    json!({"id": "c2", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}),
                ),
                "data: [DONE]\n\n".to_owned(),
            ]
        }
        Speaks::Anthropic => vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_2", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}}),
            ),
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
            ),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Paris\"}"}}),
            ),
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            event(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 3}}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ],
    }
}

/// An OpenAI stream of `count` one-word chunks, usage and `[DONE]`.
fn chunks(model: &str, count: usize) -> Vec<String> {
    let chunk = json!({"id": "c3", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": null}]});
    let mut events = vec![format!("data: {chunk}\n\n"); count];
    events.push(format!(
        "data: {}\n\n",
        json!({"id": "c3", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": count, "total_tokens": count + 7}})
    ));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn events(speaks: Speaks, model: &str) -> Vec<String> {
    let data = |value: Value| format!("data: {value}\n\n");
    let event = |name: &str, value: Value| format!("event: {name}\ndata: {value}\n\n");
    match speaks {
        Speaks::OpenAi => vec![
            data(
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hel"}, "finish_reason": null}]}),
            ),
            data(
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}),
            ),
            data(
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}),
            ),
            "data: [DONE]\n\n".to_owned(),
        ],
        Speaks::Anthropic => vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}}),
            ),
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            event(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ],
    }
}

/// Keys by namespace, Secret and key, as Secrets would hold them.
#[derive(Default)]
pub struct StaticKeys(pub HashMap<(String, String, String), String>);

impl StaticKeys {
    /// The key of `provider` (`{provider}-key`, `apiKey`) in `namespace`.
    pub fn with(mut self, namespace: &str, provider: &str, key: &str) -> StaticKeys {
        self.0.insert(
            (namespace.into(), format!("{provider}-key"), "apiKey".into()),
            key.into(),
        );
        self
    }
}

impl Credentials for StaticKeys {
    async fn key(
        &self,
        namespace: &str,
        secret_name: &str,
        secret_key: &str,
    ) -> Result<SecretString, CredentialError> {
        self.0
            .get(&(namespace.into(), secret_name.into(), secret_key.into()))
            .map(|key| SecretString::from(key.clone()))
            .ok_or_else(|| CredentialError::Secret {
                namespace: namespace.into(),
                name: secret_name.into(),
                why: "not found".into(),
            })
    }
}

/// An egress service in this process, over TLS with the test leaf.
pub struct Egress {
    pub address: SocketAddr,
    pub audit: Arc<MemorySink>,
    pub metrics: ModelMetrics,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Upstream timeouts short enough for tests.
pub fn quick_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        first_byte: Duration::from_secs(1),
        idle: Duration::from_secs(2),
    }
}

impl Egress {
    /// Serving sessions of `control_plane` with `keys`.
    pub async fn start(
        control_plane: &FakeControlPlane,
        keys: StaticKeys,
        settings: Settings,
    ) -> Egress {
        Egress::start_for(control_plane.target(), keys, settings).await
    }

    /// Serving sessions of the control plane at `target` (a real one, for
    /// the full-stack tests) with `keys`; `http_fetch` with the default
    /// limits, the system's resolver and roots.
    pub async fn start_for(target: ControlPlane, keys: StaticKeys, settings: Settings) -> Egress {
        let fetcher = Fetcher::new(
            FetchSettings::default(),
            Arc::new(SystemResolver),
            system_roots(),
        )
        .unwrap();
        Egress::start_fetching(target, keys, settings, fetcher).await
    }

    /// Serving sessions of the control plane at `target` with `keys`,
    /// making `http_fetch` calls with `fetcher`.
    pub async fn start_fetching(
        target: ControlPlane,
        keys: StaticKeys,
        settings: Settings,
        fetcher: Fetcher,
    ) -> Egress {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let audit = Arc::new(MemorySink::default());
        let metrics = ModelMetrics::default();
        let service = ModelsService::new(
            Arc::new(target),
            keys,
            Upstream::new(quick_timeouts()).unwrap(),
            audit.clone(),
            metrics.clone(),
            settings,
        );
        let fetch = FetchService::new(service.sessions(), fetcher, audit.clone(), Clock::System);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = shutdown::on(async move {
            let _ = stopped.await;
        });
        tokio::spawn(wopr_operator::egress::serve(
            listener,
            tls::transport(),
            service,
            fetch,
            settings.max_body,
            shutdown,
        ));
        Egress {
            address,
            audit,
            metrics,
            _stop: stop,
        }
    }

    /// A client, verifying the service as sidecars do.
    pub async fn client(&self) -> ModelsClient<Channel> {
        ModelsClient::new(tls::channel(self.address).await)
    }

    /// A Fetch client, verifying the service as sidecars do.
    pub async fn fetch_client(&self) -> FetchClient<Channel> {
        FetchClient::new(tls::channel(self.address).await)
    }
}

/// What a call got: the head, the body, the outcome.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: u32,
    pub content_type: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub outcome: Option<pb::ModelOutcome>,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The outcome.
    pub fn outcome(&self) -> &pb::ModelOutcome {
        self.outcome.as_ref().expect("an outcome")
    }
}

/// A call request with `token` (none: no authorization header).
pub fn request(
    token: Option<&str>,
    namespace: &str,
    session: &str,
    dialect: pb::Dialect,
    body: &[u8],
    headers: &[(&str, &str)],
) -> tonic::Request<pb::ModelRequest> {
    let mut request = tonic::Request::new(pb::ModelRequest {
        namespace: namespace.into(),
        session: session.into(),
        dialect: dialect.into(),
        body: body.to_vec(),
        headers: headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Calls and collects the whole reply.
pub async fn call(
    client: &mut ModelsClient<Channel>,
    request: tonic::Request<pb::ModelRequest>,
) -> Result<Answer, tonic::Status> {
    let mut replies = client.call(request).await?.into_inner();
    let mut answer = Answer::default();
    while let Some(reply) = replies.message().await? {
        match reply.reply.expect("a reply") {
            Reply::Head(head) => {
                assert_eq!(answer.status, 0, "one head");
                answer.status = head.status;
                answer.content_type = head.content_type;
                answer.headers = head.headers;
            }
            Reply::Chunk(chunk) => {
                assert_ne!(answer.status, 0, "the head comes first");
                answer.body.extend_from_slice(&chunk);
            }
            Reply::Outcome(outcome) => answer.outcome = Some(outcome),
        }
    }
    Ok(answer)
}
