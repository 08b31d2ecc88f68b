//! Waiting between reconnect attempts, one way for the sidecar's three
//! loops (the policy watch, the inbox stream and the audit shipper): the
//! wait doubles from a first to a last, and starts over at the first once
//! an attempt has worked.

use std::time::Duration;

/// The waits of one reconnect loop.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    last: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits doubling from `first` up to `last`.
    pub const fn new(first: Duration, last: Duration) -> Backoff {
        Backoff {
            first,
            last,
            next: first,
        }
    }

    /// The streams' (policy watch, inbox): from 100 ms to 10 s.
    pub const fn streams() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// The wait before the next attempt (what a log line says).
    pub fn retry_in(&self) -> Duration {
        self.next
    }

    /// Takes the wait before the next attempt, doubling the one after.
    pub fn take(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.last);
        wait
    }

    /// Sleeps the wait before the next attempt (on tokio's clock).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.take()).await;
    }

    /// An attempt worked: the next wait is the first again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_last_and_start_over_after_a_success() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        let mut waited = Vec::new();
        for _ in 0..6 {
            let start = Instant::now();
            backoff.wait().await;
            waited.push(start.elapsed());
        }
        assert_eq!(
            waited,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        backoff.reset();
        assert_eq!(backoff.retry_in(), 100 * MS);
        let start = Instant::now();
        backoff.wait().await;
        assert_eq!(start.elapsed(), 100 * MS);
        assert_eq!(backoff.retry_in(), 200 * MS, "and doubles again");
    }

    #[test]
    fn the_streams_wait_from_100_ms_to_10_s() {
        let mut backoff = Backoff::streams();
        assert_eq!(backoff.take(), 100 * MS);
        let last = (0..10).map(|_| backoff.take()).last();
        assert_eq!(last, Some(Duration::from_secs(10)));
    }
}
