//! Denied calls have an audit budget of their own. Every call the sidecar
//! does not run under a policy (denied by it, an unknown or unlisted tool,
//! invalid arguments, over a rate limit, a request breaking the protocol)
//! is audited one by one up to [`DENIALS_PER_MINUTE`] (a token bucket per
//! session, apart from the calls' own limits); past that, repeats of the
//! same denial are held and recorded as one event per window that counts
//! them (`repeats`). Every denial stays in the trail, counted, and a flood
//! of them costs the trail a few events a window instead of thousands a
//! second, which would crowd out other sessions' events.
//!
//! Held counts live in memory until their window ends: a sidecar killed
//! (SIGKILL, OOM) loses at most one window of repeats past the budget; the
//! events within the budget are in the spool like any other.

use std::time::{Duration, Instant};

use crate::api::RateLimit;
use crate::audit::AuditEvent;
use crate::policy::TokenBucket;

/// Denials audited one by one, per minute, before repeats are coalesced.
pub const DENIALS_PER_MINUTE: u32 = 60;
/// How long repeats are held before their event is recorded.
pub const DENIAL_WINDOW: Duration = Duration::from_secs(10);

/// What makes two denials the same. Held entries are bounded by these
/// keys: the registry's tools (every unknown name is `None`) times the
/// reasons the sidecar gives, which quote no agent input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenialKey {
    /// The tool as the registry names it; `None` for every unknown name,
    /// and for requests that name no tool.
    pub tool: Option<&'static str>,
    /// The kind of refusal (the policy's reason, `invalid arguments`, ...).
    pub reason: String,
}

/// Whether a denial's event is recorded now or held.
#[derive(Debug, PartialEq)]
pub enum Admission {
    /// Within the budget: record this event.
    Record(Box<AuditEvent>),
    /// Over it: counted in the held event with this id, recorded when the
    /// window ends.
    Held(String),
}

/// One session's budget of audited denials, and the repeats held.
pub struct Denials {
    limit: RateLimit,
    bucket: Option<TokenBucket>,
    window: Duration,
    held: Vec<Held>,
    /// When the held events' window ends.
    due: Option<Instant>,
}

struct Held {
    key: DenialKey,
    event: AuditEvent,
    repeats: u64,
}

impl Default for Denials {
    fn default() -> Denials {
        Denials::new(
            RateLimit {
                per_minute: DENIALS_PER_MINUTE,
            },
            DENIAL_WINDOW,
        )
    }
}

impl Denials {
    /// `limit` denials audited one by one, repeats past it held for `window`.
    pub fn new(limit: RateLimit, window: Duration) -> Denials {
        Denials {
            limit,
            bucket: None,
            window,
            held: Vec::new(),
            due: None,
        }
    }

    /// A denial of `key` at `now`, recorded by `event`: recorded now while
    /// the budget lasts, else held (with the repeats of the same key).
    pub fn admit(&mut self, key: DenialKey, event: AuditEvent, now: Instant) -> Admission {
        if let Some(held) = self.held.iter_mut().find(|held| held.key == key) {
            held.repeats += 1;
            return Admission::Held(held.event.id.clone());
        }
        let limit = &self.limit;
        let bucket = self
            .bucket
            .get_or_insert_with(|| TokenBucket::new(limit, now));
        if bucket.try_acquire(now).is_ok() {
            return Admission::Record(Box::new(event));
        }
        self.due.get_or_insert(now + self.window);
        let id = event.id.clone();
        self.held.push(Held {
            key,
            event,
            repeats: 1,
        });
        Admission::Held(id)
    }

    /// The held events whose window has ended by `now`, to record.
    pub fn due(&mut self, now: Instant) -> Vec<AuditEvent> {
        match self.due {
            Some(due) if due <= now => self.take(),
            _ => Vec::new(),
        }
    }

    /// Every held event, window ended or not (at shutdown).
    pub fn take(&mut self) -> Vec<AuditEvent> {
        self.due = None;
        self.held
            .drain(..)
            .map(
                |Held {
                     mut event, repeats, ..
                 }| {
                    event.repeats = (repeats > 1).then_some(repeats);
                    event
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Enforcement, SourceRef, SourceType, TrustLevel};
    use crate::audit::EventType;
    use crate::policy::Outcome;

    fn denial(reason: &str) -> AuditEvent {
        let source = SourceRef {
            source_type: SourceType::Agent.into(),
            identity: "s".into(),
            trust_level: TrustLevel::Untrusted,
        };
        AuditEvent::new(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            EventType::ToolCall,
            "ns",
            "s",
            source,
            Outcome::Denied,
            Enforcement::Enforce,
            reason.into(),
        )
    }

    fn key(tool: Option<&'static str>, reason: &str) -> DenialKey {
        DenialKey {
            tool,
            reason: reason.into(),
        }
    }

    #[test]
    fn past_the_budget_repeats_are_one_event_per_key_and_window() {
        let mut denials = Denials::new(RateLimit { per_minute: 2 }, Duration::from_secs(10));
        let start = Instant::now();
        let denied = key(Some("memory_write"), "not permitted");
        let unknown = key(None, "unknown tool");
        for _ in 0..2 {
            let event = denial("not permitted");
            let id = event.id.clone();
            assert!(
                matches!(denials.admit(denied.clone(), event, start), Admission::Record(e) if e.id == id)
            );
        }
        let first = denial("not permitted");
        let first_id = first.id.clone();
        assert_eq!(
            denials.admit(denied.clone(), first, start),
            Admission::Held(first_id.clone())
        );
        for _ in 0..9 {
            assert_eq!(
                denials.admit(denied.clone(), denial("not permitted"), start),
                Admission::Held(first_id.clone()),
                "repeats are answered with the held event's id"
            );
        }
        let _ = denials.admit(unknown, denial("unknown tool"), start);
        assert!(denials.due(start + Duration::from_secs(9)).is_empty());
        let recorded = denials.due(start + Duration::from_secs(10));
        let counts: Vec<(&str, Option<u64>)> = recorded
            .iter()
            .map(|event| (event.id.as_str(), event.repeats))
            .collect();
        assert_eq!(counts[0], (first_id.as_str(), Some(10)));
        assert_eq!(counts[1].1, None, "a single held denial is one decision");
        assert!(denials.take().is_empty(), "nothing is recorded twice");
    }

    #[test]
    fn held_denials_are_all_recorded_at_shutdown() {
        let mut denials = Denials::new(RateLimit { per_minute: 0 }, Duration::from_secs(10));
        let now = Instant::now();
        for _ in 0..3 {
            let _ = denials.admit(key(None, "bad request"), denial("bad"), now);
        }
        let recorded = denials.take();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].repeats, Some(3));
    }
}
