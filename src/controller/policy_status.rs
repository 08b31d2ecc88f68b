//! The SecurityPolicy status controller. A SecurityPolicy's status:
//! readable and in force (only the one named `default` governs its
//! namespace), the Sessions it governs, and whether the cluster refuses
//! trust-level escalation at admission, looked at again every
//! [`ESCALATION_RECHECK`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};

use super::apply::patch_status_if_changed;
use super::conditions::{READY, condition, previous_conditions};
use super::error::Error;
use super::status_context::{StatusContext, list_sessions, sessions_in};
use crate::api::{DEFAULT_POLICY_NAME, ESCALATION_GUARDED, SecurityPolicy, SecurityPolicyStatus};
use crate::cluster::escalation::{Guard, read_escalation_guard};

/// How often a SecurityPolicy's status looks at the escalation guard again:
/// the guard can be removed or changed without any SecurityPolicy changing,
/// so no watch event would tell.
pub const ESCALATION_RECHECK: Duration = Duration::from_secs(5 * 60);

/// The status a SecurityPolicy should have, given the Sessions of its
/// namespace and the cluster's escalation guard. Even a policy that cannot
/// be read shows the guard: it describes the cluster, not the policy.
pub fn policy_status(
    policy: &DeserializeGuard<SecurityPolicy>,
    sessions: &[String],
    guard: &Guard,
    now: &Time,
) -> SecurityPolicyStatus {
    let previous = previous_conditions(
        policy
            .0
            .as_ref()
            .ok()
            .and_then(|p| p.status.as_ref())
            .map(|s| &s.conditions),
    );
    let generation = policy.meta().generation;
    let (ok, reason, message) = match &policy.0 {
        Err(invalid) => (
            false,
            "InvalidObject",
            format!("the SecurityPolicy cannot be read: {}", invalid.error),
        ),
        Ok(_) if policy.name_any() != DEFAULT_POLICY_NAME => (
            false,
            "NotInForce",
            format!(
                "only the SecurityPolicy named {DEFAULT_POLICY_NAME:?} governs a namespace; this one has no effect"
            ),
        ),
        Ok(_) => (
            true,
            "InForce",
            format!("governs {}", list_sessions(sessions)),
        ),
    };
    SecurityPolicyStatus {
        conditions: vec![
            condition(previous, READY, ok, reason, message, generation, now),
            condition(
                previous,
                ESCALATION_GUARDED,
                guard.guarded,
                guard.reason,
                guard.message.clone(),
                generation,
                now,
            ),
        ],
        observed_generation: generation,
    }
}

/// How long one reading of the guard serves every SecurityPolicy: the
/// guard is cluster-wide, so a thousand namespaces need not read it a
/// thousand times.
pub const GUARD_FRESH: Duration = Duration::from_secs(30);

/// The last reading of the guard, shared by the SecurityPolicy reconciles.
#[derive(Default)]
pub struct GuardCache {
    last: Mutex<Option<(Instant, Guard)>>,
}

impl GuardCache {
    /// The guard as read at most [`GUARD_FRESH`] ago, else read now. One
    /// reconcile reads while the others wait for its answer.
    pub async fn read(&self, client: &Client) -> Result<Guard, Error> {
        let mut last = self.last.lock().await;
        if let Some((at, guard)) = last.as_ref()
            && at.elapsed() < GUARD_FRESH
        {
            return Ok(guard.clone());
        }
        let guard = read_escalation_guard(client).await?;
        *last = Some((Instant::now(), guard.clone()));
        Ok(guard)
    }
}

/// Reconciles a SecurityPolicy's status.
pub async fn reconcile_policy(
    policy: Arc<DeserializeGuard<SecurityPolicy>>,
    ctx: Arc<StatusContext>,
) -> Result<Action, Error> {
    let sessions = sessions_in(&ctx.sessions, policy.namespace().as_deref());
    let guard = ctx.escalation_guard.read(&ctx.client).await?;
    let desired = policy_status(&policy, &sessions, &guard, &Time((ctx.clock)()));
    let previous = policy.0.as_ref().ok().and_then(|p| p.status.as_ref());
    patch_status_if_changed(&ctx.client, policy.as_ref(), previous, &desired).await?;
    ctx.backoff.succeeded(policy.as_ref());
    Ok(Action::requeue(ESCALATION_RECHECK))
}
