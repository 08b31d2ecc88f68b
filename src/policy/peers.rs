//! What a remote peer may do in a session: its standing, from the Grants
//! naming its public key (current, or previous within the rotation grace
//! period) and the SecurityPolicy's `p2p` settings.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::capabilities::CapabilitySet;
use super::profiles::{builtin_policy, level_settings};
use super::resolve::{grant_capabilities, grant_is_active, level_capabilities};
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

    let mut standing: Option<PeerStanding> = None;
    for grant in grants {
        let Some(peer) = grant.spec.subject.peer.as_ref() else {
            continue;
        };
        let in_scope = grant.spec.sessions.is_empty()
            || grant.spec.sessions.iter().any(|scoped| scoped == session);
        let in_namespace = grant
            .metadata
            .namespace
            .as_deref()
            .is_none_or(|ns| ns == namespace);
        if !(in_scope
            && in_namespace
            && grant_is_active(grant, now)
            && key_is_valid(public_key, peer, &grant.spec.previous_keys, grace, now))
        {
            continue;
        }
        let trust_level = match grant.spec.profile {
            Some(level) if level < TrustLevel::Owner => level,
            _ => TrustLevel::Untrusted,
        };
        let capabilities = grant_capabilities(policy, grant);
        let entry = standing.get_or_insert_with(|| PeerStanding {
            public_key: peer.public_key.clone(),
            trust_level,
            capabilities: CapabilitySet::EMPTY,
            grants: Vec::new(),
        });
        entry.trust_level = entry.trust_level.max(trust_level);
        entry.capabilities = entry.capabilities.union(capabilities);
        entry.grants.push(grant.name_any());
    }
    if let Some(mut standing) = standing {
        standing.grants.sort_unstable();
        return Some(standing);
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
