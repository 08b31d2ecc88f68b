//! What every Session reconcile shares: the client, settings, caches,
//! events, metrics, leadership, the clock and the retry and rollout state.

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::Recorder;

use super::config::SandboxConfig;
use super::rollout::Rollouts;
use crate::api::UpdatePolicy;
use crate::cache::Stores;
use crate::cluster::lease::Leadership;
use crate::controller::leader_only::Led;
use crate::controller::metrics::Metrics;
use crate::controller::retry::Backoff;
use crate::store::Store;

/// Shared state of the Session reconciler.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Settings for the builders.
    pub config: SandboxConfig,
    /// Caches of the objects a Session's policy depends on.
    pub stores: Stores,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Whether this replica may write.
    pub leadership: Leadership,
    /// The current time (a parameter so tests control it).
    pub clock: fn() -> Timestamp,
    /// The update policy of namespaces whose SecurityPolicy sets none.
    pub default_update_policy: UpdatePolicy,
    /// Pod replacements of operator-level changes in flight.
    pub rollouts: Rollouts,
    /// Failures in a row per Session, for the retry delay.
    pub backoff: Backoff,
    /// The audit store, where the controller's own decisions go.
    pub store: Store,
}

impl Led for Context {
    fn leadership(&self) -> &Leadership {
        &self.leadership
    }
}
