//! Whether a Grant counts at a given time, and until when: the one rule
//! that policy resolution, the standings and the Grant's own `status.state`
//! all follow. Pure: the clock is a parameter.

use k8s_openapi::jiff::Timestamp;

use crate::api::{Grant, GrantState};

/// A Grant's state at some time, and when it changes next by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// NotYetValid, Active, Expired or Revoked.
    pub state: GrantState,
    /// When the state changes without the Grant being edited (its
    /// `notBefore` while NotYetValid, its `expiresAt` while Active); `None`
    /// when it never does.
    pub next_change: Option<Timestamp>,
}

/// The state of `grant` at `now`. Revoked wins over the times: a Grant
/// whose deletion was asked no longer counts whatever they say; and
/// Expired over NotYetValid (a window that has closed never opens).
pub fn grant_validity(grant: &Grant, now: Timestamp) -> Validity {
    let not_before = grant.spec.not_before.as_ref().map(|at| at.0);
    let expires_at = grant.spec.expires_at.as_ref().map(|at| at.0);
    let (state, next_change) = if grant.metadata.deletion_timestamp.is_some() {
        (GrantState::Revoked, None)
    } else if expires_at.is_some_and(|at| at <= now) {
        (GrantState::Expired, None)
    } else if let Some(at) = not_before.filter(|at| now < *at) {
        (GrantState::NotYetValid, Some(at))
    } else {
        (GrantState::Active, expires_at)
    };
    Validity { state, next_change }
}

/// Whether `grant` counts at `now`: it is Active.
pub fn grant_is_active(grant: &Grant, now: Timestamp) -> bool {
    grant_validity(grant, now).state == GrantState::Active
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::SignedDuration;

    use super::*;
    use crate::api::{Capability, GrantSpec, GrantSubject};

    /// The tests' "now" (the controller's Grant status tests share it).
    pub(crate) fn now() -> Timestamp {
        "2026-12-06T12:00:00Z".parse().unwrap()
    }

    /// A session's Grant of one capability, expiring `expires_in` seconds
    /// after [`now`] (never with `None`).
    pub(crate) fn grant(expires_in: Option<i64>) -> Grant {
        Grant::new(
            "g",
            GrantSpec {
                subject: GrantSubject::session("s"),
                profile: None,
                capabilities: vec![Capability::InjectNetwork],
                sessions: Vec::new(),
                not_before: None,
                expires_at: expires_in.map(|s| Time(now() + SignedDuration::from_secs(s))),
                previous_keys: Vec::new(),
            },
        )
    }

    #[test]
    fn active_until_its_expiry_then_expired_for_good() {
        assert_eq!(
            grant_validity(&grant(None), now()),
            Validity {
                state: GrantState::Active,
                next_change: None
            }
        );
        let expiring = grant(Some(60));
        assert_eq!(
            grant_validity(&expiring, now()),
            Validity {
                state: GrantState::Active,
                next_change: Some(now() + SignedDuration::from_secs(60))
            }
        );
        let at_expiry = now() + SignedDuration::from_secs(60);
        assert_eq!(
            grant_validity(&expiring, at_expiry),
            Validity {
                state: GrantState::Expired,
                next_change: None
            },
            "expired from the instant of expiresAt"
        );
        assert!(grant_is_active(
            &expiring,
            at_expiry - SignedDuration::from_secs(1)
        ));
        assert!(!grant_is_active(&expiring, at_expiry));
    }

    #[test]
    fn not_yet_valid_until_its_not_before_then_active_until_its_expiry() {
        let mut windowed = grant(Some(120));
        let starts = now() + SignedDuration::from_secs(60);
        windowed.spec.not_before = Some(Time(starts));
        assert_eq!(
            grant_validity(&windowed, now()),
            Validity {
                state: GrantState::NotYetValid,
                next_change: Some(starts)
            }
        );
        assert!(!grant_is_active(&windowed, now()));
        assert!(!grant_is_active(
            &windowed,
            starts - SignedDuration::from_secs(1)
        ));
        assert_eq!(
            grant_validity(&windowed, starts),
            Validity {
                state: GrantState::Active,
                next_change: Some(now() + SignedDuration::from_secs(120))
            },
            "active from the instant of notBefore"
        );
        let closed = now() + SignedDuration::from_secs(120);
        assert_eq!(grant_validity(&windowed, closed).state, GrantState::Expired);
        // A notBefore in the past changes nothing.
        let mut started = grant(None);
        started.spec.not_before = Some(Time(now() - SignedDuration::from_secs(60)));
        assert_eq!(grant_validity(&started, now()).state, GrantState::Active);
    }

    #[test]
    fn a_grant_being_deleted_is_revoked_and_counts_for_nothing() {
        for expires_in in [None, Some(60), Some(-60)] {
            let mut revoked = grant(expires_in);
            revoked.spec.not_before = Some(Time(now() + SignedDuration::from_secs(30)));
            revoked.metadata.deletion_timestamp = Some(Time(now()));
            revoked.metadata.finalizers = Some(vec!["example.com/keep".into()]);
            assert_eq!(
                grant_validity(&revoked, now()),
                Validity {
                    state: GrantState::Revoked,
                    next_change: None
                },
                "{expires_in:?}"
            );
            assert!(!grant_is_active(&revoked, now()));
        }
    }
}
