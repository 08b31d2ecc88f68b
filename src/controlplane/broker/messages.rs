//! Messages between sessions: a sidecar sends for its session
//! (`sessions_send`), reads its session's inbox as a stream and
//! acknowledges what its agent has taken, lists the sessions it may reach
//! and reads their history.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{BrokerService, Target, parse_json, session_source, store_status, stricter};
use crate::api::name_of;
use crate::audit::EventType;
use crate::controlplane::auth::Authenticator;
use crate::controlplane::discover::DiscoverPolicy;
use crate::inbox::{InboxMessage, MessageKind};
use crate::policy::{Outcome, ToolId};
use crate::proto::v1alpha1::{
    AckRequest, AckResponse, HistoryRequest, HistoryResponse, InboxDelivery, InboxRequest,
    ListRequest, ListResponse, ReachableSession, SendRequest, SendResponse,
};
use crate::store::{Queued, Store};

/// Messages a history shows by default, and at most.
const HISTORY_DEFAULT: u32 = 20;
const HISTORY_MAX: u32 = 100;

/// An inbox stream reads this many messages at a time.
const PAGE: u32 = 100;
/// How often an idle inbox stream looks for messages another replica
/// queued (those queued by this one wake it at once).
const POLL: Duration = Duration::from_secs(1);

/// The messages an inbox stream delivers.
pub(super) type Deliveries = Pin<Box<dyn Stream<Item = Result<InboxDelivery, Status>> + Send>>;

impl<D: DiscoverPolicy, A: Authenticator> BrokerService<D, A> {
    pub(super) async fn send_message(
        &self,
        request: Request<SendRequest>,
    ) -> Result<Response<SendResponse>, Status> {
        let (metadata, _, wire) = request.into_parts();
        let SendRequest {
            namespace,
            session,
            target,
            payload_json,
            message_id,
            ..
        } = wire;
        let sending = (EventType::Injection, ToolId::SessionsSend);
        let names = (namespace.as_str(), session.as_str());
        let mut call = self
            .sidecar(&metadata, names, Target::Message(&target), sending)
            .await?;
        let tool = call.decide().await?;
        let payload = call
            .or_refuse(parse_json("payload_json", &payload_json))
            .await?;
        let recipient = call.or_refuse(self.recipient(&namespace, &target)).await?;
        let admitted = self.admits(&recipient, &call.caller);
        let outcome = stricter(tool.outcome, admitted.outcome);
        if outcome == Outcome::Denied {
            let status = Status::permission_denied(format!(
                "session {target} does not take messages from {session}: {}",
                admitted.reason
            ));
            return Err(call.refuse(status).await);
        }
        let mut message = InboxMessage::new(
            Timestamp::now(),
            &namespace,
            &target,
            session_source(&call.caller),
            MessageKind::Message,
            payload,
        );
        if !message_id.is_empty() {
            if ulid::Ulid::from_string(&message_id).is_err() {
                let status =
                    Status::invalid_argument(format!("message_id {message_id:?} is not a ULID"));
                return Err(call.refuse(status).await);
            }
            message.id = message_id;
        }
        let limits = self.discover.inbox_limits(&namespace);
        let queued = self.store.enqueue(&message, limits).await;
        call.or_refuse(queued.map_err(store_status)).await?;
        self.arrivals.announce(&namespace, &target);
        let reason = if outcome == Outcome::WouldDeny {
            format!(
                "delivered in warn mode: {} / {}",
                tool.reason, admitted.reason
            )
        } else {
            "delivered".to_owned()
        };
        let event = call.event(outcome, recipient.enforcement, &reason);
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

    pub(super) async fn open_inbox(
        &self,
        request: Request<InboxRequest>,
    ) -> Result<Response<Deliveries>, Status> {
        let (metadata, _, wire) = request.into_parts();
        self.caller(&metadata, &wire.namespace, &wire.session)
            .await?;
        let reader = Reader {
            store: self.store.clone(),
            arrivals: self.arrivals.subscribe(&wire.namespace, &wire.session),
            after: wire.after.max(0),
            namespace: wire.namespace,
            session: wire.session,
            read: VecDeque::new(),
            failed: false,
        };
        let deliveries = stream::unfold(reader, Reader::next).take_until(self.shutdown.clone());
        Ok(Response::new(Box::pin(deliveries)))
    }

    pub(super) async fn acknowledge(
        &self,
        request: Request<AckRequest>,
    ) -> Result<Response<AckResponse>, Status> {
        let (metadata, _, wire) = request.into_parts();
        let AckRequest {
            namespace,
            session,
            message_ids,
        } = wire;
        self.caller(&metadata, &namespace, &session).await?;
        let acknowledged = self
            .store
            .ack_messages(&namespace, &session, &message_ids, Timestamp::now())
            .await
            .map_err(|error| Status::unavailable(format!("the store is unavailable: {error}")))?;
        Ok(Response::new(AckResponse { acknowledged }))
    }

    pub(super) async fn list_reachable(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<ListResponse>, Status> {
        let (metadata, _, ListRequest { namespace, session }) = request.into_parts();
        let listing = (EventType::ToolCall, ToolId::SessionsList);
        let names = (namespace.as_str(), session.as_str());
        let call = self.call(&metadata, names, Target::Own, listing).await?;
        let sessions = self
            .discover
            .sessions(&namespace)
            .into_iter()
            .filter(|name| *name != session)
            .filter_map(|name| self.discover.context(&namespace, &name).ok())
            .filter(|target| self.admits(target, &call.caller).proceeds())
            .map(|target| ReachableSession {
                name: target.session.clone(),
                trust_level: name_of(&target.trust_level),
                gateway: !target.gateways.is_empty(),
            })
            .collect();
        Ok(Response::new(ListResponse { sessions }))
    }

    pub(super) async fn read_history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let (metadata, _, wire) = request.into_parts();
        let HistoryRequest {
            namespace,
            session,
            target,
            limit,
        } = wire;
        let reading = (EventType::ToolCall, ToolId::SessionsHistory);
        let names = (namespace.as_str(), session.as_str());
        let call = self
            .call(&metadata, names, Target::Asked(&target), reading)
            .await?;
        let not_reachable =
            || Status::permission_denied(format!("session {target} is not one you may reach"));
        let recipient = self
            .discover
            .context(&namespace, &target)
            .map_err(|_| not_reachable())?;
        if !self.admits(&recipient, &call.caller).proceeds() {
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
