//! Audit events (SPEC "Audit"): one per decision, written as a JSON line.

use std::io::Write;
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{Capability, Enforcement, SourceRef};
use crate::policy::Outcome;

/// What an audit event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// An agent called a tool.
    ToolCall,
    /// A source injected into a session.
    Injection,
    /// A gateway forwarded a request.
    Forward,
    /// An approval was decided.
    Approval,
    /// A grant was used or changed.
    Grant,
    /// A call was refused by a rate limit.
    RateLimited,
    /// The policy in force changed, or a request broke the protocol.
    Policy,
}

/// One audit event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// A ULID: unique, sortable by time; the key for deduplication.
    pub id: String,
    /// When the decision was made.
    pub time: Timestamp,
    /// What kind of event.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The session's namespace.
    pub namespace: String,
    /// The session.
    pub session: String,
    /// Who asked.
    pub source: SourceRef,
    /// The tool called, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The action (for forwards and approvals), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The capability the decision turned on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<Capability>,
    /// allowed, denied or would_deny.
    pub decision: Outcome,
    /// The enforcement mode in force (enforce when no policy was).
    pub enforcement: Enforcement,
    /// Why, in words.
    pub reason: String,
    /// The policy hash in force, if any policy was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
}

impl AuditEvent {
    /// A new event with a fresh id, stamped `time`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        time: Timestamp,
        event_type: EventType,
        namespace: &str,
        session: &str,
        source: SourceRef,
        decision: Outcome,
        enforcement: Enforcement,
        reason: String,
    ) -> AuditEvent {
        AuditEvent {
            id: ulid::Ulid::new().to_string(),
            time,
            event_type,
            namespace: namespace.to_owned(),
            session: session.to_owned(),
            source,
            tool: None,
            action: None,
            capability: None,
            decision,
            enforcement,
            reason,
            policy_hash: None,
        }
    }
}

/// Where audit events go.
pub trait AuditSink: Send + Sync {
    /// Records one event. Never fails the caller: a sink that cannot write
    /// reports it on stderr.
    fn record(&self, event: &AuditEvent);
}

/// Writes each event as one JSON line to stdout.
pub struct StdoutSink;

impl AuditSink for StdoutSink {
    fn record(&self, event: &AuditEvent) {
        let mut line = serde_json::to_vec(event).expect("audit events serialize");
        line.push(b'\n');
        let mut stdout = std::io::stdout().lock();
        if let Err(error) = stdout.write_all(&line).and_then(|()| stdout.flush()) {
            eprintln!("audit: cannot write to stdout: {error}");
        }
    }
}

/// Keeps events in memory (for embedding and tests).
#[derive(Default)]
pub struct MemorySink(Mutex<Vec<AuditEvent>>);

impl MemorySink {
    /// Every event recorded so far, and forgets them.
    pub fn take(&self) -> Vec<AuditEvent> {
        std::mem::take(&mut self.0.lock().expect("the audit lock is never poisoned"))
    }
}

impl AuditSink for MemorySink {
    fn record(&self, event: &AuditEvent) {
        self.0
            .lock()
            .expect("the audit lock is never poisoned")
            .push(event.clone());
    }
}
