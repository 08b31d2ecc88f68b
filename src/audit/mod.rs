//! Audit events (SPEC "Audit"): one per decision, written as a JSON line.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{Capability, Enforcement, SourceRef};
use crate::policy::Outcome;
use crate::proto::v1alpha1 as pb;

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
    /// An agent called a model through the egress service.
    ModelCall,
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
    /// When the control plane received the event from the sidecar that
    /// shipped it (set at ingest, whatever the sidecar sent): `time` is what
    /// the sidecar claims, this is what the control plane saw. Absent on
    /// events the control plane records itself and on events stored before
    /// it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<Timestamp>,
    /// What the control plane corrected of what the sidecar claimed, in
    /// words (a time in the future, a trust level the source does not have);
    /// set at ingest only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrections: Vec<String>,
    /// How many identical denials this one event stands for, when a
    /// sidecar coalesced repeats (an agent past its budget of audited
    /// denials): the same tool (every unknown tool counting as one) refused
    /// for the same reason within one window; `time`, `tool` and `reason`
    /// are the first one's. Absent: the event is one decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<u64>,
    /// A `model_call`'s figures: never the prompt or the completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelCall>,
    /// An `http_fetch` call's figures: never its headers or body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<FetchRecord>,
    /// An `exec_command`'s end, as the control plane ran it: never the
    /// arguments, stdin or output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecRun>,
}

/// What an `exec_command` event records besides the decision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRun {
    /// The pod and container it ran in.
    pub pod: String,
    pub container: String,
    /// The exit status (124 and `timedOut` when the timeout killed it).
    pub exit_code: i32,
    pub timed_out: bool,
    /// Whether stdout or stderr went past the cap.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
}

/// What a `model_call` event records besides the decision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelCall {
    /// The provider of the link that answered (or was refused).
    pub provider: String,
    /// Its model.
    pub model: String,
    /// Tokens the provider counted in the request and in its answer.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// From the request's arrival at the egress service to its last byte.
    pub latency_ms: u64,
    /// Links skipped or failed before the one that answered, each as
    /// `provider:model (why)`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    /// Whether the answer was streamed.
    pub streamed: bool,
}

/// What an `http_fetch` call's `tool_call` event records besides the
/// decision (a refusal's reason is the event's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchRecord {
    /// The method, and the host of the URL the agent gave.
    pub method: String,
    pub host: String,
    /// The socket address of the last connection made, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The last hop's HTTP status, if an answer came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The bytes of the answer's body.
    pub bytes: u64,
    /// The redirects followed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redirects: u32,
}

impl FetchRecord {
    /// The figures of an `http_fetch` call and the egress service's reply
    /// (the sidecar's event and the egress service's own record the same).
    pub fn of(call: &pb::FetchCall, reply: &pb::FetchReply) -> FetchRecord {
        let method = match call.method.as_str() {
            "" => "GET".to_owned(),
            method => method.to_ascii_uppercase(),
        };
        FetchRecord {
            method,
            host: FetchRecord::host_of(&call.url),
            address: (!reply.address.is_empty()).then(|| reply.address.clone()),
            status: u16::try_from(reply.status)
                .ok()
                .filter(|status| *status != 0),
            bytes: reply.body.len() as u64,
            redirects: u32::try_from(reply.redirects.len()).unwrap_or(u32::MAX),
        }
    }

    /// The host of `url` as the URL parser normalizes it, or empty.
    pub fn host_of(url: &str) -> String {
        url::Url::parse(url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

/// The longest tool name a sidecar serves: a longer one is refused as
/// unknown, and any name is recorded cut to this length (see [`truncated`]).
pub const MAX_TOOL_NAME_BYTES: usize = 128;
/// The longest reason an event records; longer ones are cut.
pub const MAX_REASON_BYTES: usize = 1024;

/// `text` in at most `max` bytes: when longer, cut on a character
/// boundary and ended with a marker of its length (`…(17000 bytes)`). How
/// agent-chosen text is bounded before it is audited or echoed; cutting
/// twice changes nothing.
pub fn truncated(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let marker = format!("…({} bytes)", text.len());
    let cut = (0..=max.saturating_sub(marker.len()))
        .rev()
        .find(|&at| text.is_char_boundary(at))
        .unwrap_or(0);
    Cow::Owned(format!("{}{marker}", &text[..cut]))
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
            received: None,
            corrections: Vec::new(),
            repeats: None,
            model: None,
            fetch: None,
            exec: None,
        }
    }

    /// The event with its free-text fields bounded ([`MAX_TOOL_NAME_BYTES`]
    /// for the tool and action, [`MAX_REASON_BYTES`] for the reason), so
    /// no input makes its line large.
    pub fn bounded(mut self) -> AuditEvent {
        let cut = |text: &mut String, max| {
            if let Cow::Owned(short) = truncated(text, max) {
                *text = short;
            }
        };
        for field in [&mut self.tool, &mut self.action].into_iter().flatten() {
            cut(field, MAX_TOOL_NAME_BYTES);
        }
        cut(&mut self.reason, MAX_REASON_BYTES);
        if let Some(fetch) = &mut self.fetch {
            // A URL's host may be as long as the URL (8 KiB).
            cut(&mut fetch.host, MAX_TOOL_NAME_BYTES);
        }
        self
    }

    /// The event of a request the control plane refused `source`: `what`
    /// (the service) and `why` (the answer's message) make its reason.
    pub fn refused_request(
        namespace: &str,
        session: &str,
        source: SourceRef,
        what: &str,
        why: &str,
    ) -> AuditEvent {
        AuditEvent::new(
            Timestamp::now(),
            EventType::Policy,
            namespace,
            session,
            source,
            Outcome::Denied,
            Enforcement::Enforce,
            format!("{what} request refused: {why}"),
        )
    }
}

/// Where audit events go.
pub trait AuditSink: Send + Sync {
    /// Records one event. Never fails the caller: a sink that cannot write
    /// reports it on stderr.
    fn record(&self, event: &AuditEvent);

    /// Whether calls may run: an error when this sink cannot record them
    /// durably, so they are refused rather than run unrecorded.
    fn accepting(&self) -> Result<(), NotAccepting> {
        Ok(())
    }
}

/// Why a sink cannot record calls durably now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAccepting {
    /// The spool failed its last append (a full disk, say).
    #[error("the audit spool cannot be written: no call runs unrecorded")]
    SpoolUnwritable,
}

/// Writes each event as one JSON line, from a thread of its own.
///
/// `record` serializes the event and hands the line to a bounded queue, so
/// a slow log pipe never stalls the caller (the sidecar's one runtime
/// thread, which also serves the policy watch). The writer drains the queue
/// in batches, waking once per burst of events rather than per event. When the queue is full the
/// event is counted instead of queued, and as soon as the writer catches
/// up it writes the count as a line of its own,
/// `{"type":"audit_overflow","dropped":N,"time":...}`, and says so on
/// stderr: a log pipe that does not keep up can lose events, never
/// silently. (Durable shipping to the control plane is the audit store's.)
pub struct QueuedLineSink {
    queue: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

enum Message {
    Line(Vec<u8>),
    /// Everything before is written: answer on the channel.
    Flush(std::sync::mpsc::Sender<()>),
}

/// How many events wait for the writer at most.
pub const AUDIT_QUEUE_CAPACITY: usize = 16_384;

impl QueuedLineSink {
    /// Events to stdout.
    pub fn stdout() -> QueuedLineSink {
        QueuedLineSink::new(std::io::stdout(), AUDIT_QUEUE_CAPACITY)
    }

    /// Events to `out`, with at most `capacity` waiting.
    pub fn new(out: impl Write + Send + 'static, capacity: usize) -> QueuedLineSink {
        let (queue, lines) = sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_lines(out, &lines, &counted))
            .expect("a thread for the audit writer");
        QueuedLineSink { queue, dropped }
    }

    /// Waits (up to `timeout`) until every event recorded so far is written:
    /// call it before the process exits.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let (done, written) = std::sync::mpsc::channel();
        let mut flush = Message::Flush(done);
        loop {
            match self.queue.try_send(flush) {
                Ok(()) => break,
                Err(TrySendError::Full(message)) if std::time::Instant::now() < deadline => {
                    flush = message;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        written
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }
}

impl QueuedLineSink {
    /// Queues an event already serialized (without its newline).
    pub fn record_line(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        if self.queue.try_send(Message::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AuditSink for QueuedLineSink {
    fn record(&self, event: &AuditEvent) {
        self.record_line(serde_json::to_vec(event).expect("audit events serialize"));
    }
}

/// How long the writer lets events gather once one has woken it. Waking a
/// sleeping thread is the dearest part of recording an event (a
/// cross-CPU interrupt; on a VM, an exit to the hypervisor), so the writer
/// is woken once per burst, not once per event: an idle sink costs
/// nothing, a busy one one wake-up per window. A line is written at most
/// this late.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// The writer thread: sleeps until an event arrives, then writes what
/// gathers, a batch per window (one write), and any overflow count, until
/// the events stop; until the sink goes.
fn write_lines(mut out: impl Write, lines: &Receiver<Message>, dropped: &AtomicU64) {
    let mut batch = Vec::new();
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(first) = next {
            let mut flushed = Vec::new();
            for message in std::iter::once(first).chain(lines.try_iter()) {
                match message {
                    Message::Line(line) => batch.extend_from_slice(&line),
                    Message::Flush(done) => flushed.push(done),
                }
            }
            let lost = dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                eprintln!("audit: {lost} events were dropped: the audit output did not keep up");
                let overflow = serde_json::json!({"type": "audit_overflow", "dropped": lost, "time": Timestamp::now()});
                let _ = writeln!(batch, "{overflow}");
            }
            if let Err(error) = out.write_all(&batch).and_then(|()| out.flush()) {
                eprintln!("audit: cannot write events: {error}");
            }
            batch.clear();
            for done in flushed {
                let _ = done.send(());
            }
            std::thread::sleep(BATCH_WINDOW);
            next = match lines.try_recv() {
                Ok(message) => Some(message),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            };
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

#[cfg(test)]
mod tests {
    use std::sync::Condvar;

    use super::*;
    use crate::api::{SourceType, TrustLevel};

    /// Output that blocks every write until the gate opens.
    #[derive(Clone, Default)]
    struct Gated {
        open: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        /// Whether a write has started (and waits for the gate).
        entered: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Gated {
        /// Waits until the writer is stuck in a write.
        fn wait_until_entered(&self) {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !self.entered.load(Ordering::SeqCst) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the writer never wrote"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }

        fn lines(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.written.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        }
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.entered.store(true, Ordering::SeqCst);
            let (open, changed) = &*self.open;
            let _open = changed
                .wait_while(open.lock().unwrap(), |open| !*open)
                .unwrap();
            *self.writes.lock().unwrap() += 1;
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(reason: &str) -> AuditEvent {
        let source = SourceRef {
            source_type: SourceType::Agent.into(),
            identity: "s".into(),
            trust_level: TrustLevel::Untrusted,
        };
        AuditEvent::new(
            Timestamp::UNIX_EPOCH,
            EventType::ToolCall,
            "ns",
            "s",
            source,
            Outcome::Denied,
            Enforcement::Enforce,
            reason.into(),
        )
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_marked() {
        assert_eq!(truncated("short", 8), "short");
        // The marker ("…" is 3 bytes) counts: 20 bytes in all.
        assert_eq!(truncated(&"a".repeat(30), 20), "aaaaaaa…(30 bytes)");
        // "é" is two bytes: a cut in its middle (at 7) moves before it.
        assert_eq!(truncated(&"é".repeat(20), 20), "ééé…(40 bytes)");
        let mut event = event(&"r".repeat(5000));
        event.tool = Some("t".repeat(17_000));
        let event = event.bounded();
        let tool = event.tool.clone().unwrap();
        assert!(tool.ends_with("t…(17000 bytes)"), "{tool}");
        assert!(tool.len() <= MAX_TOOL_NAME_BYTES);
        assert!(event.reason.len() <= MAX_REASON_BYTES);
        assert_eq!(
            event.clone().bounded(),
            event,
            "bounding twice changes nothing"
        );
    }

    /// `repeats` is left out when absent, so events without it read and
    /// write as before.
    #[test]
    fn repeats_is_optional_on_the_wire() {
        let one = event("once");
        let line = serde_json::to_string(&one).unwrap();
        assert!(!line.contains("repeats"), "{line}");
        assert_eq!(serde_json::from_str::<AuditEvent>(&line).unwrap(), one);
        let many = AuditEvent {
            repeats: Some(4_940),
            ..one
        };
        let line = serde_json::to_string(&many).unwrap();
        assert!(line.contains("\"repeats\":4940"), "{line}");
        assert_eq!(serde_json::from_str::<AuditEvent>(&line).unwrap(), many);
    }

    #[test]
    fn a_stuck_output_never_blocks_the_caller_and_losses_are_written_down() {
        let output = Gated::default();
        let sink = QueuedLineSink::new(output.clone(), 2);
        // The writer takes the first event and gets stuck writing it.
        sink.record(&event("event 0"));
        output.wait_until_entered();
        let started = std::time::Instant::now();
        for n in 1..10 {
            sink.record(&event(&format!("event {n}")));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "record never waits for the output"
        );
        output.open();
        assert!(sink.flush(Duration::from_secs(5)));
        let lines = output.lines();
        let written: Vec<&str> = lines.iter().filter_map(|l| l["reason"].as_str()).collect();
        let dropped: Vec<u64> = lines
            .iter()
            .filter(|l| l["type"] == "audit_overflow")
            .map(|l| l["dropped"].as_u64().unwrap())
            .collect();
        assert_eq!(
            written,
            ["event 0", "event 1", "event 2"],
            "the stuck write, then the queue of 2, in order"
        );
        assert_eq!(dropped, [7], "the other 7 counted, on one line: {lines:?}");
    }

    #[test]
    fn everything_recorded_is_written_by_a_flush() {
        let output = Gated::default();
        output.open();
        let sink = QueuedLineSink::new(output.clone(), 64);
        for n in 0..50 {
            sink.record(&event(&format!("event {n}")));
        }
        assert!(sink.flush(Duration::from_secs(5)));
        assert_eq!(output.lines().len(), 50);
    }

    #[test]
    fn a_burst_of_events_is_written_in_a_few_writes() {
        let output = Gated::default();
        output.open();
        let sink = QueuedLineSink::new(output.clone(), 1024);
        for n in 0..200 {
            sink.record(&event(&format!("event {n}")));
        }
        assert!(sink.flush(Duration::from_secs(5)));
        assert_eq!(output.lines().len(), 200);
        let writes = *output.writes.lock().unwrap();
        assert!(
            writes <= 10,
            "the writer wakes once per window, not per event: {writes} writes"
        );
    }
}
