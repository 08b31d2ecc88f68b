//! What to do with a Session's pod, and the pace of operator-level changes.
//!
//! Pods are immutable: any change means a new pod, and the agent in the old
//! one loses its work. A change of the Session's own sandbox (its spec, its
//! policy) is a security change and replaces the pod at once. A change of
//! the operator's settings (sidecar image, flags, control-plane address)
//! follows the update policy: `Immediate`, `Rolling` (a few pods of a
//! namespace at a time, each slot held until the new pod is Ready) or
//! `OnRestart` (when the pod is next recreated anyway).
//!
//! The two kinds are told apart by two hashes on every pod: the hash of the
//! whole pod, and the hash of the pod as built with fixed reference
//! settings (`SESSION_HASH_ANNOTATION`), which only the Session and its
//! policy move.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::build::{POD_TEMPLATE_HASH_ANNOTATION, SESSION_HASH_ANNOTATION};
use super::triggers::SessionRef;
use crate::api::{UpdatePolicy, UpdateType};
use crate::contract::SIDECAR_CONTAINER;

/// A rollout slot held this long without the new pod becoming Ready is
/// given back, so a pod that never starts cannot stall a namespace.
pub const ROLLOUT_DEADLINE: Duration = Duration::from_secs(600);

/// Why a pod is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// It failed or completed; recreated whatever the policy.
    Failed(String),
    /// The Session or its policy changed the sandbox.
    SandboxChanged,
    /// The operator's settings changed (what changed, for the event).
    OperatorChanged(String),
}

/// The pending update's reason while the pod waits for a rollout slot.
pub const WAITING_FOR_ROLLOUT: &str = "WaitingForRollout";
/// The pending update's reason under `OnRestart`.
pub const ON_RESTART: &str = "OnRestart";

/// An operator-level change the pod has not taken yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpdate {
    /// `OnRestart` or `WaitingForRollout`.
    pub reason: &'static str,
    /// What changed and when it will be applied.
    pub message: String,
}

/// What reconcile does with the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodPlan {
    /// There is none: create it.
    Create,
    /// It is being deleted: wait.
    AwaitDeletion,
    /// Delete it; the next reconcile creates the new one.
    Replace(Replacement),
    /// Leave it as it is.
    Keep {
        /// Every container is ready.
        ready: bool,
        /// An operator-level change it has not taken yet.
        pending: Option<PendingUpdate>,
    },
}

/// The plan for `live` when the controller wants `desired`, under `policy`.
/// `take_slot` is asked (once, and only under `Rolling`) whether this pod
/// may be replaced now.
pub fn plan(
    live: Option<&Pod>,
    desired: &Pod,
    policy: &UpdatePolicy,
    take_slot: impl FnOnce() -> bool,
) -> PodPlan {
    let Some(live) = live else {
        return PodPlan::Create;
    };
    if live.metadata.deletion_timestamp.is_some() {
        return PodPlan::AwaitDeletion;
    }
    let phase = live.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Failed" | "Succeeded")) {
        let why = live
            .status
            .as_ref()
            .and_then(|status| status.reason.clone().or_else(|| status.message.clone()))
            .unwrap_or_else(|| format!("phase {}", phase.unwrap_or_default()));
        return PodPlan::Replace(Replacement::Failed(why));
    }
    let annotation = |pod: &Pod, key: &str| pod.annotations().get(key).cloned();
    let live_session_hash = annotation(live, SESSION_HASH_ANNOTATION);
    // A pod without a session hash predates update policies: whatever
    // differs is taken for the operator's upgrade.
    if live_session_hash.is_some()
        && live_session_hash != annotation(desired, SESSION_HASH_ANNOTATION)
    {
        return PodPlan::Replace(Replacement::SandboxChanged);
    }
    let ready = pod_is_ready(live);
    if annotation(live, POD_TEMPLATE_HASH_ANNOTATION)
        == annotation(desired, POD_TEMPLATE_HASH_ANNOTATION)
    {
        return PodPlan::Keep {
            ready,
            pending: None,
        };
    }
    let changed = operator_changes(live, desired);
    match policy.type_ {
        UpdateType::Immediate => PodPlan::Replace(Replacement::OperatorChanged(changed)),
        UpdateType::Rolling if take_slot() => {
            PodPlan::Replace(Replacement::OperatorChanged(changed))
        }
        UpdateType::Rolling => PodPlan::Keep {
            ready,
            pending: Some(PendingUpdate {
                reason: WAITING_FOR_ROLLOUT,
                message: format!(
                    "the operator's settings changed ({changed}); the pod is replaced once fewer than {} of this namespace's session pods are being replaced (updatePolicy Rolling)",
                    policy.max_unavailable()
                ),
            }),
        },
        UpdateType::OnRestart => PodPlan::Keep {
            ready,
            pending: Some(PendingUpdate {
                reason: ON_RESTART,
                message: format!(
                    "the operator's settings changed ({changed}); the pod takes them when it is next recreated (updatePolicy OnRestart): delete it to apply them now"
                ),
            }),
        },
    }
}

/// Whether every container of `pod` is ready.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// What differs between the sidecars of `live` and `desired`, in a few
/// words: its image, the variables whose values changed, or else "the pod
/// template".
fn operator_changes(live: &Pod, desired: &Pod) -> String {
    let sidecar = |pod: &Pod| -> Option<Container> {
        pod.spec
            .as_ref()?
            .init_containers
            .as_ref()?
            .iter()
            .find(|c| c.name == SIDECAR_CONTAINER)
            .cloned()
    };
    let (Some(old), Some(new)) = (sidecar(live), sidecar(desired)) else {
        return "the pod template".to_owned();
    };
    let mut changes = Vec::new();
    if old.image != new.image {
        changes.push(format!(
            "sidecar image {} → {}",
            old.image.as_deref().unwrap_or_default(),
            new.image.as_deref().unwrap_or_default()
        ));
    }
    let values = |container: &Container| -> HashMap<String, String> {
        container
            .env
            .iter()
            .flatten()
            .filter_map(|var| Some((var.name.clone(), var.value.clone()?)))
            .collect()
    };
    let (old_env, new_env) = (values(&old), values(&new));
    let mut names: Vec<&String> = old_env.keys().chain(new_env.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        if old_env.get(name) != new_env.get(name) {
            changes.push(format!("sidecar {name}"));
        }
    }
    if changes.is_empty() {
        "the pod template".to_owned()
    } else {
        changes.join(", ")
    }
}

/// The replacements of operator-level changes in flight, per namespace: at
/// most `maxUnavailable` at a time under `Rolling`. In memory: a new
/// leader starts with none, so a leader change may start one extra batch.
///
/// The budget is a namespace's, but the event that frees a slot (the
/// holder's new pod turning Ready) is a change to the holder's pod, which
/// reconciles the holder alone: nothing told the Sessions waiting for the
/// slot, whose own pods did not change, and each went on only at its own
/// 5 s poll (issue 30, item 4: on a real cluster the last Session of a
/// rollout was not replaced in time). So a Session refused a slot is
/// remembered, and giving a slot back wakes every Session waiting in that
/// namespace (the stream [`Rollouts::new`] returns, which the controller
/// reconciles); each asks again.
#[derive(Clone)]
pub struct Rollouts {
    budgets: Arc<Mutex<HashMap<String, Budget>>>,
    wake: UnboundedSender<SessionRef>,
}

/// One namespace's slots and the Sessions waiting for one.
#[derive(Default)]
struct Budget {
    /// Who holds a slot, since when.
    held: HashMap<String, Instant>,
    /// Who was refused one since it last had one.
    waiting: BTreeSet<String>,
}

impl Rollouts {
    /// No slot held, and the stream of Sessions to reconcile because a slot
    /// they wait for was given back.
    pub fn new() -> (Rollouts, UnboundedReceiverStream<SessionRef>) {
        let (wake, woken) = unbounded_channel();
        let rollouts = Rollouts {
            budgets: Arc::default(),
            wake,
        };
        (rollouts, UnboundedReceiverStream::new(woken))
    }

    /// Takes a slot of `namespace` for `session` (keeps it if it has one);
    /// false when `max` others hold theirs, and `session` then waits.
    pub fn try_take(&self, namespace: &str, session: &str, max: u32, now: Instant) -> bool {
        let mut budgets = self
            .budgets
            .lock()
            .expect("the rollout lock is never poisoned");
        let budget = budgets.entry(namespace.to_owned()).or_default();
        budget
            .held
            .retain(|_, since| now.duration_since(*since) < ROLLOUT_DEADLINE);
        if budget.held.contains_key(session) {
            return true;
        }
        if budget.held.len() >= usize::try_from(max).unwrap_or(usize::MAX) {
            budget.waiting.insert(session.to_owned());
            return false;
        }
        budget.waiting.remove(session);
        budget.held.insert(session.to_owned(), now);
        true
    }

    /// Gives `session`'s slot back (its new pod is Ready, or it is gone)
    /// and stops it waiting; when it held a slot, wakes the Sessions of
    /// `namespace` waiting for one.
    pub fn release(&self, namespace: &str, session: &str) {
        let mut budgets = self
            .budgets
            .lock()
            .expect("the rollout lock is never poisoned");
        let Some(budget) = budgets.get_mut(namespace) else {
            return;
        };
        budget.waiting.remove(session);
        if budget.held.remove(session).is_none() {
            return;
        }
        for waiting in std::mem::take(&mut budget.waiting) {
            // The receiver is gone only when the controller stops.
            let _ = self.wake.send(ObjectRef::new(&waiting).within(namespace));
        }
    }

    /// How long until a slot of `namespace` is given back by its deadline
    /// (a holder whose pod never becomes Ready wakes nobody): when a
    /// waiting Session asks again at the latest.
    pub fn until_a_slot_expires(&self, namespace: &str, now: Instant) -> Duration {
        let budgets = self
            .budgets
            .lock()
            .expect("the rollout lock is never poisoned");
        budgets
            .get(namespace)
            .and_then(|budget| budget.held.values().min().copied())
            .map_or(Duration::ZERO, |oldest| {
                ROLLOUT_DEADLINE.saturating_sub(now.duration_since(oldest))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_namespace_and_expire() {
        let (rollouts, _woken) = Rollouts::new();
        let start = Instant::now();
        assert!(rollouts.try_take("a", "s1", 1, start));
        assert!(
            rollouts.try_take("a", "s1", 1, start),
            "a holder keeps its slot"
        );
        assert!(!rollouts.try_take("a", "s2", 1, start));
        assert!(rollouts.try_take("b", "s2", 1, start), "another namespace");
        rollouts.release("a", "s1");
        assert!(rollouts.try_take("a", "s2", 1, start));
        assert_eq!(
            rollouts.until_a_slot_expires("a", start + Duration::from_secs(60)),
            ROLLOUT_DEADLINE - Duration::from_secs(60)
        );
        assert!(
            rollouts.try_take("a", "s3", 1, start + ROLLOUT_DEADLINE),
            "a slot held past the deadline is given back"
        );
    }

    #[test]
    fn giving_a_slot_back_wakes_the_sessions_waiting_in_its_namespace() {
        let (rollouts, woken) = Rollouts::new();
        let mut woken = woken.into_inner();
        let start = Instant::now();
        assert!(rollouts.try_take("a", "s1", 1, start));
        assert!(!rollouts.try_take("a", "s2", 1, start));
        assert!(!rollouts.try_take("a", "s3", 1, start));
        assert!(rollouts.try_take("b", "t1", 1, start));
        assert!(!rollouts.try_take("b", "t2", 1, start));

        rollouts.release("a", "s2");
        assert!(woken.try_recv().is_err(), "a waiting Session frees nothing");
        rollouts.release("a", "s1");
        let mut names = Vec::new();
        while let Ok(session) = woken.try_recv() {
            assert_eq!(session.namespace.as_deref(), Some("a"));
            names.push(session.name);
        }
        assert_eq!(names, ["s3"], "s2 stopped waiting; b's wait on b");
        rollouts.release("a", "s1");
        assert!(woken.try_recv().is_err(), "woken once");
    }
}
