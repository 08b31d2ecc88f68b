//! The sidecar's audit spool: every event is appended to a file in the
//! sidecar's own emptyDir before the call it records is answered, and stays
//! there until the control plane has stored it. The spool outlives the
//! sidecar process (a crash, an OOM kill, a restart of the container), so
//! what was answered is shipped after the restart.
//!
//! Events go to numbered segment files (`000000000001.jsonl`, ...), one
//! JSON line each, written with one `write` per line. The active segment is
//! sealed when it is full or when the shipper asks; sealed segments are
//! shipped in order and removed once acknowledged. Events the control
//! plane refuses for good are kept in `rejected/`, never deleted.
//!
//! Durability: a line is written before the call is answered, without
//! fsync. A write reaches the kernel's page cache, which survives the death
//! of the process; only a crash of the node loses it, and that takes the
//! pod's emptyDir with it anyway. An fsync per call would cost a disk
//! flush on every tool call for no event it could save.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::audit::{AuditEvent, AuditSink, NotAccepting, QueuedLineSink};

/// A full segment holds this many events...
const SEGMENT_EVENTS: usize = 500;
/// ...or this many bytes.
const SEGMENT_BYTES: usize = 1024 * 1024;
/// Where refused segments are kept.
const REJECTED: &str = "rejected";

/// The spool in one directory.
pub struct Spool {
    dir: PathBuf,
    active: Mutex<Active>,
    /// Events in sealed segments not yet removed or rejected: counted as
    /// segments are sealed and removed (read once, at open, for segments an
    /// earlier process left), so the depth never rereads the disk.
    sealed_events: AtomicUsize,
}

/// The segment being written.
struct Active {
    number: u64,
    file: File,
    events: usize,
    bytes: usize,
    /// A write failed and may have left part of a line: nothing more goes
    /// into this segment (its reader leaves the torn line out).
    torn: bool,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:012}.jsonl"))
}

/// The segments in `dir`, by number.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".jsonl"))
            .and_then(|number| number.parse::<u64>().ok());
        if let Some(number) = number {
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found)
}

impl Active {
    fn open(dir: &Path, number: u64) -> io::Result<Active> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, number))?;
        Ok(Active {
            number,
            file,
            events: 0,
            bytes: 0,
            torn: false,
        })
    }
}

impl Spool {
    /// The spool in `dir` (created if missing). Segments left by an earlier
    /// process are kept, to be shipped; new events go to a new segment.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let left = segments(dir)?;
        let next = left.last().map_or(1, |(number, _)| number + 1);
        let mut sealed_events = 0;
        for (_, segment) in &left {
            sealed_events += Spool::read(segment)?.len();
        }
        Ok(Spool {
            dir: dir.to_owned(),
            active: Mutex::new(Active::open(dir, next)?),
            sealed_events: AtomicUsize::new(sealed_events),
        })
    }

    /// Appends one event (a JSON line without its newline), in one write.
    /// An error means the event is not in the spool.
    pub fn append(&self, line: &str) -> io::Result<()> {
        let mut record = Vec::with_capacity(line.len() + 1);
        record.extend_from_slice(line.as_bytes());
        record.push(b'\n');
        let mut active = self
            .active
            .lock()
            .expect("the spool lock is never poisoned");
        if active.torn || active.events >= SEGMENT_EVENTS || active.bytes >= SEGMENT_BYTES {
            self.seal_active(&mut active)?;
        }
        if let Err(error) = active.file.write_all(&record) {
            active.torn = true;
            return Err(error);
        }
        active.events += 1;
        active.bytes += record.len();
        Ok(())
    }

    /// Seals the active segment if it holds any event, so it can be
    /// shipped; new events go to the next one.
    pub fn seal(&self) -> io::Result<()> {
        let mut active = self
            .active
            .lock()
            .expect("the spool lock is never poisoned");
        if active.events > 0 || active.torn {
            self.seal_active(&mut active)?;
        }
        Ok(())
    }

    /// Starts the next segment; the active one's events become sealed.
    fn seal_active(&self, active: &mut Active) -> io::Result<()> {
        let next = Active::open(&self.dir, active.number + 1)?;
        let sealed = std::mem::replace(active, next);
        self.sealed_events
            .fetch_add(sealed.events, Ordering::SeqCst);
        Ok(())
    }

    /// The sealed segments, oldest first.
    pub fn sealed(&self) -> io::Result<Vec<PathBuf>> {
        let active = self
            .active
            .lock()
            .expect("the spool lock is never poisoned")
            .number;
        Ok(segments(&self.dir)?
            .into_iter()
            .filter(|(number, _)| *number < active)
            .map(|(_, path)| path)
            .collect())
    }

    /// The events of a sealed segment. A last line without its newline (a
    /// write cut short by the process's death, whose call was never
    /// answered) is left out.
    pub fn read(segment: &Path) -> io::Result<Vec<String>> {
        let text = std::fs::read_to_string(segment)?;
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        Ok(complete
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Removes a sealed segment the control plane has stored; `events` is
    /// what [`Spool::read`] found in it.
    pub fn remove(&self, segment: &Path, events: usize) -> io::Result<()> {
        std::fs::remove_file(segment)?;
        self.forget(events);
        Ok(())
    }

    /// Removes a sealed segment the control plane has stored but for the
    /// events `refused` (for good), which are kept out of the way, added
    /// to the file of the segment's name in `rejected/`: where. `events`
    /// is what [`Spool::read`] found in the segment.
    pub fn reject(&self, segment: &Path, refused: &[String], events: usize) -> io::Result<PathBuf> {
        let rejected = self.dir.join(REJECTED);
        std::fs::create_dir_all(&rejected)?;
        let target = rejected.join(segment.file_name().unwrap_or_default());
        let mut lines = refused.join("\n");
        lines.push('\n');
        // Kept before the segment goes (a crash in between ships the
        // segment again: its stored events are duplicates, skipped), and
        // added to what an earlier segment of that number left.
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&target)?
            .write_all(lines.as_bytes())?;
        self.remove(segment, events)?;
        Ok(target)
    }

    fn forget(&self, events: usize) {
        // Saturating: a segment sealed torn may hold fewer events than were
        // counted, never more.
        let _ = self
            .sealed_events
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |waiting| {
                Some(waiting.saturating_sub(events))
            });
    }

    /// Events waiting in the spool (sealed and active), for the metric.
    pub fn depth(&self) -> usize {
        let active = self
            .active
            .lock()
            .expect("the spool lock is never poisoned")
            .events;
        self.sealed_events.load(Ordering::SeqCst) + active
    }
}

/// The sidecar's audit sink: each event to the spool (synchronously: the
/// call it records is answered after), then to stdout through the queue.
///
/// When the spool cannot take an event (a full disk), the event still goes
/// to stdout, and the sink stops [accepting](AuditSink::accepting) calls
/// until an append succeeds again: the engine refuses every call but the
/// refusal's own event, whose append is the retry.
pub struct SpooledSink {
    spool: Arc<Spool>,
    lines: QueuedLineSink,
    /// Events the spool could not take: on stdout only.
    unspooled: AtomicU64,
    /// Whether the last append failed.
    failing: AtomicBool,
}

impl SpooledSink {
    pub fn new(spool: Arc<Spool>, lines: QueuedLineSink) -> SpooledSink {
        SpooledSink {
            spool,
            lines,
            unspooled: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// Waits up to `timeout` for the stdout lines to be written.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        self.lines.flush(timeout)
    }
}

impl AuditSink for SpooledSink {
    fn record(&self, event: &AuditEvent) {
        let line = serde_json::to_string(event).expect("audit events serialize");
        match self.spool.append(&line) {
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(error) => {
                self.failing.store(true, Ordering::Relaxed);
                let count = self.unspooled.fetch_add(1, Ordering::Relaxed) + 1;
                eprintln!(
                    "audit spool: cannot append event {} ({error}); on stdout only ({count} so far), and calls are refused until the spool takes events again",
                    event.id
                );
            }
        }
        self.lines.record_line(line.into_bytes());
    }

    fn accepting(&self) -> Result<(), NotAccepting> {
        if self.failing.load(Ordering::Relaxed) {
            Err(NotAccepting::SpoolUnwritable)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SourceType;

    #[test]
    fn events_are_kept_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for n in 0..(SEGMENT_EVENTS + 3) {
            spool.append(&format!("{{\"n\":{n}}}")).unwrap();
        }
        // One full segment sealed by itself; three events in the active one.
        assert_eq!(spool.sealed().unwrap().len(), 1);
        assert_eq!(spool.depth(), SEGMENT_EVENTS + 3);
        drop(spool);
        // A new process: the unshipped segments are still there, in order,
        // and counted.
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.depth(), SEGMENT_EVENTS + 3);
        let lines: Vec<String> = spool
            .sealed()
            .unwrap()
            .iter()
            .flat_map(|segment| Spool::read(segment).unwrap())
            .collect();
        let expected: Vec<String> = (0..(SEGMENT_EVENTS + 3))
            .map(|n| format!("{{\"n\":{n}}}"))
            .collect();
        assert_eq!(lines, expected);
        spool.append("{\"n\":\"new\"}").unwrap();
        spool.seal().unwrap();
        let sealed = spool.sealed().unwrap();
        assert_eq!(sealed.len(), 3);
        assert_eq!(Spool::read(&sealed[2]).unwrap(), ["{\"n\":\"new\"}"]);
        assert_eq!(spool.depth(), SEGMENT_EVENTS + 4);
        for segment in &sealed {
            let events = Spool::read(segment).unwrap().len();
            spool.remove(segment, events).unwrap();
        }
        assert_eq!(spool.depth(), 0);
    }

    /// A full disk: the event that cannot be spooled stops calls (the
    /// engine asks [`AuditSink::accepting`]) until an append succeeds again,
    /// in a new segment, past the torn one.
    #[test]
    fn a_failed_append_refuses_calls_until_the_spool_takes_events_again() {
        use crate::api::{Enforcement, SourceRef, TrustLevel};
        use crate::audit::EventType;
        use crate::policy::Outcome;
        let event = |reason: &str| {
            let source = SourceRef {
                source_type: SourceType::Agent.into(),
                identity: "s".into(),
                trust_level: TrustLevel::Trusted,
            };
            let time = k8s_openapi::jiff::Timestamp::UNIX_EPOCH;
            AuditEvent::new(
                time,
                EventType::ToolCall,
                "ns",
                "s",
                source,
                Outcome::Allowed,
                Enforcement::Enforce,
                reason.into(),
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let sink = SpooledSink::new(spool.clone(), QueuedLineSink::new(io::sink(), 16));
        sink.record(&event("first"));
        assert_eq!(sink.accepting(), Ok(()));

        spool.active.lock().unwrap().file =
            OpenOptions::new().write(true).open("/dev/full").unwrap();
        sink.record(&event("lost to a full disk"));
        let refused = sink.accepting().unwrap_err().to_string();
        assert!(refused.contains("no call runs unrecorded"), "{refused}");

        sink.record(&event("the refusal, spooled"));
        assert_eq!(sink.accepting(), Ok(()));
        spool.seal().unwrap();
        let reasons: Vec<String> = spool
            .sealed()
            .unwrap()
            .iter()
            .flat_map(|segment| Spool::read(segment).unwrap())
            .map(|line| serde_json::from_str::<AuditEvent>(&line).unwrap().reason)
            .collect();
        assert_eq!(reasons, ["first", "the refusal, spooled"]);
    }

    #[test]
    fn a_line_cut_short_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("000000000001.jsonl");
        std::fs::write(&segment, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        assert_eq!(Spool::read(&segment).unwrap(), ["{\"a\":1}", "{\"b\":2}"]);
    }

    #[test]
    fn sealing_an_empty_segment_does_nothing_and_refused_segments_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.seal().unwrap();
        assert!(spool.sealed().unwrap().is_empty());
        spool.append("{}").unwrap();
        spool.seal().unwrap();
        let segment = spool.sealed().unwrap().remove(0);
        assert_eq!(spool.depth(), 1);
        let kept = spool.reject(&segment, &["{}".into()], 1).unwrap();
        assert_eq!(std::fs::read_to_string(kept).unwrap(), "{}\n");
        assert!(spool.sealed().unwrap().is_empty());
        assert_eq!(spool.depth(), 0, "a rejected segment no longer waits");

        // Only the refused events of a segment are kept; the rest is gone.
        for n in 0..4 {
            spool.append(&format!("{{\"n\":{n}}}")).unwrap();
        }
        spool.seal().unwrap();
        let segment = spool.sealed().unwrap().remove(0);
        let refused = ["{\"n\":1}".to_owned(), "{\"n\":3}".to_owned()];
        let kept = spool.reject(&segment, &refused, 4).unwrap();
        assert_eq!(Spool::read(&kept).unwrap(), refused);
        assert!(!segment.exists());
        assert_eq!(spool.depth(), 0);
    }
}
