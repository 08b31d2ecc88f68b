//! Verifying, from inside the pod, what the sandbox promises: the sidecar
//! shares the agent's network namespace and cgroup, so what it can reach
//! and what limits it sees are the agent's. Two checks ([`network`],
//! [`pids`]) become the Session's `NetworkIsolated` and `PidsLimited`
//! conditions (reported to the control plane), a log line, and, when the
//! sandbox requires verified isolation, the gate the agent waits behind:
//! the sidecar's overall gRPC health, which `sidecar-ready` (the postStart
//! hook) waits for.

pub mod network;
pub mod pids;

use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::NetworkMode;
use crate::proto::v1alpha1 as pb;
use network::{EgressAllow, ProbeTarget};
use pids::CgroupFiles;

/// A check's status, as a Kubernetes condition's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Verified.
    True,
    /// Found broken (or, for the network, not promised).
    False,
    /// Could not tell.
    Unknown,
}

impl Status {
    /// `True`, `False` or `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The condition type (`NetworkIsolated`, `PidsLimited`).
    pub kind: &'static str,
    /// Its status.
    pub status: Status,
    /// A CamelCase reason.
    pub reason: &'static str,
    /// The evidence.
    pub message: String,
    /// Whether it lets an agent that requires verified isolation start.
    pub holds: bool,
}

impl Check {
    /// A check result.
    pub fn new(
        kind: &'static str,
        status: Status,
        reason: &'static str,
        message: String,
        holds: bool,
    ) -> Check {
        Check {
            kind,
            status,
            reason,
            message,
            holds,
        }
    }

    /// The wire form.
    pub fn to_wire(&self) -> pb::IsolationCheck {
        pb::IsolationCheck {
            r#type: self.kind.to_owned(),
            status: self.status.as_str().to_owned(),
            reason: self.reason.to_owned(),
            message: self.message.clone(),
        }
    }
}

/// What the sandbox promises and how to check it.
#[derive(Clone, Debug)]
pub struct IsolationConfig {
    /// The sandbox's network mode (`None`: not told).
    pub network: Option<NetworkMode>,
    /// What the egress allow-list admits (`restricted`).
    pub egress_allowed: Vec<EgressAllow>,
    /// Addresses the sandbox must not reach.
    pub probes: Vec<ProbeTarget>,
    /// How long a probe waits for an answer.
    pub probe_timeout: Duration,
    /// Where the cgroup files are.
    pub cgroup: CgroupFiles,
    /// Whether the agent waits for the checks to hold.
    pub required: bool,
}

/// Runs both checks.
pub async fn verify(config: &IsolationConfig) -> Vec<Check> {
    vec![
        network::check(
            config.network,
            &config.probes,
            &config.egress_allowed,
            config.probe_timeout,
        )
        .await,
        pids::check(&config.cgroup, pids::read_file),
    ]
}

/// Whether `checks` let an agent that requires verified isolation start.
pub fn agent_may_start(checks: &[Check]) -> bool {
    checks.iter().all(|check| check.holds)
}

/// How often the checks run again while they do not hold (the network
/// plugin may still be programming the pod's policy), and once they do.
const RECHECK_FAILING: Duration = Duration::from_secs(2);
const RECHECK_HOLDING: Duration = Duration::from_secs(300);

/// Checks the sandbox until the process ends: logs each new result,
/// reports it with `report` (retried until accepted), and keeps the overall
/// health NOT_SERVING while isolation is required and not yet verified and
/// reported, so the agent does not start.
pub async fn verify_forever<R, F, E>(config: IsolationConfig, health: HealthReporter, report: R)
where
    R: Fn(Vec<pb::IsolationCheck>) -> F,
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut last: Option<Vec<Check>> = None;
    let mut reported = false;
    loop {
        let checks = verify(&config).await;
        if last.as_ref() != Some(&checks) {
            for check in &checks {
                tracing::info!(check = check.kind, status = check.status.as_str(), reason = check.reason, message = %check.message, "sandbox check");
            }
            reported = false;
        }
        if !reported {
            match report(checks.iter().map(Check::to_wire).collect()).await {
                Ok(()) => reported = true,
                Err(error) => {
                    tracing::warn!(%error, "could not report the sandbox checks; retrying")
                }
            }
        }
        let holds = agent_may_start(&checks);
        if config.required {
            let status = if holds && reported {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
        }
        last = Some(checks);
        let next = if holds && reported {
            RECHECK_HOLDING
        } else {
            RECHECK_FAILING
        };
        tokio::time::sleep(next).await;
    }
}
