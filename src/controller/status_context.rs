//! What the status controllers of SecurityPolicies
//! ([`super::policy_status`]), Gateways ([`super::gateway_status`]) and
//! Grants ([`super::grant_status`]) share: one context, the list of the
//! Sessions an object governs or serves, and the retry.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};

use super::error::Error;
use super::leader_only::Led;
use super::policy_status::GuardCache;
use super::retry::Backoff;
use crate::api::Session;
use crate::cluster::lease::Leadership;

/// How many session names a status message lists before "and N more".
pub(super) const LISTED_SESSIONS: usize = 10;

/// Shared state of the SecurityPolicy and Gateway status reconcilers.
pub struct StatusContext {
    /// The Kubernetes client.
    pub client: Client,
    /// The Sessions, to say which ones are governed or served.
    pub sessions: Store<DeserializeGuard<Session>>,
    /// Whether this replica may write.
    pub leadership: Leadership,
    /// The current time.
    pub clock: fn() -> Timestamp,
    /// Failures in a row per object, for the retry delay.
    pub backoff: Backoff,
    /// The store, for what Gateways' forwards did.
    pub store: crate::store::Store,
    /// The escalation guard as last read, for every SecurityPolicy's status.
    pub escalation_guard: GuardCache,
}

impl Led for StatusContext {
    fn leadership(&self) -> &Leadership {
        &self.leadership
    }
}

/// `sessions` in a status message: the first few by name, then a count.
pub(super) fn list_sessions(sessions: &[String]) -> String {
    match sessions.len() {
        0 => "no sessions yet".to_owned(),
        count if count <= LISTED_SESSIONS => format!("{count} session(s): {}", sessions.join(", ")),
        count => format!(
            "{count} sessions: {} and {} more",
            sessions[..LISTED_SESSIONS].join(", "),
            count - LISTED_SESSIONS
        ),
    }
}

/// Names of the Sessions of `namespace`, sorted.
pub(super) fn sessions_in(
    store: &Store<DeserializeGuard<Session>>,
    namespace: Option<&str>,
) -> Vec<String> {
    let mut names: Vec<String> = store
        .state_filter(|session| session.meta().namespace.as_deref() == namespace)
        .iter()
        .map(|session| session.name_any())
        .collect();
    names.sort_unstable();
    names
}

/// Retries a failed status reconcile after the object's backoff.
pub fn retry<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<StatusContext>,
) -> Action {
    tracing::warn!(object = %object.name_any(), %error, "status reconcile failed");
    Action::requeue(ctx.backoff.failed(object.as_ref()))
}
