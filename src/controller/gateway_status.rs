//! The Gateway status controller. A Gateway's status: readable, whether
//! its Session exists, and what the store knows of its forwards (waiting
//! for approval, per rule, the last decision), looked at again every
//! [`REFRESH`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::apply::patch_status_if_changed;
use super::conditions::{READY, condition, previous_conditions};
use super::error::Error;
use super::status_context::StatusContext;
use crate::api::{Gateway, GatewayDecision, GatewayStatus, RuleForwards};
use crate::store::{ForwardState, GatewaySummary};

/// How often a Gateway's forward counts are brought up to date.
pub const REFRESH: Duration = Duration::from_secs(30);

/// The status a Gateway should have, given whether its session exists and
/// what the store knows of its forwards (`None`: keep what it shows).
pub fn gateway_status(
    gateway: &DeserializeGuard<Gateway>,
    session_exists: bool,
    forwards: Option<&GatewaySummary>,
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
    let (pending, per_rule, last_decision) = match forwards {
        None => (
            status.and_then(|s| s.pending),
            status.map(|s| s.forwards.clone()).unwrap_or_default(),
            status.and_then(|s| s.last_decision.clone()),
        ),
        Some(summary) => (
            Some(summary.pending),
            summary
                .per_rule
                .iter()
                .map(|&(rule, forwarded)| RuleForwards { rule, forwarded })
                .collect(),
            summary
                .last_decision
                .as_ref()
                .map(|(id, state, at)| GatewayDecision {
                    request_id: id.clone(),
                    decision: match state {
                        ForwardState::Denied => "denied",
                        ForwardState::Expired => "expired",
                        _ => "approved",
                    }
                    .to_owned(),
                    at: Time(*at),
                }),
        ),
    };
    GatewayStatus {
        pending,
        forwards: per_rule,
        last_decision,
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

/// Reconciles a Gateway's status.
pub async fn reconcile_gateway(
    gateway: Arc<DeserializeGuard<Gateway>>,
    ctx: Arc<StatusContext>,
) -> Result<Action, Error> {
    let namespace = gateway.namespace().unwrap_or_default();
    let exists = gateway.0.as_ref().is_ok_and(|g| {
        let session = ObjectRef::new(&g.spec.session).within(&namespace);
        ctx.sessions.get(&session).is_some()
    });
    let now = (ctx.clock)();
    let summary = match ctx
        .store
        .gateway_summary(&namespace, &gateway.name_any(), now)
        .await
    {
        Ok(summary) => Some(summary),
        Err(error) => {
            tracing::warn!(gateway = %gateway.name_any(), %error, "cannot count the gateway's forwards");
            None
        }
    };
    let desired = gateway_status(&gateway, exists, summary.as_ref(), &Time(now));
    let previous = gateway.0.as_ref().ok().and_then(|g| g.status.as_ref());
    patch_status_if_changed(&ctx.client, gateway.as_ref(), previous, &desired).await?;
    ctx.backoff.succeeded(gateway.as_ref());
    Ok(Action::requeue(REFRESH))
}
