//! The Broker gRPC service: messages between sessions. A sidecar sends for
//! its session (`sessions_send`), reads its session's inbox as a stream and
//! acknowledges what its agent has taken. Every decision is made here, on
//! the control plane's own view of both sessions' policies (never on the
//! sender's word), and every outcome is an audit event of the target.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Identity, authorize};
use super::discover::{DiscoverPolicy, NoContext};
use super::service::bearer;
use crate::api::{Capability, Enforcement, SourceRef, name_of};
use crate::audit::{AuditEvent, EventType};
use crate::inbox::{InboxMessage, MessageKind};
use crate::policy::{
    Decision, EffectiveContext, Outcome, Request as PolicyRequest, Source, decide,
};
use crate::proto::v1alpha1::broker_server::Broker;
use crate::proto::v1alpha1::{
    AckRequest, AckResponse, HistoryRequest, HistoryResponse, InboxDelivery, InboxRequest,
    ListRequest, ListResponse, ReachableSession, SendRequest, SendResponse,
};
use crate::shutdown::Shutdown;
use crate::store::{InboxError, Queued, Store, StoreError};

/// The tool a message is sent with.
const SEND_TOOL: &str = "sessions_send";
/// The tools that show reachable sessions and their messages.
const LIST_TOOL: &str = "sessions_list";
const HISTORY_TOOL: &str = "sessions_history";
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

/// Serves the Broker API of every sidecar.
pub struct BrokerService<D, A> {
    discover: Arc<D>,
    authenticator: Arc<A>,
    store: Store,
    arrivals: Arc<Arrivals>,
    shutdown: Shutdown,
}

impl<D: DiscoverPolicy, A: Authenticator> BrokerService<D, A> {
    pub fn new(discover: Arc<D>, authenticator: Arc<A>, store: Store, shutdown: Shutdown) -> Self {
        BrokerService {
            discover,
            authenticator,
            store,
            arrivals: Arc::default(),
            shutdown,
        }
    }

    /// The caller, if it is the sidecar of `namespace/session`.
    async fn caller<T>(
        &self,
        request: &Request<T>,
        namespace: &str,
        session: &str,
    ) -> Result<Identity, Status> {
        let token = bearer(request.metadata())?;
        let identity = self
            .authenticator
            .authenticate(token)
            .await
            .map_err(|error| Status::unauthenticated(error.to_string()))?;
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
            self.record(event).await;
            return Err(status);
        }
        Ok(identity)
    }

    /// The caller's effective context, if it may call `tool` now (allowed,
    /// or would_deny in warn mode), and that decision; a refusal is
    /// audited in the caller's own trail.
    async fn caller_with_tool(
        &self,
        namespace: &str,
        session: &str,
        tool: &str,
    ) -> Result<(EffectiveContext, Decision), Status> {
        let caller = self
            .discover
            .context(namespace, session)
            .map_err(|why| Status::permission_denied(format!("no policy for the caller: {why}")))?;
        let decision = decide(&caller, PolicyRequest::Tool(tool));
        if decision.proceeds() {
            return Ok((caller, decision));
        }
        let status = Status::permission_denied(format!("tool not available: {tool}"));
        let mut event = AuditEvent::new(
            Timestamp::now(),
            EventType::ToolCall,
            namespace,
            session,
            session_source(&caller),
            Outcome::Denied,
            caller.enforcement,
            status.message().to_owned(),
        );
        event.tool = Some(tool.to_owned());
        event.capability = decision.capability;
        self.record(event).await;
        Err(status)
    }

    /// Whether `target` takes messages from `caller` (allowed, or
    /// would_deny in warn mode).
    fn admits(&self, target: &EffectiveContext, caller: &EffectiveContext) -> Decision {
        decide(target, PolicyRequest::Inject(&Source::session(caller)))
    }

    /// Stores `event` (best effort: what it records has been answered).
    async fn record(&self, event: AuditEvent) {
        if let Err(error) = self.store.insert_events(&[event]).await {
            tracing::error!(%error, "cannot store a broker audit event");
        }
    }

    /// Records `status` as the refusal of `caller`'s message to `target`.
    async fn refuse_send(
        &self,
        caller: &EffectiveContext,
        target: &str,
        capability: Option<Capability>,
        status: Status,
    ) -> Status {
        let mut event = injection(
            caller,
            target,
            Outcome::Denied,
            caller.enforcement,
            status.message(),
        );
        event.capability = capability;
        self.record(event).await;
        status
    }
}

/// The audit event of `caller` sending to `target`.
fn injection(
    caller: &EffectiveContext,
    target: &str,
    decision: Outcome,
    enforcement: Enforcement,
    reason: &str,
) -> AuditEvent {
    let mut event = AuditEvent::new(
        Timestamp::now(),
        EventType::Injection,
        &caller.namespace,
        target,
        session_source(caller),
        decision,
        enforcement,
        reason.to_owned(),
    );
    event.tool = Some(SEND_TOOL.to_owned());
    event.policy_hash = Some(caller.policy_hash.clone());
    event
}

fn session_source(context: &EffectiveContext) -> SourceRef {
    SourceRef {
        source_type: crate::policy::SOURCE_TYPE_SESSION.into(),
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

/// The gRPC status of a message the store would not queue.
fn queue_status(error: StoreError) -> Status {
    match error {
        StoreError::Inbox(error @ InboxError::TooLarge { .. }) => {
            Status::invalid_argument(error.to_string())
        }
        StoreError::Inbox(error @ InboxError::IdTaken { .. }) => {
            Status::already_exists(error.to_string())
        }
        StoreError::Inbox(error) => Status::resource_exhausted(error.to_string()),
        error => Status::unavailable(format!("the store is unavailable: {error}")),
    }
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
        self.caller(&request, &namespace, &session).await?;
        let SendRequest {
            target,
            payload_json,
            message_id,
            ..
        } = request.into_inner();
        let caller = self
            .discover
            .context(&namespace, &session)
            .map_err(|why| Status::permission_denied(format!("no policy for the caller: {why}")))?;
        let tool = decide(&caller, PolicyRequest::Tool(SEND_TOOL));
        let refuse = |status: Status| self.refuse_send(&caller, &target, tool.capability, status);
        if !tool.proceeds() {
            let status = Status::permission_denied(format!("tool not available: {SEND_TOOL}"));
            return Err(refuse(status).await);
        }
        let payload = match serde_json::from_str(&payload_json) {
            Ok(payload) => payload,
            Err(error) => {
                let status = Status::invalid_argument(format!("payload_json is not JSON: {error}"));
                return Err(refuse(status).await);
            }
        };
        let recipient = match self.discover.context(&namespace, &target) {
            Ok(recipient) => recipient,
            Err(NoContext::Gone(_)) => {
                let status =
                    Status::not_found(format!("no session {target} in namespace {namespace}"));
                return Err(refuse(status).await);
            }
            Err(NoContext::Unavailable(why)) => {
                let status = Status::failed_precondition(format!(
                    "session {target} takes no messages while it has no policy: {why}"
                ));
                return Err(refuse(status).await);
            }
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
            return Err(refuse(queue_status(error)).await);
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
        let mut event = injection(&caller, &target, outcome, recipient.enforcement, &reason);
        event.capability = tool.capability;
        let audit_id = event.id.clone();
        self.store.insert_events(&[event]).await.map_err(|error| {
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
        self.caller(&request, &namespace, &session).await?;
        let (caller, _) = self
            .caller_with_tool(&namespace, &session, LIST_TOOL)
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
        self.caller(&request, &namespace, &session).await?;
        let (caller, _) = self
            .caller_with_tool(&namespace, &session, HISTORY_TOOL)
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
}
