//! The policy the sidecar enforces, as last received from the control
//! plane. Fails closed: no policy until the first arrives, none while the
//! control plane withdraws it, and none once the control plane has been
//! silent for longer than the staleness bound.
//!
//! Staleness counts from the last message the control plane sent (a policy
//! or a heartbeat), never from a connection attempt: only the control plane
//! speaking proves the policy is still the one in force. Failed reconnects,
//! however many, do not extend it, and reconnecting does not revive a stale
//! policy: the next message does. Time is tokio's clock, so tests pause and
//! advance it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::policy::EffectiveContext;
use crate::proto::v1alpha1 as pb;
use crate::wire::DecodeError;

/// A policy received from the control plane.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    /// The effective context.
    pub context: EffectiveContext,
    /// The session's model provider (for `security_whoami`).
    pub provider: Option<pb::Provider>,
}

/// Why the control plane's latest word for this session is no policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Withdrawal {
    /// The control plane's own reason (the Session is gone, or it has no
    /// policy for it).
    #[error("{0}")]
    Said(String),
    /// A policy this sidecar cannot read.
    #[error(transparent)]
    Unreadable(#[from] DecodeError),
    /// An update of a kind this sidecar does not know.
    #[error("the control plane sent an update this sidecar cannot read")]
    UnknownUpdate,
}

/// Why no policy is in force; every call but `security_whoami` is denied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoPolicy {
    /// Nothing has arrived since the sidecar started.
    #[error("no policy from the control plane yet (fail closed)")]
    NotYet,
    /// The control plane said it has no policy for this session, or sent
    /// one this sidecar cannot read.
    #[error("no policy for this session: {0} (fail closed)")]
    Withdrawn(Withdrawal),
    /// The control plane has been silent for longer than the bound.
    #[error(
        "the control plane has not been heard from for {}s, longer than the {}s bound (fail closed)",
        .silent_for.as_secs(), .bound.as_secs()
    )]
    Stale {
        /// Time since the last message.
        silent_for: Duration,
        /// The staleness bound.
        bound: Duration,
    },
}

struct Inner {
    policy: Result<Arc<Served>, NoPolicy>,
    /// When the control plane last sent anything.
    heard_at: Option<Instant>,
}

/// The sidecar's view of its policy.
pub struct PolicyState {
    inner: RwLock<Inner>,
    max_stale: Duration,
    /// Counts the messages received (policies, withdrawals, heartbeats),
    /// so watchers learn of each: any may change what is in force.
    received: watch::Sender<u64>,
}

impl PolicyState {
    /// No policy yet; a policy stays in force for `max_stale` after the
    /// control plane's last message.
    pub fn new(max_stale: Duration) -> PolicyState {
        PolicyState {
            inner: RwLock::new(Inner {
                policy: Err(NoPolicy::NotYet),
                heard_at: None,
            }),
            max_stale,
            received: watch::Sender::new(0),
        }
    }

    /// Changes each time a message from the control plane arrives.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.received.subscribe()
    }

    /// When the policy in force goes stale if nothing arrives meanwhile;
    /// `None` when there is none in force.
    pub fn stale_at(&self) -> Option<Instant> {
        let inner = self
            .inner
            .read()
            .expect("the policy lock is never poisoned");
        let stale_at = inner.heard_at? + self.max_stale;
        (inner.policy.is_ok() && stale_at > Instant::now()).then_some(stale_at)
    }

    /// The staleness bound.
    pub fn max_stale(&self) -> Duration {
        self.max_stale
    }

    /// Records a policy from the control plane, or its reason for serving none.
    pub fn update(&self, update: Result<Served, Withdrawal>) {
        let mut inner = self
            .inner
            .write()
            .expect("the policy lock is never poisoned");
        inner.policy = update.map(Arc::new).map_err(NoPolicy::Withdrawn);
        inner.heard_at = Some(Instant::now());
        drop(inner);
        self.received.send_modify(|count| *count += 1);
    }

    /// Records a heartbeat: the control plane is there and the policy unchanged.
    pub fn heartbeat(&self) {
        self.inner
            .write()
            .expect("the policy lock is never poisoned")
            .heard_at = Some(Instant::now());
        self.received.send_modify(|count| *count += 1);
    }

    /// The policy in force, or why there is none (deny).
    pub fn current(&self) -> Result<Arc<Served>, NoPolicy> {
        let inner = self
            .inner
            .read()
            .expect("the policy lock is never poisoned");
        if let Some(heard_at) = inner.heard_at {
            let silent_for = heard_at.elapsed();
            if silent_for > self.max_stale {
                return Err(NoPolicy::Stale {
                    silent_for,
                    bound: self.max_stale,
                });
            }
        }
        inner.policy.clone()
    }
}

/// A policy as a semi-trusted session `ns/s` gets it, for unit tests.
#[cfg(test)]
pub(crate) fn served() -> Served {
    use crate::api::{Session, SessionSpec, TrustLevel};
    let mut session = Session::new("s", SessionSpec::for_trust_level(TrustLevel::SemiTrusted));
    session.metadata.namespace = Some("ns".into());
    Served {
        context: crate::policy::resolve(
            &session,
            None,
            &[],
            &[],
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        )
        .unwrap(),
        provider: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn no_policy_until_one_arrives_and_none_when_withdrawn() {
        let state = PolicyState::new(BOUND);
        assert_eq!(state.current().unwrap_err(), NoPolicy::NotYet);
        state.update(Ok(served()));
        assert!(state.current().is_ok());
        state.update(Err(Withdrawal::Said("Session ns/s does not exist".into())));
        assert_eq!(
            state.current().unwrap_err(),
            NoPolicy::Withdrawn(Withdrawal::Said("Session ns/s does not exist".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_policy_goes_stale_when_the_control_plane_is_silent_past_the_bound() {
        let state = PolicyState::new(BOUND);
        state.update(Ok(served()));
        tokio::time::advance(BOUND).await;
        assert!(state.current().is_ok(), "at the bound it still holds");
        tokio::time::advance(Duration::from_secs(1)).await;
        let stale = state.current().unwrap_err();
        assert!(
            matches!(stale, NoPolicy::Stale { silent_for, .. } if silent_for == BOUND + Duration::from_secs(1))
        );
        assert!(stale.to_string().contains("31s, longer than the 30s bound"));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(state.current().is_err(), "and stays stale");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_policy_in_force() {
        let state = PolicyState::new(BOUND);
        state.update(Ok(served()));
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(20)).await;
            state.heartbeat();
        }
        assert!(
            state.current().is_ok(),
            "200 s later, heard from every 20 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_new_message_revives_a_stale_policy() {
        let state = PolicyState::new(BOUND);
        state.update(Ok(served()));
        tokio::time::advance(BOUND * 2).await;
        assert!(state.current().is_err());
        state.heartbeat();
        assert!(
            state.current().is_ok(),
            "the control plane is back, same policy"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn watchers_hear_of_every_message_and_when_the_policy_goes_stale() {
        let state = PolicyState::new(BOUND);
        let mut changes = state.changes();
        assert_eq!(state.stale_at(), None, "nothing in force");
        state.update(Ok(served()));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert_eq!(state.stale_at(), Some(Instant::now() + BOUND));
        tokio::time::advance(BOUND / 2).await;
        state.heartbeat();
        assert!(changes.has_changed().unwrap());
        assert_eq!(state.stale_at(), Some(Instant::now() + BOUND));
        tokio::time::advance(BOUND * 2).await;
        assert_eq!(state.stale_at(), None, "stale already");
        state.update(Err(Withdrawal::Said("gone".into())));
        assert!(changes.has_changed().unwrap());
        assert_eq!(state.stale_at(), None, "nothing in force");
    }
}
