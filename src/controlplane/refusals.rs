//! Refused calls, recorded so that refusing cannot be turned against the
//! trail. Any workload's token reaches the control plane, so what a caller
//! with no right in a namespace is refused there is not written into that
//! namespace's chain (which it could otherwise fill, or create for a
//! namespace nobody has): it goes to the operator's trail, the chain of
//! the operator's own namespace, naming the namespace asked. Refusals of
//! callers with a right there (a sidecar of the namespace, a person who may
//! send its sessions messages) stay in its trail.
//!
//! Either way each caller (its authenticated username) has a budget of
//! [`BUDGET`] refusals written a [`WINDOW`]; past it, one event says so and
//! the rest are only counted. At most [`MAX_CALLERS`] callers are tracked
//! (those quiet for a window are forgotten); a caller past the cap has no
//! budget. Every refusal is counted in `wopr_controlplane_refusals` by
//! reason, and those not written in `wopr_controlplane_refusals_unrecorded`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::Status;

use super::auth::{Authenticator, Identity, bearer};
use crate::api::{Enforcement, SourceRef, TrustLevel, check_label};
use crate::audit::{AuditEvent, EventType};
use crate::bounded::BoundedMap;
use crate::policy::Outcome;
use crate::store::Store;
use tonic::metadata::MetadataMap;

/// Refusals written per caller and window.
pub const BUDGET: u32 = 20;
/// The window of a caller's budget.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The most callers whose budgets are tracked.
pub const MAX_CALLERS: usize = 10_000;

/// Why a call was refused, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A namespace or session that is not a DNS-1123 label (not written).
    InvalidName,
    /// A token nobody could review (not written).
    Unauthenticated,
    /// A caller with no right in the namespace (the operator's trail).
    NoRight,
    /// A caller with a right there, refused what it asked (its trail).
    Refused,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidName => "invalid_name",
            Reason::Unauthenticated => "unauthenticated",
            Reason::NoRight => "no_right",
            Reason::Refused => "refused",
        }
    }
}

/// The label of [`RefusalMetrics::refusals`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The refusals' metrics, on `/metrics` as `wopr_controlplane_*`.
#[derive(Clone, Debug, Default)]
pub struct RefusalMetrics {
    /// Every refused call, by [`Reason`].
    pub refusals: Family<ReasonLabels, Counter>,
    /// Refusals past their caller's budget, counted and not written.
    pub unrecorded: Counter,
}

impl RefusalMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("wopr_controlplane");
        registry.register(
            "refusals",
            "Control-plane calls refused, by reason (invalid_name, unauthenticated, no_right, refused)",
            self.refusals.clone(),
        );
        registry.register(
            "refusals_unrecorded",
            "Refused calls past their caller's budget: counted, not written to the audit trail",
            self.unrecorded.clone(),
        );
    }

    /// How many calls were refused for `reason`.
    pub fn count(&self, reason: Reason) -> u64 {
        let labels = ReasonLabels {
            reason: reason.as_str().to_owned(),
        };
        self.refusals.get_or_create(&labels).get()
    }
}

/// What a caller's budget allows of one more refusal.
#[derive(Debug, PartialEq, Eq)]
enum Allowance {
    /// Write it.
    Write,
    /// Write instead that the budget ran out, until `until` from now.
    Exhausted { until: Duration },
    /// Count it only.
    CountOnly,
}

struct Budget {
    window_start: Instant,
    written: u32,
}

/// The callers' budgets.
struct Budgets(BoundedMap<String, Budget>);

impl Default for Budgets {
    fn default() -> Self {
        Budgets(BoundedMap::new(MAX_CALLERS))
    }
}

impl Budgets {
    fn allow(&mut self, caller: &str, now: Instant) -> Allowance {
        // Past the cap, the callers whose window is over are forgotten.
        let quiet = |budget: &Budget| now.duration_since(budget.window_start) >= WINDOW;
        let Some(budget) = self.0.entry(caller.to_owned(), quiet, || Budget {
            window_start: now,
            written: 0,
        }) else {
            return Allowance::CountOnly;
        };
        if now.duration_since(budget.window_start) >= WINDOW {
            *budget = Budget {
                window_start: now,
                written: 0,
            };
        }
        budget.written = budget.written.saturating_add(1);
        match budget.written {
            n if n <= BUDGET => Allowance::Write,
            n if n == BUDGET + 1 => Allowance::Exhausted {
                until: WINDOW.saturating_sub(now.duration_since(budget.window_start)),
            },
            _ => Allowance::CountOnly,
        }
    }
}

/// Where a refusal is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trail {
    /// The namespace's own: the caller holds a right there.
    Namespace,
    /// The operator's: the caller holds none there.
    Operator,
}

/// Counts refusals and decides which are written, and where.
pub struct Refusals {
    store: Store,
    operator_namespace: String,
    metrics: RefusalMetrics,
    budgets: Mutex<Budgets>,
}

impl Refusals {
    /// Refusals written to `store`, those of callers with no right to the
    /// trail of `operator_namespace`, counted in `metrics`.
    pub fn new(store: Store, operator_namespace: String, metrics: RefusalMetrics) -> Self {
        Refusals {
            store,
            operator_namespace,
            metrics,
            budgets: Mutex::default(),
        }
    }

    /// The sidecar whose token `metadata` carries, for a call that names
    /// `namespace/session`: the names are checked first, then the token;
    /// a token refused is counted. Whether it may act for that session is
    /// the caller's to check (and to record, or not).
    pub async fn sidecar(
        &self,
        authenticator: &impl Authenticator,
        metadata: &MetadataMap,
        (namespace, session): (&str, &str),
    ) -> Result<Identity, Status> {
        self.check_names(&[("namespace", namespace), ("session", session)])?;
        authenticator
            .authenticate(bearer(metadata)?)
            .await
            .map_err(|error| {
                self.count(Reason::Unauthenticated);
                Status::unauthenticated(error.to_string())
            })
    }

    /// INVALID_ARGUMENT (counted, not written) unless each `(what, name)`
    /// a call gives is a DNS-1123 label, as namespaces and Sessions are
    /// named. Checked before anything else a call does: a name nobody can
    /// have never reaches a review, a log line or the trail.
    pub fn check_names(&self, names: &[(&str, &str)]) -> Result<(), Status> {
        for (what, name) in names {
            if let Err(why) = check_label(what, name) {
                self.count(Reason::InvalidName);
                return Err(Status::invalid_argument(why.to_string()));
            }
        }
        Ok(())
    }

    /// Counts a refusal that is never written (a bad name, a token nobody
    /// could review).
    pub fn count(&self, reason: Reason) {
        let labels = ReasonLabels {
            reason: reason.as_str().to_owned(),
        };
        self.metrics.refusals.get_or_create(&labels).inc();
    }

    /// The event to write for the refusal `event` of `caller` (its
    /// username) in `trail`, if its budget allows one: `event` itself, in
    /// the operator's trail when `trail` says so, or the one event saying
    /// that its budget ran out. Counts it either way.
    pub fn admit(&self, caller: &str, trail: Trail, mut event: AuditEvent) -> Option<AuditEvent> {
        self.count(match trail {
            Trail::Namespace => Reason::Refused,
            Trail::Operator => Reason::NoRight,
        });
        if trail == Trail::Operator || event.namespace.is_empty() {
            event.reason = format!(
                "{} (asked of namespace {:?})",
                event.reason, event.namespace
            );
            event.namespace = self.operator_namespace.clone();
        }
        let allowance = self
            .budgets
            .lock()
            .expect("the refusals lock is never poisoned")
            .allow(caller, Instant::now());
        match allowance {
            Allowance::Write => Some(event),
            Allowance::Exhausted { until } => {
                self.metrics.unrecorded.inc();
                Some(self.exhausted(caller, &event, until))
            }
            Allowance::CountOnly => {
                self.metrics.unrecorded.inc();
                None
            }
        }
    }

    /// The event saying that `caller`'s budget ran out with `refused`.
    fn exhausted(&self, caller: &str, refused: &AuditEvent, until: Duration) -> AuditEvent {
        let source = SourceRef {
            trust_level: TrustLevel::Untrusted,
            ..refused.source.clone()
        };
        AuditEvent::new(
            k8s_openapi::jiff::Timestamp::now(),
            EventType::Policy,
            &self.operator_namespace,
            "",
            source,
            Outcome::Denied,
            Enforcement::Enforce,
            format!(
                "{caller} was refused more than {BUDGET} times within {} s: its refusals for the next {} s are counted in wopr_controlplane_refusals_unrecorded, not written one by one",
                WINDOW.as_secs(),
                until.as_secs()
            ),
        )
    }

    /// Writes the refusal `event` of `caller` in `trail`, if its budget
    /// allows (best effort: the caller is refused either way).
    pub async fn record(&self, caller: &str, trail: Trail, event: AuditEvent) {
        if let Some(event) = self.admit(caller, trail, event) {
            self.write(event).await;
        }
    }

    /// Stores `event`, an admitted refusal (best effort).
    pub async fn write(&self, event: AuditEvent) {
        if let Err(error) = self.store.insert_events(&[event]).await {
            tracing::error!(%error, "cannot store a refusal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_are_named_as_documented() {
        let metrics = RefusalMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let labels = ReasonLabels {
            reason: Reason::NoRight.as_str().to_owned(),
        };
        metrics.refusals.get_or_create(&labels).inc();
        metrics.unrecorded.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("wopr_controlplane_refusals_total{reason=\"no_right\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wopr_controlplane_refusals_unrecorded_total 1"),
            "{text}"
        );
    }

    #[test]
    fn a_caller_has_a_budget_a_window() {
        let mut budgets = Budgets::default();
        let start = Instant::now();
        for _ in 0..BUDGET {
            assert_eq!(budgets.allow("mallory", start), Allowance::Write);
        }
        let later = start + Duration::from_secs(20);
        assert_eq!(
            budgets.allow("mallory", later),
            Allowance::Exhausted {
                until: Duration::from_secs(40)
            }
        );
        assert_eq!(budgets.allow("mallory", later), Allowance::CountOnly);
        assert_eq!(
            budgets.allow("alice", later),
            Allowance::Write,
            "per caller"
        );
        assert_eq!(budgets.allow("mallory", start + WINDOW), Allowance::Write);
    }

    #[test]
    fn callers_past_the_cap_have_no_budget_until_others_are_quiet() {
        let mut budgets = Budgets::default();
        let start = Instant::now();
        for n in 0..MAX_CALLERS {
            budgets.allow(&format!("caller-{n}"), start);
        }
        assert_eq!(budgets.allow("one-more", start), Allowance::CountOnly);
        assert_eq!(budgets.0.len(), MAX_CALLERS);
        assert_eq!(budgets.allow("one-more", start + WINDOW), Allowance::Write);
        assert_eq!(budgets.0.len(), 1, "the quiet ones are forgotten");
    }
}
