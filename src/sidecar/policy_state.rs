//! The policy the sidecar enforces, as last received from the control
//! plane. Fails closed: no policy until the first arrives, and none once the
//! sidecar has been disconnected for longer than the staleness bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::policy::EffectiveContext;
use crate::proto::v1alpha1 as pb;

/// A policy received from the control plane.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    /// The effective context.
    pub context: EffectiveContext,
    /// The session's model provider (for `security_whoami`).
    pub provider: Option<pb::Provider>,
}

/// The sidecar's view of its policy.
pub struct PolicyState {
    current: RwLock<Option<Arc<Served>>>,
    connected: AtomicBool,
    confirmed_at: Mutex<Instant>,
    max_stale: Duration,
}

impl PolicyState {
    /// No policy yet; a policy stays usable for `max_stale` after the
    /// connection to the control plane is lost.
    pub fn new(max_stale: Duration) -> PolicyState {
        PolicyState {
            current: RwLock::new(None),
            connected: AtomicBool::new(false),
            confirmed_at: Mutex::new(Instant::now()),
            max_stale,
        }
    }

    /// Records an update from the control plane (`None`: no policy can be served).
    pub fn update(&self, served: Option<Served>) {
        *self
            .current
            .write()
            .expect("the policy lock is never poisoned") = served.map(Arc::new);
        self.confirm();
    }

    /// Records whether the watch stream is up. Losing it starts the staleness clock.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        self.confirm();
    }

    fn confirm(&self) {
        *self
            .confirmed_at
            .lock()
            .expect("the policy lock is never poisoned") = Instant::now();
    }

    /// The policy in force, or `None` (deny) when there is none or it is stale.
    pub fn current(&self) -> Option<Arc<Served>> {
        let connected = self.connected.load(Ordering::Acquire);
        let confirmed_at = *self
            .confirmed_at
            .lock()
            .expect("the policy lock is never poisoned");
        if !connected && confirmed_at.elapsed() > self.max_stale {
            return None;
        }
        self.current
            .read()
            .expect("the policy lock is never poisoned")
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{Session, SessionSpec, TrustLevel};
    use crate::policy::resolve;

    fn served() -> Served {
        let mut session = Session::new("s", SessionSpec::for_trust_level(TrustLevel::Trusted));
        session.metadata.namespace = Some("ns".into());
        Served {
            context: resolve(&session, None, &[], &[], Timestamp::UNIX_EPOCH).unwrap(),
            provider: None,
        }
    }

    #[test]
    fn no_policy_until_one_arrives_and_none_when_withdrawn() {
        let state = PolicyState::new(Duration::from_secs(60));
        assert!(state.current().is_none());
        state.set_connected(true);
        state.update(Some(served()));
        assert!(state.current().is_some());
        state.update(None);
        assert!(state.current().is_none());
    }

    #[test]
    fn a_policy_goes_stale_while_disconnected() {
        let state = PolicyState::new(Duration::from_millis(20));
        state.set_connected(true);
        state.update(Some(served()));
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            state.current().is_some(),
            "connected: the policy stays current"
        );
        state.set_connected(false);
        assert!(state.current().is_some(), "within the bound");
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            state.current().is_none(),
            "disconnected past the bound: fail closed"
        );
    }
}
