//! What every reconcile shares: the client, settings, caches, events,
//! metrics, leadership and the clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};

use super::config::SandboxConfig;
use super::metrics::Metrics;
use super::retry::Backoff;
use super::rollout::Rollouts;
use crate::api::{DEFAULT_POLICY_NAME, Gateway, Grant, SecurityPolicy, Session, UpdatePolicy};
use crate::policy::{EffectiveContext, ResolveError, resolve};

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
}

/// Caches of SecurityPolicies, Grants and Gateways, fed by watches.
/// Objects that do not deserialize are kept as errors so they can be reported.
#[derive(Clone)]
pub struct Stores {
    /// SecurityPolicies.
    pub policies: Store<DeserializeGuard<SecurityPolicy>>,
    /// Grants.
    pub grants: Store<DeserializeGuard<Grant>>,
    /// Gateways.
    pub gateways: Store<DeserializeGuard<Gateway>>,
}

impl Stores {
    /// The policy governing `namespace`: `Ok(None)` when it has no `default`
    /// SecurityPolicy, `Err` with a message when that policy cannot be read.
    pub fn governing_policy(
        &self,
        namespace: &str,
    ) -> Result<Option<Arc<DeserializeGuard<SecurityPolicy>>>, String> {
        let policy = self.policies.find(|policy| {
            let meta = policy.meta();
            meta.namespace.as_deref() == Some(namespace)
                && meta.name.as_deref() == Some(DEFAULT_POLICY_NAME)
        });
        match policy {
            Some(guard) => match &guard.0 {
                Ok(_) => Ok(Some(guard)),
                Err(invalid) => Err(format!(
                    "SecurityPolicy {namespace}/{DEFAULT_POLICY_NAME} cannot be read ({}); sessions of this namespace stay stopped until it is fixed",
                    invalid.error
                )),
            },
            None => Ok(None),
        }
    }

    /// The effective context of `session` under the cached policy, grants
    /// and gateways of its namespace (unreadable grants and gateways count
    /// for nothing).
    pub fn resolve(
        &self,
        session: &Session,
        now: Timestamp,
    ) -> Result<EffectiveContext, Unresolvable> {
        let namespace = session.namespace().unwrap_or_default();
        let policy = self
            .governing_policy(&namespace)
            .map_err(Unresolvable::Policy)?;
        let grants = self.grants_in(&namespace);
        let gateways = self.gateways_in(&namespace);
        Ok(resolve(
            session,
            policy.as_ref().and_then(|policy| policy.0.as_ref().ok()),
            grants.iter().filter_map(|grant| grant.0.as_ref().ok()),
            gateways
                .iter()
                .filter_map(|gateway| gateway.0.as_ref().ok()),
            now,
        )?)
    }

    /// How the session pods of `namespace` take operator-level changes:
    /// its SecurityPolicy's `updatePolicy`, else `default`.
    pub fn update_policy(&self, namespace: &str, default: UpdatePolicy) -> UpdatePolicy {
        self.governing_policy(namespace)
            .ok()
            .flatten()
            .and_then(|policy| policy.0.as_ref().ok()?.spec.update_policy)
            .unwrap_or(default)
    }

    /// The Grants of `namespace` (unreadable ones included, they confer nothing).
    fn grants_in(&self, namespace: &str) -> Vec<Arc<DeserializeGuard<Grant>>> {
        self.grants
            .state_filter(|grant| grant.meta().namespace.as_deref() == Some(namespace))
    }

    /// The Gateways of `namespace` (unreadable ones included, they count for nothing).
    fn gateways_in(&self, namespace: &str) -> Vec<Arc<DeserializeGuard<Gateway>>> {
        self.gateways
            .state_filter(|gateway| gateway.meta().namespace.as_deref() == Some(namespace))
    }
}

/// Why a Session's effective context cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum Unresolvable {
    /// The namespace's `default` SecurityPolicy cannot be read.
    #[error("{0}")]
    Policy(String),
    /// The Session asks for more than its policy allows.
    #[error(transparent)]
    Spec(#[from] ResolveError),
}

/// Whether this replica holds the leader Lease. Only the leader writes.
#[derive(Clone, Default)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// A flag that says "leader" from the start (leader election off).
    pub fn always() -> Leadership {
        let leadership = Leadership::default();
        leadership.set(true);
        leadership
    }

    /// Whether this replica may write now.
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Records a change of leadership.
    pub fn set(&self, leader: bool) {
        self.0.store(leader, Ordering::Release);
    }
}
