//! The controller's side of ApprovalRequests against the in-process
//! control plane's fake API server, and a person deciding them, for the
//! gateway and elevation tests.

use std::sync::Arc;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::json;
use wopr_operator::api::{ApprovalRequest, ApprovalState};
use wopr_operator::cluster::lease::Leadership;
use wopr_operator::controller::approvals::{ApprovalContext, reconcile_approval};
use wopr_operator::controller::retry::Backoff;

use super::NAMESPACE;
use super::sidecar::ControlPlane;

pub fn approval_path(name: &str) -> String {
    format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/approvalrequests/{name}")
}

/// The controller's side of approvals, on the control plane's API server
/// and store, at the time `clock` says.
pub fn approvals(control_plane: &ControlPlane, clock: fn() -> Timestamp) -> Arc<ApprovalContext> {
    Arc::new(ApprovalContext {
        client: control_plane.client.clone(),
        store: control_plane.store.clone(),
        stores: control_plane.stores.clone(),
        leadership: Leadership::always(),
        recorder: Recorder::new(
            control_plane.client.clone(),
            Reporter {
                controller: "wopr-operator".into(),
                instance: None,
            },
        ),
        clock,
        backoff: Backoff::default(),
        metrics: control_plane.controller_metrics.clone(),
        requests: kube::runtime::reflector::store().0,
    })
}

/// Reconciles the ApprovalRequest `name` as it is now on the API server.
pub async fn reconcile(control_plane: &ControlPlane, name: &str, clock: fn() -> Timestamp) {
    let object: ApprovalRequest =
        serde_json::from_value(control_plane.api.get(&approval_path(name)).unwrap()).unwrap();
    reconcile_approval(
        Arc::new(DeserializeGuard(Ok(object))),
        approvals(control_plane, clock),
    )
    .await
    .unwrap();
}

pub fn an_hour_later() -> Timestamp {
    Timestamp::now() + SignedDuration::from_hours(1)
}

pub fn state_of(control_plane: &ControlPlane, name: &str) -> Option<String> {
    let object = control_plane.api.get(&approval_path(name)).unwrap();
    object["status"]["state"].as_str().map(str::to_owned)
}

/// A person decides `name` by patching its status, as `kubectl` would.
pub fn decide(control_plane: &ControlPlane, name: &str, state: ApprovalState, reason: &str) {
    control_plane.api.modify(&approval_path(name), |object| {
        object["status"] = json!({
            "state": state,
            "decidedBy": "alice@example.com",
            "decidedAt": "2026-11-29T12:00:00Z",
            "decisionReason": reason,
        });
    });
}
