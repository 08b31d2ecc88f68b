//! The status of a Gateway: readable, and whether its Session exists.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::{StatusContext, previous_conditions};
use crate::api::{Gateway, GatewayStatus};
use crate::controller::apply::patch_status_if_changed;
use crate::controller::error::Error;
use crate::controller::status::{READY, condition};

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
