//! The ApprovalRequest controller (leader only): shows a new request as
//! Pending, carries out what a person approved exactly once (delivers a
//! forward, or makes an elevation's Grant) and marks it Completed, tells
//! the requester of a denial, and closes what nobody decided in time as
//! Expired, with an Event on its Gateway. What each
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

use crate::api::{
    ApprovalRequest, ApprovalRequestStatus, ApprovalState, ApprovalType, Enforcement, Gateway,
    SourceRef, SourceType, TrustLevel,
};
use crate::approval::{Step, elevation_grant, next_step};
use crate::audit::{AuditEvent, EventType};
use crate::cache::Stores;
use crate::cluster::create_once;
use crate::cluster::lease::Leadership;
use crate::controller::apply::patch_status_if_changed;
use crate::controller::error::Error;
use crate::controller::metrics::Metrics;
use crate::controller::retry::Backoff;
use crate::policy::Outcome;
use crate::store::{ElevationState, ForwardState, InboxLimits, RequestError, Store, StoreError};

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
                step.warn("ApprovalNotCarried", nothing_done).await;
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

impl Approval<'_> {
    /// Closes the request's forward or elevation in the store (telling
    /// its requester); whether this call closed it. A request the broker
    /// never filed has nothing to close.
    async fn close(
        &self,
        forward: ForwardState,
        elevation: ElevationState,
        decided_by: Option<&str>,
        reason: &str,
    ) -> Result<bool, Error> {
        let (store, namespace, name) = (&self.ctx.store, self.namespace, self.name.as_str());
        let closed = match self.request.spec.request_type {
            ApprovalType::Forward => ignore_unknown(
                store
                    .close_forward(namespace, name, forward, decided_by, reason, self.limits)
                    .await,
            )?,
            ApprovalType::Elevation => ignore_unknown(
                store
                    .settle_elevation(namespace, name, elevation, reason, self.now, self.limits)
                    .await,
            )?
            .map(|(_, settled)| settled),
        };
        Ok(closed == Some(true))
    }

    /// Carries out an approved request once: delivers its forward, or
    /// makes its elevation's Grant; whether this call did. `Err` says why
    /// nothing was done (and never will be).
    async fn carry(&self) -> Result<Result<bool, String>, Error> {
        let status = self.request.status.clone().unwrap_or_default();
        let decided_by = status.decided_by.as_deref();
        let approved = format!("approved by {}", decided_by.unwrap_or("someone"));
        let (store, namespace, name) = (&self.ctx.store, self.namespace, self.name.as_str());
        match self.request.spec.request_type {
            ApprovalType::Forward => {
                let delivered = match store.deliver_approved(namespace, name, self.limits).await {
                    Ok(delivered) => delivered,
                    Err(StoreError::Request(error)) => {
                        return Ok(Err(format!("nothing delivered: {error}")));
                    }
                    Err(error) => return Err(error.into()),
                };
                if delivered {
                    let target = self.request.spec.target.as_deref().unwrap_or_default();
                    let reason = format!("{approved}: delivered to {target}");
                    self.record(decided_by, Outcome::Allowed, EventType::Approval, &reason)
                        .await?;
                }
                Ok(Ok(delivered))
            }
            ApprovalType::Elevation => {
                let granted = store
                    .settle_elevation(
                        namespace,
                        name,
                        ElevationState::Granted,
                        &approved,
                        self.now,
                        self.limits,
                    )
                    .await;
                let (elevation, first) = match granted {
                    Ok(granted) => granted,
                    Err(StoreError::Request(error)) => {
                        return Ok(Err(format!("no Grant made: {error}")));
                    }
                    Err(error) => return Err(error.into()),
                };
                let grant = elevation_grant(&elevation);
                create_once(&self.ctx.client, &grant).await?;
                if first {
                    let until = elevation.grant_expires().map(|at| at.to_string());
                    let capabilities: Vec<&str> =
                        elevation.capabilities.iter().map(|c| c.as_str()).collect();
                    let reason = format!(
                        "{approved}: Grant {} gives {} until {}",
                        grant.name_any(),
                        capabilities.join(", "),
                        until.unwrap_or_default()
                    );
                    self.record(decided_by, Outcome::Allowed, EventType::Grant, &reason)
                        .await?;
                }
                Ok(Ok(first))
            }
        }
    }

    /// Counts how long the request waited for what just happened to it.
    fn observe_latency(&self) {
        let Some(created) = self.request.metadata.creation_timestamp.as_ref() else {
            return;
        };
        let waited = self.now.duration_since(created.0).as_secs_f64();
        self.ctx.metrics.approval_latency.observe(waited.max(0.0));
    }

    /// Records a decision on the request (by `decided_by`, or by the clock
    /// when `None`) in the trail of the session it is for.
    async fn record(
        &self,
        decided_by: Option<&str>,
        decision: Outcome,
        event_type: EventType,
        reason: &str,
    ) -> Result<(), Error> {
        let source = SourceRef {
            source_type: SourceType::Person.into(),
            identity: decided_by.unwrap_or_default().to_owned(),
            trust_level: TrustLevel::Owner,
        };
        let session = self.request.spec.target.as_deref().unwrap_or_default();
        let mut event = AuditEvent::new(
            self.now,
            event_type,
            self.namespace,
            session,
            source,
            decision,
            Enforcement::Enforce,
            format!("ApprovalRequest {}: {reason}", self.name),
        );
        event.action = self.request.spec.action.clone();
        self.ctx.store.insert_events(&[event]).await?;
        Ok(())
    }

    /// Shows the request in `state` (with `reason`), by server-side apply
    /// of just those fields: the decision people wrote stays theirs.
    async fn set_state(
        &self,
        object: &DeserializeGuard<ApprovalRequest>,
        state: ApprovalState,
        reason: Option<String>,
    ) -> Result<(), Error> {
        let status = ApprovalRequestStatus {
            state: Some(state),
            decision_reason: reason,
            ..ApprovalRequestStatus::default()
        };
        patch_status_if_changed(&self.ctx.client, object, None, &status).await?;
        Ok(())
    }

    /// A Warning Event on the request's Gateway (on the request itself for
    /// an elevation), naming the request.
    async fn warn(&self, reason: &str, note: String) {
        let request = self.request;
        let regarding = match &request.spec.gateway {
            Some(gateway) => ObjectReference {
                api_version: Some(Gateway::api_version(&()).into_owned()),
                kind: Some(Gateway::kind(&()).into_owned()),
                name: Some(gateway.clone()),
                namespace: Some(self.namespace.to_owned()),
                ..ObjectReference::default()
            },
            None => request.object_ref(&()),
        };
        let event = Event {
            type_: KubeEventType::Warning,
            reason: reason.into(),
            note: Some(format!("ApprovalRequest {}: {note}", self.name)),
            action: "Approve".into(),
            secondary: Some(request.object_ref(&())),
        };
        if let Err(error) = self.ctx.recorder.publish(&event, &regarding).await {
            tracing::warn!(%error, request = %self.name, "cannot publish an approval event");
        }
    }
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
        Err(StoreError::Request(RequestError::NotFound { .. })) => Ok(None),
        Err(error) => Err(error),
    }
}
