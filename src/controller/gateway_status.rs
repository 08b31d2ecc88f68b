//! The Gateway status controller. A Gateway's status: readable, whether
//! its Session exists and is within the Gateway's trust level, which
//! Sessions its rules list above that level (forwards to them are
//! refused), and what the store knows of its forwards (waiting for
//! approval, per rule, the last decision), looked at again every
//! [`REFRESH`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::apply::patch_status_if_changed;
use super::conditions::{READY, condition, previous_conditions};
use super::error::Error;
use super::status_context::{LISTED_SESSIONS, StatusContext};
use crate::api::{Gateway, GatewayDecision, GatewayStatus, RuleForwards, Session, TrustLevel};
use crate::policy::{targets_above_level, within_level};
use crate::store::{ForwardState, GatewaySummary};

/// How often a Gateway's forward counts are brought up to date.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Condition: every Session the Gateway's rules list is at or below its
/// trust level (False, `TargetAboveLevel`: which rule lists which Session;
/// forwards to them are refused).
pub const TARGETS_WITHIN_LEVEL: &str = "TargetsWithinLevel";

/// The status a Gateway should have, given the readable Sessions of its
/// namespace (name and trust level) and what the store knows of its
/// forwards (`None`: keep what it shows).
pub fn gateway_status(
    gateway: &DeserializeGuard<Gateway>,
    sessions: &[(String, TrustLevel)],
    forwards: Option<&GatewaySummary>,
    now: &Time,
) -> GatewayStatus {
    let status = gateway.0.as_ref().ok().and_then(|g| g.status.as_ref());
    let generation = gateway.meta().generation;
    let previous = previous_conditions(status.map(|s| &s.conditions));
    let served = gateway.0.as_ref().ok().and_then(|gateway| {
        sessions
            .iter()
            .find(|(name, _)| *name == gateway.spec.session)
            .map(|(_, level)| *level)
    });
    let (ok, reason, message) = match (&gateway.0, served) {
        (Err(invalid), _) => (
            false,
            "InvalidObject",
            format!("the Gateway cannot be read: {}", invalid.error),
        ),
        (Ok(gateway), None) => (
            false,
            "SessionNotFound",
            format!(
                "Session {:?} does not exist in this namespace",
                gateway.spec.session
            ),
        ),
        (Ok(gateway), Some(level)) if !within_level(gateway.spec.trust_level, level) => (
            false,
            "SessionAboveLevel",
            format!(
                "Session {} is {level}, above the Gateway's trustLevel {}: it serves as no gateway (takes no untrusted input, forwards nothing); a Gateway at trustLevel {level} needs use on trustlevels.wopr.dev named {level}",
                gateway.spec.session, gateway.spec.trust_level
            ),
        ),
        (Ok(gateway), Some(_)) => (
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
    let mut conditions = vec![condition(
        previous, READY, ok, reason, message, generation, now,
    )];
    if let Ok(gateway) = &gateway.0 {
        let (ok, reason, message) = targets_condition(&gateway.spec, sessions);
        conditions.push(condition(
            previous,
            TARGETS_WITHIN_LEVEL,
            ok,
            reason,
            message,
            generation,
            now,
        ));
    }
    GatewayStatus {
        pending,
        forwards: per_rule,
        last_decision,
        conditions,
        observed_generation: generation,
    }
}

/// [`TARGETS_WITHIN_LEVEL`]: the first few rule and Session pairs above
/// the Gateway's level, then a count.
fn targets_condition(
    gateway: &crate::api::GatewaySpec,
    sessions: &[(String, TrustLevel)],
) -> (bool, &'static str, String) {
    let above = targets_above_level(gateway, sessions);
    let declared = gateway.trust_level;
    if above.is_empty() {
        return (
            true,
            "WithinLevel",
            format!("every Session its rules list is at or below trustLevel {declared}"),
        );
    }
    let mut listed: Vec<String> = above
        .iter()
        .take(LISTED_SESSIONS)
        .map(|target| {
            format!(
                "rule {} lists {} ({})",
                target.rule, target.session, target.level
            )
        })
        .collect();
    if above.len() > LISTED_SESSIONS {
        listed.push(format!("and {} more", above.len() - LISTED_SESSIONS));
    }
    (
        false,
        "TargetAboveLevel",
        format!(
            "forwards to these are refused, above the Gateway's trustLevel {declared}: {}; routing to a Session at level L takes a Gateway at trustLevel L, which needs use on trustlevels.wopr.dev named L",
            listed.join(", ")
        ),
    )
}

/// The readable Sessions of `namespace`, by name, with their levels.
fn session_levels(ctx: &StatusContext, namespace: &str) -> Vec<(String, TrustLevel)> {
    let mut levels: Vec<(String, TrustLevel)> = ctx
        .sessions
        .state_filter(|session| session.meta().namespace.as_deref() == Some(namespace))
        .iter()
        .filter_map(|session| {
            let session: &Session = session.0.as_ref().ok()?;
            Some((session.name_any(), session.spec.trust_level))
        })
        .collect();
    levels.sort_unstable();
    levels
}

/// Reconciles a Gateway's status.
pub async fn reconcile_gateway(
    gateway: Arc<DeserializeGuard<Gateway>>,
    ctx: Arc<StatusContext>,
) -> Result<Action, Error> {
    let namespace = gateway.namespace().unwrap_or_default();
    let sessions = session_levels(&ctx, &namespace);
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
    let desired = gateway_status(&gateway, &sessions, summary.as_ref(), &Time(now));
    let previous = gateway.0.as_ref().ok().and_then(|g| g.status.as_ref());
    patch_status_if_changed(&ctx.client, gateway.as_ref(), previous, &desired).await?;
    ctx.backoff.succeeded(gateway.as_ref());
    Ok(Action::requeue(REFRESH))
}
