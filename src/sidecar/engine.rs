//! The tool engine behind both transports (gRPC and MCP): decide with the
//! policy engine, rate-limit, audit every decision, and run the tool with
//! its family's handler ([`super::tools`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::denials::{Admission, DenialKey, Denials};
use super::inbox::Inbox;
use super::models::Egress;
use super::policy_state::{PolicyState, Served};
use super::tools::{self, Messenger, Scope};
use super::workspace::Workspace;
use crate::api::{Capability, Enforcement, RateLimit, SourceRef, SourceType, TrustLevel};
use crate::audit::{
    AuditEvent, AuditSink, EventType, MAX_REASON_BYTES, MAX_TOOL_NAME_BYTES, NotAccepting,
    truncated,
};
use crate::policy::tools::argument_rules;
use crate::policy::{
    Outcome, Request, TokenBucket, ToolCall, ToolId, decide, decide_tool_call, try_acquire_all,
};

/// Why a call did not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ToolError {
    /// Denied, unknown, or not implemented: one message for all, so a caller
    /// cannot learn whether a tool exists.
    #[error("tool not available: {0}")]
    NotAvailable(String),
    /// Over a rate limit.
    #[error("rate limit exceeded: retry in {} ms", .0.as_millis())]
    RateLimited(Duration),
    /// The arguments do not fit the tool's schema.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The arguments break one of the session's `tools.rules`.
    #[error("{0}")]
    Refused(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    /// The error with the input it echoes bounded: a tool's name to
    /// [`MAX_TOOL_NAME_BYTES`] (no tool has a longer one, so a longer name
    /// is refused as unknown), other messages to [`MAX_REASON_BYTES`].
    fn bounded(self) -> ToolError {
        let cut = |text: String, max| match truncated(&text, max) {
            Cow::Borrowed(_) => text,
            Cow::Owned(short) => short,
        };
        match self {
            ToolError::NotAvailable(name) => {
                ToolError::NotAvailable(cut(name, MAX_TOOL_NAME_BYTES))
            }
            ToolError::InvalidArguments(message) => {
                ToolError::InvalidArguments(cut(message, MAX_REASON_BYTES))
            }
            ToolError::Refused(message) => ToolError::Refused(cut(message, MAX_REASON_BYTES)),
            ToolError::Failed(message) => ToolError::Failed(cut(message, MAX_REASON_BYTES)),
            limited @ ToolError::RateLimited(_) => limited,
        }
    }
}

/// What a call answers: its result, and the id of the audit event that
/// recorded it (returned to the agent, so it can name the record).
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub result: Result<Value, ToolError>,
    pub audit_id: String,
}

/// Elevation requests (`security_request`) a session may file per minute
/// by default, whatever the per-tool limit: the tool needs no capability,
/// and each call asks a person.
pub const ELEVATION_REQUESTS_PER_MINUTE: u32 = 3;

/// Rate limits for the session and for each tool. Buckets start full at
/// their first use.
pub struct Limits {
    session_limit: RateLimit,
    session: Option<TokenBucket>,
    per_tool_limit: RateLimit,
    /// Tools with a limit of their own instead of `per_tool_limit`.
    tool_limits: HashMap<&'static str, RateLimit>,
    per_tool: HashMap<&'static str, TokenBucket>,
}

impl Limits {
    /// `session` calls per minute in all, `per_tool` per minute for each
    /// tool; `security_request` at most [`ELEVATION_REQUESTS_PER_MINUTE`].
    pub fn new(session: RateLimit, per_tool: RateLimit) -> Limits {
        let elevation = RateLimit {
            per_minute: per_tool.per_minute.min(ELEVATION_REQUESTS_PER_MINUTE),
        };
        Limits {
            session_limit: session,
            session: None,
            per_tool_limit: per_tool,
            tool_limits: HashMap::from([(ToolId::SecurityRequest.tool().name, elevation)]),
            per_tool: HashMap::new(),
        }
    }

    /// The limits, with `tool` limited to `limit` calls a minute.
    pub fn with_tool_limit(mut self, tool: ToolId, limit: RateLimit) -> Limits {
        self.tool_limits.insert(tool.tool().name, limit);
        self
    }

    /// Takes a token of `tool` and one of the session, or neither: a call
    /// the session's limit refuses costs the tool nothing.
    fn acquire(&mut self, tool: &'static str, now: Instant) -> Result<(), Duration> {
        let session_limit = &self.session_limit;
        let tool_limit = self.tool_limits.get(tool).unwrap_or(&self.per_tool_limit);
        let session = self
            .session
            .get_or_insert_with(|| TokenBucket::new(session_limit, now));
        let per_tool = self
            .per_tool
            .entry(tool)
            .or_insert_with(|| TokenBucket::new(tool_limit, now));
        try_acquire_all(&mut [per_tool, session], now)
    }
}

/// Serves the tools of one session.
pub struct ToolEngine {
    namespace: String,
    session: String,
    policy: Arc<PolicyState>,
    audit: Arc<dyn AuditSink>,
    workspace: Workspace,
    /// The system prompt the agent was given, as its pod says.
    prompt: Option<String>,
    limits: Mutex<Limits>,
    /// The audit budget of calls not run, and their held repeats.
    denials: Mutex<Denials>,
    /// The way to the broker; without one, every message tool fails.
    messenger: Option<Arc<dyn Messenger>>,
    /// The egress service, which makes `http_fetch` calls.
    egress: Option<Arc<Egress>>,
    inbox: Arc<Inbox>,
    /// The wall clock of audit events (a parameter so tests fix it). Rate
    /// limits and the policy's staleness run on tokio's clock, which tests
    /// pause and advance.
    clock: fn() -> Timestamp,
}

impl ToolEngine {
    /// An engine for `namespace/session`.
    pub fn new(
        namespace: &str,
        session: &str,
        policy: Arc<PolicyState>,
        audit: Arc<dyn AuditSink>,
        workspace: Workspace,
        limits: Limits,
        clock: fn() -> Timestamp,
    ) -> ToolEngine {
        ToolEngine {
            namespace: namespace.to_owned(),
            session: session.to_owned(),
            policy,
            audit,
            workspace,
            prompt: None,
            limits: Mutex::new(limits),
            denials: Mutex::default(),
            messenger: None,
            egress: None,
            inbox: Arc::default(),
            clock,
        }
    }

    /// The engine of an agent given `prompt` (what `security_whoami` says).
    pub fn with_prompt(mut self, prompt: Option<String>) -> ToolEngine {
        self.prompt = prompt;
        self
    }

    /// The engine, sending and acknowledging messages with `messenger`,
    /// reading them from `inbox`.
    pub fn with_broker(mut self, messenger: Arc<dyn Messenger>, inbox: Arc<Inbox>) -> ToolEngine {
        self.messenger = Some(messenger);
        self.inbox = inbox;
        self
    }

    /// The engine, making `http_fetch` calls through `egress`.
    pub fn with_egress(mut self, egress: Arc<Egress>) -> ToolEngine {
        self.egress = Some(egress);
        self
    }

    /// The session's inbox, as this sidecar holds it.
    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    /// The policy this engine enforces.
    pub fn policy(&self) -> &Arc<PolicyState> {
        &self.policy
    }

    /// The tools the agent may call now: those this version runs that the
    /// policy allows. Without a policy: only `security_whoami`.
    pub fn list(&self) -> Vec<ToolId> {
        let served = self.policy.current();
        ToolId::all()
            .filter(|id| id.implemented())
            .filter(|id| match &served {
                Err(_) => *id == ToolId::SecurityWhoami,
                Ok(served) => {
                    decide(&served.context, Request::Tool(*id)).outcome != Outcome::Denied
                }
            })
            .collect()
    }

    /// Records that a request broke the protocol (bad JSON-RPC, oversized
    /// body, ...), so every refusal leaves an audit line (or a count in
    /// one, past the denials' budget).
    pub fn audit_bad_request(&self, reason: String) {
        self.record_due_denials();
        let served = self.policy.current().ok();
        let event = self.event(
            served.as_deref(),
            EventType::Policy,
            Outcome::Denied,
            reason,
        );
        let key = DenialKey {
            tool: None,
            reason: "the request broke the protocol".into(),
        };
        self.record_denial(key, event);
    }

    /// Calls `name` with `arguments`; every outcome is audited, and the
    /// answer names the audit event that recorded it (for a call not run,
    /// past the denials' budget: the event that counts it and its repeats).
    pub async fn call(&self, name: &str, arguments: &Value) -> Answer {
        self.record_due_denials();
        let (result, mut event) = self.decide_and_run(name, arguments).await;
        let result = result.map_err(ToolError::bounded);
        event.tool = Some(name.to_owned());
        let denial = match &result {
            Err(ToolError::NotAvailable(_)) => Some(event.reason.clone()),
            Err(ToolError::InvalidArguments(_)) => Some("invalid arguments".to_owned()),
            // A rule or the server that acts (the SSRF guard) refused its arguments.
            Err(ToolError::Refused(_)) => Some("refused for its arguments".to_owned()),
            Err(ToolError::RateLimited(_)) => Some("rate limit exceeded".to_owned()),
            Ok(_) | Err(ToolError::Failed(_)) => None,
        };
        let audit_id = match denial {
            Some(reason) => {
                let tool = ToolId::lookup(name).map(|id| id.tool().name);
                self.record_denial(DenialKey { tool, reason }, event)
            }
            None => self.record(event),
        };
        Answer { result, audit_id }
    }

    /// Whether calls may run now: an error when the audit cannot record
    /// them durably (no call, tool or model, runs unrecorded).
    pub fn accepting(&self) -> Result<(), NotAccepting> {
        self.audit.accepting()
    }

    /// Records a model call's event (see [`super::models`]): a refusal
    /// within the denials' budget like a tool's, anything else at once; its id.
    pub fn record_model_call(&self, event: AuditEvent) -> String {
        self.record_due_denials();
        if event.decision == Outcome::Denied {
            let key = DenialKey {
                tool: None,
                reason: "model call refused".into(),
            };
            return self.record_denial(key, event);
        }
        self.record(event)
    }

    /// Records `event`, its free text bounded; its id.
    fn record(&self, event: AuditEvent) -> String {
        let event = event.bounded();
        self.audit.record(&event);
        event.id
    }

    /// Records a call not run, within the denials' budget, or holds it
    /// with its repeats; the id of the event that records it. Only what
    /// an agent can repeat at will is held, denials under a policy: a
    /// refusal because the audit cannot record (its append is the spool's
    /// retry) or because no policy is in force (the sidecar failing
    /// closed) is recorded at once.
    fn record_denial(&self, key: DenialKey, event: AuditEvent) -> String {
        let under_a_policy = event.policy_hash.is_some();
        if !under_a_policy || self.audit.accepting().is_err() {
            return self.record(event);
        }
        let now = tokio::time::Instant::now().into_std();
        let admission = self
            .denials
            .lock()
            .expect("the denials lock is never poisoned")
            .admit(key, event.bounded(), now);
        match admission {
            Admission::Record(event) => self.record(*event),
            Admission::Held(id) => id,
        }
    }

    /// Records the held denials whose window has ended.
    pub fn record_due_denials(&self) {
        let now = tokio::time::Instant::now().into_std();
        let due = self
            .denials
            .lock()
            .expect("the denials lock is never poisoned")
            .due(now);
        for held in due {
            self.record(held);
        }
    }

    /// Records every held denial, its window ended or not: at shutdown, so
    /// no decision is lost.
    pub fn record_held_denials(&self) {
        let held = self
            .denials
            .lock()
            .expect("the denials lock is never poisoned")
            .take();
        for event in held {
            self.record(event);
        }
    }

    /// The result of a call and the (not yet recorded) event that records it.
    async fn decide_and_run(
        &self,
        name: &str,
        arguments: &Value,
    ) -> (Result<Value, ToolError>, AuditEvent) {
        let not_available = || Err(ToolError::NotAvailable(name.to_owned()));
        if let Err(refused) = self.audit.accepting() {
            return (
                not_available(),
                self.tool_event(None, None, Outcome::Denied, refused.to_string()),
            );
        }
        let served = match self.policy.current() {
            Ok(served) => served,
            Err(no_policy) if name == "security_whoami" => {
                let reason = no_policy.to_string();
                let event = self.tool_event(
                    None,
                    None,
                    Outcome::Allowed,
                    format!("whoami only: {reason}"),
                );
                let result = tools::whoami_without_policy(
                    &self.namespace,
                    &self.session,
                    self.prompt.as_deref(),
                    &reason,
                );
                return (Ok(result), event);
            }
            Err(no_policy) => {
                return (
                    not_available(),
                    self.tool_event(None, None, Outcome::Denied, no_policy.to_string()),
                );
            }
        };
        let (known, decision) = match decide_tool_call(&served.context, name) {
            Ok((id, decision)) => (Some(id), decision),
            Err(unknown) => (None, unknown),
        };
        let refused = |reason: String| {
            self.tool_event(Some(&served), decision.capability, Outcome::Denied, reason)
        };
        let Some(id) = known.filter(|_| decision.proceeds()) else {
            return (not_available(), refused(decision.reason.to_string()));
        };
        if !id.implemented() {
            return (
                not_available(),
                refused("not implemented by this sidecar".into()),
            );
        };
        let mut warned = None;
        let mut fetch = None;
        let mut summary = None;
        let result = match ToolCall::parse(id, arguments.clone()) {
            Err(error) => Err(ToolError::InvalidArguments(error)),
            Ok(call) => {
                if let Err(breach) = argument_rules::check(&call, &served.context.rules) {
                    if served.context.enforcement == Enforcement::Enforce {
                        let reason = breach.to_string();
                        let event = self.tool_event(
                            Some(&served),
                            decision.capability,
                            Outcome::Denied,
                            reason.clone(),
                        );
                        return (Err(ToolError::Refused(reason)), event);
                    }
                    warned = Some(breach);
                }
                let limited = self
                    .limits
                    .lock()
                    .expect("the limits lock is never poisoned")
                    .acquire(id.tool().name, tokio::time::Instant::now().into_std());
                if let Err(retry_after) = limited {
                    let event = self.event(
                        Some(&served),
                        EventType::RateLimited,
                        Outcome::Denied,
                        "rate limit exceeded".into(),
                    );
                    return (Err(ToolError::RateLimited(retry_after)), event);
                }
                let scope = Scope {
                    served: &served,
                    prompt: self.prompt.as_deref(),
                    workspace: &self.workspace,
                    inbox: &self.inbox,
                    messenger: self.messenger.as_deref(),
                    egress: self.egress.as_deref(),
                };
                let ran = tools::run(call, &scope).await;
                fetch = ran.fetch;
                summary = ran.summary;
                ran.result
            }
        };
        let mut outcome = decision.outcome;
        let mut reason = match &result {
            Ok(_) => match summary {
                Some(summary) => format!("{}; {summary}", decision.reason),
                None => decision.reason.to_string(),
            },
            // The server that acts refused it (http_fetch's SSRF guard):
            // denied, whatever the mode, for its reason.
            Err(ToolError::Refused(why)) => {
                outcome = Outcome::Denied;
                why.clone()
            }
            Err(error @ ToolError::InvalidArguments(_)) => format!("{}; {error}", decision.reason),
            Err(error) => format!("{}; the tool failed: {error}", decision.reason),
        };
        if let Some(breach) = warned {
            // Warn mode: the call ran, and the record says it would not
            // have (unless the server that acts refused it anyway).
            if outcome != Outcome::Denied {
                outcome = Outcome::WouldDeny;
            }
            reason = format!("{reason}; would be {breach}");
        }
        let mut event = self.tool_event(Some(&served), decision.capability, outcome, reason);
        event.fetch = fetch;
        (result, event)
    }

    /// An event of this session, its source the agent at the level of
    /// `served` (untrusted and enforce when no policy is in force).
    pub fn event(
        &self,
        served: Option<&Served>,
        event_type: EventType,
        decision: Outcome,
        reason: String,
    ) -> AuditEvent {
        let trust_level = served.map_or(TrustLevel::Untrusted, |s| s.context.trust_level);
        let enforcement = served.map_or(Enforcement::Enforce, |s| s.context.enforcement);
        let source = SourceRef {
            source_type: SourceType::Agent.into(),
            identity: self.session.clone(),
            trust_level,
        };
        let mut event = AuditEvent::new(
            (self.clock)(),
            event_type,
            &self.namespace,
            &self.session,
            source,
            decision,
            enforcement,
            reason,
        );
        event.policy_hash = served.map(|s| s.context.policy_hash.clone());
        event
    }

    /// The event of a tool call (its tool is set by [`ToolEngine::call`]).
    fn tool_event(
        &self,
        served: Option<&Served>,
        capability: Option<Capability>,
        decision: Outcome,
        reason: String,
    ) -> AuditEvent {
        let mut event = self.event(served, EventType::ToolCall, decision, reason);
        event.capability = capability;
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{MemorySink, NotAccepting};
    use crate::sidecar::denials::DENIALS_PER_MINUTE;
    use crate::sidecar::policy_state::{Withdrawal, served};
    use serde_json::json;

    /// An engine with a policy, these limits, and a fixed wall clock, and
    /// what it audits.
    fn engine(
        session_per_minute: u32,
        tool_per_minute: u32,
    ) -> (ToolEngine, Arc<MemorySink>, tempfile::TempDir) {
        let policy = Arc::new(PolicyState::new(Duration::from_secs(3600)));
        policy.update(Ok(served()));
        let workspace = tempfile::tempdir().unwrap();
        let limits = Limits::new(
            RateLimit {
                per_minute: session_per_minute,
            },
            RateLimit {
                per_minute: tool_per_minute,
            },
        );
        let audit = Arc::new(MemorySink::default());
        let engine = ToolEngine::new(
            "ns",
            "s",
            policy,
            audit.clone(),
            Workspace::new(workspace.path()),
            limits,
            || Timestamp::UNIX_EPOCH,
        );
        (engine, audit, workspace)
    }

    /// A sink that cannot record durably: every call is refused, and the
    /// refusal says why.
    #[tokio::test]
    async fn no_call_runs_while_the_audit_cannot_record_it() {
        struct Failing(MemorySink);
        impl AuditSink for Failing {
            fn record(&self, event: &AuditEvent) {
                self.0.record(event);
            }
            fn accepting(&self) -> Result<(), NotAccepting> {
                Err(NotAccepting::SpoolUnwritable)
            }
        }
        let policy = Arc::new(PolicyState::new(Duration::from_secs(3600)));
        policy.update(Ok(served()));
        let workspace = tempfile::tempdir().unwrap();
        let sink = Arc::new(Failing(MemorySink::default()));
        let unlimited = RateLimit { per_minute: 1000 };
        let engine = ToolEngine::new(
            "ns",
            "s",
            policy,
            sink.clone(),
            Workspace::new(workspace.path()),
            Limits::new(unlimited.clone(), unlimited),
            || Timestamp::UNIX_EPOCH,
        );
        let answer = engine.call("security_whoami", &json!({})).await;
        assert_eq!(
            answer.result,
            Err(ToolError::NotAvailable("security_whoami".into()))
        );
        let recorded = sink.0.take();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].id, answer.audit_id);
        assert_eq!(recorded[0].decision, Outcome::Denied);
        assert_eq!(
            recorded[0].reason,
            "the audit spool cannot be written: no call runs unrecorded"
        );
    }

    /// An agent chooses the tool's name and the arguments: what it is
    /// answered and what is audited are bounded whatever it sends.
    #[tokio::test]
    async fn a_name_over_128_bytes_is_refused_as_unknown_and_recorded_cut() {
        assert!(
            ToolId::all().all(|id| id.tool().name.len() <= MAX_TOOL_NAME_BYTES),
            "no tool has a longer name"
        );
        let (engine, audit, _workspace) = engine(100, 100);
        engine.call("no_such_tool", &json!({})).await;
        let long = "a".repeat(17_000);
        let answer = engine.call(&long, &json!({})).await;
        let Err(ToolError::NotAvailable(echoed)) = &answer.result else {
            panic!("{:?}", answer.result);
        };
        assert!(echoed.len() <= MAX_TOOL_NAME_BYTES, "{echoed}");
        assert!(echoed.ends_with("…(17000 bytes)"), "{echoed}");
        let events = audit.take();
        let (unknown, long) = (&events[0], &events[1]);
        assert_eq!(long.id, answer.audit_id);
        assert_eq!(
            long.reason, unknown.reason,
            "the same refusal as any unknown tool"
        );
        assert_eq!(long.tool.as_deref(), Some(echoed.as_str()));

        // Echoed arguments are cut too.
        let answer = engine
            .call(
                "security_check",
                &json!({"capability": "x".repeat(100_000)}),
            )
            .await;
        let Err(ToolError::InvalidArguments(message)) = &answer.result else {
            panic!("{:?}", answer.result);
        };
        assert!(message.len() <= MAX_REASON_BYTES, "{} bytes", message.len());
        let event = &audit.take()[0];
        assert!(event.reason.len() <= MAX_REASON_BYTES);
    }

    /// Calls over the rate limit are denials too: past the denials' budget
    /// their repeats are one event, recorded when the window ends or, at
    /// the latest, when the sidecar stops.
    #[tokio::test(start_paused = true)]
    async fn a_flood_over_the_rate_limit_is_counted_in_a_few_events() {
        let (engine, audit, _workspace) = engine(4, 4);
        let mut limited = Vec::new();
        for _ in 0..1_000 {
            let answer = engine.call("security_whoami", &json!({})).await;
            if answer.result.is_err() {
                limited.push(answer.audit_id);
            }
        }
        assert_eq!(limited.len(), 996);
        let events = audit.take();
        assert_eq!(events.len(), 4 + DENIALS_PER_MINUTE as usize);
        // The rest are held under one event, which every refusal names.
        let held = limited.last().unwrap();
        assert!(
            limited[DENIALS_PER_MINUTE as usize..]
                .iter()
                .all(|id| id == held)
        );
        engine.record_held_denials();
        let counted = audit.take();
        assert_eq!(counted.len(), 1);
        assert_eq!(counted[0].id, *held);
        assert_eq!(counted[0].event_type, EventType::RateLimited);
        assert_eq!(
            counted[0].repeats,
            Some(996 - u64::from(DENIALS_PER_MINUTE))
        );
    }

    /// Failing closed is the sidecar's doing, not the agent's: those
    /// refusals are each an event, however many.
    #[tokio::test(start_paused = true)]
    async fn refusals_without_a_policy_are_never_held() {
        let (engine, audit, _workspace) = engine(1000, 1000);
        engine
            .policy
            .update(Err(Withdrawal::Said("withdrawn".into())));
        for _ in 0..100 {
            let answer = engine.call("config_get", &json!({})).await;
            assert!(matches!(answer.result, Err(ToolError::NotAvailable(_))));
        }
        assert_eq!(audit.take().len(), 100);
    }

    /// `security_request` files an ApprovalRequest: 3 a minute, however
    /// generous the per-tool limit; a flag may set another.
    #[test]
    fn elevation_requests_have_a_low_limit_of_their_own() {
        let start = Instant::now();
        let generous = RateLimit { per_minute: 300 };
        let mut limits = Limits::new(generous.clone(), generous.clone());
        let tool = ToolId::SecurityRequest.tool().name;
        for _ in 0..ELEVATION_REQUESTS_PER_MINUTE {
            assert_eq!(limits.acquire(tool, start), Ok(()));
        }
        assert!(limits.acquire(tool, start).is_err());
        assert_eq!(limits.acquire("security_check", start), Ok(()));
        let mut configured = Limits::new(generous.clone(), generous)
            .with_tool_limit(ToolId::SecurityRequest, RateLimit { per_minute: 5 });
        for _ in 0..5 {
            assert_eq!(configured.acquire(tool, start), Ok(()));
        }
        assert!(configured.acquire(tool, start).is_err());
    }

    /// The session allows 4 calls a minute, each tool 2: calls the session
    /// refuses must not spend the tool's tokens.
    #[tokio::test(start_paused = true)]
    async fn a_session_over_its_limit_keeps_its_per_tool_tokens() {
        let (engine, _audit, _workspace) = engine(4, 2);
        let check = json!({"capability": "inject"});
        for (tool, arguments) in [
            ("security_check", check.clone()),
            ("security_whoami", json!({})),
            ("config_get", json!({})),
            ("memory_read", json!({"path": "x"})),
        ] {
            let _ = engine.call(tool, &arguments).await.result;
        }
        for _ in 0..3 {
            assert_eq!(
                engine.call("security_check", &check).await.result,
                Err(ToolError::RateLimited(Duration::from_secs(15))),
                "the session's limit refuses"
            );
        }
        // The session gets a token back after 15 s; security_check still
        // has the one token the refused calls did not spend.
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(engine.call("security_check", &check).await.result.is_ok());
    }
}
