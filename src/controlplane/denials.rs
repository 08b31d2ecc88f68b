//! Denials become Kubernetes Events on their Session (`ToolDenied`,
//! `InjectionDenied`, `ForwardDenied`, `RateLimited`), so `kubectl
//! describe session` and event pipelines
//! see them, aggregated so that a flood makes a handful of Events, not
//! thousands: per session, reason and what was denied (a tool, a source),
//! the first denial is published at once and later ones at most once a
//! [`WINDOW`], with how many there were since. The audit store keeps every
//! one; the Events are the signal.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::audit::{AuditEvent, EventType as AuditEventType};
use crate::cluster::FIELD_MANAGER;
use crate::policy::Outcome;

/// At most one Event per session, reason and denied thing in this window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One Event to publish on a Session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    pub namespace: String,
    pub session: String,
    /// `ToolDenied` or `InjectionDenied`.
    pub reason: &'static str,
    pub note: String,
}

/// Publishes Warning Events on Sessions.
pub trait SessionEvents: Send + Sync + 'static {
    fn warn(&self, event: SessionEvent) -> impl Future<Output = Result<(), String>> + Send;
}

/// What was denied to whom: the unit of aggregation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    namespace: String,
    session: String,
    reason: &'static str,
    what: String,
}

#[derive(Default)]
struct Seen {
    published: Option<Instant>,
    /// Denials since the last published Event.
    since: u64,
    /// The latest denial's reason, in words.
    why: String,
}

/// The aggregation of denials into Events.
#[derive(Default)]
pub struct Denials {
    seen: Mutex<HashMap<Key, Seen>>,
}

impl Denials {
    /// The Events due for `events` (just stored) at `now`.
    pub fn observe(&self, events: &[AuditEvent], now: Instant) -> Vec<SessionEvent> {
        let mut seen = self
            .seen
            .lock()
            .expect("the denials lock is never poisoned");
        let mut due = Vec::new();
        for event in events.iter().filter(|e| e.decision == Outcome::Denied) {
            let (reason, what) = match event.event_type {
                AuditEventType::ToolCall => ("ToolDenied", event.tool.clone().unwrap_or_default()),
                AuditEventType::Injection => ("InjectionDenied", event.source.identity.clone()),
                AuditEventType::Forward => ("ForwardDenied", event.source.identity.clone()),
                AuditEventType::RateLimited => {
                    ("RateLimited", event.tool.clone().unwrap_or_default())
                }
                _ => continue,
            };
            let key = Key {
                namespace: event.namespace.clone(),
                session: event.session.clone(),
                reason,
                what,
            };
            let entry = seen.entry(key.clone()).or_default();
            entry.since += 1;
            entry.why.clone_from(&event.reason);
            if entry
                .published
                .is_some_and(|at| now.duration_since(at) < WINDOW)
            {
                continue;
            }
            let denied = match reason {
                "ToolDenied" | "RateLimited" => format!("tool {}", key.what),
                "ForwardDenied" => format!("forward by {}", key.what),
                _ => format!("injection from {}", key.what),
            };
            let note = if entry.since == 1 {
                format!("denied {denied}: {}", entry.why)
            } else {
                format!(
                    "denied {denied} {} times since the last event: {}",
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
        DenialEvents {
            denials: Arc::default(),
            publish: Arc::new(move |due| {
                let events = events.clone();
                tokio::spawn(async move {
                    if let Err(error) = events.warn(due).await {
                        tracing::warn!(%error, "could not publish a denial Event");
                    }
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
    async fn warn(&self, event: SessionEvent) -> Result<(), String> {
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
        self.recorder
            .publish(&published, &reference)
            .await
            .map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{Enforcement, SourceRef, TrustLevel};

    fn denied(tool: &str) -> AuditEvent {
        let mut event = AuditEvent::new(
            Timestamp::UNIX_EPOCH,
            AuditEventType::ToolCall,
            "team-a",
            "research",
            SourceRef {
                source_type: "session".into(),
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
}
