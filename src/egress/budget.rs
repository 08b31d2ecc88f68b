//! The token budgets of sessions and the `retry-after` windows of
//! providers, both in the egress service's memory, both read against an
//! injected clock. A session's tokens are what its providers reported
//! (input and output), counted over a sliding minute and over the UTC
//! calendar day; a spent budget refuses until enough of it frees up, and
//! says when. A provider that answered 429 or 503 with `retry-after` is
//! not called again for that namespace until the time it named.
//!
//! Each replica keeps its own ledger: with N replicas a session may spend
//! up to N times its budget in the worst case (calls are spread over
//! connections, not sessions).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use k8s_openapi::jiff::{SignedDuration, Timestamp, tz::TimeZone};

use super::decide::Refusal;
use super::policy::ModelRules;

const MINUTE: SignedDuration = SignedDuration::from_secs(60);

/// A session: namespace and name.
pub type SessionKey = (String, String);

/// What one session spent.
#[derive(Debug, Default)]
struct Spent {
    /// Charges of the last minute, oldest first.
    minute: VecDeque<(Timestamp, u64)>,
    /// The UTC day counted and its total.
    day: Option<(k8s_openapi::jiff::civil::Date, u64)>,
}

impl Spent {
    fn forget_before(&mut self, now: Timestamp) {
        while let Some((at, _)) = self.minute.front() {
            if now.duration_since(*at) >= MINUTE {
                self.minute.pop_front();
            } else {
                break;
            }
        }
        if self.day.is_some_and(|(day, _)| day != utc_day(now)) {
            self.day = None;
        }
    }

    fn last_minute(&self) -> u64 {
        self.minute.iter().map(|(_, tokens)| tokens).sum()
    }

    fn today(&self) -> u64 {
        self.day.map_or(0, |(_, tokens)| tokens)
    }
}

/// Tokens spent per session, in a sliding minute and the UTC day.
#[derive(Debug, Default)]
pub struct Ledger {
    sessions: Mutex<HashMap<SessionKey, Spent>>,
    /// When sessions that spent nothing today were last forgotten.
    swept: Mutex<Option<Timestamp>>,
}

/// What a session spent, as of a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub last_minute: u64,
    pub today: u64,
}

impl Ledger {
    /// Whether `session` may call now under `rules`: a [`Refusal::Budget`]
    /// naming when it resets when a budget is spent.
    pub fn check(
        &self,
        session: &SessionKey,
        rules: &ModelRules,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        let mut sessions = self.lock();
        let Some(spent) = sessions.get_mut(session) else {
            return Ok(());
        };
        spent.forget_before(now);
        if rules.tokens_per_day > 0 && spent.today() >= rules.tokens_per_day {
            return Err(Refusal::Budget {
                window: "per day",
                limit: rules.tokens_per_day,
                resets: next_utc_midnight(now),
            });
        }
        let limit = rules.tokens_per_minute;
        if limit > 0 && spent.last_minute() >= limit {
            // It resets when the oldest charges have left the window and
            // what is left is under the limit.
            let mut left = spent.last_minute();
            let mut resets = now;
            for (at, tokens) in &spent.minute {
                left -= tokens;
                resets = *at + MINUTE;
                if left < limit {
                    break;
                }
            }
            return Err(Refusal::Budget {
                window: "per minute",
                limit,
                resets,
            });
        }
        Ok(())
    }

    /// Charges `tokens` to `session` at `now` (and, once a minute, forgets
    /// the sessions that spent nothing today).
    pub fn charge(&self, session: &SessionKey, tokens: u64, now: Timestamp) {
        if tokens == 0 {
            return;
        }
        let due = {
            let mut swept = self
                .swept
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let due = swept.is_none_or(|at| now.duration_since(at) >= MINUTE);
            if due {
                *swept = Some(now);
            }
            due
        };
        if due {
            self.sweep(now);
        }
        let mut sessions = self.lock();
        let spent = sessions.entry(session.clone()).or_default();
        spent.forget_before(now);
        spent.minute.push_back((now, tokens));
        let today = utc_day(now);
        spent.day = Some((today, spent.today() + tokens));
    }

    /// What `session` spent, as of `now`.
    pub fn usage(&self, session: &SessionKey, now: Timestamp) -> Usage {
        let mut sessions = self.lock();
        let Some(spent) = sessions.get_mut(session) else {
            return Usage {
                last_minute: 0,
                today: 0,
            };
        };
        spent.forget_before(now);
        Usage {
            last_minute: spent.last_minute(),
            today: spent.today(),
        }
    }

    /// Forgets sessions that spent nothing today.
    fn sweep(&self, now: Timestamp) {
        self.lock().retain(|_, spent| {
            spent.forget_before(now);
            spent.day.is_some()
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Spent>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn utc_day(at: Timestamp) -> k8s_openapi::jiff::civil::Date {
    at.to_zoned(TimeZone::UTC).date()
}

fn next_utc_midnight(at: Timestamp) -> Timestamp {
    utc_day(at)
        .tomorrow()
        .and_then(|day| day.to_zoned(TimeZone::UTC))
        .map_or(at, |midnight| midnight.timestamp())
}

/// The `retry-after` windows of providers, per namespace (each namespace
/// has its own key, so its own rate limit).
#[derive(Debug, Default)]
pub struct Cooldowns {
    until: Mutex<HashMap<(String, String), Timestamp>>,
}

impl Cooldowns {
    /// `provider` of `namespace` is not to be called before `until`.
    pub fn hold(&self, namespace: &str, provider: &str, until: Timestamp) {
        let mut held = self.lock();
        held.insert((namespace.to_owned(), provider.to_owned()), until);
    }

    /// Until when `provider` of `namespace` is held, if it is at `now`.
    pub fn held(&self, namespace: &str, provider: &str, now: Timestamp) -> Option<Timestamp> {
        let mut held = self.lock();
        held.retain(|_, until| *until > now);
        held.get(&(namespace.to_owned(), provider.to_owned()))
            .copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Timestamp>> {
        self.until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The longest `retry-after` honoured: a provider cannot take itself out
/// of a chain for longer.
const MAX_RETRY_AFTER: SignedDuration = SignedDuration::from_hours(1);

/// The time a `retry-after` value names: delay-seconds or an HTTP-date
/// (RFC 9110), at most an hour from `now`; `None` when unreadable or past.
pub fn retry_after(value: &str, now: Timestamp) -> Option<Timestamp> {
    let value = value.trim();
    let until = match value.parse::<u64>() {
        Ok(seconds) => now
            .checked_add(SignedDuration::from_secs(
                i64::try_from(seconds)
                    .unwrap_or(i64::MAX)
                    .min(MAX_RETRY_AFTER.as_secs()),
            ))
            .ok()?,
        Err(_) => k8s_openapi::jiff::fmt::rfc2822::parse(value)
            .ok()?
            .timestamp(),
    };
    (until > now).then(|| until.min(now + MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn session() -> SessionKey {
        ("ns".into(), "s".into())
    }

    fn budget(per_minute: u64, per_day: u64) -> ModelRules {
        ModelRules {
            tokens_per_minute: per_minute,
            tokens_per_day: per_day,
            ..ModelRules::default()
        }
    }

    #[test]
    fn a_spent_minute_refuses_until_its_charges_leave_the_window() {
        let ledger = Ledger::default();
        let rules = budget(100, 0);
        let start = at("2026-12-07T10:00:00Z");
        ledger.charge(&session(), 60, start);
        ledger.check(&session(), &rules, start).unwrap();
        ledger.charge(&session(), 50, start + SignedDuration::from_secs(20));
        let refused = ledger
            .check(&session(), &rules, start + SignedDuration::from_secs(30))
            .unwrap_err();
        assert_eq!(
            refused,
            Refusal::Budget {
                window: "per minute",
                limit: 100,
                resets: at("2026-12-07T10:01:00Z"),
            }
        );
        assert_eq!(
            refused.kind(),
            crate::egress::translate::ErrorKind::RateLimit
        );
        assert!(
            refused
                .to_string()
                .contains("resets at 2026-12-07T10:01:00Z"),
            "{refused}"
        );
        let later = start + SignedDuration::from_secs(60);
        ledger.check(&session(), &rules, later).unwrap();
        assert_eq!(ledger.usage(&session(), later).last_minute, 50);
        ledger
            .check(&("ns".into(), "other".into()), &rules, start)
            .unwrap();
    }

    #[test]
    fn a_spent_day_refuses_until_utc_midnight() {
        let ledger = Ledger::default();
        let rules = budget(0, 1000);
        let evening = at("2026-12-07T23:00:00Z");
        ledger.charge(&session(), 1000, evening);
        let refused = ledger
            .check(&session(), &rules, at("2026-12-07T23:59:59Z"))
            .unwrap_err();
        assert!(matches!(
            refused,
            Refusal::Budget { window: "per day", resets, .. } if resets == at("2026-12-08T00:00:00Z")
        ));
        ledger
            .check(&session(), &rules, at("2026-12-08T00:00:00Z"))
            .unwrap();
        assert_eq!(
            ledger.usage(&session(), at("2026-12-08T00:00:01Z")).today,
            0
        );
        ledger.sweep(at("2026-12-08T00:00:01Z"));
        assert!(ledger.lock().is_empty());
    }

    #[test]
    fn no_limit_is_zero() {
        let ledger = Ledger::default();
        let now = at("2026-12-07T10:00:00Z");
        ledger.charge(&session(), u32::MAX.into(), now);
        ledger.check(&session(), &budget(0, 0), now).unwrap();
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = at("2026-12-07T10:00:00Z");
        assert_eq!(retry_after("30", now), Some(at("2026-12-07T10:00:30Z")));
        assert_eq!(
            retry_after("Mon, 07 Dec 2026 10:02:00 GMT", now),
            Some(at("2026-12-07T10:02:00Z"))
        );
        assert_eq!(
            retry_after("999999", now),
            Some(at("2026-12-07T11:00:00Z")),
            "at most an hour"
        );
        assert_eq!(retry_after("0", now), None);
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(
            retry_after("Mon, 07 Dec 2026 09:00:00 GMT", now),
            None,
            "past"
        );
    }

    #[test]
    fn a_held_provider_is_held_per_namespace_until_the_time() {
        let cooldowns = Cooldowns::default();
        let now = at("2026-12-07T10:00:00Z");
        cooldowns.hold("ns", "openai", at("2026-12-07T10:00:30Z"));
        assert!(cooldowns.held("ns", "openai", now).is_some());
        assert!(cooldowns.held("other", "openai", now).is_none());
        assert!(cooldowns.held("ns", "anthropic", now).is_none());
        assert!(
            cooldowns
                .held("ns", "openai", at("2026-12-07T10:00:30Z"))
                .is_none()
        );
    }
}
