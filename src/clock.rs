//! Wall-clock time that tests control. The system clock in production; in
//! tests, a start time plus however far tokio's clock has moved since, so a
//! paused runtime (`start_paused`) advances it without sleeping.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

/// Reads the time and sleeps until one.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The system clock.
    System,
    /// `start` when tokio's clock read `origin`.
    Tokio {
        /// The time at `origin`.
        start: Timestamp,
        /// When the clock was made.
        origin: Instant,
    },
}

impl Clock {
    /// A clock reading `start` now and moving with tokio's clock.
    pub fn starting_at(start: Timestamp) -> Clock {
        Clock::Tokio {
            start,
            origin: Instant::now(),
        }
    }

    /// The time now.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Tokio { start, origin } => {
                let elapsed =
                    SignedDuration::try_from(origin.elapsed()).unwrap_or(SignedDuration::MAX);
                start.saturating_add(elapsed).unwrap_or(*start)
            }
        }
    }

    /// Sleeps until `at` (returns at once when it has passed). The system
    /// clock may have moved meanwhile: callers read [`Clock::now`] again.
    pub async fn sleep_until(&self, at: Timestamp) {
        let wait = Duration::try_from(at.duration_since(self.now())).unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_paused_time() {
        let start: Timestamp = "2026-11-29T12:00:00Z".parse().unwrap();
        let clock = Clock::starting_at(start);
        clock
            .sleep_until(start + SignedDuration::from_secs(90))
            .await;
        assert_eq!(clock.now(), start + SignedDuration::from_secs(90));
        clock.sleep_until(start).await;
        assert_eq!(
            clock.now(),
            start + SignedDuration::from_secs(90),
            "the past: no wait"
        );
    }
}
