//! What the Policy service serves, behind a trait (as linkerd's policy
//! controller serves from `DiscoverInboundServer`): the operator's
//! [`ContextIndex`](super::index::ContextIndex) in production, a fake in
//! tests.

use tokio::sync::watch;

use crate::proto::v1alpha1 as pb;

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

/// Finds the policy of a session.
pub trait DiscoverPolicy: Send + Sync + 'static {
    /// The policy of `namespace/session` now and at every change; `None`
    /// when there is no such Session.
    fn watch(&self, namespace: &str, session: &str) -> Option<watch::Receiver<Snapshot>>;
}
