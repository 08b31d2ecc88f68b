//! What the Policy service serves, behind a trait (as linkerd's policy
//! controller serves from `DiscoverInboundServer`): the operator's
//! [`ContextIndex`](super::index::ContextIndex) in production, a fake in
//! tests.

use tokio::sync::watch;

use crate::api::{Grant, P2pPolicy, Session, SpawnPolicy};
use crate::policy::{EffectiveContext, PeerStanding, Standing};
use crate::proto::v1alpha1 as pb;
use crate::store::InboxLimits;

/// What a sidecar is told about its session's policy.
#[derive(Clone, Debug, PartialEq)]
pub enum Snapshot {
    /// The policy in force.
    Context(Box<pb::SecurityContext>),
    /// No policy can be served (an invalid Session or policy): deny
    /// everything until this changes.
    Unavailable(String),
    /// The Session is gone: the stream ends with NOT_FOUND.
    Gone(String),
}

/// Why a session has no effective context now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoContext {
    /// There is no such Session.
    #[error("{0}")]
    Gone(String),
    /// The Session or its namespace's policy is invalid.
    #[error("{0}")]
    Unavailable(String),
}

/// Finds the policy of a session.
pub trait DiscoverPolicy: Send + Sync + 'static {
    /// The policy of `namespace/session` now and at every change; `None`
    /// when there is no such Session.
    fn watch(&self, namespace: &str, session: &str) -> Option<watch::Receiver<Snapshot>>;

    /// The effective context of `namespace/session` now (what the broker
    /// decides with), or why there is none.
    fn context(&self, namespace: &str, session: &str) -> Result<EffectiveContext, NoContext>;

    /// The names of the Sessions of `namespace`.
    fn sessions(&self, namespace: &str) -> Vec<String>;

    /// How much the inboxes of `namespace` hold: its SecurityPolicy's
    /// `inbox`, or the defaults.
    fn inbox_limits(&self, namespace: &str) -> InboxLimits;

    /// The Session `namespace/name` as cached, if it exists and can be read.
    fn session(&self, namespace: &str, name: &str) -> Option<Session>;

    /// What agents of `namespace` may spawn: its SecurityPolicy's `spawn`,
    /// or the defaults.
    fn spawn_policy(&self, namespace: &str) -> SpawnPolicy;

    /// The standing of the service account `account` (namespace, name)
    /// towards `namespace/session` now: `None` when no grant names it,
    /// `Err` when it cannot be known (fail closed).
    fn workload(
        &self,
        namespace: &str,
        session: &str,
        account: (&str, &str),
    ) -> Result<Option<Standing>, String>;

    /// The `p2p` settings of `namespace` (its SecurityPolicy's, or the
    /// built-in ones); `Err` when they cannot be known (fail closed, as a
    /// discovery that knows no peers does).
    fn peer_policy(&self, namespace: &str) -> Result<P2pPolicy, String> {
        Err(format!(
            "no peer settings are known for namespace {namespace}"
        ))
    }

    /// The standing of the peer presenting `public_key` towards
    /// `namespace/session` now: `None` when it has none, `Err` when it
    /// cannot be known (fail closed).
    fn peer(
        &self,
        namespace: &str,
        session: &str,
        public_key: &str,
    ) -> Result<Option<PeerStanding>, String> {
        let _ = (session, public_key);
        Err(format!(
            "no peer grants are known for namespace {namespace}"
        ))
    }

    /// The Grants, in every namespace, naming `public_key` as a peer's
    /// current key (what its rotation moves).
    fn peer_grants(&self, public_key: &str) -> Vec<Grant> {
        let _ = public_key;
        Vec::new()
    }
}

/// A [`DiscoverPolicy`] for the control plane's unit tests: it knows the
/// contexts it is given, by their namespace and session, and nothing else
/// (no watches, no Sessions, no workloads, the default limits).
#[cfg(test)]
pub(crate) struct KnownContexts(std::collections::HashMap<(String, String), EffectiveContext>);

#[cfg(test)]
impl KnownContexts {
    pub(crate) fn of(contexts: impl IntoIterator<Item = EffectiveContext>) -> KnownContexts {
        let by_session = contexts.into_iter().map(|context| {
            let key = (context.namespace.clone(), context.session.clone());
            (key, context)
        });
        KnownContexts(by_session.collect())
    }
}

#[cfg(test)]
impl DiscoverPolicy for KnownContexts {
    fn watch(&self, _: &str, _: &str) -> Option<watch::Receiver<Snapshot>> {
        None
    }
    fn context(&self, namespace: &str, session: &str) -> Result<EffectiveContext, NoContext> {
        self.0
            .get(&(namespace.to_owned(), session.to_owned()))
            .cloned()
            .ok_or_else(|| NoContext::Gone(format!("{namespace}/{session}")))
    }
    fn sessions(&self, namespace: &str) -> Vec<String> {
        let mut names: Vec<String> = (self.0.keys())
            .filter(|(known, _)| known == namespace)
            .map(|(_, session)| session.clone())
            .collect();
        names.sort_unstable();
        names
    }
    fn inbox_limits(&self, _: &str) -> InboxLimits {
        crate::api::InboxPolicy::default().into()
    }
    fn session(&self, _: &str, _: &str) -> Option<Session> {
        None
    }
    fn spawn_policy(&self, _: &str) -> SpawnPolicy {
        SpawnPolicy::default()
    }
    fn workload(&self, _: &str, _: &str, _: (&str, &str)) -> Result<Option<Standing>, String> {
        Ok(None)
    }
}
