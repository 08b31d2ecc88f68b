//! What a remote peer may do in a session: its standing, from the Grants
//! naming its public key (current, or previous within the rotation grace
//! period) and the SecurityPolicy's `p2p` settings.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::capabilities::CapabilitySet;
use super::profiles::{builtin_policy, level_settings};
use super::resolve::level_capabilities;
use super::standing::standing_from;
use crate::api::{
    Capability, Grant, PeerRef, PreviousKey, RotationReason, SecurityPolicy, TrustLevel,
};

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
/// only until its `rotatedAt` plus `p2p.keyRotationGracePeriod`, and not
/// at all when it was rotated away from for `compromise`.
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
                && previous.reason != Some(RotationReason::Compromise)
                && previous
                    .rotated_at
                    .0
                    .checked_add(grace)
                    .is_ok_and(|valid_until| now < valid_until)
        })
}

/// The trust level a Grant of `capabilities` confers, as the escalation
/// guard (charts/.../escalation.yaml) reckons it: the lowest level whose
/// built-in profile holds them all, owner when none below does. Writing
/// such a Grant needs `use` on that level.
pub fn level_conferred(capabilities: &[Capability]) -> TrustLevel {
    [
        TrustLevel::Untrusted,
        TrustLevel::SemiTrusted,
        TrustLevel::Trusted,
    ]
    .into_iter()
    .find(|level| {
        let held = level_capabilities(*level, &level_settings(None, *level));
        capabilities
            .iter()
            .all(|capability| *capability != Capability::All && held.has(*capability))
    })
    .unwrap_or(TrustLevel::Owner)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::{GrantSpec, GrantSubject};

    const OLD: &str = "old-key";
    const NEW: &str = "new-key";

    fn rotated_at() -> Timestamp {
        "2026-12-07T12:00:00Z".parse().unwrap()
    }

    /// A Grant to the peer now at `NEW`, rotated away from `OLD` at
    /// [`rotated_at`] for `reason`.
    fn rotated(reason: RotationReason) -> Grant {
        let mut grant = Grant::new(
            "peer",
            GrantSpec {
                subject: GrantSubject::peer(NEW),
                profile: Some(TrustLevel::Untrusted),
                capabilities: Vec::new(),
                sessions: Vec::new(),
                not_before: None,
                expires_at: None,
                previous_keys: vec![PreviousKey {
                    public_key: OLD.into(),
                    rotated_at: Time(rotated_at()),
                    reason: Some(reason),
                }],
            },
        );
        grant.metadata.namespace = Some("team-a".into());
        grant
    }

    fn standing(key: &str, grant: &Grant, now: Timestamp) -> Option<PeerStanding> {
        resolve_peer(key, "p2p-gateway", "team-a", None, [grant], now)
    }

    #[test]
    fn an_old_key_works_for_the_grace_period_and_not_after() {
        let grant = rotated(RotationReason::Scheduled);
        let day = SignedDuration::from_hours(24);
        let inside = rotated_at() + day - SignedDuration::from_secs(1);
        let after = rotated_at() + day;
        assert!(standing(OLD, &grant, inside).is_some());
        assert!(standing(OLD, &grant, after).is_none());
        // The new key, and the standing of both, is the Grant's.
        assert_eq!(standing(OLD, &grant, inside).unwrap().public_key, NEW);
        assert!(standing(NEW, &grant, after).is_some());
    }

    #[test]
    fn an_old_key_rotated_away_for_compromise_works_no_more_at_once() {
        let grant = rotated(RotationReason::Compromise);
        assert!(standing(OLD, &grant, rotated_at()).is_none());
        assert!(standing(NEW, &grant, rotated_at()).is_some());
    }

    #[test]
    fn a_grant_of_inject_confers_untrusted_and_of_inject_tools_semi_trusted() {
        assert_eq!(
            level_conferred(&[Capability::Inject]),
            TrustLevel::Untrusted
        );
        assert_eq!(
            level_conferred(&[Capability::Inject, Capability::InjectTools]),
            TrustLevel::SemiTrusted
        );
        assert_eq!(level_conferred(&[Capability::All]), TrustLevel::Owner);
    }
}
