//! Denials become Kubernetes Events on their Session (`ToolDenied`,
//! `InjectionDenied`, `ForwardDenied`, `RateLimited`), and so do the
//! invalid events a sidecar ships (`AuditEventInvalid`), so `kubectl
//! describe session` and event pipelines
//! see them, aggregated so that a flood makes a handful of Events, not
//! thousands: per session, reason and what was denied (a tool, a source),
//! the first denial is published at once and later ones at most once a
//! [`WINDOW`], with how many there were since. The audit store keeps every
//! one; the Events are the signal.
//!
//! What an agent controls cannot grow this: every unknown tool shares one
//! key, names are cut to [`MAX_NAME`], a key quiet for two windows is
//! forgotten, at most [`MAX_KEYS`] are kept (a denial past the cap makes no
//! Event; it is still audited), and at most [`MAX_PUBLISHING`] Events are
//! being published at once (one more is dropped and logged).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::audit::{AuditEvent, EventType as AuditEventType};
use crate::bounded::BoundedMap;
use crate::cluster::FIELD_MANAGER;
use crate::policy::{Outcome, ToolId};

/// At most one Event per session, reason and denied thing in this window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The most aggregation keys kept.
pub const MAX_KEYS: usize = 10_000;
/// The longest name (namespace, session, what) a key holds, in bytes.
pub const MAX_NAME: usize = 253;
/// The most Events being published at once.
pub const MAX_PUBLISHING: usize = 16;
/// The reason of the Event of a sidecar's invalid audit events (each
/// stored as a stub).
pub const AUDIT_EVENT_INVALID: &str = "AuditEventInvalid";
/// What every denied call of a tool nobody declared is counted as.
const UNKNOWN_TOOL: &str = "(an unknown tool)";

/// `name` cut to [`MAX_NAME`] bytes, on a character boundary.
fn bounded(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// The denied tool as a key: its name if it is a known tool, else
/// [`UNKNOWN_TOOL`] (an agent can make up any number of names).
fn tool_key(tool: Option<&str>) -> String {
    match tool.and_then(ToolId::lookup) {
        Some(id) => id.tool().name.to_owned(),
        None => UNKNOWN_TOOL.to_owned(),
    }
}

/// One Event to publish on a Session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    pub namespace: String,
    pub session: String,
    /// `ToolDenied`, `InjectionDenied`, `ForwardDenied`, `RateLimited` or
    /// `AuditEventInvalid`.
    pub reason: &'static str,
    pub note: String,
}

/// Publishes Warning Events on Sessions.
pub trait SessionEvents: Send + Sync + 'static {
    fn warn(&self, event: SessionEvent) -> impl Future<Output = Result<(), kube::Error>> + Send;
}

/// What was denied to whom: the unit of aggregation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    namespace: String,
    session: String,
    reason: &'static str,
    what: String,
}

struct Seen {
    published: Option<Instant>,
    /// The latest denial.
    last: Instant,
    /// Denials since the last published Event.
    since: u64,
    /// The latest denial's reason, in words.
    why: String,
}

/// The aggregation of denials into Events.
#[derive(Default)]
pub struct Denials {
    state: Mutex<State>,
}

struct State {
    seen: BoundedMap<Key, Seen>,
    /// When keys quiet for two windows were last forgotten, once a window.
    swept: Option<Instant>,
}

impl Default for State {
    fn default() -> Self {
        State {
            seen: BoundedMap::new(MAX_KEYS),
            swept: None,
        }
    }
}

/// Whether a key had no denial in the two windows before `now`.
fn quiet(now: Instant) -> impl Fn(&Seen) -> bool {
    move |entry| now.duration_since(entry.last) >= 2 * WINDOW
}

impl Denials {
    /// How many keys are kept.
    pub fn keys(&self) -> usize {
        self.state
            .lock()
            .expect("the denials lock is never poisoned")
            .seen
            .len()
    }

    /// The Events due for `events` (just stored) at `now`.
    pub fn observe(&self, events: &[AuditEvent], now: Instant) -> Vec<SessionEvent> {
        let denials = events
            .iter()
            .filter(|e| e.decision == Outcome::Denied)
            .filter_map(|event| {
                let (reason, what) = match event.event_type {
                    AuditEventType::ToolCall => ("ToolDenied", tool_key(event.tool.as_deref())),
                    AuditEventType::Injection => {
                        ("InjectionDenied", bounded(&event.source.identity))
                    }
                    AuditEventType::Forward => ("ForwardDenied", bounded(&event.source.identity)),
                    AuditEventType::RateLimited => ("RateLimited", tool_key(event.tool.as_deref())),
                    _ => return None,
                };
                Some((event, reason, what))
            });
        self.count(denials, now)
    }

    /// The Events due for the stubs of invalid events a sidecar shipped
    /// (just stored) at `now`: one key per session.
    pub fn observe_invalid(&self, stubs: &[AuditEvent], now: Instant) -> Vec<SessionEvent> {
        let invalid = stubs
            .iter()
            .map(|stub| (stub, AUDIT_EVENT_INVALID, String::new()));
        self.count(invalid, now)
    }

    /// Counts each `(event, reason, what)` under its key and returns the
    /// Events due.
    fn count<'a>(
        &self,
        noted: impl Iterator<Item = (&'a AuditEvent, &'static str, String)>,
        now: Instant,
    ) -> Vec<SessionEvent> {
        let mut state = self
            .state
            .lock()
            .expect("the denials lock is never poisoned");
        if state
            .swept
            .is_none_or(|at| now.duration_since(at) >= WINDOW)
        {
            state.seen.sweep(quiet(now));
            state.swept = Some(now);
        }
        let mut due = Vec::new();
        for (event, reason, what) in noted {
            let key = Key {
                namespace: bounded(&event.namespace),
                session: bounded(&event.session),
                reason,
                what,
            };
            // Past the cap, the quiet keys are forgotten; if all are
            // recent, no Event.
            let Some(entry) = state.seen.entry(key.clone(), quiet(now), || Seen {
                published: None,
                last: now,
                since: 0,
                why: String::new(),
            }) else {
                continue;
            };
            entry.last = now;
            entry.since += 1;
            entry.why = bounded(&event.reason);
            if entry
                .published
                .is_some_and(|at| now.duration_since(at) < WINDOW)
            {
                continue;
            }
            let done = match reason {
                "ToolDenied" | "RateLimited" => format!("denied tool {}", key.what),
                "ForwardDenied" => format!("denied forward by {}", key.what),
                AUDIT_EVENT_INVALID => "stored a stub of an invalid audit event".to_owned(),
                _ => format!("denied injection from {}", key.what),
            };
            let note = if entry.since == 1 {
                format!("{done}: {}", entry.why)
            } else {
                format!(
                    "{done} {} times since the last event: {}",
                    entry.since, entry.why
                )
            };
            entry.published = Some(now);
            entry.since = 0;
            due.push(SessionEvent {
                namespace: key.namespace,
                session: key.session,
                reason,
                note,
            });
        }
        due
    }
}

/// The Events the control plane's denials call for: one aggregation for
/// the Audit and Broker services, published in the background (an answer
/// never waits for the API server).
#[derive(Clone)]
pub struct DenialEvents {
    denials: Arc<Denials>,
    publish: Arc<dyn Fn(SessionEvent) + Send + Sync>,
}

impl DenialEvents {
    /// Publishes with `events`.
    pub fn new<E: SessionEvents>(events: Arc<E>) -> DenialEvents {
        let publishing = Arc::new(tokio::sync::Semaphore::new(MAX_PUBLISHING));
        DenialEvents {
            denials: Arc::default(),
            publish: Arc::new(move |due| {
                let Ok(permit) = publishing.clone().try_acquire_owned() else {
                    tracing::warn!(session = %due.session, reason = due.reason, "too many denial Events being published; this one is dropped (the audit trail has the denial)");
                    return;
                };
                let events = events.clone();
                tokio::spawn(async move {
                    if let Err(error) = events.warn(due).await {
                        tracing::warn!(%error, "could not publish a denial Event");
                    }
                    drop(permit);
                });
            }),
        }
    }

    /// Publishes the Events that the just stored `events` call for.
    pub fn observe(&self, events: &[AuditEvent]) {
        for due in self.denials.observe(events, Instant::now()) {
            (self.publish)(due);
        }
    }

    /// Publishes the Events that the just stored stubs of invalid events
    /// call for.
    pub fn observe_invalid(&self, stubs: &[AuditEvent]) {
        for due in self.denials.observe_invalid(stubs, Instant::now()) {
            (self.publish)(due);
        }
    }
}

/// Publishes through the Events API.
pub struct KubeSessionEvents {
    recorder: Recorder,
}

impl KubeSessionEvents {
    pub fn new(client: Client, instance: String) -> KubeSessionEvents {
        KubeSessionEvents {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(instance),
                },
            ),
        }
    }
}

impl SessionEvents for KubeSessionEvents {
    async fn warn(&self, event: SessionEvent) -> Result<(), kube::Error> {
        let reference = ObjectReference {
            api_version: Some("wopr.dev/v1alpha1".into()),
            kind: Some("Session".into()),
            name: Some(event.session),
            namespace: Some(event.namespace),
            ..ObjectReference::default()
        };
        let published = Event {
            type_: EventType::Warning,
            reason: event.reason.into(),
            note: Some(event.note),
            action: "Deny".into(),
            secondary: None,
        };
        self.recorder.publish(&published, &reference).await
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{Enforcement, SourceRef, SourceType, TrustLevel};

    fn denied(tool: &str) -> AuditEvent {
        let mut event = AuditEvent::new(
            Timestamp::UNIX_EPOCH,
            AuditEventType::ToolCall,
            "team-a",
            "research",
            SourceRef {
                source_type: SourceType::Session.into(),
                identity: "research".into(),
                trust_level: TrustLevel::Untrusted,
            },
            Outcome::Denied,
            Enforcement::Enforce,
            "tool not permitted".into(),
        );
        event.tool = Some(tool.into());
        event
    }

    #[test]
    fn a_flood_of_denials_makes_a_handful_of_events() {
        let denials = Denials::default();
        let start = Instant::now();
        let flood: Vec<AuditEvent> = (0..5_000).map(|_| denied("exec_command")).collect();
        let first = denials.observe(&flood, start);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].reason, "ToolDenied");
        assert_eq!(
            first[0].note,
            "denied tool exec_command: tool not permitted"
        );
        // More within the window: nothing; after it: one, with the count.
        assert!(
            denials
                .observe(&flood, start + Duration::from_secs(30))
                .is_empty()
        );
        let later = denials.observe(&flood[..1], start + WINDOW);
        assert_eq!(later.len(), 1);
        assert_eq!(
            later[0].note,
            "denied tool exec_command 10000 times since the last event: tool not permitted"
        );
        // Another tool is its own Event; allowed calls and would_deny make none.
        let mut allowed = denied("config_get");
        allowed.decision = Outcome::Allowed;
        let mut warned = denied("config_get");
        warned.decision = Outcome::WouldDeny;
        let other = denials.observe(
            &[allowed, warned, denied("memory_write")],
            start + Duration::from_secs(61),
        );
        assert_eq!(other.len(), 1);
        assert!(other[0].note.contains("memory_write"));
    }

    /// The attack of issue 31: ten thousand made-up, long tool names.
    #[test]
    fn made_up_tool_names_share_one_key_and_one_event() {
        let denials = Denials::default();
        let start = Instant::now();
        let flood: Vec<AuditEvent> = (0..10_000)
            .map(|n| denied(&format!("{n}{}", "x".repeat(17_000))))
            .collect();
        let due = denials.observe(&flood, start);
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].note,
            "denied tool (an unknown tool): tool not permitted"
        );
        assert_eq!(denials.keys(), 1);
    }

    #[test]
    fn quiet_keys_are_forgotten_and_the_keys_are_capped() {
        let denials = Denials::default();
        let start = Instant::now();
        let mut one = denied("exec_command");
        let many: Vec<AuditEvent> = (0..MAX_KEYS + 500)
            .map(|n| {
                one.session = format!("s{n}");
                one.clone()
            })
            .collect();
        let due = denials.observe(&many, start);
        assert_eq!(denials.keys(), MAX_KEYS, "capped");
        assert_eq!(due.len(), MAX_KEYS, "past the cap, no Event");
        // Two windows later, a denial of another session: the quiet keys go.
        let later = denials.observe(&[denied("exec_command")], start + 2 * WINDOW);
        assert_eq!(later.len(), 1);
        assert_eq!(denials.keys(), 1);
        // Long names are cut.
        let mut long = denied("exec_command");
        long.session = "s".repeat(10_000);
        long.reason = "r".repeat(10_000);
        let due = denials.observe(&[long], start + 2 * WINDOW);
        assert_eq!(due[0].session.len(), MAX_NAME);
        assert!(due[0].note.len() < 2 * MAX_NAME, "{}", due[0].note.len());
    }

    /// A sidecar's invalid events make one Event per session and window,
    /// with the count, like denials.
    #[test]
    fn invalid_events_are_aggregated_per_session() {
        let denials = Denials::default();
        let start = Instant::now();
        let mut stub = denied("exec_command");
        stub.event_type = AuditEventType::Policy;
        stub.reason = "invalid event: 17287 bytes, over the limit of 16384".into();
        let stubs = vec![stub.clone(); 3];
        let due = denials.observe_invalid(&stubs, start);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].reason, AUDIT_EVENT_INVALID);
        assert_eq!(
            due[0].note,
            "stored a stub of an invalid audit event: invalid event: 17287 bytes, over the limit of 16384"
        );
        let later = denials.observe_invalid(&stubs[..1], start + WINDOW);
        assert_eq!(
            later[0].note,
            "stored a stub of an invalid audit event 3 times since the last event: invalid event: 17287 bytes, over the limit of 16384"
        );
        assert!(
            denials.observe(&stubs, start + WINDOW).is_empty(),
            "a stub is no denial"
        );
    }

    /// An API server that never answers: publishing Events holds no more
    /// than [`MAX_PUBLISHING`] tasks.
    #[tokio::test]
    async fn at_most_a_few_events_are_published_at_once() {
        #[derive(Default)]
        struct Stuck(std::sync::atomic::AtomicUsize);
        impl SessionEvents for Stuck {
            async fn warn(&self, _: SessionEvent) -> Result<(), kube::Error> {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::future::pending().await
            }
        }
        let stuck = Arc::new(Stuck::default());
        let events = DenialEvents::new(stuck.clone());
        let mut one = denied("exec_command");
        let many: Vec<AuditEvent> = (0..100)
            .map(|n| {
                one.session = format!("s{n}");
                one.clone()
            })
            .collect();
        events.observe(&many);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            stuck.0.load(std::sync::atomic::Ordering::SeqCst),
            MAX_PUBLISHING
        );
    }
}
