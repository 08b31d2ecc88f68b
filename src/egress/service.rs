//! The Models gRPC service: authenticates each call by token passthrough
//! ([`super::sessions`]), decides it ([`super::decide`], [`super::budget`]),
//! walks the session's chain to a provider that answers ([`super::upstream`],
//! keys from [`super::credentials`]), and streams the answer back: a head,
//! chunks, and an outcome; every decision also an audit line.
//!
//! A link is tried only while nothing has gone to the caller: after the
//! head went out a failure ends the stream with an error event. When the
//! caller goes away, the provider's request is dropped at once (the
//! provider sees its connection close).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::budget::{Cooldowns, Ledger, SessionKey, retry_after};
use super::credentials::Credentials;
use super::decide::{self, Refusal};
use super::metrics::ModelMetrics;
use super::policy::{Link, Provider, SessionPolicy};
use super::provider_error;
use super::redact::redact;
use super::sessions::{PolicySource, SessionSettings, Sessions, bearer};
use super::translate::{self, Asked, Dialect, ErrorKind, StreamTranslator, Usage};
use super::upstream::Upstream;
use crate::api::{Enforcement, ProviderType, SourceRef, TrustLevel, name_of};
use crate::audit::{AuditEvent, AuditSink, EventType, ModelCall};
use crate::clock::Clock;
use crate::policy::Outcome;
use crate::proto::v1alpha1::models_server::Models;
use crate::proto::v1alpha1::{
    ListModelsRequest, ListModelsResponse, ModelLink, ModelOutcome, ModelReply, ModelRequest,
    ReplyHead, model_reply::Reply,
};

/// The largest request body taken (the agent's JSON).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// The largest non-streamed answer relayed.
const MAX_ANSWER: usize = 32 * 1024 * 1024;
/// Replies waiting for the caller to take them, per call.
const REPLY_BUFFER: usize = 16;

/// How the service runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The largest request body taken.
    pub max_body: usize,
    /// How sessions' watches are kept.
    pub sessions: SessionSettings,
    /// What budgets and `retry-after` are read against.
    pub clock: Clock,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_body: MAX_BODY,
            sessions: SessionSettings::default(),
            clock: Clock::System,
        }
    }
}

/// The Models service.
pub struct ModelsService<P, C> {
    inner: Arc<Inner<P, C>>,
}

struct Inner<P, C> {
    sessions: Arc<Sessions<P>>,
    credentials: C,
    upstream: Upstream,
    ledger: Ledger,
    cooldowns: Cooldowns,
    audit: Arc<dyn AuditSink>,
    metrics: ModelMetrics,
    settings: Settings,
}

impl<P: PolicySource, C: Credentials> ModelsService<P, C> {
    /// A service learning sessions' policies from `source`, keys from
    /// `credentials`, calling providers with `upstream`, recording every
    /// decision in `audit` and `metrics`.
    pub fn new(
        source: Arc<P>,
        credentials: C,
        upstream: Upstream,
        audit: Arc<dyn AuditSink>,
        metrics: ModelMetrics,
        settings: Settings,
    ) -> Self {
        ModelsService {
            inner: Arc::new(Inner {
                sessions: Arc::new(Sessions::new(source, settings.sessions)),
                credentials,
                upstream,
                ledger: Ledger::default(),
                cooldowns: Cooldowns::default(),
                audit,
                metrics,
                settings,
            }),
        }
    }
}

impl<P, C> ModelsService<P, C> {
    /// The sessions it knows, and their watches: shared with the Fetch
    /// service, so a session's calls of either ride on one watch.
    pub fn sessions(&self) -> Arc<Sessions<P>> {
        self.inner.sessions.clone()
    }
}

/// What a call came to, as its outcome and audit event record it.
#[derive(Debug, Default)]
struct Progress {
    decision: Option<Outcome>,
    reason: String,
    /// The link answering (or last tried).
    link: Option<Link>,
    usage: Usage,
    fallback: Vec<String>,
    streamed: bool,
    /// Refusals warn mode let through.
    would_deny: Vec<String>,
}

/// The caller went away.
struct Gone;

type Replies = mpsc::Sender<Result<ModelReply, Status>>;

#[tonic::async_trait]
impl<P: PolicySource, C: Credentials> Models for ModelsService<P, C> {
    type CallStream = ReceiverStream<Result<ModelReply, Status>>;

    async fn call(
        &self,
        request: Request<ModelRequest>,
    ) -> Result<Response<Self::CallStream>, Status> {
        let arrived = Instant::now();
        let (metadata, _, call) = request.into_parts();
        let policy = self
            .inner
            .authenticate(&metadata, &call.namespace, &call.session)
            .await?;
        let dialect = match Dialect::try_from(call.dialect) {
            Ok(dialect) => dialect,
            Err(_) => {
                let status = Status::invalid_argument(format!(
                    "unknown dialect {}: expected OPENAI_CHAT or ANTHROPIC_MESSAGES",
                    call.dialect
                ));
                self.inner
                    .refused_unattributed(&call.namespace, &call.session, &status);
                return Err(status);
            }
        };
        let (replies, stream) = mpsc::channel(REPLY_BUFFER);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut progress = Progress::default();
            let relayed = tokio::select! {
                relayed = inner.relay(&policy, dialect, call, &replies, &mut progress) => relayed,
                () = replies.closed() => Err(Gone),
            };
            if relayed.is_err() {
                let before = match progress.reason.as_str() {
                    "" => String::new(),
                    reason => format!(" ({reason})"),
                };
                progress.reason =
                    format!("the caller went away; the provider's request was cancelled{before}");
            }
            let outcome = inner.finish(&policy, &progress, arrived);
            if relayed.is_ok() {
                let _ = replies
                    .send(Ok(ModelReply {
                        reply: Some(Reply::Outcome(outcome)),
                    }))
                    .await;
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let (metadata, _, list) = request.into_parts();
        let policy = self
            .inner
            .authenticate(&metadata, &list.namespace, &list.session)
            .await?;
        let models = decide::offered(&policy.models)
            .into_iter()
            .map(|link| ModelLink {
                provider: link.provider,
                model: link.model,
            })
            .collect();
        Ok(Response::new(ListModelsResponse { models }))
    }
}

impl<P: PolicySource, C: Credentials> Inner<P, C> {
    /// The policy of the session the call's bearer token proves; a refusal
    /// is audited as unattributed (no sidecar records a call it was refused).
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        namespace: &str,
        session: &str,
    ) -> Result<Arc<SessionPolicy>, Status> {
        let verified = match bearer(metadata) {
            Err(status) => Err(status),
            Ok(_) if namespace.is_empty() || session.is_empty() => Err(Status::invalid_argument(
                "namespace and session are required",
            )),
            Ok(token) => self.sessions.policy(token, namespace, session).await,
        };
        verified.inspect_err(|status| self.refused_unattributed(namespace, session, status))
    }

    /// Decides the call and relays it; `Err` when the caller went away.
    async fn relay(
        &self,
        policy: &SessionPolicy,
        dialect: Dialect,
        call: ModelRequest,
        replies: &Replies,
        progress: &mut Progress,
    ) -> Result<(), Gone> {
        let (asked, link_models) = match self.admit(policy, dialect, &call.body, progress) {
            Ok(admitted) => admitted,
            Err(refusal) => return self.refuse(dialect, &refusal, replies, progress).await,
        };
        progress.streamed = asked.stream;
        let forbidden = link_models
            .iter()
            .filter(|link| decide::forbidden(&policy.models, link) == Some(decide::NOT_ALLOWED))
            .count();
        if forbidden == link_models.len() {
            let model = link_models
                .first()
                .map(|link| link.model.clone())
                .unwrap_or_default();
            let refusal = Refusal::NotAllowed(model);
            if policy.enforcement == Enforcement::Enforce {
                return self.refuse(dialect, &refusal, replies, progress).await;
            }
            progress.would_deny.push(refusal.to_string());
        }
        for link in link_models {
            match self
                .try_link(policy, &asked, &link, &call.headers, replies, progress)
                .await?
            {
                Tried::Answered => return Ok(()),
                Tried::Next(why) => progress.fallback.push(format!("{link} ({why})")),
                Tried::Refused(refusal) => {
                    return self.refuse(dialect, &refusal, replies, progress).await;
                }
            }
        }
        let refusal = Refusal::NoLink(progress.fallback.clone());
        self.refuse(dialect, &refusal, replies, progress).await
    }

    /// The checks before any provider is called: the body, the model, its
    /// `max_tokens`, the budgets. A refusal by policy in warn mode is
    /// noted and let through.
    fn admit(
        &self,
        policy: &SessionPolicy,
        dialect: Dialect,
        body: &[u8],
        progress: &mut Progress,
    ) -> Result<(Asked, Vec<Link>), Refusal> {
        if body.len() > self.settings.max_body {
            return Err(Refusal::TooLarge(self.settings.max_body));
        }
        let mut asked =
            translate::inspect(dialect, body).map_err(|bad| Refusal::Malformed(bad.to_string()))?;
        let links = decide::chain(&policy.models, &asked.model)?;
        progress.link = links.first().cloned();
        let key: SessionKey = (policy.namespace.clone(), policy.session.clone());
        let limit = policy.models.max_tokens_per_request;
        let bounded = decide::bound_max_tokens(dialect.into(), &mut asked.body, limit);
        // An OpenAI request naming no limit was given the policy's: a link
        // of the other dialect gets it too.
        if asked.max_tokens.is_none() && limit > 0 {
            asked.max_tokens = Some(limit);
        }
        let checks = [
            bounded,
            self.ledger
                .check(&key, &policy.models, self.settings.clock.now()),
        ];
        for checked in checks {
            match checked {
                Ok(()) => {}
                Err(refusal) if refusal.by_policy() && policy.enforcement == Enforcement::Warn => {
                    progress.would_deny.push(refusal.to_string());
                }
                Err(refusal) => return Err(refusal),
            }
        }
        Ok((asked, links))
    }

    /// Tries one link.
    #[allow(clippy::too_many_arguments)]
    async fn try_link(
        &self,
        policy: &SessionPolicy,
        asked: &Asked,
        link: &Link,
        headers: &HashMap<String, String>,
        replies: &Replies,
        progress: &mut Progress,
    ) -> Result<Tried, Gone> {
        if let Some(why) = decide::forbidden(&policy.models, link) {
            let configured = policy.models.provider(&link.provider).is_some();
            if policy.enforcement == Enforcement::Enforce || !configured {
                return Ok(Tried::Next(why.to_owned()));
            }
            progress.would_deny.push(format!("{link}: {why}"));
        }
        let Some(provider) = policy.models.provider(&link.provider) else {
            return Ok(Tried::Next("provider not configured".into()));
        };
        let now = self.settings.clock.now();
        if let Some(until) = self.cooldowns.held(&policy.namespace, &provider.name, now) {
            return Ok(Tried::Next(format!("rate limited until {until}")));
        }
        let key = match self
            .credentials
            .key(
                &policy.namespace,
                &provider.secret_name,
                &provider.secret_key,
            )
            .await
        {
            Ok(key) => key,
            Err(error) => return Ok(Tried::Next(error.to_string())),
        };
        let to = dialect_of(provider);
        let request = match translate::request_for(asked, to, &link.model, asked.max_tokens) {
            Ok(request) => request,
            Err(unsupported) => {
                return Ok(Tried::Refused(Refusal::Unsupported(format!(
                    "{link}: {unsupported}"
                ))));
            }
        };
        progress.link = Some(link.clone());
        let response = match self.upstream.send(provider, &key, request, headers).await {
            Ok(response) => response,
            Err(failure) => return Ok(Tried::Next(failure.to_string())),
        };
        let status = response.status();
        if status.as_u16() == 429 || status.is_server_error() {
            if let Some(until) = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| retry_after(value, now))
            {
                self.cooldowns
                    .hold(&policy.namespace, &provider.name, until);
            }
            return Ok(Tried::Next(format!("HTTP {}", status.as_u16())));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let answer = Answer {
            from: to,
            content_type,
            key: secrecy::ExposeSecret::expose_secret(&key),
        };
        let answered = if progress.streamed && status.is_success() {
            self.stream(response, asked, answer, link, replies, progress)
                .await?
        } else {
            self.whole(response, asked, answer, link, replies, progress)
                .await?
        };
        if matches!(answered, Tried::Answered) {
            self.allowed(policy, link, progress);
        }
        Ok(answered)
    }

    /// Relays a streamed answer as it comes, in the agent's dialect; after
    /// its head went out, a failure ends the stream with an error event.
    async fn stream(
        &self,
        mut response: reqwest::Response,
        asked: &Asked,
        answer: Answer<'_>,
        link: &Link,
        replies: &Replies,
        progress: &mut Progress,
    ) -> Result<Tried, Gone> {
        let agent = asked.dialect;
        let mut translator =
            StreamTranslator::new(answer.from, agent, &asked.model, asked.include_usage);
        let content_type = if answer.from == agent {
            answer.content_type.as_str()
        } else {
            "text/event-stream"
        };
        let status = response.status().as_u16();
        self.send(replies, head(status, content_type, HashMap::new()))
            .await?;
        loop {
            match self.upstream.chunk(&mut response).await {
                Ok(Some(chunk)) => {
                    let relayed = translator.push(&chunk);
                    progress.usage = translator.usage().unwrap_or_default();
                    if !relayed.is_empty() {
                        self.send(replies, Reply::Chunk(relayed)).await?;
                    }
                }
                Ok(None) => {
                    let last = translator.finish();
                    progress.usage = translator.usage().unwrap_or_default();
                    if !last.is_empty() {
                        self.send(replies, Reply::Chunk(last)).await?;
                    }
                    break;
                }
                Err(failure) => {
                    progress.reason = format!("the stream broke off: {failure}");
                    let message = redact(&format!("{link}: {failure}")).into_owned();
                    let event = translate::stream_error(agent, ErrorKind::Api, &message);
                    self.send(replies, Reply::Chunk(event)).await?;
                    break;
                }
            }
        }
        Ok(Tried::Answered)
    }

    /// Reads a whole answer (or the provider's refusal) and relays it in
    /// the agent's dialect; nothing goes out before it is read, so a
    /// failure moves to the next link.
    async fn whole(
        &self,
        mut response: reqwest::Response,
        asked: &Asked,
        answer: Answer<'_>,
        link: &Link,
        replies: &Replies,
        progress: &mut Progress,
    ) -> Result<Tried, Gone> {
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match self.upstream.chunk(&mut response).await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ANSWER => {
                    body.extend_from_slice(&chunk);
                }
                Ok(Some(_)) => return Ok(Tried::Next(format!("answer over {MAX_ANSWER} bytes"))),
                Ok(None) => break,
                Err(failure) => return Ok(Tried::Next(failure.to_string())),
            }
        }
        let same = answer.from == asked.dialect;
        let body = if status.is_success() {
            progress.usage = translate::usage(answer.from, &body).unwrap_or_default();
            match translate::response_for(answer.from, asked.dialect, &body, &asked.model) {
                Ok(body) => body,
                Err(bad) => return Ok(Tried::Next(bad.to_string())),
            }
        } else {
            // The provider refused (a bad request, say): the agent sees its
            // answer in its own dialect, never anything of a credential.
            progress.reason = format!("{link} answered HTTP {}", status.as_u16());
            let text = provider_error::redacted(&body, answer.key);
            if same {
                text.into_bytes()
            } else {
                provider_error::for_agent(answer.from, asked.dialect, &text)
            }
        };
        let content_type = if same {
            answer.content_type.as_str()
        } else {
            "application/json"
        };
        self.send(replies, head(status.as_u16(), content_type, HashMap::new()))
            .await?;
        self.send(replies, Reply::Chunk(body)).await?;
        Ok(Tried::Answered)
    }

    /// Marks the call allowed (or would_deny) and charges its tokens.
    fn allowed(&self, policy: &SessionPolicy, link: &Link, progress: &mut Progress) {
        let key: SessionKey = (policy.namespace.clone(), policy.session.clone());
        self.ledger.charge(
            &key,
            progress.usage.input + progress.usage.output,
            self.settings.clock.now(),
        );
        if progress.would_deny.is_empty() {
            progress.decision = Some(Outcome::Allowed);
            if progress.reason.is_empty() {
                progress.reason = format!("answered by {link}");
            }
        } else {
            progress.decision = Some(Outcome::WouldDeny);
            progress.reason = format!(
                "answered by {link}; warn mode let through: {}",
                progress.would_deny.join("; ")
            );
        }
    }

    /// Sends a refusal in the agent's dialect.
    async fn refuse(
        &self,
        dialect: Dialect,
        refusal: &Refusal,
        replies: &Replies,
        progress: &mut Progress,
    ) -> Result<(), Gone> {
        progress.decision = Some(Outcome::Denied);
        progress.reason = refusal.to_string();
        let mut headers = HashMap::new();
        if let Refusal::Budget { resets, .. } = refusal {
            let seconds = resets
                .duration_since(self.settings.clock.now())
                .as_secs()
                .max(1);
            headers.insert("retry-after".to_owned(), seconds.to_string());
        }
        let kind = refusal.kind();
        self.send(
            replies,
            head(kind.status(dialect), "application/json", headers),
        )
        .await?;
        let body = translate::error_body(dialect, kind, &progress.reason);
        self.send(replies, Reply::Chunk(body)).await
    }

    async fn send(&self, replies: &Replies, reply: Reply) -> Result<(), Gone> {
        replies
            .send(Ok(ModelReply { reply: Some(reply) }))
            .await
            .map_err(|_| Gone)
    }

    /// The outcome of a call, recorded in the audit trail and the metrics.
    fn finish(
        &self,
        policy: &SessionPolicy,
        progress: &Progress,
        arrived: Instant,
    ) -> ModelOutcome {
        let elapsed = arrived.elapsed();
        let decision = progress.decision.unwrap_or(Outcome::Allowed);
        let link = progress.link.clone().unwrap_or(Link {
            provider: String::new(),
            model: String::new(),
        });
        let outcome = ModelOutcome {
            decision: name_of(&decision),
            reason: progress.reason.clone(),
            provider: link.provider.clone(),
            model: link.model.clone(),
            input_tokens: progress.usage.input,
            output_tokens: progress.usage.output,
            latency_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            fallback: progress.fallback.clone(),
            streamed: progress.streamed,
            enforcement: name_of(&policy.enforcement),
            policy_hash: policy.policy_hash.clone(),
        };
        let mut event = AuditEvent::new(
            self.settings.clock.now(),
            EventType::ModelCall,
            &policy.namespace,
            &policy.session,
            SourceRef {
                source_type: "session".into(),
                identity: policy.session.clone(),
                trust_level: policy.trust_level,
            },
            decision,
            policy.enforcement,
            outcome.reason.clone(),
        );
        event.policy_hash = Some(policy.policy_hash.clone());
        event.model = Some(ModelCall {
            provider: outcome.provider.clone(),
            model: outcome.model.clone(),
            input_tokens: outcome.input_tokens,
            output_tokens: outcome.output_tokens,
            latency_ms: outcome.latency_ms,
            fallback: outcome.fallback.clone(),
            streamed: outcome.streamed,
        });
        self.audit.record(&event.bounded());
        self.metrics.observe(
            &outcome.provider,
            &outcome.decision,
            outcome.input_tokens,
            outcome.output_tokens,
            elapsed.as_secs_f64(),
        );
        outcome
    }

    /// Records a call refused before any session could be vouched for: the
    /// namespace and session the caller claimed, and why.
    fn refused_unattributed(&self, namespace: &str, session: &str, status: &Status) {
        let mut event = AuditEvent::new(
            self.settings.clock.now(),
            EventType::ModelCall,
            namespace,
            session,
            SourceRef {
                source_type: "session".into(),
                identity: session.to_owned(),
                trust_level: TrustLevel::Untrusted,
            },
            Outcome::Denied,
            Enforcement::Enforce,
            format!(
                "model call refused ({:?}): {}",
                status.code(),
                status.message()
            ),
        );
        event.model = Some(ModelCall::default());
        self.audit.record(&event.bounded());
        self.metrics.observe("", "denied", 0, 0, 0.0);
    }
}

/// What trying a link came to.
enum Tried {
    /// It answered (the reply is sent).
    Answered,
    /// It was skipped or failed before anything was sent: why.
    Next(String),
    /// The request cannot go on.
    Refused(Refusal),
}

/// A link's answer as it came: the link's dialect, its content type, and
/// the key it was called with (redacted from a refusal).
struct Answer<'a> {
    from: Dialect,
    content_type: String,
    key: &'a str,
}

/// The dialect a provider speaks.
fn dialect_of(provider: &Provider) -> Dialect {
    match provider.kind {
        ProviderType::Anthropic => Dialect::AnthropicMessages,
        ProviderType::Openai | ProviderType::OpenaiCompatible => Dialect::OpenAiChat,
    }
}

fn head(status: u16, content_type: &str, headers: HashMap<String, String>) -> Reply {
    Reply::Head(ReplyHead {
        status: u32::from(status),
        content_type: content_type.to_owned(),
        headers,
    })
}
