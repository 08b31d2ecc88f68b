//! Showing what happened to a request: its state, an audit event in the
//! trail of the session it is for, a Warning Event, the latency metric.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType as KubeEventType};

use super::Approval;
use crate::api::{
    ApprovalRequest, ApprovalRequestStatus, ApprovalState, Enforcement, Gateway, SourceRef,
    SourceType, TrustLevel,
};
use crate::audit::{AuditEvent, EventType};
use crate::controller::apply::patch_status_if_changed;
use crate::controller::error::Error;
use crate::policy::Outcome;

impl Approval<'_> {
    /// Counts how long the request waited for what just happened to it.
    pub(super) fn observe_latency(&self) {
        let Some(created) = self.request.metadata.creation_timestamp.as_ref() else {
            return;
        };
        let waited = self.now.duration_since(created.0).as_secs_f64();
        self.ctx.metrics.approval_latency.observe(waited.max(0.0));
    }

    /// Records a decision on the request (by `decided_by`, or by the clock
    /// when `None`) in the trail of the session it is for.
    pub(super) async fn record(
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
    pub(super) async fn set_state(
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
    pub(super) async fn warn(&self, reason: &str, note: String) {
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
