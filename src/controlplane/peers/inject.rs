//! A peer's message to a session, and the gateway's answer to it.
//!
//! A peer reaches a session only with standing there: a Grant naming its
//! key (current, or previous within the rotation grace period) whose
//! scope holds the session, or, with `p2p.autoAccept`, the discovery
//! trust — and a peer accepted that way reaches gateway sessions only. A
//! peer without either is refused, and with `autoAccept` off a person is
//! asked (an ApprovalRequest of type `peer`). The session's access list
//! then decides, as for any source. A message delivered is a use of the
//! Grants the peer's standing comes from.
//!
//! The gateway answers through `gateway_respond`, which keeps the result
//! with the forward (a peer has no inbox). The ingress waits for it a
//! while; past that, the peer fetches it with a signed `outbox` message.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::receive::peer_source;
use super::{Ingress, RefusalKind, Refused, Reply};
use crate::api::{P2pPolicy, SourceType, name_of};
use crate::approval::peer_approval;
use crate::audit::EventType;
use crate::controlplane::discover::{DiscoverPolicy, NoContext};
use crate::controlplane::refusals::Trail;
use crate::inbox::{InboxMessage, MessageKind};
use crate::p2p::PeerKey;
use crate::policy::{Outcome, Request as PolicyRequest, Source, decide};
use crate::store::{Forward, InboxError, PeerRefusal, StoreError};

/// The action audit events name for a peer's message.
pub const PEER_INJECT_ACTION: &str = "p2p_inject";

/// How often a waiting injection looks for its answer, at first and at
/// most (it backs off in between).
const FIRST_LOOK: Duration = Duration::from_millis(20);
const LATEST_LOOK: Duration = Duration::from_millis(500);

/// An `inject` message past the checks every message passes.
pub(super) struct Injection<'a> {
    pub peer: &'a PeerKey,
    pub namespace: &'a str,
    pub session: &'a str,
    pub payload: Value,
    pub payload_bytes: usize,
    pub request_id: Option<String>,
    pub policy: &'a P2pPolicy,
    pub now: Timestamp,
}

impl<D: DiscoverPolicy> Ingress<D> {
    pub(super) async fn inject(&self, message: Injection<'_>) -> Result<Reply, Refused> {
        let Injection {
            peer,
            namespace,
            session,
            ..
        } = message;
        let target = (namespace, session);
        let refuse = |refused: Refused| self.refuse(peer, target, refused);
        let limit = message.policy.payload_size_limit;
        if message.payload_bytes as u64 > limit {
            let refused = Refused::new(
                RefusalKind::Invalid,
                format!(
                    "the payload is {} bytes, over namespace {namespace}'s p2p.payloadSizeLimit of {limit}",
                    message.payload_bytes
                ),
            );
            return Err(refuse(refused).await);
        }
        let standing = match self.discover.peer(namespace, session, peer.as_str()) {
            Ok(Some(standing)) => standing,
            Ok(None) => return Err(refuse(self.stranger(&message).await).await),
            Err(why) => {
                let refused = Refused::new(
                    RefusalKind::Unavailable,
                    format!("cannot know the peer's grants in namespace {namespace}: {why}"),
                );
                return Err(refuse(refused).await);
            }
        };
        let recipient = match self.discover.context(namespace, session) {
            Ok(recipient) => recipient,
            Err(NoContext::Gone(_)) => {
                let refused = Refused::new(
                    RefusalKind::NotFound,
                    format!("no session {session} in namespace {namespace}"),
                );
                return Err(refuse(refused).await);
            }
            Err(NoContext::Unavailable(why)) => {
                let refused = Refused::new(
                    RefusalKind::Unavailable,
                    format!("session {session} takes no messages while it has no policy: {why}"),
                );
                return Err(refuse(refused).await);
            }
        };
        let source = peer_source(peer, standing.trust_level);
        if standing.grants.is_empty() && recipient.gateways.is_empty() {
            let refused = Refused::new(
                RefusalKind::Forbidden,
                format!(
                    "a peer accepted without a Grant (p2p.autoAccept) reaches gateway sessions only, and {session} serves no Gateway"
                ),
            );
            return Err(self.refuse_in_trail(peer, target, source, refused).await);
        }
        let decision = decide(
            &recipient,
            PolicyRequest::Inject(&Source {
                source_type: SourceType::Peer,
                identity: peer.as_str(),
                trust_level: standing.trust_level,
                capabilities: standing.capabilities,
            }),
        );
        if decision.outcome == Outcome::Denied {
            let refused = Refused::new(
                RefusalKind::Forbidden,
                format!(
                    "session {session} does not take messages from this peer: {}",
                    decision.reason
                ),
            );
            return Err(self.refuse_in_trail(peer, target, source, refused).await);
        }
        let inbox = InboxMessage::new(
            message.now,
            namespace,
            session,
            source.clone(),
            MessageKind::Message,
            message.payload,
        );
        let per_session = message
            .policy
            .rate_limits
            .as_ref()
            .and_then(|limits| limits.per_session.as_ref())
            .map(|limit| limit.per_minute);
        let limits = self.discover.inbox_limits(namespace);
        if let Err(error) = self
            .store
            .deliver_peer_message(&inbox, limits, per_session)
            .await
        {
            let refused = match error {
                StoreError::Peer(refusal @ PeerRefusal::SessionLimited { .. }) => {
                    Refused::new(RefusalKind::Limited, refusal.to_string())
                }
                StoreError::Inbox(error @ InboxError::TooLarge { .. }) => {
                    Refused::new(RefusalKind::Invalid, error.to_string())
                }
                StoreError::Inbox(error) => Refused::new(RefusalKind::Limited, error.to_string()),
                error => Refused::new(
                    RefusalKind::Unavailable,
                    format!("the store is unavailable: {error}"),
                ),
            };
            return Err(self.refuse_in_trail(peer, target, source, refused).await);
        }
        if decision.outcome == Outcome::Allowed {
            self.uses.used(namespace, &standing.grants);
        }
        let mut reason = format!("peer {}: delivered", peer.short_id());
        if decision.outcome == Outcome::WouldDeny {
            reason = format!("{reason} in warn mode: {}", decision.reason);
        }
        let mut event = self.event(
            EventType::Injection,
            target,
            source,
            decision.outcome,
            &reason,
        );
        event.enforcement = recipient.enforcement;
        event.action = Some(PEER_INJECT_ACTION.to_owned());
        event.capability = decision.capability;
        let audit_id = event.id.clone();
        if let Err(error) = self.store.insert_events(&[event]).await {
            let refused = Refused::new(
                RefusalKind::Unavailable,
                format!("the message was queued but its audit event could not be stored: {error}"),
            );
            return Err(refused);
        }
        let answers = self
            .wait_for_answers(peer, target, &inbox.id, self.settings.answer_wait)
            .await;
        let answered = answers.iter().any(|answer| answer["result"] != Value::Null);
        Ok(Reply {
            status: if answered { 200 } else { 202 },
            body: json!({
                "ok": true,
                "type": "inject",
                "messageId": inbox.id,
                "requestId": message.request_id,
                "auditId": audit_id,
                "state": if answered { "answered" } else { "accepted" },
                "answers": answers,
            }),
        })
    }

    /// The refusal of a peer without standing: with `autoAccept` off, a
    /// person is asked to accept it (filed once per peer and session).
    async fn stranger(&self, message: &Injection<'_>) -> Refused {
        let (namespace, session) = (message.namespace, message.session);
        let id = message.peer.short_id();
        if message.policy.auto_accept {
            return Refused::new(
                RefusalKind::Forbidden,
                format!(
                    "peer {id} has no standing towards session {session} in namespace {namespace}"
                ),
            );
        }
        let reason = format!("peer {id} asked to reach session {session}; p2p.autoAccept is off");
        let request = peer_approval(
            namespace,
            session,
            peer_source(message.peer, crate::api::TrustLevel::Untrusted),
            reason,
            message.now,
        );
        let asked = match self.writer.file(&request).await {
            Ok(()) => format!(
                "a person can accept it: kubectl wopr gateway approve {} -n {namespace}",
                request.metadata.name.as_deref().unwrap_or_default()
            ),
            Err(why) => format!("asking a person failed ({why}); send again to retry"),
        };
        Refused::new(
            RefusalKind::Forbidden,
            format!(
                "peer {id} has no Grant towards session {session} in namespace {namespace} and p2p.autoAccept is off: {asked}"
            ),
        )
    }

    /// Records `refused` in the namespace's trail: the peer has standing
    /// there, so its refusals are the session's to hold (budgeted).
    async fn refuse_in_trail(
        &self,
        peer: &PeerKey,
        target: (&str, &str),
        source: crate::api::SourceRef,
        refused: Refused,
    ) -> Refused {
        let mut event = self.event(EventType::Injection, target, source, Outcome::Denied, "");
        event.action = Some(PEER_INJECT_ACTION.to_owned());
        self.record_refused(peer, Trail::Namespace, event, refused)
            .await
    }

    /// The forwards `session` (a gateway session) made of `message_id` and
    /// their results, once one is responded or `wait` has passed.
    async fn wait_for_answers(
        &self,
        peer: &PeerKey,
        target: (&str, &str),
        message_id: &str,
        wait: Duration,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = FIRST_LOOK;
        loop {
            let answers = self
                .answers(peer, target, message_id)
                .await
                .unwrap_or_default();
            let responded = answers.iter().any(|answer| answer["result"] != Value::Null);
            let now = tokio::time::Instant::now();
            if responded || now >= deadline {
                return answers;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(LATEST_LOOK);
        }
    }

    /// What `session` forwarded of `message_id` for `peer`, each request
    /// with its result once responded; `None` when it forwarded nothing
    /// of it (yet), or the message is not the peer's.
    async fn answers(
        &self,
        peer: &PeerKey,
        (namespace, session): (&str, &str),
        message_id: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let answers = self
            .store
            .answers(
                namespace,
                session,
                message_id,
                (SourceType::Peer.as_str(), peer.as_str()),
            )
            .await?
            .unwrap_or_default();
        Ok(answers.into_iter().map(answer_json).collect())
    }

    /// An `outbox` message: the answers to one of the peer's messages.
    pub(super) async fn outbox(
        &self,
        peer: &PeerKey,
        target: (&str, &str),
        message_id: &str,
    ) -> Result<Reply, Refused> {
        match self.answers(peer, target, message_id).await {
            Ok(answers) if !answers.is_empty() => Ok(Reply {
                status: 200,
                body: json!({"ok": true, "type": "outbox", "messageId": message_id, "answers": answers}),
            }),
            Ok(_) => {
                let refused = Refused::new(
                    RefusalKind::NotFound,
                    format!(
                        "session {} forwarded no message {message_id} of yours (yet): name a messageId an inject returned you",
                        target.1
                    ),
                );
                Err(self.refuse(peer, target, refused).await)
            }
            Err(error) => Err(Refused::new(
                RefusalKind::Unavailable,
                format!("the store is unavailable: {error}"),
            )),
        }
    }
}

/// One forward of a peer's message and its result, as the peer is told.
fn answer_json((forward, result): (Forward, Option<InboxMessage>)) -> Value {
    json!({
        "requestId": forward.id,
        "state": name_of(&forward.state),
        "result": result.map(|result| result.payload),
    })
}
