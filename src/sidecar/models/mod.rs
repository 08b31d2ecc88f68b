//! The model proxy on the pod's loopback (issue 25): OpenAI-compatible
//! `POST /v1/chat/completions` and `GET /v1/models`, Anthropic-compatible
//! `POST /v1/messages`, so the official SDKs work pointed only by their
//! base-URL variables. It holds no key: each request is relayed to the
//! egress service's `Models.Call` over TLS, verified with the control
//! plane's CA bundle and carrying the sidecar's projected token (read anew
//! per call), and the egress service adds the real key. Only
//! `anthropic-version` and `anthropic-beta` are forwarded; the agent's
//! `authorization` and `x-api-key` (placeholders) never leave the pod.
//!
//! Every call is a `model_call` event in the session's durable spool (the
//! engine's sink, shipped like a tool call's): the egress service's
//! outcome when it sends one; otherwise the sidecar's own refusal (no
//! policy, a body over the limit, the egress service absent or refusing)
//! or what it knows of a call the agent walked away from.

pub mod dialect;
pub mod relay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use self::dialect::{Dialect, listed_models, status_of};
use self::relay::{Ended, ReplyBody};
use super::client::{WatchError, WatchTarget, authorized, bearer_of, connect_channel};
use super::engine::ToolEngine;
use super::policy_state::Served;
use crate::api::Enforcement;
use crate::audit::{AuditEvent, EventType, MAX_TOOL_NAME_BYTES, ModelCall, truncated};
use crate::policy::Outcome;
use crate::proto::v1alpha1::model_reply::Reply;
use crate::proto::v1alpha1::models_client::ModelsClient;
use crate::proto::v1alpha1::{
    ListModelsRequest, ModelOutcome, ModelReply, ModelRequest, ReplyHead,
};

/// The request headers relayed to the egress service: those the providers'
/// APIs define that change the answer. Every other header stays here.
const FORWARDED_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// Response headers never copied from a head: the proxy frames the body itself.
const FRAMING_HEADERS: [HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
];

/// The default largest request body: 4 MiB (a long conversation with
/// images fits; a flood does not).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How the model proxy is set up.
#[derive(Clone, Debug)]
pub struct ModelsOptions {
    /// The egress service, and as whom to call it (the control plane's CA
    /// bundle and the projected token); `None` refuses every model call.
    pub egress: Option<WatchTarget>,
    /// Largest request body, in bytes: refused before it is buffered whole.
    pub max_body_bytes: usize,
}

/// The egress service's address and a channel to it, made at the first
/// call and made again after one fails to reach it (so a moved service or
/// a rotated CA bundle is picked up). The model proxy's, and `http_fetch`'s
/// ([`super::tools`]).
pub struct Egress {
    target: WatchTarget,
    channel: Mutex<Option<Channel>>,
}

impl Egress {
    /// The egress service at `target`, reached at the first call.
    pub fn new(target: WatchTarget) -> Egress {
        Egress {
            target,
            channel: Mutex::new(None),
        }
    }

    /// A Models client and the bearer of the token as it is now.
    async fn client(
        &self,
    ) -> Result<(ModelsClient<Channel>, tonic::metadata::AsciiMetadataValue), WatchError> {
        let (channel, bearer) = self.channel().await?;
        Ok((ModelsClient::new(channel), bearer))
    }

    /// The channel and the bearer of the token as it is now.
    pub async fn channel(
        &self,
    ) -> Result<(Channel, tonic::metadata::AsciiMetadataValue), WatchError> {
        let cached = self
            .channel
            .lock()
            .expect("the egress channel lock is never poisoned")
            .clone();
        let (channel, bearer) = match cached {
            Some(channel) => (channel, bearer_of(&self.target)?),
            None => {
                let (channel, bearer) = connect_channel(&self.target).await?;
                *self
                    .channel
                    .lock()
                    .expect("the egress channel lock is never poisoned") = Some(channel.clone());
                (channel, bearer)
            }
        };
        Ok((channel, bearer))
    }

    /// Forgets the channel after `status` if it says the service was not reached.
    pub fn forget_after(&self, status: &tonic::Status) {
        if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown
        ) {
            *self
                .channel
                .lock()
                .expect("the egress channel lock is never poisoned") = None;
        }
    }
}

struct Proxy {
    engine: Arc<ToolEngine>,
    egress: Option<Egress>,
    max_body_bytes: usize,
    /// Cancelled at shutdown: ends the calls still open.
    streams_end: CancellationToken,
}

/// The model proxy's routes; any other is 404 (audited as a request that
/// broke the protocol). Cancelling `streams_end` ends every call still
/// open (recorded as such), so a graceful shutdown does not wait on them.
pub fn router(
    engine: Arc<ToolEngine>,
    options: ModelsOptions,
    streams_end: CancellationToken,
) -> Router {
    let proxy = Arc::new(Proxy {
        engine,
        egress: options.egress.map(Egress::new),
        max_body_bytes: options.max_body_bytes,
        streams_end,
    });
    Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(proxy), request| relay(proxy, Dialect::OpenAi, request)),
        )
        .route(
            "/v1/messages",
            post(|State(proxy), request| relay(proxy, Dialect::Anthropic, request)),
        )
        .route("/v1/models", get(list_models))
        .fallback(no_route)
        .method_not_allowed_fallback(no_route)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .with_state(proxy)
}

async fn no_route(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    proxy
        .engine
        .audit_bad_request(format!("model proxy: no route {what}"));
    Dialect::of_headers(request.headers()).error(
        StatusCode::NOT_FOUND,
        &format!(
            "no route {what}: the model proxy serves POST /v1/chat/completions, POST /v1/messages and GET /v1/models"
        ),
    )
}

/// What the sidecar reads of a request body: only for its audit event.
#[derive(Deserialize, Default)]
struct Named {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
}

/// One model call, from its arrival to its event.
pub struct Call {
    engine: Arc<ToolEngine>,
    /// The policy in force when it arrived, if any.
    served: Option<Arc<Served>>,
    /// The model the request named (cut), and whether it asked to stream.
    model: String,
    streamed: bool,
    arrived: Instant,
    dialect: Dialect,
    /// Whether its event is recorded: a call dropped unrecorded (the
    /// agent went away, dropping the handler or the reply's body) records
    /// itself as ended by the agent.
    recorded: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(Ended::Disconnected);
        }
    }
}

impl Call {
    /// The figures known without an outcome: the model asked for.
    fn known(&self) -> ModelCall {
        ModelCall {
            model: self.model.clone(),
            latency_ms: millis(self.arrived.elapsed()),
            streamed: self.streamed,
            ..ModelCall::default()
        }
    }

    fn event(&self, decision: Outcome, reason: String, model: ModelCall) -> AuditEvent {
        let mut event = self.engine.event(
            self.served.as_deref(),
            EventType::ModelCall,
            decision,
            reason,
        );
        event.model = Some(model);
        event
    }

    /// Records that the sidecar refused the call for `reason`, and the
    /// agent's error response with `status`.
    fn refuse(mut self, status: StatusCode, reason: String) -> Response {
        let event = self.event(Outcome::Denied, reason.clone(), self.known());
        self.recorded = true;
        self.engine.record_model_call(event);
        self.dialect.error(status, &reason)
    }

    /// Records how the call ended.
    pub fn record(&mut self, ended: Ended) {
        self.recorded = true;
        let event = match ended {
            Ended::Outcome(outcome) => self.outcome_event(outcome),
            Ended::Broken(why) => self.event(Outcome::Allowed, why, self.known()),
            Ended::Disconnected => self.event(
                Outcome::Allowed,
                "the agent disconnected before the reply ended: the call was cancelled, and what the egress service would have counted is lost".into(),
                self.known(),
            ),
        };
        self.engine.record_model_call(event);
    }

    /// The event of the egress service's outcome: its decision, mode,
    /// policy hash and figures. A decision or mode this sidecar cannot
    /// read is recorded as denied and enforce, saying so.
    fn outcome_event(&self, outcome: ModelOutcome) -> AuditEvent {
        let ModelOutcome {
            decision,
            mut reason,
            provider,
            model,
            input_tokens,
            output_tokens,
            latency_ms,
            fallback,
            streamed,
            enforcement,
            policy_hash,
        } = outcome;
        let parsed = serde_json::from_value::<Outcome>(decision.clone().into());
        let decision = parsed.unwrap_or_else(|_| {
            reason.push_str(&format!(
                " (the egress service's decision {decision:?} is unknown: recorded as denied)"
            ));
            Outcome::Denied
        });
        let mut event = self.event(
            decision,
            reason,
            ModelCall {
                provider,
                model,
                input_tokens,
                output_tokens,
                latency_ms,
                fallback,
                streamed,
            },
        );
        event.enforcement = serde_json::from_value::<Enforcement>(enforcement.into())
            .unwrap_or(Enforcement::Enforce);
        if !policy_hash.is_empty() {
            event.policy_hash = Some(policy_hash);
        }
        event
    }
}

fn millis(elapsed: std::time::Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// Relays one model call in `dialect` to the egress service.
async fn relay(proxy: Arc<Proxy>, dialect: Dialect, request: Request) -> Response {
    let mut call = Call {
        engine: proxy.engine.clone(),
        served: proxy.engine.policy().current().ok(),
        model: String::new(),
        streamed: false,
        arrived: Instant::now(),
        dialect,
        recorded: false,
    };
    let limit = proxy.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = declared.filter(|length| *length > limit as u64) {
        return call.refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is {length} bytes, over the limit of {limit} bytes"),
        );
    }
    let headers = forwarded(request.headers());
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            return call.refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over the limit of {limit} bytes"),
            );
        }
        Err(error) => {
            return call.refuse(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {error}"),
            );
        }
    };
    let named: Named = serde_json::from_slice(&body).unwrap_or_default();
    call.model = named
        .model
        .map(|model| truncated(&model, MAX_TOOL_NAME_BYTES).into_owned())
        .unwrap_or_default();
    call.streamed = named.stream;
    if let Err(refused) = proxy.engine.accepting() {
        return call.refuse(StatusCode::SERVICE_UNAVAILABLE, refused.to_string());
    }
    if let Err(no_policy) = proxy.engine.policy().current() {
        return call.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("model calls are refused: {no_policy}"),
        );
    }
    let Some(egress) = &proxy.egress else {
        return call.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no egress service is configured for this sidecar (--egress-address): model calls cannot be relayed".into(),
        );
    };
    let (mut client, bearer) = match egress.client().await {
        Ok(client) => client,
        Err(error) => {
            return call.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the egress service cannot be reached: {error}"),
            );
        }
    };
    let message = ModelRequest {
        namespace: egress.target.namespace.clone(),
        session: egress.target.session.clone(),
        dialect: dialect.wire().into(),
        body: body.into(),
        headers,
    };
    let refused_by = |call: Call, status: tonic::Status| {
        egress.forget_after(&status);
        call.refuse(
            status_of(status.code()),
            format!("the egress service refused the call: {}", status.message()),
        )
    };
    let mut replies = match client.call(authorized(message, bearer)).await {
        Ok(replies) => replies.into_inner(),
        Err(status) => return refused_by(call, status),
    };
    let first = tokio::select! {
        first = replies.message() => first,
        () = proxy.streams_end.cancelled() => {
            return call.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sidecar is shutting down".into(),
            );
        }
    };
    let head = match first {
        Ok(Some(ModelReply {
            reply: Some(Reply::Head(head)),
        })) => head,
        Ok(_) => {
            return call.refuse(
                StatusCode::BAD_GATEWAY,
                "the egress service did not begin its reply with a head".into(),
            );
        }
        Err(status) => return refused_by(call, status),
    };
    match head_response(head) {
        Ok(mut response) => {
            *response.body_mut() =
                Body::from_stream(ReplyBody::new(replies, call, proxy.streams_end.clone()));
            response
        }
        Err(why) => call.refuse(StatusCode::BAD_GATEWAY, why),
    }
}

/// The agent's request headers the egress service gets, lower-case.
fn forwarded(headers: &HeaderMap) -> HashMap<String, String> {
    FORWARDED_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect()
}

/// The response a head begins (its body still empty).
fn head_response(head: ReplyHead) -> Result<Response, String> {
    let status = u16::try_from(head.status)
        .ok()
        .and_then(|status| StatusCode::from_u16(status).ok())
        .ok_or_else(|| format!("the egress service sent the status {}", head.status))?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in head.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) else {
            return Err(format!(
                "the egress service sent an invalid header {name:?}"
            ));
        };
        if !FRAMING_HEADERS.contains(&name) {
            headers.insert(name, value);
        }
    }
    if !head.content_type.is_empty() {
        let value = HeaderValue::try_from(head.content_type.as_str())
            .map_err(|_| "the egress service sent an invalid content type".to_owned())?;
        headers.insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// `GET /v1/models`: the models the session may name, from the egress
/// service, in the list format of the SDK that asked.
async fn list_models(State(proxy): State<Arc<Proxy>>, headers: HeaderMap) -> Response {
    let dialect = Dialect::of_headers(&headers);
    if let Err(no_policy) = proxy.engine.policy().current() {
        return dialect.error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("models cannot be listed: {no_policy}"),
        );
    }
    let Some(egress) = &proxy.egress else {
        return dialect.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no egress service is configured for this sidecar (--egress-address)",
        );
    };
    let listed = async {
        let (mut client, bearer) = egress
            .client()
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        let request = ListModelsRequest {
            namespace: egress.target.namespace.clone(),
            session: egress.target.session.clone(),
        };
        client.list_models(authorized(request, bearer)).await
    };
    match listed.await {
        Ok(listed) => {
            let ids = listed_models(&listed.into_inner().models);
            axum::Json(dialect.model_list(&ids)).into_response()
        }
        Err(status) => {
            egress.forget_after(&status);
            dialect.error(
                status_of(status.code()),
                &format!(
                    "the egress service cannot list models: {}",
                    status.message()
                ),
            )
        }
    }
}
