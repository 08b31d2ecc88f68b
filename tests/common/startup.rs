//! Where a Session's start-up goes: the milestones a pod passes, read off
//! each version of it that a watch delivers (`tests/e2e_startup.rs` times
//! when each is first seen; `tests/harness_objects.rs` checks the reading
//! offline). The API reports container start times to the second only, so
//! a watch's arrival times are the finer clock.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use wopr_operator::contract::{AGENT_CONTAINER, SIDECAR_CONTAINER};

/// The milestones, in the order a Session's pod passes them.
pub const MILESTONES: [&str; 5] = [
    "pod seen",
    "scheduled",
    "sidecar running",
    "agent running",
    "pod Ready",
];

fn running(statuses: Option<&Vec<ContainerStatus>>, name: &str) -> bool {
    statuses
        .into_iter()
        .flatten()
        .any(|s| s.name == name && s.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// The milestones `pod` has reached.
pub fn milestones(pod: &Pod) -> Vec<&'static str> {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let condition = |type_: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == type_ && c.status == "True")
    };
    let reached = [
        true,
        spec.is_some_and(|s| s.node_name.is_some()),
        running(
            status.and_then(|s| s.init_container_statuses.as_ref()),
            SIDECAR_CONTAINER,
        ),
        running(
            status.and_then(|s| s.container_statuses.as_ref()),
            AGENT_CONTAINER,
        ),
        condition("Ready"),
    ];
    MILESTONES
        .iter()
        .zip(reached)
        .filter_map(|(name, reached)| reached.then_some(*name))
        .collect()
}

/// One Session's start-up: when each milestone was first seen, and when
/// the Session was Ready, both since it was created.
pub type Run = (std::collections::BTreeMap<&'static str, Duration>, Duration);

/// The phases from the Session's creation through each milestone to its
/// Ready: for each, the median over the runs that saw both ends, and how
/// many did.
pub fn phases(runs: &[Run]) -> Vec<(String, Duration, usize)> {
    let names: Vec<&str> = std::iter::once("Session created")
        .chain(MILESTONES)
        .chain(["Session Ready"])
        .collect();
    // When each run reached each of `names` (`None`: not seen).
    let reached: Vec<Vec<Option<Duration>>> = runs
        .iter()
        .map(|(seen, ready)| {
            std::iter::once(Some(Duration::ZERO))
                .chain(MILESTONES.iter().map(|m| seen.get(m).copied()))
                .chain([Some(*ready)])
                .collect()
        })
        .collect();
    (1..names.len())
        .filter_map(|i| {
            let mut gaps: Vec<Duration> = reached
                .iter()
                .filter_map(|at| Some(at[i]?.saturating_sub(at[i - 1]?)))
                .collect();
            gaps.sort();
            let median = *gaps.get(gaps.len() / 2)?;
            Some((
                format!("{} → {}", names[i - 1], names[i]),
                median,
                gaps.len(),
            ))
        })
        .collect()
}
