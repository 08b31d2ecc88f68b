//! Conditions as every controller writes them: a transition time that
//! stays put while the status does not change, so an unchanged world
//! yields an identical status (and no write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition: the object is valid and in force (for a Session: its policy
/// resolved and its sandbox is ready).
pub const READY: &str = "Ready";

/// The conditions an object's status showed, none when it had no status.
pub fn previous_conditions(conditions: Option<&Vec<Condition>>) -> &[Condition] {
    conditions.map(Vec::as_slice).unwrap_or_default()
}

/// A condition whose `lastTransitionTime` is the previous one's when its
/// status did not change, `now` otherwise.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    condition_with_status(previous, type_, status, reason, message, generation, now)
}

/// [`condition`] with any status (`True`, `False`, `Unknown`).
pub fn condition_with_status(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}
