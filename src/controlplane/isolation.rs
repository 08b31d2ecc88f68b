//! What sidecars verified of their sandboxes, recorded as conditions of
//! their pods (`wopr.dev/NetworkIsolated`, `wopr.dev/PidsLimited`).
//!
//! A sidecar reports to whichever replica it is connected to, and only the
//! leader writes Session status; pod conditions are the shared record in
//! between, the way readiness gates are: this replica writes them with the
//! operator's field manager (they are the only fields of the pod's status
//! it owns), the pod watch wakes the leader, which copies them into the
//! Session's status.

use std::future::Future;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{NETWORK_ISOLATED, PIDS_LIMITED};
use crate::cluster::{FIELD_MANAGER, describe};
use crate::contract::{POD_CONDITION_PREFIX, child_name};
use crate::proto::v1alpha1 as pb;

/// The longest message a check may carry, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// Records checks of a session's sandbox.
pub trait IsolationRecorder: Send + Sync + 'static {
    /// Records `conditions` for the pod of `namespace/session`.
    fn record(
        &self,
        namespace: &str,
        session: &str,
        conditions: Vec<PodCondition>,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The pod conditions `checks` stand for, stamped `now`; an error names
/// what is malformed (a sidecar of this version never sends it).
pub fn pod_conditions(
    checks: &[pb::IsolationCheck],
    now: Timestamp,
) -> Result<Vec<PodCondition>, String> {
    let mut seen = Vec::new();
    checks
        .iter()
        .map(|check| {
            if ![NETWORK_ISOLATED, PIDS_LIMITED].contains(&check.r#type.as_str()) {
                return Err(format!("unknown check type {:?}", check.r#type));
            }
            if seen.contains(&check.r#type) {
                return Err(format!("check {} reported twice", check.r#type));
            }
            seen.push(check.r#type.clone());
            if !["True", "False", "Unknown"].contains(&check.status.as_str()) {
                return Err(format!(
                    "{}: status must be True, False or Unknown",
                    check.r#type
                ));
            }
            if !is_condition_reason(&check.reason) {
                return Err(format!(
                    "{}: reason {:?} is not CamelCase",
                    check.r#type, check.reason
                ));
            }
            if check.message.len() > MAX_MESSAGE_BYTES {
                return Err(format!(
                    "{}: message longer than {MAX_MESSAGE_BYTES} bytes",
                    check.r#type
                ));
            }
            Ok(PodCondition {
                type_: format!("{POD_CONDITION_PREFIX}{}", check.r#type),
                status: check.status.clone(),
                reason: Some(check.reason.clone()),
                message: Some(check.message.clone()),
                last_transition_time: Some(Time(now)),
                ..PodCondition::default()
            })
        })
        .collect()
}

/// A condition reason as the API server accepts it.
fn is_condition_reason(reason: &str) -> bool {
    let mut chars = reason.chars();
    reason.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && reason
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ',' | ':'))
        && !reason.ends_with([',', ':'])
}

/// Writes the conditions into the pod's status with server-side apply.
pub struct PodStatusConditions {
    client: Client,
}

impl PodStatusConditions {
    /// A recorder using `client` (which needs `patch` on `pods/status`).
    pub fn new(client: Client) -> PodStatusConditions {
        PodStatusConditions { client }
    }
}

impl IsolationRecorder for PodStatusConditions {
    async fn record(
        &self,
        namespace: &str,
        session: &str,
        conditions: Vec<PodCondition>,
    ) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let name = child_name(session);
        let patch = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "status": {"conditions": conditions},
        });
        pods.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|error| describe(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(type_: &str, status: &str, reason: &str, message: &str) -> pb::IsolationCheck {
        pb::IsolationCheck {
            r#type: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn checks_become_prefixed_pod_conditions() {
        let conditions = pod_conditions(
            &[
                check(
                    "NetworkIsolated",
                    "False",
                    "Reachable",
                    "reachable: apiserver",
                ),
                check("PidsLimited", "Unknown", "NotVisible", ""),
            ],
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(conditions[0].type_, "wopr.dev/NetworkIsolated");
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[1].reason.as_deref(), Some("NotVisible"));
    }

    #[test]
    fn malformed_checks_are_refused_with_the_reason() {
        let long = "x".repeat(MAX_MESSAGE_BYTES + 1);
        for (bad, why) in [
            (check("Root", "True", "Yes", ""), "unknown check type"),
            (check("PidsLimited", "Maybe", "Yes", ""), "status must be"),
            (
                check("PidsLimited", "True", "not camel", ""),
                "not CamelCase",
            ),
            (check("PidsLimited", "True", "", ""), "not CamelCase"),
            (
                check("PidsLimited", "True", "Limited", &long),
                "longer than",
            ),
        ] {
            let error = pod_conditions(&[bad], Timestamp::UNIX_EPOCH).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
        let twice = [
            check("PidsLimited", "True", "Limited", ""),
            check("PidsLimited", "False", "Unlimited", ""),
        ];
        assert!(
            pod_conditions(&twice, Timestamp::UNIX_EPOCH)
                .unwrap_err()
                .contains("twice")
        );
    }
}
