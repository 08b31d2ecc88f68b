//! The status of a SecurityPolicy: readable and in force (only the one
//! named `default` governs its namespace), and the Sessions it governs.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::{StatusContext, list_sessions, previous_conditions, sessions_in};
use crate::api::{DEFAULT_POLICY_NAME, SecurityPolicy, SecurityPolicyStatus};
use crate::controller::apply::patch_status_if_changed;
use crate::controller::error::Error;
use crate::controller::status::{READY, condition};

/// The status a SecurityPolicy should have, given the Sessions of its namespace.
pub fn policy_status(
    policy: &DeserializeGuard<SecurityPolicy>,
    sessions: &[String],
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
        conditions: vec![condition(
            previous, READY, ok, reason, message, generation, now,
        )],
        observed_generation: generation,
    }
}

/// Reconciles a SecurityPolicy's status.
pub async fn reconcile_policy(
    policy: Arc<DeserializeGuard<SecurityPolicy>>,
    ctx: Arc<StatusContext>,
) -> Result<Action, Error> {
    if !ctx.leadership.is_leader() {
        return Ok(Action::await_change());
    }
    let sessions = sessions_in(&ctx.sessions, policy.namespace().as_deref());
    let desired = policy_status(&policy, &sessions, &Time((ctx.clock)()));
    let previous = policy.0.as_ref().ok().and_then(|p| p.status.as_ref());
    patch_status_if_changed(&ctx.client, policy.as_ref(), previous, &desired).await?;
    ctx.backoff.succeeded(policy.as_ref());
    Ok(Action::await_change())
}
