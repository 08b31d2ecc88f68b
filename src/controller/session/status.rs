//! Pure status computation: what a Session's status should say, given what
//! reconcile observed. Transition times stay put while a condition's status
//! does not change, so an unchanged world yields an identical status.

use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::rollout::PendingUpdate;
use crate::api::{Enforcement, NETWORK_ISOLATED, PIDS_LIMITED, SessionPhase, SessionStatus};
use crate::contract::POD_CONDITION_PREFIX;
use crate::controller::conditions::{READY, condition, condition_with_status};
use crate::policy::{EffectiveContext, provider_problem};

/// Condition: the effective policy could be resolved.
pub const POLICY_RESOLVED: &str = "PolicyResolved";
/// Condition: the sandbox pod is running and ready.
pub const SANDBOX_READY: &str = "SandboxReady";
/// Condition: the pod runs what the controller builds now (no
/// operator-level change pending).
pub const UP_TO_DATE: &str = "UpToDate";

/// The sandbox pod as reconcile left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Created or waiting for its containers.
    Starting,
    /// The old pod is being deleted to make way for a changed one.
    Replacing,
    /// Running with every container ready.
    Ready,
    /// Failed; it is deleted and recreated.
    Failed(String),
}

/// How reconcile left the pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodOutcome {
    /// Its state.
    pub state: PodState,
    /// An operator-level change it has not taken yet.
    pub pending: Option<PendingUpdate>,
    /// The sandbox checks its sidecar reported (`wopr.dev/` pod conditions).
    pub checks: Vec<PodCondition>,
}

impl PodOutcome {
    /// A pod in `state` with no pending update and nothing reported yet.
    pub fn new(state: PodState) -> PodOutcome {
        PodOutcome {
            state,
            pending: None,
            checks: Vec::new(),
        }
    }
}

/// What reconcile found out about a Session.
#[derive(Clone, Debug)]
pub enum Observation<'a> {
    /// The Session cannot run: its policy cannot be resolved.
    Invalid {
        /// A CamelCase reason (`InvalidSpec`, `InvalidObject`, `InvalidPolicy`).
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The policy resolved and the sandbox is in `pod`.
    Resolved {
        /// The effective context.
        context: &'a EffectiveContext,
        /// The sandbox pod's state.
        pod: PodState,
        /// The pod's name.
        pod_name: String,
        /// An operator-level change the pod has not taken yet.
        pending_update: Option<PendingUpdate>,
        /// The sandbox checks its sidecar reported.
        checks: &'a [PodCondition],
    },
    /// The Session is being deleted.
    Terminating,
}

/// The status a Session should have after `observation`.
pub fn session_status(
    previous: Option<&SessionStatus>,
    generation: Option<i64>,
    observation: &Observation<'_>,
    now: &Time,
) -> SessionStatus {
    let previous_conditions = previous
        .map(|status| status.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(
            previous_conditions,
            type_,
            ok,
            reason,
            message,
            generation,
            now,
        )
    };

    match observation {
        Observation::Terminating => SessionStatus {
            phase: Some(SessionPhase::Terminating),
            observed_generation: generation,
            ..previous.cloned().unwrap_or_default()
        },
        Observation::Invalid { reason, message } => SessionStatus {
            phase: Some(SessionPhase::Failed),
            conditions: vec![
                condition(POLICY_RESOLVED, false, reason, message.clone()),
                condition(
                    SANDBOX_READY,
                    false,
                    "NoSandbox",
                    "an invalid Session has no sandbox".into(),
                ),
                condition(READY, false, reason, message.clone()),
            ],
            effective: None,
            pod_name: None,
            policy_hash: None,
            observed_generation: generation,
        },
        Observation::Resolved {
            context,
            pod,
            pod_name,
            pending_update,
            checks,
        } => {
            let (sandbox_ready, sandbox_reason, sandbox_message) = match pod {
                PodState::Ready => (true, "PodReady", format!("pod {pod_name} is ready")),
                PodState::Starting => (false, "PodStarting", format!("pod {pod_name} is starting")),
                PodState::Replacing => (
                    false,
                    "PodReplacing",
                    format!("pod {pod_name} is being replaced"),
                ),
                PodState::Failed(why) => {
                    (false, "PodFailed", format!("pod {pod_name} failed: {why}"))
                }
            };
            let phase = match pod {
                PodState::Ready => SessionPhase::Ready,
                PodState::Failed(_) => SessionPhase::Failed,
                PodState::Starting | PodState::Replacing => SessionPhase::Pending,
            };
            let (ready, ready_reason, ready_message) = ready(context, sandbox_ready).unwrap_or((
                false,
                sandbox_reason,
                sandbox_message.clone(),
            ));
            SessionStatus {
                phase: Some(phase),
                conditions: vec![
                    condition(
                        POLICY_RESOLVED,
                        true,
                        "Resolved",
                        format!(
                            "trust level {}, policy hash {}",
                            context.trust_level, context.policy_hash
                        ),
                    ),
                    condition(
                        SANDBOX_READY,
                        sandbox_ready,
                        sandbox_reason,
                        sandbox_message,
                    ),
                    condition(READY, ready, ready_reason, ready_message),
                    up_to_date(pod, pending_update.as_ref(), pod_name, condition),
                    sandbox_check(
                        NETWORK_ISOLATED,
                        checks,
                        pod_name,
                        previous_conditions,
                        generation,
                        now,
                    ),
                    sandbox_check(
                        PIDS_LIMITED,
                        checks,
                        pod_name,
                        previous_conditions,
                        generation,
                        now,
                    ),
                ],
                effective: Some(context.summary()),
                pod_name: Some(pod_name.clone()),
                policy_hash: Some(context.policy_hash.clone()),
                observed_generation: generation,
            }
        }
    }
}

/// The Ready condition of a Session whose sandbox is `sandbox_ready`, or
/// `None` while the sandbox is not (its condition says why). Ready also
/// needs the Session's model provider to be one the namespace configures
/// and its level allows, which only here can be checked: admission cannot
/// see the SecurityPolicy or the Grants. The phase still describes the
/// sandbox, whose agent runs (the egress service refuses its model calls).
/// In warn mode a provider the policy does not allow keeps the Session
/// Ready and the message says what enforce mode refuses, as warn mode
/// allows and records such calls; a provider that is not configured cannot
/// be called in either mode.
fn ready(context: &EffectiveContext, sandbox_ready: bool) -> Option<(bool, &'static str, String)> {
    const READY_MESSAGE: &str = "the sandbox runs under its resolved policy";
    match provider_problem(&context.models) {
        Some(problem)
            if context.enforcement == Enforcement::Enforce || !problem.warn_mode_allows() =>
        {
            Some((false, problem.reason(), problem.to_string()))
        }
        _ if !sandbox_ready => None,
        Some(problem) => Some((
            true,
            "Ready",
            format!(
                "{READY_MESSAGE}; warn mode: {problem} ({}: its model calls are allowed and recorded as would_deny)",
                problem.reason()
            ),
        )),
        None => Some((true, "Ready", READY_MESSAGE.to_owned())),
    }
}

/// The UpToDate condition: False while an operator-level change waits or
/// the pod is being replaced.
fn up_to_date(
    pod: &PodState,
    pending: Option<&PendingUpdate>,
    pod_name: &str,
    condition: impl Fn(&str, bool, &str, String) -> Condition,
) -> Condition {
    match (pending, pod) {
        (Some(pending), _) => condition(UP_TO_DATE, false, pending.reason, pending.message.clone()),
        (None, PodState::Replacing) => condition(
            UP_TO_DATE,
            false,
            "Replacing",
            format!("pod {pod_name} is being replaced"),
        ),
        (None, _) => condition(
            UP_TO_DATE,
            true,
            "UpToDate",
            format!("pod {pod_name} runs the current sandbox and operator settings"),
        ),
    }
}

/// The Session condition `type_` (NetworkIsolated, PidsLimited) from the
/// pod condition its sidecar reported; Unknown until it reports.
fn sandbox_check(
    type_: &str,
    checks: &[PodCondition],
    pod_name: &str,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let reported = checks
        .iter()
        .find(|check| check.type_.strip_prefix(POD_CONDITION_PREFIX) == Some(type_));
    let (status, reason, message) = match reported {
        Some(check) => (
            check.status.as_str(),
            check.reason.as_deref().unwrap_or("Reported"),
            check.message.clone().unwrap_or_default(),
        ),
        None => (
            "Unknown",
            "NotReported",
            format!("the sidecar of pod {pod_name} has not reported this check yet"),
        ),
    };
    condition_with_status(previous, type_, status, reason, message, generation, now)
}

/// Warning events for sandbox checks that have just failed: a promise
/// found broken (not a `network: full` sandbox, which promises nothing).
pub fn failed_checks(
    previous: Option<&SessionStatus>,
    desired: &SessionStatus,
) -> Vec<(&'static str, String)> {
    let was_false = |type_: &str| {
        previous.is_some_and(|status| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "False")
        })
    };
    [
        (NETWORK_ISOLATED, "NetworkNotIsolated"),
        (PIDS_LIMITED, "PidsNotLimited"),
    ]
    .into_iter()
    .filter_map(|(type_, event_reason)| {
        let now = desired.conditions.iter().find(|c| c.type_ == type_)?;
        (now.status == "False" && now.reason != NETWORK_NOT_REQUESTED && !was_false(type_))
            .then(|| (event_reason, now.message.clone()))
    })
    .collect()
}

/// The reason of a NetworkIsolated=False that is no failure: `network: full`.
pub const NETWORK_NOT_REQUESTED: &str = "NotRequested";

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{Session, SessionSpec, TrustLevel};
    use crate::policy::{Requirement, ToolId, resolve};

    fn context() -> EffectiveContext {
        let mut session = Session::new("s", SessionSpec::for_trust_level(TrustLevel::SemiTrusted));
        session.metadata.namespace = Some("ns".into());
        resolve(&session, None, &[], &[], Timestamp::UNIX_EPOCH).unwrap()
    }

    fn time(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn resolved<'a>(context: &'a EffectiveContext, pod: PodState) -> Observation<'a> {
        Observation::Resolved {
            context,
            pod,
            pod_name: "wopr-s".into(),
            pending_update: None,
            checks: &[],
        }
    }

    #[test]
    fn unchanged_observations_give_identical_status() {
        let context = context();
        let first = session_status(
            None,
            Some(1),
            &resolved(&context, PodState::Starting),
            &time(10),
        );
        let second = session_status(
            Some(&first),
            Some(1),
            &resolved(&context, PodState::Starting),
            &time(20),
        );
        assert_eq!(first, second);
        assert_eq!(first.phase, Some(SessionPhase::Pending));
    }

    #[test]
    fn transition_times_move_only_on_a_status_change() {
        let context = context();
        let starting = session_status(
            None,
            Some(1),
            &resolved(&context, PodState::Starting),
            &time(10),
        );
        let ready = session_status(
            Some(&starting),
            Some(1),
            &resolved(&context, PodState::Ready),
            &time(20),
        );
        let by_type = |status: &SessionStatus, type_: &str| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == type_)
                .unwrap()
                .clone()
        };
        assert_eq!(
            by_type(&ready, POLICY_RESOLVED).last_transition_time,
            time(10)
        );
        assert_eq!(
            by_type(&ready, SANDBOX_READY).last_transition_time,
            time(20)
        );
        assert_eq!(by_type(&ready, READY).status, "True");
        assert_eq!(ready.phase, Some(SessionPhase::Ready));
        // What the level's capabilities reach, in the registry's order:
        // every tool needing nothing or a capability it holds, none of a
        // gateway's (its tool rules take nothing away).
        let reachable: Vec<&str> = ToolId::all()
            .filter(|id| match id.tool().requires {
                Requirement::Nothing => true,
                Requirement::Capability(capability) => context.capabilities.has(capability),
                Requirement::Gateway => false,
            })
            .map(ToolId::name)
            .collect();
        assert!(reachable.contains(&ToolId::MemoryWrite.name()));
        assert!(!reachable.contains(&ToolId::SessionsSend.name()));
        assert_eq!(ready.effective.as_ref().unwrap().tools, reachable);
    }

    #[test]
    fn invalid_sessions_fail_with_the_reason() {
        let invalid = Observation::Invalid {
            reason: "InvalidSpec",
            message: "spec.sandbox.enabled: no".into(),
        };
        let status = session_status(None, Some(3), &invalid, &time(1));
        assert_eq!(status.phase, Some(SessionPhase::Failed));
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(status.effective, None);
    }
}
