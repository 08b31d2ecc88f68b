//! The Audit service's metrics (`wopr_audit_*`): what the sidecars ship
//! and the broker decides, counted where the Audit service stores it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The Audit service's metrics, on `/metrics` as `wopr_audit_*`.
#[derive(Clone, Debug)]
pub struct AuditMetrics {
    /// Events stored.
    pub stored: Counter,
    /// Events shipped again and skipped (their first ack was lost).
    pub duplicates: Counter,
    /// Requests refused (bad input, another session, no right).
    pub refused: Counter,
    /// Requests the store failed (retried by the sidecars).
    pub store_errors: Counter,
    /// Lines of shipped batches that were no valid event (too large,
    /// unreadable), each stored as a stub instead.
    pub invalid: Counter,
    /// Events waiting in each sidecar's spool, as it last reported.
    pub spool_depth: Family<SessionLabels, Gauge>,
    /// Seconds from each shipped event's decision to its commit.
    pub shipping_lag: Histogram,
    /// What the broker decided (deliveries, denials, rate limits, approval
    /// requests), by audit event type and decision.
    pub broker_decisions: Family<DecisionLabels, Counter>,
    /// Denied and would-deny decisions the sidecars shipped, by audit event
    /// type and decision (a batch shipped again after a lost ack counts
    /// again, as the shipping lag does).
    pub denials: Family<DecisionLabels, Counter>,
}

/// A broker decision's kind and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The audit event type: injection, forward, approval, rate_limited, ...
    pub r#type: String,
    /// allowed, denied or would_deny.
    pub decision: String,
}

/// The session a sidecar ships for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub namespace: String,
    pub session: String,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        AuditMetrics {
            stored: Counter::default(),
            duplicates: Counter::default(),
            refused: Counter::default(),
            store_errors: Counter::default(),
            invalid: Counter::default(),
            spool_depth: Family::default(),
            // 10 ms to about 3 hours: a sidecar ships every 200 ms, and
            // holds events while the control plane is away.
            shipping_lag: Histogram::new(exponential_buckets(0.01, 4.0, 10)),
            broker_decisions: Family::default(),
            denials: Family::default(),
        }
    }
}

impl AuditMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("wopr_audit");
        registry.register("events_stored", "Audit events stored", self.stored.clone());
        registry.register(
            "events_duplicate",
            "Audit events shipped again and skipped",
            self.duplicates.clone(),
        );
        registry.register(
            "requests_refused",
            "Audit requests refused",
            self.refused.clone(),
        );
        registry.register(
            "store_errors",
            "Audit requests the store failed",
            self.store_errors.clone(),
        );
        registry.register(
            "events_invalid",
            "Shipped audit events that were invalid (too large, unreadable), each stored as a stub",
            self.invalid.clone(),
        );
        registry.register(
            "spool_depth",
            "Audit events waiting in a sidecar's spool, as it last reported",
            self.spool_depth.clone(),
        );
        registry.register(
            "shipping_lag_seconds",
            "Seconds from an audit event's decision to its commit in the store",
            self.shipping_lag.clone(),
        );
        registry.register(
            "broker_decisions",
            "Broker decisions (deliveries, forwards, denials, rate limits, approval requests) by audit event type and decision",
            self.broker_decisions.clone(),
        );
        registry.register(
            "denials",
            "Denied and would-deny decisions shipped by the sidecars, by audit event type and decision",
            self.denials.clone(),
        );
    }
}
