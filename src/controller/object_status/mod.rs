//! Status of SecurityPolicies ([`policy`]), Gateways ([`gateway`]) and
//! Grants ([`grant`]): whether each is valid and in force, and which
//! Sessions it governs or serves; SecurityPolicies also say whether the
//! cluster refuses trust-level escalation at admission
//! (`crate::cluster::escalation`). Three small controllers sharing one
//! context.

pub mod gateway;
pub mod grant;
pub mod policy;

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};

use super::error::Error;
use super::leader::Leadership;
use super::retry::Backoff;
use crate::api::Session;

pub use gateway::{gateway_status, reconcile_gateway};
pub use grant::{grant_status, reconcile_grant};
pub use policy::{GUARD_FRESH, GuardCache, policy_status, reconcile_policy};

/// How many session names a status message lists before "and N more".
const LISTED_SESSIONS: usize = 10;

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

fn previous_conditions(conditions: Option<&Vec<Condition>>) -> &[Condition] {
    conditions.map(Vec::as_slice).unwrap_or_default()
}

fn list_sessions(sessions: &[String]) -> String {
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
fn sessions_in(store: &Store<DeserializeGuard<Session>>, namespace: Option<&str>) -> Vec<String> {
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
