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

mod inject;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::audit::{AuditMetrics, DecisionLabels};
use super::auth::{Authenticator, Identity, authorize};
use super::denials::DenialEvents;
use super::discover::{DiscoverPolicy, NoContext};
use super::grant_use::GrantUses;
use super::policy_service::bearer;
use super::refusals::{Reason as Refusal, Refusals, Trail};
use super::writes::{ClusterWriter, WriteError};
use crate::api::{Capability, Enforcement, SourceRef, SourceType, TrustLevel, from_name, name_of};
use crate::approval::{ELEVATION_TIMEOUT, check_elevation, elevation_approval, forward_approval};
use crate::audit::{AuditEvent, EventType};
use crate::cluster::{FIELD_MANAGER, MANAGED_BY_LABEL};
use crate::inbox::{InboxMessage, MessageKind};
use crate::policy::{
    Decision, EffectiveContext, Outcome, PARENT_LABEL, Reason, Request as PolicyRequest, Source,
    SpawnRefusal, SpawnRequest as ChildRequest, ToolId, child_session, decide, decide_forward,
};
use crate::proto::v1alpha1::broker_server::Broker;
use crate::proto::v1alpha1::{
    AckRequest, AckResponse, AnswerRequest, AnswerResponse, ElevateRequest, ElevateResponse,
    ForwardRequest, ForwardResponse, HistoryRequest, HistoryResponse, InboxDelivery, InboxRequest,
    InjectRequest, InjectResponse, ListRequest, ListResponse, PendingForward, QueueRequest,
    QueueResponse, ReachableSession, ReplyRequest, ReplyResponse, RespondRequest, RespondResponse,
    SendRequest, SendResponse, SpawnRequest, SpawnResponse,
};
use crate::shutdown::Shutdown;
use crate::store::{
    Elevation, ElevationState, Forward, ForwardState, InboxError, Opened, Queued, RequestError,
    Reservation, Store, StoreError, new_request_id,
};

/// Messages a history shows by default, and at most.
const HISTORY_DEFAULT: u32 = 20;
const HISTORY_MAX: u32 = 100;

/// An inbox stream reads this many messages at a time.
const PAGE: u32 = 100;
/// How often an idle inbox stream looks for messages another replica
/// queued (those queued by this one wake it at once).
const POLL: Duration = Duration::from_secs(1);

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
            shutdown,
        }
    }

    /// The caller, if it is the sidecar of `namespace/session`. The names
    /// are checked first; a sidecar refused is so in its own namespace.
    async fn caller<T>(
        &self,
        request: &Request<T>,
        namespace: &str,
        session: &str,
    ) -> Result<Identity, Status> {
        self.refusals
            .check_names(&[("namespace", namespace), ("session", session)])?;
        let token = bearer(request.metadata())?;
        let identity = self
            .authenticator
            .authenticate(token)
            .await
            .map_err(|error| {
                self.refusals.count(Refusal::Unauthenticated);
                Status::unauthenticated(error.to_string())
            })?;
        if let Err(reason) = authorize(&identity, namespace, session) {
            let source = identity.as_source();
            let status = Status::permission_denied(reason);
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

    /// The caller's effective context, fresh (what the broker decides
    /// with, never the caller's word).
    fn caller_context(&self, namespace: &str, session: &str) -> Result<EffectiveContext, Status> {
        self.discover
            .context(namespace, session)
            .map_err(|why| Status::permission_denied(format!("no policy for the caller: {why}")))
    }

    /// Whether `caller` may call `tool` now (allowed, or would_deny in warn
    /// mode) for a message to `recipient`; a refusal is audited, as
    /// `event_type`, in the recipient's trail.
    async fn tool_decision(
        &self,
        caller: &EffectiveContext,
        (event_type, tool): (EventType, ToolId),
        recipient: &str,
    ) -> Result<Decision, Status> {
        let decision = decide(caller, PolicyRequest::Tool(tool));
        if decision.proceeds() {
            self.uses.decided(caller, &decision);
            return Ok(decision);
        }
        let status = Status::permission_denied(format!("tool not available: {tool}"));
        let refused = self.refuse(
            caller,
            (event_type, tool),
            recipient,
            decision.capability,
            status,
        );
        Err(refused.await)
    }

    /// The caller's effective context, if it is the sidecar of
    /// `namespace/session` and may call `tool` now; a refusal is audited in
    /// the caller's own trail.
    async fn caller_for<T>(
        &self,
        request: &Request<T>,
        namespace: &str,
        session: &str,
        tool: ToolId,
    ) -> Result<EffectiveContext, Status> {
        self.caller(request, namespace, session).await?;
        let caller = self.caller_context(namespace, session)?;
        self.tool_decision(&caller, (EventType::ToolCall, tool), session)
            .await?;
        Ok(caller)
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

    /// Records a refusal (best effort: the refusal has been answered).
    async fn record(&self, event: AuditEvent) {
        if let Err(error) = self.audit(event).await {
            tracing::error!(%error, "cannot store a broker audit event");
        }
    }

    /// Records `status` as the refusal of `caller`'s `tool` call for a
    /// message to `recipient`, in the recipient's trail.
    async fn refuse(
        &self,
        caller: &EffectiveContext,
        (event_type, tool): (EventType, ToolId),
        recipient: &str,
        capability: Option<Capability>,
        status: Status,
    ) -> Status {
        let mut event = message_event(
            caller,
            (event_type, tool),
            recipient,
            Outcome::Denied,
            caller.enforcement,
            status.message(),
        );
        event.capability = capability;
        self.record(event).await;
        status
    }

    /// Records that `caller` sent `message` with `tool`, in the trail of
    /// the session it is for; an error when that record cannot be written.
    async fn record_sent(
        &self,
        caller: &EffectiveContext,
        (event_type, tool): (EventType, ToolId),
        message: &InboxMessage,
        reason: &str,
    ) -> Result<String, Status> {
        self.arrivals.announce(&message.namespace, &message.session);
        let mut event = message_event(
            caller,
            (event_type, tool),
            &message.session,
            Outcome::Allowed,
            caller.enforcement,
            reason,
        );
        event.action = message.action.clone();
        let audit_id = self
            .audit(event)
            .await
            .map_err(|error| Status::unavailable(format!("cannot record the message: {error}")))?;
        Ok(audit_id)
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

/// The state of one inbox stream.
struct Reader {
    store: Store,
    namespace: String,
    session: String,
    after: i64,
    read: VecDeque<Queued>,
    arrivals: watch::Receiver<u64>,
    failed: bool,
}

impl Reader {
    /// The next message, waiting for one; an error ends the stream.
    async fn next(mut self) -> Option<(Result<InboxDelivery, Status>, Reader)> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(queued) = self.read.pop_front() {
                self.after = queued.seq;
                let delivery = InboxDelivery {
                    seq: queued.seq,
                    message_json: serde_json::to_string(&queued.message)
                        .expect("inbox messages serialize"),
                };
                return Some((Ok(delivery), self));
            }
            self.arrivals.borrow_and_update();
            let page = self
                .store
                .pending_messages(&self.namespace, &self.session, self.after, PAGE)
                .await;
            match page {
                Ok(page) if !page.is_empty() => self.read.extend(page),
                Ok(_) => {
                    tokio::select! {
                        _ = self.arrivals.changed() => {}
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
                Err(error) => {
                    self.failed = true;
                    let status = Status::unavailable(format!("cannot read the inbox: {error}"));
                    return Some((Err(status), self));
                }
            }
        }
    }
}

#[tonic::async_trait]
impl<D: DiscoverPolicy, A: Authenticator> Broker for BrokerService<D, A> {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let wire = request.get_ref();
        let (namespace, session) = (wire.namespace.clone(), wire.session.clone());
        self.refusals.check_names(&[("target", &wire.target)])?;
        self.caller(&request, &namespace, &session).await?;
        let SendRequest {
            target,
            payload_json,
            message_id,
            ..
        } = request.into_inner();
        let caller = self.caller_context(&namespace, &session)?;
        let sending = (EventType::Injection, ToolId::SessionsSend);
        let tool = self.tool_decision(&caller, sending, &target).await?;
        let refuse =
            |status: Status| self.refuse(&caller, sending, &target, tool.capability, status);
        let payload = match parse_json("payload_json", &payload_json) {
            Ok(payload) => payload,
            Err(status) => return Err(refuse(status).await),
        };
        let recipient = match self.recipient(&namespace, &target) {
            Ok(recipient) => recipient,
            Err(status) => return Err(refuse(status).await),
        };
        let admitted = decide(&recipient, PolicyRequest::Inject(&Source::session(&caller)));
        let outcome = stricter(tool.outcome, admitted.outcome);
        if outcome == Outcome::Denied {
            let status = Status::permission_denied(format!(
                "session {target} does not take messages from {session}: {}",
                admitted.reason
            ));
            return Err(refuse(status).await);
        }
        let mut message = InboxMessage::new(
            Timestamp::now(),
            &namespace,
            &target,
            session_source(&caller),
            MessageKind::Message,
            payload,
        );
        if !message_id.is_empty() {
            if ulid::Ulid::from_string(&message_id).is_err() {
                let status =
                    Status::invalid_argument(format!("message_id {message_id:?} is not a ULID"));
                return Err(refuse(status).await);
            }
            message.id = message_id;
        }
        let limits = self.discover.inbox_limits(&namespace);
        if let Err(error) = self.store.enqueue(&message, limits).await {
            return Err(refuse(store_status(error)).await);
        }
        self.arrivals.announce(&namespace, &target);
        let reason = if outcome == Outcome::WouldDeny {
            format!(
                "delivered in warn mode: {} / {}",
                tool.reason, admitted.reason
            )
        } else {
            "delivered".to_owned()
        };
        let mut event = message_event(
            &caller,
            (EventType::Injection, ToolId::SessionsSend),
            &target,
            outcome,
            recipient.enforcement,
            &reason,
        );
        event.capability = tool.capability;
        let audit_id = self.audit(event).await.map_err(|error| {
            Status::unavailable(format!(
                "cannot record the delivery: {error}; send again with the same message_id"
            ))
        })?;
        Ok(Response::new(SendResponse {
            message_id: message.id,
            audit_id,
            decision: name_of(&outcome),
        }))
    }

    type InboxStream = Pin<Box<dyn Stream<Item = Result<InboxDelivery, Status>> + Send>>;

    async fn inbox(
        &self,
        request: Request<InboxRequest>,
    ) -> Result<Response<Self::InboxStream>, Status> {
        let wire = request.get_ref();
        let (namespace, session) = (wire.namespace.clone(), wire.session.clone());
        self.caller(&request, &namespace, &session).await?;
        let reader = Reader {
            store: self.store.clone(),
            arrivals: self.arrivals.subscribe(&namespace, &session),
            after: request.get_ref().after.max(0),
            namespace,
            session,
            read: VecDeque::new(),
            failed: false,
        };
        let deliveries = stream::unfold(reader, Reader::next).take_until(self.shutdown.clone());
        Ok(Response::new(Box::pin(deliveries)))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let wire = request.get_ref();
        let (namespace, session) = (wire.namespace.clone(), wire.session.clone());
        self.caller(&request, &namespace, &session).await?;
        let ids = request.into_inner().message_ids;
        let acknowledged = self
            .store
            .ack_messages(&namespace, &session, &ids, Timestamp::now())
            .await
            .map_err(|error| Status::unavailable(format!("the store is unavailable: {error}")))?;
        Ok(Response::new(AckResponse { acknowledged }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ListRequest { namespace, session } = request.get_ref().clone();
        let caller = self
            .caller_for(&request, &namespace, &session, ToolId::SessionsList)
            .await?;
        let sessions = self
            .discover
            .sessions(&namespace)
            .into_iter()
            .filter(|name| *name != session)
            .filter_map(|name| self.discover.context(&namespace, &name).ok())
            .filter(|target| self.admits(target, &caller).proceeds())
            .map(|target| ReachableSession {
                name: target.session.clone(),
                trust_level: name_of(&target.trust_level),
                gateway: !target.gateways.is_empty(),
            })
            .collect();
        Ok(Response::new(ListResponse { sessions }))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let HistoryRequest {
            namespace,
            session,
            target,
            limit,
        } = request.get_ref().clone();
        self.refusals.check_names(&[("target", &target)])?;
        let caller = self
            .caller_for(&request, &namespace, &session, ToolId::SessionsHistory)
            .await?;
        let not_reachable =
            || Status::permission_denied(format!("session {target} is not one you may reach"));
        let recipient = self
            .discover
            .context(&namespace, &target)
            .map_err(|_| not_reachable())?;
        if !self.admits(&recipient, &caller).proceeds() {
            return Err(not_reachable());
        }
        let limit = if limit == 0 {
            HISTORY_DEFAULT
        } else {
            limit.min(HISTORY_MAX)
        };
        let history = self
            .store
            .inbox_history(&namespace, &target, limit)
            .await
            .map_err(|error| Status::unavailable(format!("the store is unavailable: {error}")))?;
        let messages_json = history
            .into_iter()
            .map(|(message, acknowledged)| {
                let mut shown = serde_json::to_value(&message).expect("inbox messages serialize");
                shown["acknowledged"] = acknowledged.into();
                shown.to_string()
            })
            .collect();
        Ok(Response::new(HistoryResponse { messages_json }))
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let wire = request.get_ref();
        let (namespace, session) = (wire.namespace.clone(), wire.session.clone());
        self.refusals.check_names(&[("target", &wire.target)])?;
        self.caller(&request, &namespace, &session).await?;
        let ForwardRequest {
            message_id,
            target,
            action,
            payload_json,
            ..
        } = request.into_inner();
        let caller = self.caller_context(&namespace, &session)?;
        let forwarding = (EventType::Forward, ToolId::GatewayForward);
        let tool = self.tool_decision(&caller, forwarding, &target).await?;
        let refuse =
            |status: Status| self.refuse(&caller, forwarding, &target, tool.capability, status);
        if action.is_empty() {
            let status = Status::invalid_argument("action is required (query, execute, ...)");
            return Err(refuse(status).await);
        }
        let payload = match parse_json("payload_json", &payload_json) {
            Ok(payload) => payload,
            Err(status) => return Err(refuse(status).await),
        };
        let original = match self
            .store
            .inbox_message(&namespace, &session, &message_id)
            .await
        {
            Ok(Some(original)) => original,
            Ok(None) => {
                let status = Status::not_found(format!(
                    "no message {message_id} in your inbox: forward a message you received"
                ));
                return Err(refuse(status).await);
            }
            Err(error) => return Err(refuse(store_status(error)).await),
        };
        let recipient = match self.recipient(&namespace, &target) {
            Ok(recipient) => recipient,
            Err(status) => return Err(refuse(status).await),
        };
        let decision = decide_forward(&caller, &recipient, &action);
        let outcome = stricter(tool.outcome, decision.outcome);
        if outcome == Outcome::Denied {
            let status = Status::permission_denied(format!(
                "cannot forward {action} to {target}: {}",
                decision.reason
            ));
            return Err(refuse(status).await);
        }
        let rule = decision.rule;
        let approval = rule.filter(|rule| rule.rule.require_approval);
        let now = Timestamp::now();
        let expires = approval.map(|rule| {
            now + k8s_openapi::jiff::SignedDuration::try_from(rule.approval_timeout)
                .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX)
        });
        let gateway = rule
            .map(|rule| rule.gateway)
            .or_else(|| caller.gateways.first().map(|rules| rules.gateway.as_str()))
            .unwrap_or_default();
        let forward = Forward {
            id: new_request_id(),
            namespace: namespace.clone(),
            gateway: gateway.to_owned(),
            gateway_session: session.clone(),
            rule_index: rule.map(|rule| rule.index as u32),
            source: original.source,
            source_message: message_id,
            target: target.clone(),
            action: action.clone(),
            payload,
            state: if approval.is_some() {
                ForwardState::AwaitingApproval
            } else {
                ForwardState::Delivered
            },
            created: now,
            expires,
        };
        let per_minute = rule.and_then(|rule| rule.rule.rate_limit.as_ref().map(|l| l.per_minute));
        let limits = self.discover.inbox_limits(&namespace);
        match self.store.open_forward(&forward, per_minute, limits).await {
            Ok(()) => {}
            Err(StoreError::Request(limited @ RequestError::RateLimited { .. })) => {
                // In the gateway's own trail: the limit is on its forwards.
                let mut event = message_event(
                    &caller,
                    (EventType::RateLimited, ToolId::GatewayForward),
                    &session,
                    Outcome::Denied,
                    caller.enforcement,
                    &limited.to_string(),
                );
                event.action = Some(action);
                self.record(event).await;
                return Err(Status::resource_exhausted(limited.to_string()));
            }
            Err(error) => return Err(refuse(store_status(error)).await),
        }
        if approval.is_some()
            && let Err(why) = self.writer.file(&forward_approval(&forward)).await
        {
            let reason = format!("its ApprovalRequest could not be created: {why}");
            if let Err(error) = self
                .store
                .close_forward(
                    &namespace,
                    &forward.id,
                    ForwardState::Expired,
                    None,
                    &reason,
                    limits,
                )
                .await
            {
                tracing::error!(%error, request = %forward.id, "cannot close a forward nobody can approve");
            }
            let status = Status::unavailable(format!("request {} {reason}; try again", forward.id));
            return Err(refuse(status).await);
        }
        let source = &forward.source;
        let mut reason = match expires {
            Some(expires) => format!(
                "request {} from {} ({}) waits for approval until {expires}",
                forward.id, source.identity, source.trust_level
            ),
            None => format!(
                "request {} from {} ({}) delivered",
                forward.id, source.identity, source.trust_level
            ),
        };
        if outcome == Outcome::WouldDeny {
            reason = format!("{reason} in warn mode: {}", decision.reason);
        }
        if expires.is_none() {
            self.arrivals.announce(&namespace, &target);
        }
        let mut event = message_event(
            &caller,
            (EventType::Forward, ToolId::GatewayForward),
            &target,
            outcome,
            recipient.enforcement,
            &reason,
        );
        event.action = Some(action);
        let audit_id = self
            .audit(event)
            .await
            .map_err(|error| Status::unavailable(format!("cannot record the forward: {error}")))?;
        Ok(Response::new(ForwardResponse {
            request_id: forward.id,
            state: name_of(&forward.state),
            decision: name_of(&outcome),
            audit_id,
            expires_at: expires.map(|at| at.to_string()).unwrap_or_default(),
        }))
    }

    async fn reply(
        &self,
        request: Request<ReplyRequest>,
    ) -> Result<Response<ReplyResponse>, Status> {
        let ReplyRequest {
            namespace,
            session,
            request_id,
            result_json,
        } = request.get_ref().clone();
        let caller = self
            .caller_for(&request, &namespace, &session, ToolId::InboxReply)
            .await?;
        let result = parse_json("result_json", &result_json)?;
        let limits = self.discover.inbox_limits(&namespace);
        let answer = self
            .store
            .reply_to_forward(
                &namespace,
                &request_id,
                &session_source(&caller),
                result,
                limits,
            )
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                let status = store_status(error);
                // In the caller's trail: the request may not be theirs.
                let capability = None;
                let tool = (EventType::Forward, ToolId::InboxReply);
                return Err(self
                    .refuse(&caller, tool, &session, capability, status)
                    .await);
            }
        };
        let reason = format!("answer to request {request_id}");
        let audit_id = self
            .record_sent(
                &caller,
                (EventType::Forward, ToolId::InboxReply),
                &answer,
                &reason,
            )
            .await?;
        Ok(Response::new(ReplyResponse {
            message_id: answer.id,
            audit_id,
        }))
    }

    async fn respond(
        &self,
        request: Request<RespondRequest>,
    ) -> Result<Response<RespondResponse>, Status> {
        let RespondRequest {
            namespace,
            session,
            request_id,
            result_json,
        } = request.get_ref().clone();
        let caller = self
            .caller_for(&request, &namespace, &session, ToolId::GatewayRespond)
            .await?;
        let tool = (EventType::Forward, ToolId::GatewayRespond);
        let result = match parse_json("result_json", &result_json) {
            Ok(result) => result,
            Err(status) => return Err(self.refuse(&caller, tool, &session, None, status).await),
        };
        let limits = self.discover.inbox_limits(&namespace);
        let sent = self
            .store
            .respond_to_forward(
                &namespace,
                &request_id,
                &session_source(&caller),
                result,
                limits,
            )
            .await;
        let sent = match sent {
            Ok(sent) => sent,
            Err(error) => {
                let status = store_status(error);
                return Err(self.refuse(&caller, tool, &session, None, status).await);
            }
        };
        let reason = if sent.session == session {
            format!("result of request {request_id}, kept for its source (no inbox): Broker.Answer")
        } else {
            format!("result of request {request_id}")
        };
        let audit_id = self.record_sent(&caller, tool, &sent, &reason).await?;
        Ok(Response::new(RespondResponse {
            message_id: sent.id,
            audit_id,
        }))
    }

    async fn queue(
        &self,
        request: Request<QueueRequest>,
    ) -> Result<Response<QueueResponse>, Status> {
        let QueueRequest { namespace, session } = request.get_ref().clone();
        self.caller_for(&request, &namespace, &session, ToolId::GatewayQueue)
            .await?;
        let waiting = self
            .store
            .awaiting_approval(&namespace, &session, Timestamp::now())
            .await
            .map_err(store_status)?;
        let requests = waiting
            .into_iter()
            .map(|forward| PendingForward {
                request_id: forward.id,
                gateway: forward.gateway,
                target: forward.target,
                action: forward.action,
                source_type: forward.source.source_type,
                source_identity: forward.source.identity,
                source_trust_level: name_of(&forward.source.trust_level),
                created_at: forward.created.to_string(),
                expires_at: forward.expires.map(|at| at.to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(QueueResponse { requests }))
    }

    async fn elevate(
        &self,
        request: Request<ElevateRequest>,
    ) -> Result<Response<ElevateResponse>, Status> {
        let ElevateRequest {
            namespace,
            session,
            capabilities,
            reason,
            duration_seconds,
        } = request.get_ref().clone();
        let caller = self
            .caller_for(&request, &namespace, &session, ToolId::SecurityRequest)
            .await?;
        let tool = (EventType::Approval, ToolId::SecurityRequest);
        let refuse = |status: Status| self.refuse(&caller, tool, &session, None, status);
        let capabilities: Vec<Capability> = match capabilities
            .iter()
            .map(|name| name.parse())
            .collect::<Result<_, String>>()
        {
            Ok(capabilities) => capabilities,
            Err(why) => return Err(refuse(Status::invalid_argument(why)).await),
        };
        let duration = Duration::from_secs(duration_seconds);
        if let Err(why) = check_elevation(&capabilities, &reason, duration) {
            let status = Status::invalid_argument(format!("cannot ask for that: {why}"));
            return Err(refuse(status).await);
        }
        let now = Timestamp::now();
        let timeout = k8s_openapi::jiff::SignedDuration::try_from(ELEVATION_TIMEOUT)
            .expect("the elevation timeout is small");
        let elevation = Elevation {
            id: new_request_id(),
            namespace: namespace.clone(),
            session: session.clone(),
            capabilities,
            duration,
            reason,
            state: ElevationState::AwaitingApproval,
            created: now,
            expires: now + timeout,
            granted: None,
        };
        let opened = self
            .store
            .open_elevation(&elevation, self.max_open_elevations)
            .await;
        match opened {
            Ok(Opened::New) => {}
            Ok(Opened::Existing(existing)) => {
                // Asked again (an agent retrying, or looping): the open
                // request is the answer; nothing new for a person to read.
                let reason = format!(
                    "asked again what request {} asks: answered with it; it waits for a person until {}",
                    existing.id, existing.expires
                );
                let event = message_event(
                    &caller,
                    tool,
                    &session,
                    Outcome::Allowed,
                    caller.enforcement,
                    &reason,
                );
                let audit_id = self.audit(event).await.map_err(|error| {
                    Status::unavailable(format!("cannot record the request: {error}"))
                })?;
                return Ok(Response::new(ElevateResponse {
                    request_id: existing.id,
                    expires_at: existing.expires.to_string(),
                    audit_id,
                }));
            }
            Ok(Opened::Full { open }) => {
                let status = Status::resource_exhausted(format!(
                    "session {session} has {open} open elevation requests, the limit is {}: wait for a person to decide one (or for it to expire at most {} s after it was made)",
                    self.max_open_elevations,
                    ELEVATION_TIMEOUT.as_secs()
                ));
                return Err(refuse(status).await);
            }
            Err(error) => return Err(refuse(store_status(error)).await),
        }
        let approval = elevation_approval(&elevation, session_source(&caller));
        if let Err(why) = self.writer.file(&approval).await {
            let reason = format!("its ApprovalRequest could not be created: {why}");
            let limits = self.discover.inbox_limits(&namespace);
            let closed = self
                .store
                .settle_elevation(
                    &namespace,
                    &elevation.id,
                    ElevationState::Expired,
                    &reason,
                    now,
                    limits,
                )
                .await;
            if let Err(error) = closed {
                tracing::error!(%error, request = %elevation.id, "cannot close an elevation nobody can approve");
            }
            let status =
                Status::unavailable(format!("request {} {reason}; try again", elevation.id));
            return Err(refuse(status).await);
        }
        let asked: Vec<&str> = elevation.capabilities.iter().map(|c| c.as_str()).collect();
        let reason = format!(
            "asked for {} for {} s (request {}): {}; waits for a person until {}",
            asked.join(", "),
            duration.as_secs(),
            elevation.id,
            elevation.reason,
            elevation.expires
        );
        let event = message_event(
            &caller,
            tool,
            &session,
            Outcome::Allowed,
            caller.enforcement,
            &reason,
        );
        let audit_id = self
            .audit(event)
            .await
            .map_err(|error| Status::unavailable(format!("cannot record the request: {error}")))?;
        Ok(Response::new(ElevateResponse {
            request_id: elevation.id,
            expires_at: elevation.expires.to_string(),
            audit_id,
        }))
    }

    async fn spawn(
        &self,
        request: Request<SpawnRequest>,
    ) -> Result<Response<SpawnResponse>, Status> {
        let SpawnRequest {
            namespace,
            session,
            name,
            trust_level,
            prompt,
            image,
        } = request.get_ref().clone();
        self.caller(&request, &namespace, &session).await?;
        let caller = self.caller_context(&namespace, &session)?;
        let tool = (EventType::ToolCall, ToolId::SessionsSpawn);
        let capability = Some(Capability::SessionSpawn);
        let refuse = |status: Status| self.refuse(&caller, tool, &session, capability, status);
        let Some(level) = from_name::<TrustLevel>(&trust_level) else {
            let status = Status::invalid_argument(format!("{trust_level:?} is not a trust level"));
            return Err(refuse(status).await);
        };
        let decision = decide(&caller, PolicyRequest::Spawn(level));
        if !decision.proceeds() {
            let status = match decision.reason {
                Reason::SpawnAboveOwnLevel { .. } => {
                    Status::permission_denied(decision.reason.to_string())
                }
                _ => Status::permission_denied(format!(
                    "tool not available: {}",
                    ToolId::SessionsSpawn
                )),
            };
            return Err(refuse(status).await);
        }
        let Some(parent) = self.discover.session(&namespace, &session) else {
            let status = Status::failed_precondition(format!("session {session} cannot be read"));
            return Err(refuse(status).await);
        };
        let children: Vec<String> = self
            .discover
            .sessions(&namespace)
            .into_iter()
            .filter(|name| {
                self.discover
                    .session(&namespace, name)
                    .is_some_and(|child| {
                        let labels = child.metadata.labels.as_ref();
                        labels.and_then(|labels| labels.get(PARENT_LABEL)) == Some(&session)
                    })
            })
            .collect();
        let policy = self.discover.spawn_policy(&namespace);
        let wanted = ChildRequest {
            name: &name,
            trust_level: level,
            prompt: &prompt,
            image: Some(image.as_str()).filter(|image| !image.is_empty()),
        };
        let mut child = match child_session(&parent, &caller, wanted, &policy, children.len()) {
            Ok(child) => child,
            Err(full @ SpawnRefusal::TooManyChildren { .. }) => {
                return Err(refuse(Status::resource_exhausted(full.to_string())).await);
            }
            Err(SpawnRefusal::Invalid(why)) => {
                return Err(refuse(Status::invalid_argument(why)).await);
            }
        };
        // The cache may not show children spawned a moment ago, here or on
        // another replica: the store counts them too, under the parent's lock.
        let place = (namespace.as_str(), session.as_str(), name.as_str());
        match self
            .store
            .reserve_child(place, &children, policy.max_children, Timestamp::now())
            .await
        {
            Ok(Reservation::Reserved) => {}
            Ok(Reservation::Full { children }) => {
                let full = SpawnRefusal::TooManyChildren {
                    parent: session.clone(),
                    children,
                    limit: policy.max_children,
                };
                return Err(refuse(Status::resource_exhausted(full.to_string())).await);
            }
            Err(error) => {
                let status = Status::unavailable(format!("cannot count the children: {error}"));
                return Err(refuse(status).await);
            }
        }
        child
            .labels_mut()
            .insert(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned());
        match self.writer.create_session(&child).await {
            Ok(()) => {}
            Err(error @ WriteError::Exists(_)) => {
                return Err(refuse(Status::already_exists(error.to_string())).await);
            }
            Err(WriteError::Failed(why)) => {
                if let Err(error) = self.store.release_child(&namespace, &name).await {
                    tracing::warn!(%error, child = %name, "its place stays taken until it lapses");
                }
                let status = Status::unavailable(format!("cannot create the session: {why}"));
                return Err(refuse(status).await);
            }
        }
        let reason = format!("spawned {name} ({level}) under {session}");
        let mut event = message_event(
            &caller,
            tool,
            &session,
            decision.outcome,
            caller.enforcement,
            &reason,
        );
        event.capability = capability;
        let audit_id = self
            .audit(event)
            .await
            .map_err(|error| Status::unavailable(format!("cannot record the spawn: {error}")))?;
        Ok(Response::new(SpawnResponse { name, audit_id }))
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
