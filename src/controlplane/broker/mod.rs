//! The Broker gRPC service: messages between sessions. A sidecar sends for
//! its session (`sessions_send`), reads its session's inbox as a stream and
//! acknowledges what its agent has taken; a gateway session forwards what
//! it received under its Gateways' rules (`gateway_forward`), the target
//! answers (`inbox_reply`) and the gateway sends the result back to the
//! source (`gateway_respond`). Every decision is made here, on the control
//! plane's own view of the sessions' policies and of the store (never on a
//! caller's word), and every outcome is an audit event in the trail of the
//! session a message is for. People and workloads send through
//! [`inject`], with their own credential.
//!
//! Here are the service and what every sidecar call shares: its prologue
//! (`BrokerService::sidecar`: names, caller, context, tool), the
//! refusals and records of a `Call`, and a one-line delegation per RPC.
//! The handlers live by job: `messages` (send, inbox, ack, list, history),
//! `forwards` (forward, reply, respond, queue), `elevate`, `spawn`, `exec`
//! and `inject`.

mod elevate;
mod exec;
mod forwards;
mod inject;
mod messages;
mod spawn;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::audit::{AuditMetrics, DecisionLabels};
use super::auth::{Authenticator, Identity, authorize};
use super::denials::DenialEvents;
use super::discover::{DiscoverPolicy, NoContext};
use super::exec::Executor;
use super::grant_use::GrantUses;
use super::refusals::{Refusals, Trail};
use super::writes::ClusterWriter;
use crate::api::{Capability, Enforcement, SourceRef, SourceType, name_of};
use crate::audit::{AuditEvent, EventType};
use crate::inbox::InboxMessage;
use crate::policy::{
    Decision, EffectiveContext, Outcome, Request as PolicyRequest, Source, ToolId, decide,
};
use crate::proto::v1alpha1::broker_server::Broker;
use crate::proto::v1alpha1::{
    AckRequest, AckResponse, AnswerRequest, AnswerResponse, ElevateRequest, ElevateResponse,
    ExecRequest, ForwardRequest, ForwardResponse, HistoryRequest, HistoryResponse, InboxRequest,
    InjectRequest, InjectResponse, ListRequest, ListResponse, QueueRequest, QueueResponse,
    ReplyRequest, ReplyResponse, RespondRequest, RespondResponse, SendRequest, SendResponse,
    SpawnRequest, SpawnResponse,
};
use crate::shutdown::Shutdown;
use crate::store::{InboxError, RequestError, Store, StoreError};

/// Wakes the inbox streams of a session when this replica queues a
/// message for it.
#[derive(Default)]
struct Arrivals(Mutex<HashMap<(String, String), watch::Sender<u64>>>);

impl Arrivals {
    fn subscribe(&self, namespace: &str, session: &str) -> watch::Receiver<u64> {
        let mut inboxes = self.0.lock().expect("the arrivals lock is never poisoned");
        inboxes.retain(|_, sender| sender.receiver_count() > 0);
        inboxes
            .entry((namespace.to_owned(), session.to_owned()))
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn announce(&self, namespace: &str, session: &str) {
        let inboxes = self.0.lock().expect("the arrivals lock is never poisoned");
        if let Some(sender) = inboxes.get(&(namespace.to_owned(), session.to_owned())) {
            sender.send_modify(|arrivals| *arrivals += 1);
        }
    }
}

/// Where the broker records its decisions: the store, the metrics, the
/// Events denials call for, and the use of the Grants behind what it allowed.
pub struct Recording {
    pub store: Store,
    pub metrics: AuditMetrics,
    pub denials: DenialEvents,
    pub uses: Arc<GrantUses>,
    /// Which refusals of access are written, and where.
    pub refusals: Arc<Refusals>,
}

/// Serves the Broker API of every sidecar.
pub struct BrokerService<D, A> {
    discover: Arc<D>,
    authenticator: Arc<A>,
    store: Store,
    metrics: AuditMetrics,
    denials: DenialEvents,
    uses: Arc<GrantUses>,
    refusals: Arc<Refusals>,
    /// Where forwards that wait for a person are filed.
    writer: Arc<dyn ClusterWriter>,
    /// The most elevation requests a session may have open.
    max_open_elevations: u32,
    arrivals: Arc<Arrivals>,
    /// What runs `exec_command`; without it, the tool fails.
    executor: Option<Executor>,
    shutdown: Shutdown,
}

impl<D: DiscoverPolicy, A: Authenticator> BrokerService<D, A> {
    pub fn new(
        discover: Arc<D>,
        authenticator: Arc<A>,
        recording: Recording,
        writer: Arc<dyn ClusterWriter>,
        max_open_elevations: u32,
        shutdown: Shutdown,
    ) -> Self {
        BrokerService {
            discover,
            authenticator,
            store: recording.store,
            metrics: recording.metrics,
            denials: recording.denials,
            uses: recording.uses,
            refusals: recording.refusals,
            writer,
            max_open_elevations,
            arrivals: Arc::default(),
            executor: None,
            shutdown,
        }
    }

    /// The service, running `exec_command` with `executor` (none: the
    /// tool fails, naming why).
    #[must_use]
    pub fn running_commands_with(self, executor: Option<Executor>) -> Self {
        BrokerService { executor, ..self }
    }

    /// The caller, if it is the sidecar of `namespace/session` (its token
    /// in `metadata`). The names are checked first; a sidecar refused is so
    /// in its own namespace.
    async fn caller(
        &self,
        metadata: &MetadataMap,
        namespace: &str,
        session: &str,
    ) -> Result<Identity, Status> {
        let identity = self
            .refusals
            .sidecar(&*self.authenticator, metadata, (namespace, session))
            .await?;
        if let Err(reason) = authorize(&identity, namespace, session) {
            let source = identity.as_source();
            let status = Status::permission_denied(reason.to_string());
            let event = AuditEvent::refused_request(
                &identity.namespace,
                session,
                source,
                "broker",
                status.message(),
            );
            self.record_refusal(&identity.username(), Trail::Namespace, event)
                .await;
            return Err(status);
        }
        Ok(identity)
    }

    /// The prologue of a sidecar's call, written once: checks the names it
    /// gives (`target`'s first), authenticates the caller as the sidecar of
    /// `namespace/session` and reads its context fresh (what the broker
    /// decides with, never the caller's word). The call's events name
    /// `tool`, in the trail `target` says.
    async fn sidecar(
        &self,
        metadata: &MetadataMap,
        (namespace, session): (&str, &str),
        target: Target<'_>,
        tool: (EventType, ToolId),
    ) -> Result<Call<'_, D, A>, Status> {
        let (recipient, decided_as) = match target {
            Target::Own => (session, EventType::ToolCall),
            Target::Asked(target) => {
                self.refusals.check_names(&[("target", target)])?;
                (session, EventType::ToolCall)
            }
            Target::Message(target) => {
                self.refusals.check_names(&[("target", target)])?;
                (target, tool.0)
            }
        };
        let identity = self.caller(metadata, namespace, session).await?;
        let caller = self
            .discover
            .context(namespace, session)
            .map_err(|why| Status::permission_denied(format!("no policy for the caller: {why}")))?;
        Ok(Call {
            broker: self,
            identity,
            caller,
            tool,
            recipient: recipient.to_owned(),
            decided_as,
            capability: None,
        })
    }

    /// [`BrokerService::sidecar`], and the caller may call its tool now.
    async fn call(
        &self,
        metadata: &MetadataMap,
        names: (&str, &str),
        target: Target<'_>,
        tool: (EventType, ToolId),
    ) -> Result<Call<'_, D, A>, Status> {
        let mut call = self.sidecar(metadata, names, target, tool).await?;
        call.decide().await?;
        Ok(call)
    }

    /// Records the refusal `event` of `caller` as [`Refusals`] allows: in
    /// the namespace's trail as any broker decision (counted, and an Event
    /// on its Session), or in the operator's trail, only stored.
    async fn record_refusal(&self, caller: &str, trail: Trail, event: AuditEvent) {
        match (trail, self.refusals.admit(caller, trail, event)) {
            (_, None) => {}
            (Trail::Namespace, Some(event)) => self.record(event).await,
            (Trail::Operator, Some(event)) => self.refusals.write(event).await,
        }
    }

    /// The context of the session `target` a message is for, or why it
    /// takes none.
    fn recipient(&self, namespace: &str, target: &str) -> Result<EffectiveContext, Status> {
        match self.discover.context(namespace, target) {
            Ok(recipient) => Ok(recipient),
            Err(NoContext::Gone(_)) => Err(Status::not_found(format!(
                "no session {target} in namespace {namespace}"
            ))),
            Err(NoContext::Unavailable(why)) => Err(Status::failed_precondition(format!(
                "session {target} takes no messages while it has no policy: {why}"
            ))),
        }
    }

    /// Whether `target` takes messages from `caller` (allowed, or
    /// would_deny in warn mode).
    fn admits(&self, target: &EffectiveContext, caller: &EffectiveContext) -> Decision {
        decide(target, PolicyRequest::Inject(&Source::session(caller)))
    }

    /// Stores `event`, counts it and publishes the Event a denial calls
    /// for; its id.
    async fn audit(&self, event: AuditEvent) -> Result<String, StoreError> {
        self.trail().audit(event).await
    }

    /// Where its events go, for a task that outlives the call's borrow.
    fn trail(&self) -> Recorder {
        Recorder {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            denials: self.denials.clone(),
        }
    }

    /// Records a refusal (best effort: the refusal has been answered).
    async fn record(&self, event: AuditEvent) {
        if let Err(error) = self.audit(event).await {
            tracing::error!(%error, "cannot store a broker audit event");
        }
    }

    /// Stores `event`, an outcome the caller is told of, and its id; the
    /// caller is told when the `what` it made cannot be recorded.
    async fn audited(&self, event: AuditEvent, what: &str) -> Result<String, Status> {
        self.audit(event)
            .await
            .map_err(|error| Status::unavailable(format!("cannot record the {what}: {error}")))
    }
}

/// The store, the metrics and the Events of the broker's decisions.
struct Recorder {
    store: Store,
    metrics: AuditMetrics,
    denials: DenialEvents,
}

impl Recorder {
    /// Stores `event`, counts it and publishes the Event a denial calls
    /// for; its id.
    async fn audit(&self, event: AuditEvent) -> Result<String, StoreError> {
        let labels = DecisionLabels {
            r#type: name_of(&event.event_type),
            decision: name_of(&event.decision),
        };
        let id = event.id.clone();
        let events = [event];
        self.store.insert_events(&events).await?;
        self.metrics.broker_decisions.get_or_create(&labels).inc();
        self.denials.observe(&events);
        Ok(id)
    }
}

/// Which session a sidecar's call is about, beside the caller's own.
#[derive(Clone, Copy)]
enum Target<'r> {
    /// None: its events are in the caller's trail.
    Own,
    /// A session the caller asks about: its name is checked, its events
    /// stay in the caller's trail.
    Asked(&'r str),
    /// The session a message is for: its name is checked, and the call's
    /// events are in its trail.
    Message(&'r str),
}

/// A sidecar's call past the prologue: who calls, with which tool, and
/// where its refusals are audited.
struct Call<'b, D, A> {
    broker: &'b BrokerService<D, A>,
    /// Who calls, as its token says (its pod, for `exec_command`).
    identity: Identity,
    /// The caller's effective context, fresh.
    caller: EffectiveContext,
    /// The event type and tool the call's events name.
    tool: (EventType, ToolId),
    /// The session whose trail the call's events are in.
    recipient: String,
    /// The event type of a refusal of the tool itself: the message's for
    /// a message, else a tool call.
    decided_as: EventType,
    /// The capability the call's events name.
    capability: Option<Capability>,
}

impl<D: DiscoverPolicy, A: Authenticator> Call<'_, D, A> {
    /// Whether the caller may call the tool now (allowed, or would_deny in
    /// warn mode); a refusal is audited.
    async fn decide(&mut self) -> Result<Decision, Status> {
        let (_, tool) = self.tool;
        let decision = decide(&self.caller, PolicyRequest::Tool(tool));
        self.capability = decision.capability;
        if decision.proceeds() {
            self.broker.uses.decided(&self.caller, &decision);
            return Ok(decision);
        }
        let status = Status::permission_denied(format!("tool not available: {tool}"));
        let mut event = self.event(Outcome::Denied, self.caller.enforcement, status.message());
        event.event_type = self.decided_as;
        self.broker.record(event).await;
        Err(status)
    }

    /// The audit event of this call with `decision`, in the recipient's
    /// trail.
    fn event(&self, decision: Outcome, enforcement: Enforcement, reason: &str) -> AuditEvent {
        let mut event = message_event(
            &self.caller,
            self.tool,
            &self.recipient,
            decision,
            enforcement,
            reason,
        );
        event.capability = self.capability;
        event
    }

    /// Records `status` as the refusal of this call (best effort: the
    /// refusal has been answered).
    async fn refuse(&self, status: Status) -> Status {
        let event = self.event(Outcome::Denied, self.caller.enforcement, status.message());
        self.broker.record(event).await;
        status
    }

    /// `step` as it is, or its error refused.
    async fn or_refuse<V>(&self, step: Result<V, Status>) -> Result<V, Status> {
        match step {
            Ok(value) => Ok(value),
            Err(status) => Err(self.refuse(status).await),
        }
    }

    /// Records that the caller sent `message`, in the trail of the session
    /// it is for; an error when that record cannot be written.
    async fn record_sent(&self, message: &InboxMessage, reason: &str) -> Result<String, Status> {
        self.broker
            .arrivals
            .announce(&message.namespace, &message.session);
        let mut event = message_event(
            &self.caller,
            self.tool,
            &message.session,
            Outcome::Allowed,
            self.caller.enforcement,
            reason,
        );
        event.action = message.action.clone();
        self.broker.audited(event, "message").await
    }
}

/// The audit event of `caller` calling `tool` for a message to
/// `recipient`, in the recipient's trail.
fn message_event(
    caller: &EffectiveContext,
    (event_type, tool): (EventType, ToolId),
    recipient: &str,
    decision: Outcome,
    enforcement: Enforcement,
    reason: &str,
) -> AuditEvent {
    let mut event = AuditEvent::new(
        Timestamp::now(),
        event_type,
        &caller.namespace,
        recipient,
        session_source(caller),
        decision,
        enforcement,
        reason.to_owned(),
    );
    event.tool = Some(tool.name().to_owned());
    event.policy_hash = Some(caller.policy_hash.clone());
    event
}

fn session_source(context: &EffectiveContext) -> SourceRef {
    SourceRef {
        source_type: SourceType::Session.into(),
        identity: context.session.clone(),
        trust_level: context.trust_level,
    }
}

/// The stricter of two outcomes: a send proceeds as `would_deny` when
/// either of its checks would deny it.
fn stricter(a: Outcome, b: Outcome) -> Outcome {
    match (a, b) {
        (Outcome::Denied, _) | (_, Outcome::Denied) => Outcome::Denied,
        (Outcome::WouldDeny, _) | (_, Outcome::WouldDeny) => Outcome::WouldDeny,
        _ => Outcome::Allowed,
    }
}

/// The gRPC status of a step the store refused: the caller's mistake, a
/// limit, or the store being unavailable.
fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Inbox(error @ InboxError::TooLarge { .. }) => {
            Status::invalid_argument(error.to_string())
        }
        StoreError::Inbox(error @ InboxError::IdTaken { .. }) => {
            Status::already_exists(error.to_string())
        }
        StoreError::Inbox(error) => Status::resource_exhausted(error.to_string()),
        StoreError::Request(error @ RequestError::RateLimited { .. }) => {
            Status::resource_exhausted(error.to_string())
        }
        StoreError::Request(error @ RequestError::NotFound { .. }) => {
            Status::not_found(error.to_string())
        }
        StoreError::Request(error) => Status::failed_precondition(error.to_string()),
        error => Status::unavailable(format!("the store is unavailable: {error}")),
    }
}

/// A JSON argument, or INVALID_ARGUMENT naming it.
fn parse_json(field: &str, json: &str) -> Result<serde_json::Value, Status> {
    serde_json::from_str(json)
        .map_err(|error| Status::invalid_argument(format!("{field} is not JSON: {error}")))
}

#[tonic::async_trait]
impl<D: DiscoverPolicy, A: Authenticator> Broker for BrokerService<D, A> {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        self.send_message(request).await
    }

    type InboxStream = messages::Deliveries;

    async fn inbox(
        &self,
        request: Request<InboxRequest>,
    ) -> Result<Response<Self::InboxStream>, Status> {
        self.open_inbox(request).await
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        self.acknowledge(request).await
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.list_reachable(request).await
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        self.read_history(request).await
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        self.open_forward(request).await
    }

    async fn reply(
        &self,
        request: Request<ReplyRequest>,
    ) -> Result<Response<ReplyResponse>, Status> {
        self.reply_to_forward(request).await
    }

    async fn respond(
        &self,
        request: Request<RespondRequest>,
    ) -> Result<Response<RespondResponse>, Status> {
        self.respond_to_source(request).await
    }

    async fn queue(
        &self,
        request: Request<QueueRequest>,
    ) -> Result<Response<QueueResponse>, Status> {
        self.awaiting_approval(request).await
    }

    async fn elevate(
        &self,
        request: Request<ElevateRequest>,
    ) -> Result<Response<ElevateResponse>, Status> {
        self.request_elevation(request).await
    }

    async fn spawn(
        &self,
        request: Request<SpawnRequest>,
    ) -> Result<Response<SpawnResponse>, Status> {
        self.spawn_child(request).await
    }

    type ExecStream = exec::Ended;

    async fn exec(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        self.run_command(request).await
    }

    async fn inject(
        &self,
        request: Request<InjectRequest>,
    ) -> Result<Response<InjectResponse>, Status> {
        self.inject_as_caller(request).await
    }

    async fn answer(
        &self,
        request: Request<AnswerRequest>,
    ) -> Result<Response<AnswerResponse>, Status> {
        self.answer_caller(request).await
    }
}
