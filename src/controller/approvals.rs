//! The ApprovalRequest controller (leader only): shows a new request as
//! Pending, carries out what a person approved exactly once and marks it
//! Completed, tells the requester of a denial, and closes what nobody
//! decided in time as Expired, with an Event on its Gateway. What each
//! request needs next is [`crate::approval::next_step`]; what is delivered
//! comes from the store, so an ApprovalRequest someone wrote by hand
//! delivers nothing. Every outcome is an audit event of the session the
//! request is for, written before the status that shows it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder};
use kube::{Client, Resource, ResourceExt};

use super::apply::patch_status_if_changed;
use super::error::Error;
use super::leader::Leadership;
use super::retry::Backoff;
use crate::api::{
    ApprovalRequest, ApprovalRequestStatus, ApprovalState, ApprovalType, Enforcement, Gateway,
    SourceRef, TrustLevel,
};
use crate::approval::{Step, next_step};
use crate::audit::{AuditEvent, EventType};
use crate::cache::Stores;
use crate::policy::Outcome;
use crate::store::{ForwardError, ForwardState, Store, StoreError};

/// The source type of a person deciding an ApprovalRequest.
pub const SOURCE_TYPE_PERSON: &str = "person";

/// What the ApprovalRequest controller works with.
pub struct ApprovalContext {
    pub client: Client,
    /// Forwards and the audit trail.
    pub store: Store,
    /// The namespaces' policies (for their inbox limits).
    pub stores: Stores,
    pub leadership: Leadership,
    pub recorder: Recorder,
    pub clock: fn() -> Timestamp,
    pub backoff: Backoff,
}

/// Takes an ApprovalRequest one step on.
pub async fn reconcile_approval(
    object: Arc<DeserializeGuard<ApprovalRequest>>,
    ctx: Arc<ApprovalContext>,
) -> Result<Action, Error> {
    if !ctx.leadership.is_leader() {
        return Ok(Action::await_change());
    }
    let request = match &object.0 {
        Ok(request) => request,
        Err(invalid) => {
            // Admission validates every ApprovalRequest; one that still
            // cannot be read (a CRD older than its objects) is left alone.
            tracing::warn!(request = %object.name_any(), error = %invalid.error, "unreadable ApprovalRequest left alone");
            return Ok(Action::await_change());
        }
    };
    let namespace = object.namespace().ok_or_else(|| Error::NoNamespace {
        kind: "ApprovalRequest",
        name: object.name_any(),
    })?;
    let name = object.name_any();
    let now = (ctx.clock)();
    let limits = ctx.stores.inbox_limits(&namespace);
    let status = request.status.clone().unwrap_or_default();
    let action = match next_step(request, now) {
        Step::MarkPending { expires } => {
            let pending = ApprovalRequestStatus {
                state: Some(ApprovalState::Pending),
                ..ApprovalRequestStatus::default()
            };
            patch_status_if_changed(&ctx.client, &object, None, &pending).await?;
            requeue_at(expires, now)
        }
        Step::WaitUntil(expires) => requeue_at(expires, now),
        Step::Expire => {
            let reason = format!(
                "nobody decided before {}: the request is closed and its requester told",
                request.spec.expires_at.0
            );
            if request.spec.request_type == ApprovalType::Forward {
                let closed = ctx
                    .store
                    .close_forward(
                        &namespace,
                        &name,
                        ForwardState::Expired,
                        None,
                        &reason,
                        limits,
                    )
                    .await;
                ignore_unknown(closed)?;
            }
            let event = decision_event(
                request,
                &namespace,
                &name,
                None,
                Outcome::Denied,
                &reason,
                now,
            );
            ctx.store.insert_events(&[event]).await?;
            let expired = ApprovalRequestStatus {
                state: Some(ApprovalState::Expired),
                decision_reason: Some(reason.clone()),
                ..ApprovalRequestStatus::default()
            };
            patch_status_if_changed(&ctx.client, &object, None, &expired).await?;
            publish_on_gateway(
                &ctx.recorder,
                request,
                &namespace,
                &name,
                "ApprovalExpired",
                reason,
            )
            .await;
            Action::await_change()
        }
        Step::Carry => {
            let decided_by = status.decided_by.as_deref();
            match request.spec.request_type {
                ApprovalType::Forward => {
                    match ctx.store.deliver_approved(&namespace, &name, limits).await {
                        Ok(delivered) => {
                            if delivered {
                                let reason = format!(
                                    "approved by {}: delivered to {}",
                                    decided_by.unwrap_or("someone"),
                                    request.spec.target.as_deref().unwrap_or_default()
                                );
                                let event = decision_event(
                                    request,
                                    &namespace,
                                    &name,
                                    decided_by,
                                    Outcome::Allowed,
                                    &reason,
                                    now,
                                );
                                ctx.store.insert_events(&[event]).await?;
                            }
                        }
                        Err(StoreError::Forward(error)) => {
                            // Not a forward of the broker's, or closed
                            // already: nothing to deliver, ever.
                            let note = format!("nothing delivered: {error}");
                            publish_on_gateway(
                                &ctx.recorder,
                                request,
                                &namespace,
                                &name,
                                "ApprovalNotCarried",
                                note,
                            )
                            .await;
                            return Ok(Action::await_change());
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                ApprovalType::Elevation => {
                    return Ok(Action::await_change());
                }
            }
            let completed = ApprovalRequestStatus {
                state: Some(ApprovalState::Completed),
                ..ApprovalRequestStatus::default()
            };
            patch_status_if_changed(&ctx.client, &object, None, &completed).await?;
            Action::await_change()
        }
        Step::Refuse => {
            if request.spec.request_type == ApprovalType::Forward {
                let reason = status.decision_reason.clone().unwrap_or_default();
                let decided_by = status.decided_by.as_deref();
                let closed = ctx
                    .store
                    .close_forward(
                        &namespace,
                        &name,
                        ForwardState::Denied,
                        decided_by,
                        &reason,
                        limits,
                    )
                    .await;
                if ignore_unknown(closed)? == Some(true) {
                    let reason = format!("denied by {}: {reason}", decided_by.unwrap_or("someone"));
                    let event = decision_event(
                        request,
                        &namespace,
                        &name,
                        decided_by,
                        Outcome::Denied,
                        &reason,
                        now,
                    );
                    ctx.store.insert_events(&[event]).await?;
                }
            }
            Action::await_change()
        }
        Step::Done => Action::await_change(),
    };
    ctx.backoff.succeeded(object.as_ref());
    Ok(action)
}

/// Retries a failed ApprovalRequest reconcile after its backoff.
pub fn retry_approval(
    object: Arc<DeserializeGuard<ApprovalRequest>>,
    error: &Error,
    ctx: Arc<ApprovalContext>,
) -> Action {
    tracing::warn!(request = %object.name_any(), %error, "approval reconcile failed");
    Action::requeue(ctx.backoff.failed(object.as_ref()))
}

/// Looks again when `at` comes (at once when it has).
fn requeue_at(at: Timestamp, now: Timestamp) -> Action {
    let wait = Duration::try_from(at.duration_since(now)).unwrap_or_default();
    Action::requeue(wait.max(Duration::from_millis(100)))
}

/// A store step's result, with "no such forward" (an ApprovalRequest the
/// broker never filed) as `None`: there is nothing to tell anyone.
fn ignore_unknown<T>(result: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(StoreError::Forward(ForwardError::NotFound { .. })) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The audit event of a decision on `request` (by `decided_by`, or by the
/// clock when `None`), in the trail of the session it is for.
fn decision_event(
    request: &ApprovalRequest,
    namespace: &str,
    name: &str,
    decided_by: Option<&str>,
    decision: Outcome,
    reason: &str,
    now: Timestamp,
) -> AuditEvent {
    let source = SourceRef {
        source_type: SOURCE_TYPE_PERSON.to_owned(),
        identity: decided_by.unwrap_or_default().to_owned(),
        trust_level: TrustLevel::Owner,
    };
    let session = request.spec.target.as_deref().unwrap_or_default();
    let mut event = AuditEvent::new(
        now,
        EventType::Approval,
        namespace,
        session,
        source,
        decision,
        Enforcement::Enforce,
        format!("ApprovalRequest {name}: {reason}"),
    );
    event.action = request.spec.action.clone();
    event
}

/// A Warning Event on the Gateway of `request`, naming the request.
async fn publish_on_gateway(
    recorder: &Recorder,
    request: &ApprovalRequest,
    namespace: &str,
    name: &str,
    reason: &str,
    note: String,
) {
    let regarding = match &request.spec.gateway {
        Some(gateway) => ObjectReference {
            api_version: Some(Gateway::api_version(&()).into_owned()),
            kind: Some(Gateway::kind(&()).into_owned()),
            name: Some(gateway.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        },
        None => request.object_ref(&()),
    };
    let event = Event {
        type_: KubeEventType::Warning,
        reason: reason.into(),
        note: Some(format!("ApprovalRequest {name}: {note}")),
        action: "Approve".into(),
        secondary: Some(request.object_ref(&())),
    };
    if let Err(error) = recorder.publish(&event, &regarding).await {
        tracing::warn!(%error, request = name, "cannot publish an approval event");
    }
}
