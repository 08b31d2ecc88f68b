//! What sidecars verified of their sandboxes, recorded as conditions of
//! their pods (`wopr.dev/NetworkIsolated`, `wopr.dev/PidsLimited`).
//!
//! A sidecar reports to whichever replica it is connected to, and only the
//! leader writes Session status; pod conditions are the shared record in
//! between, the way readiness gates are: this replica writes them with the
//! operator's field manager (they are the only fields of the pod's status
//! it owns), the pod watch wakes the leader, which copies them into the
//! Session's status.
//!
//! A report is a claim: whoever holds the pod's token could send one. So a
//! claim counts only when it comes from the pod's own address (which the
//! controller sees in the pod's status); one from anywhere else is recorded
//! as `Unknown` with reason [`UNVERIFIED_REPORTER`], the claim in its
//! message. The agent's start is not at stake: the sidecar holds it back on
//! its own checks, inside the pod.

use std::future::Future;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::writes::WriteError;
use crate::api::{NETWORK_ISOLATED, PIDS_LIMITED};
use crate::audit::truncated;
use crate::cluster::{FIELD_MANAGER, describe};
use crate::contract::{POD_CONDITION_PREFIX, child_name};
use crate::proto::v1alpha1 as pb;

/// The longest message a check may carry, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 2048;
/// The reason of a check reported from somewhere other than its pod.
pub const UNVERIFIED_REPORTER: &str = "UnverifiedReporter";

/// Records checks of a session's sandbox.
pub trait IsolationRecorder: Send + Sync + 'static {
    /// Records `conditions` for the pod of `namespace/session`, as
    /// claimed by a caller at `reporter` (unknown when the transport does
    /// not say).
    fn record(
        &self,
        namespace: &str,
        session: &str,
        reporter: Option<IpAddr>,
        conditions: Vec<PodCondition>,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;
}

/// The addresses of `pod`, as its status lists them.
fn pod_addresses(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let listed = status.pod_ips.iter().flatten().map(|ip| ip.ip.as_str());
    status
        .pod_ip
        .as_deref()
        .into_iter()
        .chain(listed)
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// What `conditions`, claimed from `reporter`, establish about `pod`: all
/// of them when the claim comes from one of the pod's addresses; else
/// each is `Unknown`, its reason [`UNVERIFIED_REPORTER`], its message
/// saying where it came from and what it claimed.
pub fn as_claims(
    pod: &Pod,
    reporter: Option<IpAddr>,
    conditions: Vec<PodCondition>,
) -> Vec<PodCondition> {
    let addresses = pod_addresses(pod);
    let reporter = reporter.map(|ip| ip.to_canonical());
    if reporter.is_some_and(|ip| addresses.contains(&ip)) {
        return conditions;
    }
    let from = reporter.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let listed: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    conditions
        .into_iter()
        .map(|condition| {
            let claim = format!(
                "reported from {from}, not from pod {pod_name} ({}); it claimed {} {}: {}",
                if listed.is_empty() {
                    "no address yet".to_owned()
                } else {
                    listed.join(", ")
                },
                condition.status,
                condition.reason.as_deref().unwrap_or_default(),
                condition.message.as_deref().unwrap_or_default(),
            );
            PodCondition {
                status: "Unknown".into(),
                reason: Some(UNVERIFIED_REPORTER.into()),
                message: Some(truncated(&claim, MAX_MESSAGE_BYTES).into_owned()),
                ..condition
            }
        })
        .collect()
}

/// Why a sandbox report is refused (a sidecar of this version never sends
/// one): the check, and what is malformed in it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedCheck {
    #[error("unknown check type {0:?}")]
    UnknownType(String),
    #[error("check {0} reported twice")]
    Twice(String),
    #[error("{0}: status must be True, False or Unknown")]
    Status(String),
    #[error("{check}: reason {reason:?} is not CamelCase")]
    Reason { check: String, reason: String },
    #[error("{0}: message longer than {MAX_MESSAGE_BYTES} bytes")]
    MessageTooLong(String),
}

/// The pod conditions `checks` stand for, stamped `now`; an error names
/// what is malformed.
pub fn pod_conditions(
    checks: &[pb::IsolationCheck],
    now: Timestamp,
) -> Result<Vec<PodCondition>, MalformedCheck> {
    let mut seen = Vec::new();
    checks
        .iter()
        .map(|check| {
            let kind = || check.r#type.clone();
            if ![NETWORK_ISOLATED, PIDS_LIMITED].contains(&check.r#type.as_str()) {
                return Err(MalformedCheck::UnknownType(kind()));
            }
            if seen.contains(&check.r#type) {
                return Err(MalformedCheck::Twice(kind()));
            }
            seen.push(check.r#type.clone());
            if !["True", "False", "Unknown"].contains(&check.status.as_str()) {
                return Err(MalformedCheck::Status(kind()));
            }
            if !is_condition_reason(&check.reason) {
                return Err(MalformedCheck::Reason {
                    check: kind(),
                    reason: check.reason.clone(),
                });
            }
            if check.message.len() > MAX_MESSAGE_BYTES {
                return Err(MalformedCheck::MessageTooLong(kind()));
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

/// Writes the conditions into the pod's status with server-side apply,
/// after checking the claim against the pod ([`as_claims`]).
pub struct PodStatusConditions {
    client: Client,
}

impl PodStatusConditions {
    /// A recorder using `client` (which needs `get` on pods and `patch` on
    /// `pods/status`).
    pub fn new(client: Client) -> PodStatusConditions {
        PodStatusConditions { client }
    }
}

impl IsolationRecorder for PodStatusConditions {
    async fn record(
        &self,
        namespace: &str,
        session: &str,
        reporter: Option<IpAddr>,
        conditions: Vec<PodCondition>,
    ) -> Result<(), WriteError> {
        let failed = |error: kube::Error| WriteError::Failed(describe(&error));
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let name = child_name(session);
        let pod = pods.get(&name).await.map_err(failed)?;
        let conditions = as_claims(&pod, reporter, conditions);
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
        .map_err(failed)
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

    fn pod_at(ips: &[&str]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "wopr-a"},
            "status": {
                "podIP": ips.first(),
                "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            },
        }))
        .unwrap()
    }

    fn claimed() -> Vec<PodCondition> {
        pod_conditions(
            &[check(
                "NetworkIsolated",
                "True",
                "Blocked",
                "blocked: apiserver",
            )],
            Timestamp::UNIX_EPOCH,
        )
        .unwrap()
    }

    #[test]
    fn a_claim_from_the_pods_own_address_stands() {
        let pod = pod_at(&["10.0.0.7", "fd00::7"]);
        for reporter in ["10.0.0.7", "fd00::7", "::ffff:10.0.0.7"] {
            let conditions = as_claims(&pod, reporter.parse().ok(), claimed());
            assert_eq!(conditions, claimed(), "from {reporter}");
        }
    }

    #[test]
    fn a_claim_from_anywhere_else_is_unknown_and_says_what_it_claimed() {
        for (pod, reporter) in [
            (pod_at(&["10.0.0.7"]), Some("10.0.0.8")),
            (pod_at(&["10.0.0.7"]), None),
            (pod_at(&[]), Some("10.0.0.7")),
        ] {
            let reporter = reporter.map(|ip| ip.parse().unwrap());
            let [condition] = as_claims(&pod, reporter, claimed()).try_into().unwrap();
            assert_eq!(condition.status, "Unknown");
            assert_eq!(condition.reason.as_deref(), Some(UNVERIFIED_REPORTER));
            let message = condition.message.unwrap();
            assert!(
                message.contains("not from pod wopr-a")
                    && message.contains("it claimed True Blocked: blocked: apiserver"),
                "{message}"
            );
        }
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
            assert!(error.to_string().contains(why), "{error}");
        }
        let twice = [
            check("PidsLimited", "True", "Limited", ""),
            check("PidsLimited", "False", "Unlimited", ""),
        ];
        assert!(
            pod_conditions(&twice, Timestamp::UNIX_EPOCH)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
