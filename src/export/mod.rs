//! Audit export: streams the stored audit trail to a SIEM, each
//! namespace's events in chain order and none skipped, from a cursor kept
//! in the store (one per exporter name) that moves only after the receiver
//! accepted a batch. Two receivers: OpenTelemetry logs over OTLP/gRPC
//! ([`otlp`]) and OCSF API Activity JSON lines ([`ocsf`]).
//!
//! Delivery: across a graceful stop, exactly once (a batch in flight is
//! finished, acknowledged and its cursor committed before the loop ends).
//! Across a crash between a receiver's acknowledgement and the cursor's
//! commit, that batch is sent again: at least once; every record carries
//! the event's ULID so the receiver can drop the repeat. A receiver that
//! fails is retried with backoff, the same batch again, never skipped.
//! Runs only while this replica holds the Lease.

pub mod ocsf;
pub mod otlp;

use std::time::Duration;

use futures::FutureExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::lease::Leadership;
use crate::shutdown::Shutdown;
use crate::store::{Chained, Store, StoreError};

/// Events read and sent per batch.
pub const BATCH: u32 = 500;
/// How long an idle exporter waits before looking for new events.
const POLL: Duration = Duration::from_millis(500);
/// The first retry's wait after a failure; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a receiver did not accept a batch (it is sent again).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the receiver refused the batch: {0}")]
    Refused(String),
    #[error("cannot reach the receiver: {0}")]
    Unreachable(String),
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
}

/// Where an exporter sends batches: `send` returns only once the receiver
/// has accepted all of `batch` (an error when it accepted less).
pub trait Sink: Send {
    fn send(&mut self, batch: &[Chained]) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// The exporters' metrics, on `/metrics` as `wopr_audit_export_*`, by
/// exporter name.
#[derive(Clone, Debug, Default)]
pub struct ExportMetrics {
    /// Events the receiver accepted.
    pub exported: Family<ExporterLabels, Counter>,
    /// Batches the receiver did not accept (sent again).
    pub failed: Family<ExporterLabels, Counter>,
    /// Stored events not yet accepted by the receiver.
    pub lag: Family<ExporterLabels, Gauge>,
}

/// Which exporter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExporterLabels {
    pub exporter: String,
}

impl ExportMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("wopr_audit_export");
        registry.register(
            "events",
            "Audit events the SIEM receiver accepted",
            self.exported.clone(),
        );
        registry.register(
            "failed_batches",
            "Batches of audit events the SIEM receiver did not accept (retried)",
            self.failed.clone(),
        );
        registry.register(
            "lag_events",
            "Stored audit events the SIEM receiver has not accepted yet",
            self.lag.clone(),
        );
    }
}

/// One exporter: its name (the cursor's key), where it sends, and the store.
pub struct Exporter<S> {
    pub name: String,
    pub sink: S,
    pub store: Store,
    pub metrics: ExportMetrics,
}

impl<S: Sink> Exporter<S> {
    /// Exports while `leadership` says this replica leads, until `shutdown`:
    /// a batch already read is finished (sent until accepted, committed)
    /// unless shutdown comes while it waits to retry.
    pub async fn run(mut self, leadership: Leadership, shutdown: Shutdown) {
        let labels = ExporterLabels {
            exporter: self.name.clone(),
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            if shutdown.clone().now_or_never().is_some() {
                return;
            }
            let step = if leadership.is_leader() {
                self.step(&labels).await
            } else {
                Ok(0)
            };
            let wait = match step {
                Ok(0) => POLL,
                Ok(_) => {
                    backoff = FIRST_BACKOFF;
                    continue;
                }
                Err(error) => {
                    self.metrics.failed.get_or_create(&labels).inc();
                    tracing::warn!(exporter = %self.name, %error, retry_in = ?backoff, "audit export failed; retrying the same events");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.clone() => return,
            }
        }
    }

    /// Sends the next batch and moves the cursor past it: how many events
    /// the receiver accepted (0 when there were none to send).
    async fn step(&mut self, labels: &ExporterLabels) -> Result<usize, ExportError> {
        let batch = self.store.unexported(&self.name, BATCH).await?;
        if !batch.is_empty() {
            self.sink.send(&batch).await?;
            self.store.mark_exported(&self.name, &batch).await?;
            self.metrics
                .exported
                .get_or_create(labels)
                .inc_by(batch.len() as u64);
        }
        let lag = self.store.export_lag(&self.name).await?;
        self.metrics
            .lag
            .get_or_create(labels)
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
        Ok(batch.len())
    }
}

/// Why one step of an exporter failed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// A tool call of research-agent (semi-trusted) in team-a, refused for a
/// capability, at chain position 42: what the exporters' tests map.
#[cfg(test)]
fn sample(decision: crate::policy::Outcome) -> Chained {
    use crate::api::{Enforcement, SourceRef, TrustLevel};
    use crate::audit::{AuditEvent, EventType};
    let mut event = AuditEvent::new(
        "2026-12-07T08:00:00.123Z"
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap(),
        EventType::ToolCall,
        "team-a",
        "research-agent",
        SourceRef {
            source_type: "session".into(),
            identity: "research-agent".into(),
            trust_level: TrustLevel::SemiTrusted,
        },
        decision,
        Enforcement::Enforce,
        "capability inject.exec is not granted".into(),
    );
    event.tool = Some("shell_exec".into());
    Chained { seq: 42, event }
}
