//! What the Grants naming one subject (a peer, a workload) give it towards
//! one session: the fold [`resolve_peer`](super::resolve_peer) and
//! [`resolve_workload`](super::resolve_workload) share.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::capabilities::CapabilitySet;
use super::resolve::grant_capabilities;
use super::validity::grant_is_active;
use crate::api::{Grant, SecurityPolicySpec, TrustLevel};

/// A subject's standing towards one session, from its grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    /// The highest profile among its grants; `untrusted` for
    /// capability-only grants.
    pub trust_level: TrustLevel,
    /// The capabilities of its grants, together.
    pub capabilities: CapabilitySet,
    /// The grants that count, by name, sorted.
    pub grants: Vec<String>,
}

/// The standing the grants `names` accepts give towards `session` in
/// `namespace`, or `None` when none counts. A grant counts when it is
/// active, in `namespace`, named by `names`, and its `sessions` scope is
/// empty or contains `session`. The first grant that counts comes back too.
pub(super) fn standing_from<'a>(
    grants: impl IntoIterator<Item = &'a Grant>,
    session: &str,
    namespace: &str,
    policy: Option<&SecurityPolicySpec>,
    now: Timestamp,
    names: impl Fn(&Grant) -> bool,
) -> Option<(Standing, &'a Grant)> {
    let mut found: Option<(Standing, &'a Grant)> = None;
    for grant in grants {
        let in_scope = grant.spec.sessions.is_empty()
            || grant.spec.sessions.iter().any(|scoped| scoped == session);
        let in_namespace = grant
            .metadata
            .namespace
            .as_deref()
            .is_none_or(|ns| ns == namespace);
        if !(in_scope && in_namespace && grant_is_active(grant, now) && names(grant)) {
            continue;
        }
        let trust_level = match grant.spec.profile {
            Some(level) if level < TrustLevel::Owner => level,
            _ => TrustLevel::Untrusted,
        };
        let (standing, _) = found.get_or_insert_with(|| {
            let empty = Standing {
                trust_level,
                capabilities: CapabilitySet::EMPTY,
                grants: Vec::new(),
            };
            (empty, grant)
        });
        standing.trust_level = standing.trust_level.max(trust_level);
        standing.capabilities = standing
            .capabilities
            .union(grant_capabilities(policy, grant));
        standing.grants.push(grant.name_any());
    }
    found.map(|(mut standing, first)| {
        standing.grants.sort_unstable();
        (standing, first)
    })
}
