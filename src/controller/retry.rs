//! Retrying failed reconciles with exponential backoff, per object: 1 s
//! after the first failure, doubling up to 5 minutes, back to 1 s after a
//! success. A broken object backs off without slowing the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::{Resource, ResourceExt};

/// The first retry delay.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// The delay before retrying after the `failures`-th failure in a row.
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_RETRY * 2u32.pow(doublings)).min(MAX_RETRY)
}

/// Failures in a row, per object.
#[derive(Clone, Default)]
pub struct Backoff(Arc<Mutex<HashMap<String, u32>>>);

impl Backoff {
    /// Counts a failure of `object`; the delay before its next try.
    pub fn failed<K: Resource<DynamicType = ()>>(&self, object: &K) -> Duration {
        let mut failures = self.0.lock().expect("the backoff lock is never poisoned");
        let count = failures.entry(key(object)).or_default();
        *count = count.saturating_add(1);
        delay(*count)
    }

    /// Forgets the failures of `object` (it reconciled).
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, object: &K) {
        self.0
            .lock()
            .expect("the backoff lock is never poisoned")
            .remove(&key(object));
    }
}

/// `Kind namespace/name`.
fn key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum() {
        let delays: Vec<u64> = (1..=11).map(|n| delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn each_object_backs_off_on_its_own_and_a_success_resets_it() {
        use crate::api::{Session, SessionSpec, TrustLevel};
        let session = |name: &str| {
            let mut session = Session::new(name, SessionSpec::for_trust_level(TrustLevel::Trusted));
            session.metadata.namespace = Some("ns".into());
            session
        };
        let backoff = Backoff::default();
        assert_eq!(backoff.failed(&session("a")), Duration::from_secs(1));
        assert_eq!(backoff.failed(&session("a")), Duration::from_secs(2));
        assert_eq!(backoff.failed(&session("b")), Duration::from_secs(1));
        backoff.succeeded(&session("a"));
        assert_eq!(backoff.failed(&session("a")), Duration::from_secs(1));
    }
}
