//! Status of SecurityPolicies and Gateways: whether each is valid and in
//! force, and which Sessions it governs or serves.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use super::apply::patch_status_if_changed;
use super::context::Leadership;
use super::error::Error;
use super::retry::Backoff;
use super::status::{READY, condition};
use crate::api::{
    DEFAULT_POLICY_NAME, Gateway, GatewayStatus, SecurityPolicy, SecurityPolicyStatus, Session,
};

/// How many session names a status message lists before "and N more".
const LISTED_SESSIONS: usize = 10;

/// Shared state of the SecurityPolicy and Gateway status reconcilers.
pub struct StatusContext {
    /// The Kubernetes client.
    pub client: Client,
    /// The Sessions, to say which ones are governed or served.
    pub sessions: Store<DeserializeGuard<Session>>,
    /// Whether this replica may write.
    pub leadership: Leadership,
    /// The current time.
    pub clock: fn() -> Timestamp,
    /// Failures in a row per object, for the retry delay.
    pub backoff: Backoff,
}

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

/// The status a Gateway should have, given whether its session exists.
pub fn gateway_status(
    gateway: &DeserializeGuard<Gateway>,
    session_exists: bool,
    now: &Time,
) -> GatewayStatus {
    let status = gateway.0.as_ref().ok().and_then(|g| g.status.as_ref());
    let generation = gateway.meta().generation;
    let (ok, reason, message) = match &gateway.0 {
        Err(invalid) => (
            false,
            "InvalidObject",
            format!("the Gateway cannot be read: {}", invalid.error),
        ),
        Ok(gateway) if !session_exists => (
            false,
            "SessionNotFound",
            format!(
                "Session {:?} does not exist in this namespace",
                gateway.spec.session
            ),
        ),
        Ok(gateway) => (
            true,
            "Serving",
            format!(
                "session {} forwards under {} rule(s)",
                gateway.spec.session,
                gateway.spec.forward_rules.len()
            ),
        ),
    };
    GatewayStatus {
        pending: status.and_then(|s| s.pending),
        conditions: vec![condition(
            previous_conditions(status.map(|s| &s.conditions)),
            READY,
            ok,
            reason,
            message,
            generation,
            now,
        )],
        observed_generation: generation,
    }
}

fn previous_conditions(conditions: Option<&Vec<Condition>>) -> &[Condition] {
    conditions.map(Vec::as_slice).unwrap_or_default()
}

fn list_sessions(sessions: &[String]) -> String {
    match sessions.len() {
        0 => "no sessions yet".to_owned(),
        count if count <= LISTED_SESSIONS => format!("{count} session(s): {}", sessions.join(", ")),
        count => format!(
            "{count} sessions: {} and {} more",
            sessions[..LISTED_SESSIONS].join(", "),
            count - LISTED_SESSIONS
        ),
    }
}

/// Names of the Sessions of `namespace`, sorted.
fn sessions_in(store: &Store<DeserializeGuard<Session>>, namespace: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = store
        .state_filter(|session| session.meta().namespace.as_deref() == namespace)
        .iter()
        .map(|session| session.name_any())
        .collect();
    names.sort_unstable();
    names
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

/// Reconciles a Gateway's status.
pub async fn reconcile_gateway(
    gateway: Arc<DeserializeGuard<Gateway>>,
    ctx: Arc<StatusContext>,
) -> Result<Action, Error> {
    if !ctx.leadership.is_leader() {
        return Ok(Action::await_change());
    }
    let namespace = gateway.namespace().unwrap_or_default();
    let exists = gateway.0.as_ref().is_ok_and(|g| {
        let session = ObjectRef::new(&g.spec.session).within(&namespace);
        ctx.sessions.get(&session).is_some()
    });
    let desired = gateway_status(&gateway, exists, &Time((ctx.clock)()));
    let previous = gateway.0.as_ref().ok().and_then(|g| g.status.as_ref());
    patch_status_if_changed(&ctx.client, gateway.as_ref(), previous, &desired).await?;
    ctx.backoff.succeeded(gateway.as_ref());
    Ok(Action::await_change())
}

/// Retries a failed status reconcile after the object's backoff.
pub fn retry<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<StatusContext>,
) -> Action {
    tracing::warn!(object = %object.name_any(), %error, "status reconcile failed");
    Action::requeue(ctx.backoff.failed(object.as_ref()))
}
