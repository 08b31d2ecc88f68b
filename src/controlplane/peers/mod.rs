//! The peer ingress (issue 27): where WOPR peers outside the cluster reach
//! the control plane's sessions, one signed message per request, in WOPR's
//! P2P message format ([`crate::p2p`]), over HTTPS with JSON bodies
//! (`POST /v1alpha1/messages`) and the same over gRPC (`Peers.Deliver`),
//! on a listener of its own: the only one meant to face the internet.
//!
//! Each message is checked in order: its size before the body is read
//! whole, its JSON, its Ed25519 signature over the bytes received, its
//! `ts` (the replay window), then in the store and exact across replicas
//! its ban, its nonce (the replay guard), its action's limits and the
//! namespace's `p2p.rateLimits.perPeer`; then its content, the peer's
//! standing (`policy::resolve_peer`) and the session's own decision; and
//! only then the session's inbox (`p2p.rateLimits.perSession`). What fails
//! before the signature verifies is not held against the key it names
//! (anyone can write that key into a message); a replay or a stale message
//! is not either (anyone who saw the message can send it again). Only what
//! the key's holder signed fresh counts as invalid.
//!
//! `receive` runs the checks and dispatches; `inject` delivers a message
//! and waits for the gateway's answer, `claims` takes invites and key
//! rotations, `keys` holds each namespace's ingress key, `admin` signs
//! invites for people, and `serve` is the HTTPS and gRPC front.

mod admin;
mod claims;
mod inject;
pub mod keys;
mod receive;
mod serve;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

pub use admin::PeerAdminService;
pub use keys::{IngressKeys, KubeIngressKeys, MemoryIngressKeys};
pub use serve::serve;

use super::discover::DiscoverPolicy;
use super::grant_use::GrantUses;
use super::refusals::Refusals;
use super::writes::ClusterWriter;
use crate::api::{Capability, from_name};
use crate::clock::Clock;
use crate::p2p::message::Action;
use crate::store::{PeerLimit, Store};

/// How long an injection waits for the gateway's answer by default before
/// the peer is told to fetch it from its outbox.
pub const DEFAULT_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// WOPR's limits per peer and action (and ours for the actions it does not
/// have): messages a minute and an hour, and the ban crossing either earns.
pub fn limit_of(action: Option<Action>) -> PeerLimit {
    const HOUR: Duration = Duration::from_secs(3600);
    let (per_minute, per_hour, ban) = match action {
        Some(Action::Inject) => (10, 100, HOUR),
        Some(Action::Claim | Action::KeyRotation) => (5, 20, HOUR),
        Some(Action::Outbox) => (60, 600, HOUR),
        // Invalid messages: 3 a minute, 10 an hour, banned for 2 h.
        None => (3, 10, 2 * HOUR),
    };
    PeerLimit {
        per_minute,
        per_hour,
        ban,
    }
}

/// The name counts and audit events give an action (`invalid` for a
/// signed message whose content is not valid).
pub fn action_name(action: Option<Action>) -> &'static str {
    action.map_or("invalid", Action::as_str)
}

/// The capabilities a Grant of WOPR capability `names` gives: WOPR's
/// `inject` is `inject` and `inject.tools`; the others are ours by name
/// (never `*`).
pub fn grant_capabilities(names: &[String]) -> Result<Vec<Capability>, String> {
    let mut capabilities = Vec::new();
    for name in names {
        if name == "inject" {
            capabilities.extend([Capability::Inject, Capability::InjectTools]);
            continue;
        }
        match from_name::<Capability>(name) {
            Some(Capability::All) | None => {
                return Err(format!(
                    "unknown capability {name:?} (inject, inject.network, cross.inject, a2a.call, ...; never *)"
                ));
            }
            Some(capability) => capabilities.push(capability),
        }
    }
    if capabilities.is_empty() {
        return Err("an invite gives at least one capability (inject, ...)".to_owned());
    }
    capabilities.sort_unstable();
    capabilities.dedup();
    Ok(capabilities)
}

/// How a refusal is answered: one mapping to HTTP and gRPC, in
/// [`RefusalKind::http_status`] and [`RefusalKind::grpc_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// Larger than a message may be.
    TooLarge,
    /// Not a message: not JSON, not an object, no signature.
    Malformed,
    /// The signature does not verify, or the message is stale or replayed.
    Unauthenticated,
    /// Signed, fresh, and invalid in content.
    Invalid,
    /// No standing, or the session does not take the message.
    Forbidden,
    /// No such session, or nothing to fetch.
    NotFound,
    /// A limit or a ban.
    Limited,
    /// The operator cannot decide now (its caches, store or API server).
    Unavailable,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::TooLarge => "too_large",
            RefusalKind::Malformed => "malformed",
            RefusalKind::Unauthenticated => "unauthenticated",
            RefusalKind::Invalid => "invalid",
            RefusalKind::Forbidden => "forbidden",
            RefusalKind::NotFound => "not_found",
            RefusalKind::Limited => "limited",
            RefusalKind::Unavailable => "unavailable",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            RefusalKind::TooLarge => 413,
            RefusalKind::Malformed | RefusalKind::Invalid => 400,
            RefusalKind::Unauthenticated => 401,
            RefusalKind::Forbidden => 403,
            RefusalKind::NotFound => 404,
            RefusalKind::Limited => 429,
            RefusalKind::Unavailable => 503,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            RefusalKind::TooLarge | RefusalKind::Malformed | RefusalKind::Invalid => {
                tonic::Code::InvalidArgument
            }
            RefusalKind::Unauthenticated => tonic::Code::Unauthenticated,
            RefusalKind::Forbidden => tonic::Code::PermissionDenied,
            RefusalKind::NotFound => tonic::Code::NotFound,
            RefusalKind::Limited => tonic::Code::ResourceExhausted,
            RefusalKind::Unavailable => tonic::Code::Unavailable,
        }
    }
}

/// A message refused, and why (what the peer is told).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refused {
    pub kind: RefusalKind,
    pub reason: String,
}

impl Refused {
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Refused {
        Refused {
            kind,
            reason: reason.into(),
        }
    }

    /// The JSON body a refusal is answered with.
    pub fn body(&self) -> Value {
        json!({"ok": false, "error": self.kind.as_str(), "reason": self.reason})
    }
}

/// What an accepted message is answered with: an HTTP status (200, or
/// 202 while an answer is still to come) and a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// The ingress's metrics, on `/metrics` as `wopr_peer_*`.
#[derive(Clone, Debug, Default)]
pub struct PeerMetrics {
    /// Every message, by action and outcome (`accepted`, or the refusal's kind).
    pub messages: Family<MessageLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub action: String,
    pub outcome: String,
}

fn labels(action: &str, outcome: &str) -> MessageLabels {
    MessageLabels {
        action: action.to_owned(),
        outcome: outcome.to_owned(),
    }
}

impl PeerMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("wopr_peer");
        registry.register(
            "messages",
            "Messages peers sent the ingress, by action and outcome (accepted, or why refused)",
            self.messages.clone(),
        );
    }

    /// How many messages of `action` ended in `outcome`.
    pub fn count(&self, action: &str, outcome: &str) -> u64 {
        self.messages.get_or_create(&labels(action, outcome)).get()
    }

    fn observe(&self, action: &str, outcome: &str) {
        self.messages.get_or_create(&labels(action, outcome)).inc();
    }
}

/// How the ingress is set up.
#[derive(Clone, Debug)]
pub struct IngressSettings {
    /// How long an injection waits for the gateway's answer.
    pub answer_wait: Duration,
    /// How many messages the front takes at once (`--p2p-max-in-flight`).
    pub max_in_flight: u32,
    pub metrics: PeerMetrics,
}

/// How many messages the front takes at once unless told otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

impl Default for IngressSettings {
    fn default() -> Self {
        IngressSettings {
            answer_wait: DEFAULT_ANSWER_WAIT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            metrics: PeerMetrics::default(),
        }
    }
}

/// The peer ingress: what it decides with and where it records.
pub struct Ingress<D> {
    discover: Arc<D>,
    store: Store,
    writer: Arc<dyn ClusterWriter>,
    keys: Arc<dyn IngressKeys>,
    uses: Arc<GrantUses>,
    refusals: Arc<Refusals>,
    clock: Clock,
    settings: IngressSettings,
}

impl<D: DiscoverPolicy> Ingress<D> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        discover: Arc<D>,
        store: Store,
        writer: Arc<dyn ClusterWriter>,
        keys: Arc<dyn IngressKeys>,
        uses: Arc<GrantUses>,
        refusals: Arc<Refusals>,
        clock: Clock,
        settings: IngressSettings,
    ) -> Self {
        Ingress {
            discover,
            store,
            writer,
            keys,
            uses,
            refusals,
            clock,
            settings,
        }
    }
}
