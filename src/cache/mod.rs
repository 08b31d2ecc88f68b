//! The operator's view of the cluster (the "dereference" stage): reflector
//! caches of the SecurityPolicies, Grants, Gateways and Sessions in scope,
//! filled by watches, and the resolution of a Session's effective context
//! from them. The controller and the control plane both read these caches;
//! what changes is fed to each of them on its own channel ([`Feeds`]), so
//! neither role drives the other's view.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::core::{DeserializeGuard, NamespaceResourceScope};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::{
    DEFAULT_POLICY_NAME, Gateway, Grant, P2pPolicy, SecurityPolicy, SecurityPolicySpec, Session,
    SpawnPolicy, UpdatePolicy,
};
use crate::policy::{
    EffectiveContext, PeerStanding, ResolveError, Standing, resolve, resolve_peer, resolve_workload,
};
use crate::store::InboxLimits;

/// The caches.
#[derive(Clone)]
pub struct Caches {
    /// What a Session's policy depends on.
    pub stores: Stores,
    /// The Sessions.
    pub sessions: Store<DeserializeGuard<Session>>,
}

/// One consumer's stream of changes.
pub type Feed<T> = UnboundedReceiverStream<T>;

/// A change for the control plane: the namespace where something changed,
/// or `None` after a watch re-listed (anything may have changed).
pub type NamespaceChange = Option<String>;

/// What the watches report, once for each consumer.
pub struct Feeds {
    /// Every SecurityPolicy applied or deleted (reconcile triggers).
    pub policies: Feed<DeserializeGuard<SecurityPolicy>>,
    /// Every Grant applied or deleted.
    pub grants: Feed<DeserializeGuard<Grant>>,
    /// Every Gateway applied or deleted.
    pub gateways: Feed<DeserializeGuard<Gateway>>,
    /// Every Session applied (the Session controller's main stream).
    pub sessions: Feed<DeserializeGuard<Session>>,
    /// Where anything of the four kinds changed, deletions included (the
    /// control plane's served policies).
    pub namespaces: Feed<NamespaceChange>,
}

/// Starts watching the four kinds, in every namespace or in `namespace`.
pub fn start(client: &Client, namespace: Option<&str>) -> (Caches, Feeds) {
    let (changed, namespaces) = unbounded_channel();
    let (policies, policy_feed) = watch::<SecurityPolicy>(client, namespace, true, &changed);
    let (grants, grant_feed) = watch::<Grant>(client, namespace, true, &changed);
    let (gateways, gateway_feed) = watch::<Gateway>(client, namespace, true, &changed);
    let (sessions, session_feed) = watch::<Session>(client, namespace, false, &changed);
    let caches = Caches {
        stores: Stores {
            policies,
            grants,
            gateways,
        },
        sessions,
    };
    let feeds = Feeds {
        policies: policy_feed,
        grants: grant_feed,
        gateways: gateway_feed,
        sessions: session_feed,
        namespaces: UnboundedReceiverStream::new(namespaces),
    };
    (caches, feeds)
}

/// An Api for every namespace, or for the watched one.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// A cache of every `K` in scope (objects that do not deserialize are kept
/// as errors, so one bad object cannot wedge the watch), and the feed of its
/// changes: deletions too when `deletions`. Every change also names its
/// namespace on `changed`.
fn watch<K>(
    client: &Client,
    namespace: Option<&str>,
    deletions: bool,
    changed: &UnboundedSender<NamespaceChange>,
) -> (Store<DeserializeGuard<K>>, Feed<DeserializeGuard<K>>)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let (objects, feed) = unbounded_channel();
    let api = scoped::<DeserializeGuard<K>>(client, namespace);
    tokio::spawn(forward(api, writer, objects, changed.clone(), deletions));
    (store, UnboundedReceiverStream::new(feed))
}

/// Runs one watch: fills the store, and forwards each change to the feeds
/// whose consumers are still there. Watch failures are logged and retried
/// with backoff.
async fn forward<K>(
    api: Api<DeserializeGuard<K>>,
    writer: Writer<DeserializeGuard<K>>,
    objects: UnboundedSender<DeserializeGuard<K>>,
    changed: UnboundedSender<NamespaceChange>,
    deletions: bool,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let _ = changed.send(object.namespace());
                let _ = objects.send(object);
            }
            Ok(watcher::Event::Delete(object)) => {
                let _ = changed.send(object.namespace());
                if deletions {
                    let _ = objects.send(object);
                }
            }
            // A re-list may have dropped objects deleted meanwhile.
            Ok(watcher::Event::InitDone) => {
                let _ = changed.send(None);
            }
            Ok(watcher::Event::Init) => {}
            Err(error) => {
                tracing::warn!(kind = %K::kind(&()), %error, "watching the cluster failed; retrying with backoff");
            }
        }
    }
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

    /// How much the inboxes of `namespace` hold: its SecurityPolicy's
    /// `inbox`, or the defaults (also when the policy cannot be read).
    pub fn inbox_limits(&self, namespace: &str) -> InboxLimits {
        self.policy_spec(namespace, |spec| spec.inbox)
            .unwrap_or_default()
            .into()
    }

    /// What agents of `namespace` may spawn: its SecurityPolicy's `spawn`,
    /// or the defaults (also when the policy cannot be read).
    pub fn spawn_policy(&self, namespace: &str) -> SpawnPolicy {
        self.policy_spec(namespace, |spec| spec.spawn.clone())
            .unwrap_or_default()
    }

    /// A setting of `namespace`'s readable SecurityPolicy, if it sets it.
    fn policy_spec<T>(
        &self,
        namespace: &str,
        setting: impl FnOnce(&SecurityPolicySpec) -> Option<T>,
    ) -> Option<T> {
        let policy = self.governing_policy(namespace).ok().flatten()?;
        setting(&policy.0.as_ref().ok()?.spec)
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

    /// The standing of the service account `account` (namespace, name)
    /// towards `session` of `namespace` under the cached grants: `None`
    /// when no grant names it, `Err` when the namespace's policy cannot be
    /// read (no standing then: fail closed).
    pub fn workload_standing(
        &self,
        namespace: &str,
        session: &str,
        account: (&str, &str),
        now: Timestamp,
    ) -> Result<Option<Standing>, String> {
        let policy = self.governing_policy(namespace)?;
        let grants = self.grants_in(namespace);
        Ok(resolve_workload(
            account,
            session,
            namespace,
            policy.as_ref().and_then(|policy| policy.0.as_ref().ok()),
            grants.iter().filter_map(|grant| grant.0.as_ref().ok()),
            now,
        ))
    }

    /// The `p2p` settings of `namespace`: its SecurityPolicy's, or the
    /// built-in ones; `Err` when its policy cannot be read (fail closed).
    pub fn peer_policy(&self, namespace: &str) -> Result<P2pPolicy, String> {
        let policy = self.governing_policy(namespace)?;
        let spec = policy.as_ref().and_then(|policy| policy.0.as_ref().ok());
        Ok(spec
            .and_then(|policy| policy.spec.p2p.clone())
            .unwrap_or_default())
    }

    /// The standing of the peer presenting `public_key` towards
    /// `namespace/session` now: `None` when it has none, `Err` when the
    /// namespace's policy cannot be read (fail closed).
    pub fn peer_standing(
        &self,
        namespace: &str,
        session: &str,
        public_key: &str,
        now: Timestamp,
    ) -> Result<Option<PeerStanding>, String> {
        let policy = self.governing_policy(namespace)?;
        let grants = self.grants_in(namespace);
        Ok(resolve_peer(
            public_key,
            session,
            namespace,
            policy.as_ref().and_then(|policy| policy.0.as_ref().ok()),
            grants.iter().filter_map(|grant| grant.0.as_ref().ok()),
            now,
        ))
    }

    /// The readable Grants of every namespace naming `public_key` as a
    /// peer's current key.
    pub fn peer_grants(&self, public_key: &str) -> Vec<Grant> {
        self.grants
            .state()
            .iter()
            .filter_map(|grant| grant.0.as_ref().ok())
            .filter(|grant| {
                (grant.spec.subject.peer.as_ref()).is_some_and(|peer| peer.public_key == public_key)
            })
            .cloned()
            .collect()
    }

    /// How the session pods of `namespace` take operator-level changes:
    /// its SecurityPolicy's `updatePolicy`, else `default`.
    pub fn update_policy(&self, namespace: &str, default: UpdatePolicy) -> UpdatePolicy {
        self.policy_spec(namespace, |spec| spec.update_policy)
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
