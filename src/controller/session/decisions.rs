//! The controller's own decisions, as audit events in the same store and
//! chain as the sidecars': a Session's effective policy set or changed (a
//! Grant given, expired or revoked, a SecurityPolicy or Gateway edited, the
//! Session itself edited) and a Session refused as invalid.
//!
//! Each is derived from the status transition that shows it, and written
//! before that status: a failed write fails the reconcile, which is retried
//! with the transition still pending, so no decision is lost (one whose
//! status write then fails is recorded again by the retry).

use k8s_openapi::jiff::Timestamp;

use crate::api::{
    Capability, Enforcement, SessionStatus, SourceRef, SourceType, TrustLevel, name_of,
};
use crate::audit::{AuditEvent, EventType};
use crate::cluster::FIELD_MANAGER;
use crate::policy::{EffectiveContext, Outcome};

fn controller() -> SourceRef {
    SourceRef {
        source_type: SourceType::Controller.into(),
        identity: FIELD_MANAGER.into(),
        trust_level: TrustLevel::Owner,
    }
}

/// The event of a Session's effective policy moving from `previous` to
/// `context`, if its policy hash changed.
pub fn policy_changed(
    previous: Option<&SessionStatus>,
    context: &EffectiveContext,
    now: Timestamp,
) -> Option<AuditEvent> {
    let before = previous.and_then(|status| status.policy_hash.as_deref());
    if before == Some(context.policy_hash.as_str()) {
        return None;
    }
    let had: Vec<Capability> = previous
        .and_then(|status| status.effective.as_ref())
        .map(|effective| effective.capabilities.clone())
        .unwrap_or_default();
    let has: Vec<Capability> = context.capabilities.iter().collect();
    let listed = |from: &[Capability], without: &[Capability]| {
        let names: Vec<String> = from
            .iter()
            .filter(|capability| !without.contains(capability))
            .map(name_of)
            .collect();
        format!("[{}]", names.join(", "))
    };
    let (added, removed) = (listed(&has, &had), listed(&had, &has));
    let what = if before.is_none() { "set" } else { "changed" };
    let grants = if context.grants.is_empty() {
        "none".to_owned()
    } else {
        context.grants.join(", ")
    };
    let reason = format!(
        "effective policy {what}: trust level {}, enforcement {}, capabilities added {added}, removed {removed}; grants in force: {grants}",
        name_of(&context.trust_level),
        name_of(&context.enforcement),
    );
    let mut event = AuditEvent::new(
        now,
        EventType::Policy,
        &context.namespace,
        &context.session,
        controller(),
        Outcome::Allowed,
        context.enforcement,
        reason,
    );
    event.policy_hash = Some(context.policy_hash.clone());
    Some(event)
}

/// The event of a Session refused as invalid (`reason`: `InvalidSpec`,
/// `InvalidObject`, `InvalidPolicy`), when its status is about to say so.
pub fn refused_invalid(
    namespace: &str,
    session: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> AuditEvent {
    AuditEvent::new(
        now,
        EventType::Policy,
        namespace,
        session,
        controller(),
        Outcome::Denied,
        Enforcement::Enforce,
        format!("{reason}: {message}; the Session gets no sandbox until it is fixed"),
    )
}
