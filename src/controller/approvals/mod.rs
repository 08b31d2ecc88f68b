//! The ApprovalRequest controller (leader only): shows a new request as
//! Pending, carries out what a person approved exactly once (delivers a
//! forward, or makes an elevation's Grant) and marks it Completed, tells
//! the requester of a denial, and closes what nobody decided in time as
//! Expired, with an Event on its Gateway. What each
//! request needs next is [`crate::approval::next_step`]; what is delivered
//! comes from the store, so an ApprovalRequest someone wrote by hand
//! delivers nothing. Every outcome is an audit event of the session the
//! request is for, written before the status that shows it.
//!
//! [`reconcile_approval`] takes each request its next step; `carry`
//! does what the step needs in the store, `report` shows it.

mod carry;
mod report;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;

use crate::api::{ApprovalRequest, ApprovalState};
use crate::approval::{Step, next_step};
use crate::audit::EventType;
use crate::cache::Stores;
use crate::cluster::lease::Leadership;
use crate::controller::error::Error;
use crate::controller::leader_only::Led;
use crate::controller::metrics::Metrics;
use crate::controller::retry::Backoff;
use crate::policy::Outcome;
use crate::store::{ElevationState, ForwardState, InboxLimits, Store};

/// A reflector's view of the ApprovalRequests.
type Requests = kube::runtime::reflector::Store<DeserializeGuard<ApprovalRequest>>;

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
    /// The approval latency histogram is the controller's.
    pub metrics: Metrics,
    /// The ApprovalRequests the controller watches, for the gauge of those
    /// pending.
    pub requests: Requests,
}

impl Led for ApprovalContext {
    fn leadership(&self) -> &Leadership {
        &self.leadership
    }
}

/// How many of `requests` wait for a person: Pending, or new (not yet
/// marked).
pub fn pending(requests: &[Arc<DeserializeGuard<ApprovalRequest>>]) -> usize {
    requests
        .iter()
        .filter(|request| match &request.0 {
            Ok(request) => matches!(
                request
                    .status
                    .as_ref()
                    .and_then(|status| status.state.as_ref()),
                None | Some(ApprovalState::Pending)
            ),
            Err(_) => false,
        })
        .count()
}

/// Takes an ApprovalRequest one step on.
pub async fn reconcile_approval(
    object: Arc<DeserializeGuard<ApprovalRequest>>,
    ctx: Arc<ApprovalContext>,
) -> Result<Action, Error> {
    let request = match &object.0 {
        Ok(request) => request,
        Err(invalid) => {
            // Admission validates every ApprovalRequest; one that still
            // cannot be read (a CRD older than its objects) is left alone.
            tracing::warn!(request = %object.name_any(), error = %invalid.error, "unreadable ApprovalRequest left alone");
            return Ok(Action::await_change());
        }
    };
    // Each reconcile (every write to a request, the controller's own
    // included, makes one) refreshes the gauge from the watched requests.
    let waiting = pending(&ctx.requests.state());
    ctx.metrics
        .approvals_pending
        .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    let namespace = object.namespace().ok_or_else(|| Error::NoNamespace {
        kind: "ApprovalRequest",
        name: object.name_any(),
    })?;
    let step = Approval {
        ctx: &ctx,
        request,
        namespace: &namespace,
        name: object.name_any(),
        now: (ctx.clock)(),
        limits: ctx.stores.inbox_limits(&namespace),
    };
    let action = match next_step(request, step.now) {
        Step::MarkPending { expires } => {
            step.set_state(&object, ApprovalState::Pending, None)
                .await?;
            requeue_at(expires, step.now)
        }
        Step::WaitUntil(expires) => requeue_at(expires, step.now),
        Step::Expire => {
            let reason = format!(
                "nobody decided before {}: the request is closed and its requester told",
                request.spec.expires_at.0
            );
            if step
                .close(
                    ForwardState::Expired,
                    ElevationState::Expired,
                    None,
                    &reason,
                )
                .await?
            {
                step.record(None, Outcome::Denied, EventType::Approval, &reason)
                    .await?;
            }
            step.set_state(&object, ApprovalState::Expired, Some(reason.clone()))
                .await?;
            step.warn("ApprovalExpired", reason).await;
            Action::await_change()
        }
        Step::Carry => match step.carry().await? {
            Ok(first) => {
                if first {
                    step.observe_latency();
                }
                step.set_state(&object, ApprovalState::Completed, None)
                    .await?;
                Action::await_change()
            }
            Err(nothing_done) => {
                step.warn("ApprovalNotCarried", nothing_done.to_string())
                    .await;
                Action::await_change()
            }
        },
        Step::Refuse => {
            let status = request.status.clone().unwrap_or_default();
            let decided_by = status.decided_by.as_deref();
            let why = status.decision_reason.unwrap_or_default();
            if step
                .close(
                    ForwardState::Denied,
                    ElevationState::Denied,
                    decided_by,
                    &why,
                )
                .await?
            {
                let reason = format!("denied by {}: {why}", decided_by.unwrap_or("someone"));
                step.record(decided_by, Outcome::Denied, EventType::Approval, &reason)
                    .await?;
            }
            Action::await_change()
        }
        Step::Done => Action::await_change(),
    };
    ctx.backoff.succeeded(object.as_ref());
    Ok(action)
}

/// One reconcile of one ApprovalRequest.
struct Approval<'a> {
    ctx: &'a ApprovalContext,
    request: &'a ApprovalRequest,
    namespace: &'a str,
    name: String,
    now: Timestamp,
    limits: InboxLimits,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(state: Option<ApprovalState>) -> Arc<DeserializeGuard<ApprovalRequest>> {
        let mut request: ApprovalRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "wopr.dev/v1alpha1", "kind": "ApprovalRequest",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"type": "forward", "gateway": "g", "target": "s",
                     "source": {"type": "p2p", "identity": "peer", "trustLevel": "untrusted"},
                     "expiresAt": "2026-12-07T12:00:00Z"},
        }))
        .unwrap();
        request.status = state.map(|state| crate::api::ApprovalRequestStatus {
            state: Some(state),
            ..Default::default()
        });
        Arc::new(DeserializeGuard(Ok(request)))
    }

    #[test]
    fn new_and_pending_requests_wait_for_a_person_decided_ones_do_not() {
        let requests = [
            request(None),
            request(Some(ApprovalState::Pending)),
            request(Some(ApprovalState::Approved)),
            request(Some(ApprovalState::Denied)),
            request(Some(ApprovalState::Expired)),
            request(Some(ApprovalState::Completed)),
        ];
        assert_eq!(pending(&requests), 2);
    }
}
