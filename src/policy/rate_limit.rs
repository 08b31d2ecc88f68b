//! A token-bucket rate limiter with an injected clock.

use std::time::{Duration, Instant};

use crate::api::RateLimit;

/// A token bucket: holds up to `per_minute` tokens, refills continuously at
/// `per_minute` per minute, and each allowed event takes one token. The
/// caller passes the time, so tests and benchmarks control the clock.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    refill_per_second: f64,
    last_refill: Instant,
}

impl TokenBucket {
    /// A full bucket for `limit`, starting at `now`. A limit of 0 (which
    /// admission rejects) allows nothing.
    pub fn new(limit: &RateLimit, now: Instant) -> TokenBucket {
        let capacity = f64::from(limit.per_minute);
        TokenBucket {
            capacity,
            tokens: capacity,
            refill_per_second: capacity / 60.0,
            last_refill: now,
        }
    }

    /// Takes one token at `now`. On success returns `Ok(())`; otherwise
    /// returns how long until a token is available. A `now` earlier than the
    /// last call refills nothing (a clock going backwards grants no tokens).
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        try_acquire_all(&mut [self], now)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_refill);
        self.last_refill = self.last_refill.max(now);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() * self.refill_per_second).min(self.capacity);
    }

    /// How long until a token is available; zero when one is.
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else if self.refill_per_second <= 0.0 {
            Duration::MAX
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.refill_per_second)
        }
    }
}

/// Takes one token from each of `buckets` at `now`, or none at all: a
/// refusal by one bucket spends nothing from the others. On refusal,
/// returns how long until every bucket has a token.
pub fn try_acquire_all(buckets: &mut [&mut TokenBucket], now: Instant) -> Result<(), Duration> {
    for bucket in buckets.iter_mut() {
        bucket.refill(now);
    }
    let wait = buckets
        .iter()
        .map(|bucket| bucket.wait())
        .max()
        .unwrap_or_default();
    if !wait.is_zero() {
        return Err(wait);
    }
    for bucket in buckets.iter_mut() {
        bucket.tokens -= 1.0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_by_one_bucket_spends_nothing_from_the_others() {
        let start = Instant::now();
        let mut tool = TokenBucket::new(&per_minute(10), start);
        let mut session = TokenBucket::new(&per_minute(1), start);
        try_acquire_all(&mut [&mut tool, &mut session], start).unwrap();
        for _ in 0..5 {
            let wait = try_acquire_all(&mut [&mut tool, &mut session], start).unwrap_err();
            assert_eq!(wait, Duration::from_secs(60), "the session bucket's wait");
        }
        for _ in 0..9 {
            tool.try_acquire(start).unwrap();
        }
        assert!(
            tool.try_acquire(start).is_err(),
            "9 left after one shared call"
        );
    }

    fn per_minute(per_minute: u32) -> RateLimit {
        RateLimit { per_minute }
    }

    #[test]
    fn allows_a_burst_of_capacity_then_refuses() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&per_minute(3), start);
        for _ in 0..3 {
            assert_eq!(bucket.try_acquire(start), Ok(()));
        }
        let wait = bucket.try_acquire(start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
    }

    #[test]
    fn refills_at_the_configured_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&per_minute(60), start);
        for _ in 0..60 {
            bucket.try_acquire(start).unwrap();
        }
        assert!(
            bucket
                .try_acquire(start + Duration::from_millis(500))
                .is_err()
        );
        assert_eq!(bucket.try_acquire(start + Duration::from_secs(1)), Ok(()));
        assert!(bucket.try_acquire(start + Duration::from_secs(1)).is_err());
        // A long idle period refills only up to capacity.
        let later = start + Duration::from_secs(3600);
        for _ in 0..60 {
            bucket.try_acquire(later).unwrap();
        }
        assert!(bucket.try_acquire(later).is_err());
    }

    #[test]
    fn a_clock_going_backwards_grants_nothing() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(&per_minute(1), start);
        bucket.try_acquire(start).unwrap();
        assert!(bucket.try_acquire(start - Duration::from_secs(5)).is_err());
        assert!(bucket.try_acquire(start + Duration::from_secs(30)).is_err());
        assert_eq!(bucket.try_acquire(start + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn zero_allows_nothing() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&per_minute(0), start);
        assert_eq!(
            bucket.try_acquire(start + Duration::from_secs(3600)),
            Err(Duration::MAX)
        );
    }
}
