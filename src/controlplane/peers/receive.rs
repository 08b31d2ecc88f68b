//! The checks every message passes, in order, and the dispatch to what
//! its action does. Refusals are audited here, once: those that cannot be
//! held against the key a message names in the operator's trail (as any
//! caller with no right in a namespace), budgeted per peer by
//! [`Refusals`](crate::controlplane::refusals::Refusals).

use k8s_openapi::jiff::Timestamp;

use super::{Ingress, RefusalKind, Refused, Reply, action_name, limit_of};
use crate::api::{Enforcement, P2pPolicy, SourceRef, SourceType, TrustLevel};
use crate::audit::{AuditEvent, EventType};
use crate::controlplane::discover::DiscoverPolicy;
use crate::controlplane::refusals::Trail;
use crate::p2p::PeerKey;
use crate::p2p::message::{self, Body, Unverified, Verified};
use crate::policy::Outcome;
use crate::store::{Attempt, PeerRefusal, StoreError};

/// The caller name refusals of messages nobody can be held to share.
const UNVERIFIED_CALLER: &str = "p2p:unverified";

/// A peer as the source of an audit event, at `trust_level`.
pub(super) fn peer_source(peer: &PeerKey, trust_level: TrustLevel) -> SourceRef {
    SourceRef {
        source_type: SourceType::Peer.into(),
        identity: peer.as_str().to_owned(),
        trust_level,
    }
}

/// The namespace (and session) a message's body names, if any.
fn addressed(body: &Body) -> (&str, &str) {
    match body {
        Body::Inject {
            namespace, session, ..
        }
        | Body::Outbox {
            namespace, session, ..
        } => (namespace, session),
        Body::Claim { .. } | Body::KeyRotation(_) => ("", ""),
    }
}

impl<D: DiscoverPolicy> Ingress<D> {
    /// Runs every check on `raw`, a message as received, and what its
    /// action does; the reply, or the refusal (audited and counted).
    pub async fn receive(&self, raw: &[u8]) -> Result<Reply, Refused> {
        let verified = match message::open(raw) {
            Ok(verified) => verified,
            Err(unverified) => return Err(self.unverified(unverified).await),
        };
        let action = verified.fields.as_ref().ok().map(|fields| fields.action);
        match self.verified(verified).await {
            Ok(reply) => {
                self.settings
                    .metrics
                    .observe(action_name(action), "accepted");
                Ok(reply)
            }
            Err(refused) => {
                self.settings
                    .metrics
                    .observe(action_name(action), refused.kind.as_str());
                Err(refused)
            }
        }
    }

    /// A message whose signature does not verify (or that has none).
    async fn unverified(&self, unverified: Unverified) -> Refused {
        let kind = match unverified {
            Unverified::TooLarge { .. } => RefusalKind::TooLarge,
            Unverified::Format(_) | Unverified::NoSender(_) => RefusalKind::Malformed,
            Unverified::BadSignature(_) => RefusalKind::Unauthenticated,
        };
        self.refuse_unattributed(Refused::new(kind, unverified.to_string()))
            .await
    }

    /// A refusal nobody can be held to (a message whose signature is not
    /// verified, or one refused before it is read: too large, too slow,
    /// the front busy): counted, audited in the operator's trail under one
    /// shared budget; returns it.
    pub async fn refuse_unattributed(&self, refused: Refused) -> Refused {
        self.settings
            .metrics
            .observe("unverified", refused.kind.as_str());
        let source = SourceRef {
            source_type: SourceType::Peer.into(),
            identity: String::new(),
            trust_level: TrustLevel::Untrusted,
        };
        let event = self.event(
            EventType::Policy,
            ("", ""),
            source,
            Outcome::Denied,
            &refused.reason,
        );
        self.refusals
            .record(UNVERIFIED_CALLER, Trail::Operator, event)
            .await;
        refused
    }

    /// The checks past the signature, and the dispatch.
    async fn verified(&self, verified: Verified) -> Result<Reply, Refused> {
        let now = self.clock.now();
        let peer = verified.from.clone();
        let refuse = |refused: Refused| self.refuse(&peer, ("", ""), refused);
        let (Some(ts), Some(nonce)) = (verified.ts_ms, verified.nonce.as_deref()) else {
            let refused = Refused::new(
                RefusalKind::Malformed,
                "a message needs ts (milliseconds since the epoch) and a nonce",
            );
            return Err(refuse(refused).await);
        };
        if let Err(why) = message::within_window(ts, now) {
            return Err(refuse(Refused::new(RefusalKind::Unauthenticated, why)).await);
        }
        let action = verified.fields.as_ref().ok().map(|fields| fields.action);
        let (namespace, session) = match &verified.fields {
            Ok(fields) => addressed(&fields.body),
            Err(_) => ("", ""),
        };
        let policy = match self.policy(namespace) {
            Ok(policy) => policy,
            Err(refused) => return Err(refuse(refused).await),
        };
        let attempt = Attempt {
            peer: peer.as_str(),
            nonce,
            action: action_name(action),
            limit: limit_of(action),
            namespace,
            namespace_per_minute: policy
                .rate_limits
                .as_ref()
                .and_then(|limits| limits.per_peer.as_ref())
                .map(|limit| limit.per_minute),
            at: now,
        };
        if let Err(error) = self.store.admit_peer(&attempt).await {
            let refused = match error {
                StoreError::Peer(refusal @ PeerRefusal::Replayed { .. }) => {
                    Refused::new(RefusalKind::Unauthenticated, refusal.to_string())
                }
                StoreError::Peer(refusal) => {
                    Refused::new(RefusalKind::Limited, refusal.to_string())
                }
                error => Refused::new(
                    RefusalKind::Unavailable,
                    format!("the store is unavailable: {error}"),
                ),
            };
            return Err(self.refuse(&peer, (namespace, session), refused).await);
        }
        let fields = match verified.fields {
            Ok(fields) => fields,
            Err(why) => {
                let refused = Refused::new(RefusalKind::Invalid, why);
                return Err(refuse(refused).await);
            }
        };
        match fields.body {
            Body::Inject {
                namespace,
                session,
                payload,
                payload_bytes,
                request_id,
            } => {
                let message = super::inject::Injection {
                    peer: &peer,
                    namespace: &namespace,
                    session: &session,
                    payload,
                    payload_bytes,
                    request_id,
                    policy: &policy,
                    now,
                };
                self.inject(message).await
            }
            Body::Outbox {
                namespace,
                session,
                message_id,
            } => {
                self.outbox(&peer, (&namespace, &session), &message_id)
                    .await
            }
            Body::Claim { token } => self.claim(&peer, &token, now).await,
            Body::KeyRotation(rotation) => self.rotate(&peer, &rotation, now).await,
        }
    }

    /// The namespace's `p2p` settings (the built-in ones for none, or a
    /// namespace without a SecurityPolicy); a policy that cannot be read
    /// decides nothing.
    fn policy(&self, namespace: &str) -> Result<P2pPolicy, Refused> {
        if namespace.is_empty() {
            return Ok(P2pPolicy::default());
        }
        self.discover.peer_policy(namespace).map_err(|why| {
            Refused::new(
                RefusalKind::Unavailable,
                format!("namespace {namespace} takes no peer messages while its policy cannot be read: {why}"),
            )
        })
    }

    /// Records `refused`, a refusal of `peer`'s message to `target`, in the
    /// operator's trail (budgeted per peer); returns it.
    pub(super) async fn refuse(
        &self,
        peer: &PeerKey,
        target: (&str, &str),
        refused: Refused,
    ) -> Refused {
        let source = peer_source(peer, TrustLevel::Untrusted);
        let event = self.event(EventType::Policy, target, source, Outcome::Denied, "");
        self.record_refused(peer, Trail::Operator, event, refused)
            .await
    }

    /// Records `event` as the refusal `refused` of `peer` in `trail`, its
    /// reason `refused`'s naming the peer, budgeted per peer; returns it.
    pub(super) async fn record_refused(
        &self,
        peer: &PeerKey,
        trail: Trail,
        mut event: AuditEvent,
        refused: Refused,
    ) -> Refused {
        event.reason = format!("peer {}: {}", peer.short_id(), refused.reason);
        let caller = format!("p2p:{}", peer.short_id());
        self.refusals.record(&caller, trail, event).await;
        refused
    }

    /// An audit event of the ingress, now.
    pub(super) fn event(
        &self,
        event_type: EventType,
        (namespace, session): (&str, &str),
        source: SourceRef,
        decision: Outcome,
        reason: &str,
    ) -> AuditEvent {
        AuditEvent::new(
            self.now(),
            event_type,
            namespace,
            session,
            source,
            decision,
            Enforcement::Enforce,
            reason.to_owned(),
        )
    }

    pub(super) fn now(&self) -> Timestamp {
        self.clock.now()
    }
}
