//! The Grant status controller. A Grant's status: its `state`
//! (NotYetValid, Active, Expired, Revoked, by [`grant_validity`]) and a
//! Ready condition, looked at again when the state changes by itself (at
//! `notBefore`, at `expiresAt`). `lastUsedAt` is the control plane's
//! (`crate::controlplane::grant_use`): left out of what is compared and
//! applied here, so neither writer undoes the other.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;

use super::apply::patch_status_if_changed;
use super::conditions::{READY, condition, previous_conditions};
use super::error::Error;
use super::status_context::StatusContext;
use crate::api::{Grant, GrantState, GrantStatus, name_of};
use crate::policy::grant_validity;

/// The status the controller gives `grant` at `now` (its `lastUsedAt`
/// left out), and when it should be looked at again.
pub fn grant_status(
    grant: &DeserializeGuard<Grant>,
    now: Timestamp,
) -> (GrantStatus, Option<Timestamp>) {
    let status = grant.0.as_ref().ok().and_then(|g| g.status.as_ref());
    let (state, next_change, reason, message) = match &grant.0 {
        Err(invalid) => (
            None,
            None,
            "InvalidObject".to_owned(),
            format!("the Grant cannot be read: {}", invalid.error),
        ),
        Ok(grant) => {
            let validity = grant_validity(grant, now);
            let expires_at = grant.spec.expires_at.as_ref().map(|at| at.0);
            let message = match (validity.state, expires_at) {
                (GrantState::NotYetValid, _) => format!(
                    "not yet in force; it confers nothing before {}",
                    validity
                        .next_change
                        .map(|at| at.to_string())
                        .unwrap_or_default()
                ),
                (GrantState::Active, None) => "in force; it never expires".to_owned(),
                (GrantState::Active, Some(at)) => format!("in force until {at}"),
                (GrantState::Expired, _) => format!(
                    "expired at {}; it confers nothing: delete it",
                    expires_at.map(|at| at.to_string()).unwrap_or_default()
                ),
                (GrantState::Revoked, _) => "being deleted; it confers nothing".to_owned(),
            };
            // The reason is the state's name.
            let reason = name_of(&validity.state);
            (Some(validity.state), validity.next_change, reason, message)
        }
    };
    let ready = condition(
        previous_conditions(status.map(|s| &s.conditions)),
        READY,
        state == Some(GrantState::Active),
        &reason,
        message,
        grant.meta().generation,
        &Time(now),
    );
    let desired = GrantStatus {
        state,
        last_used_at: None,
        conditions: vec![ready],
    };
    (desired, next_change)
}

/// Reconciles a Grant's status: writes only when its state or condition
/// changed, and comes back at the next change of state.
pub async fn reconcile_grant(
    grant: Arc<DeserializeGuard<Grant>>,
    ctx: Arc<StatusContext>,
) -> Result<Action, Error> {
    let now = (ctx.clock)();
    let (desired, next_change) = grant_status(&grant, now);
    let previous = grant
        .0
        .as_ref()
        .ok()
        .and_then(|g| g.status.clone())
        .map(|status| GrantStatus {
            last_used_at: None,
            ..status
        });
    patch_status_if_changed(&ctx.client, grant.as_ref(), previous.as_ref(), &desired).await?;
    ctx.backoff.succeeded(grant.as_ref());
    Ok(match next_change {
        Some(at) => {
            Action::requeue(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
        }
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::SignedDuration;

    use super::*;
    use crate::policy::validity::tests::now;

    fn grant(expires_in: Option<i64>) -> Grant {
        let mut grant = crate::policy::validity::tests::grant(expires_in);
        grant.metadata.generation = Some(1);
        grant
    }

    fn shown(grant: &Grant, at: Timestamp) -> (GrantStatus, Option<Timestamp>) {
        grant_status(&DeserializeGuard(Ok(grant.clone())), at)
    }

    #[test]
    fn the_state_follows_the_expiry_and_comes_back_when_it_changes() {
        let expiring = grant(Some(60));
        let (active, next) = shown(&expiring, now());
        assert_eq!(active.state, Some(GrantState::Active));
        assert_eq!(active.conditions[0].status, "True");
        assert_eq!(next, Some(now() + SignedDuration::from_secs(60)));
        let (expired, next) = shown(&expiring, now() + SignedDuration::from_secs(60));
        assert_eq!(expired.state, Some(GrantState::Expired));
        assert_eq!(
            (
                expired.conditions[0].status.as_str(),
                expired.conditions[0].reason.as_str()
            ),
            ("False", "Expired")
        );
        assert_eq!(next, None, "expired for good: nothing to come back for");
        assert_eq!(shown(&grant(None), now()).1, None);
    }

    #[test]
    fn a_grant_not_yet_valid_says_so_and_comes_back_when_it_starts() {
        let mut windowed = grant(Some(120));
        let starts = now() + SignedDuration::from_secs(60);
        windowed.spec.not_before = Some(Time(starts));
        let (waiting, next) = shown(&windowed, now());
        assert_eq!(waiting.state, Some(GrantState::NotYetValid));
        assert_eq!(
            (
                waiting.conditions[0].status.as_str(),
                waiting.conditions[0].reason.as_str()
            ),
            ("False", "NotYetValid")
        );
        assert!(
            waiting.conditions[0].message.contains(&starts.to_string()),
            "{}",
            waiting.conditions[0].message
        );
        assert_eq!(next, Some(starts), "looked at again when it starts");
        let (started, next) = shown(&windowed, starts);
        assert_eq!(started.state, Some(GrantState::Active));
        assert_eq!(next, Some(now() + SignedDuration::from_secs(120)));
    }

    #[test]
    fn an_unchanged_grant_keeps_an_identical_status() {
        let mut grant = grant(Some(3600));
        let (first, _) = shown(&grant, now());
        grant.status = Some(GrantStatus {
            last_used_at: Some(Time(now())),
            ..first.clone()
        });
        let (again, _) = shown(&grant, now() + SignedDuration::from_secs(600));
        assert_eq!(again, first, "only the time moved: the same status");
    }

    #[test]
    fn revoked_and_unreadable_grants_say_so() {
        let mut revoked = grant(None);
        revoked.metadata.deletion_timestamp = Some(Time(now()));
        let (status, _) = shown(&revoked, now());
        assert_eq!(status.state, Some(GrantState::Revoked));
        assert_eq!(status.conditions[0].reason, "Revoked");

        let unreadable: DeserializeGuard<Grant> = serde_json::from_value(serde_json::json!({
            "apiVersion": "wopr.dev/v1alpha1", "kind": "Grant",
            "metadata": {"name": "bad", "namespace": "ns"},
            "spec": {"subject": 7}
        }))
        .unwrap();
        let (status, next) = grant_status(&unreadable, now());
        assert_eq!(status.state, None);
        assert_eq!(status.conditions[0].reason, "InvalidObject");
        assert_eq!(next, None);
    }
}
