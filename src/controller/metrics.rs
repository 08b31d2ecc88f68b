//! Prometheus metrics of the controller, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's stable reason.
    pub reason: String,
}

/// Labels of the sessions gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The Session phase (`Pending`, `Ready`, `Failed`, `Terminating`, `Unknown`).
    pub phase: String,
}

/// Labels of the sandbox-check gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// The condition: `NetworkIsolated` or `PidsLimited`.
    pub check: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
}

/// The controller's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed, by reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// Sessions by phase, refreshed at every scrape.
    pub sessions: Family<PhaseLabels, Gauge>,
    /// Sessions by the status of each sandbox check, refreshed at every scrape.
    pub sandbox_checks: Family<CheckLabels, Gauge>,
    /// Seconds from an ApprovalRequest's creation to the controller
    /// carrying out a person's decision on it, or closing it unanswered.
    pub approval_latency: Histogram,
    /// ApprovalRequests waiting for a person, as the leader's approval
    /// controller last saw them.
    pub approvals_pending: Gauge,
}

impl Metrics {
    /// New metrics, registered in `registry` under the `wopr` prefix.
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            sessions: Family::default(),
            sandbox_checks: Family::default(),
            // 1 s to about 18 hours.
            approval_latency: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            approvals_pending: Gauge::default(),
        };
        let registry = registry.sub_registry_with_prefix("wopr");
        registry.register(
            "reconciles",
            "Session reconciles started",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Session reconciles that failed, by reason",
            metrics.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of Session reconciles",
            metrics.duration.clone(),
        );
        registry.register("sessions", "Sessions by phase", metrics.sessions.clone());
        registry.register(
            "session_sandbox_checks",
            "Sessions by the status of each check their sidecar made of the sandbox (NetworkIsolated, PidsLimited)",
            metrics.sandbox_checks.clone(),
        );
        registry.register(
            "approval_latency_seconds",
            "Seconds from an ApprovalRequest's creation to the controller carrying out a person's decision on it, or closing it unanswered",
            metrics.approval_latency.clone(),
        );
        registry.register(
            "approvals_pending",
            "ApprovalRequests waiting for a person's decision, as the leader's approval controller last saw them (0 on other replicas)",
            metrics.approvals_pending.clone(),
        );
        metrics
    }

    /// Counts a failed reconcile.
    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
