//! What a remote peer may do in a session: its standing, from the Grants
//! naming its public key (current, or previous within the rotation grace
//! period) and the SecurityPolicy's `p2p` settings.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::capabilities::CapabilitySet;
use super::profiles::{builtin_policy, level_settings};
use super::resolve::level_capabilities;
use super::standing::standing_from;
use crate::api::{Grant, PeerRef, PreviousKey, SecurityPolicy, TrustLevel};

/// What a peer may do in one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStanding {
    /// The peer's current public key (the one access entries `peer:<key>` name).
    pub public_key: String,
    /// The highest profile among its grants; `untrusted` for capability-only
    /// grants; the discovery trust when auto-accepted without a grant.
    pub trust_level: TrustLevel,
    /// The capabilities of its grants (or of the discovery trust level).
    pub capabilities: CapabilitySet,
    /// The grants that count, by name, sorted; empty when auto-accepted.
    pub grants: Vec<String>,
}

/// The standing of the peer presenting `public_key` towards `session` in
/// `namespace`, or `None` when it has none (no active grant in scope and
/// `p2p.autoAccept` off): such a peer may do nothing.
///
/// A grant counts when it is active, in `namespace`, names the peer, and its
/// `sessions` scope is empty or contains `session`. A previous key counts
/// only until its `rotatedAt` plus `p2p.keyRotationGracePeriod`.
pub fn resolve_peer<'a>(
    public_key: &str,
    session: &str,
    namespace: &str,
    policy: Option<&SecurityPolicy>,
    grants: impl IntoIterator<Item = &'a Grant>,
    now: Timestamp,
) -> Option<PeerStanding> {
    let policy = policy.map(|policy| &policy.spec);
    let p2p = policy
        .and_then(|policy| policy.p2p.as_ref())
        .or(builtin_policy().p2p.as_ref())
        .expect("the built-in policy sets p2p");
    let grace = SignedDuration::try_from(std::time::Duration::from(p2p.key_rotation_grace_period))
        .unwrap_or(SignedDuration::MAX);

    let names = |grant: &Grant| {
        grant.spec.subject.peer.as_ref().is_some_and(|peer| {
            key_is_valid(public_key, peer, &grant.spec.previous_keys, grace, now)
        })
    };
    if let Some((standing, first)) = standing_from(grants, session, namespace, policy, now, names) {
        let peer = first.spec.subject.peer.as_ref();
        return Some(PeerStanding {
            public_key: peer.map_or_else(|| public_key.to_owned(), |p| p.public_key.clone()),
            trust_level: standing.trust_level,
            capabilities: standing.capabilities,
            grants: standing.grants,
        });
    }
    p2p.auto_accept.then(|| {
        let level = p2p.discovery_trust.min(TrustLevel::Trusted);
        PeerStanding {
            public_key: public_key.to_owned(),
            trust_level: level,
            capabilities: level_capabilities(level, &level_settings(policy, level)),
            grants: Vec::new(),
        }
    })
}

fn key_is_valid(
    key: &str,
    peer: &PeerRef,
    previous_keys: &[PreviousKey],
    grace: SignedDuration,
    now: Timestamp,
) -> bool {
    peer.public_key == key
        || previous_keys.iter().any(|previous| {
            previous.public_key == key
                && previous
                    .rotated_at
                    .0
                    .checked_add(grace)
                    .is_ok_and(|valid_until| now < valid_until)
        })
}
