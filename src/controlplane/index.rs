//! The policies the control plane serves: each watched session's effective
//! context, recomputed from the shared caches when something in its
//! namespace changes (deletions included) and when the first of the served
//! contexts expires (a grant's `expiresAt`): event-driven, no polling.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};

use super::discover::{DiscoverPolicy, NoContext, Snapshot};
use crate::api::{Grant, P2pPolicy, Session, SpawnPolicy};
use crate::cache::{NamespaceChange, Stores};
use crate::clock::Clock;
use crate::policy::{EffectiveContext, PeerStanding, Standing};
use crate::proto::v1alpha1 as pb;
use crate::store::InboxLimits;
use crate::wire::encode;

/// One watched session.
struct Watched {
    sender: watch::Sender<Snapshot>,
    /// When its context stops being current (a grant expires).
    valid_until: Option<Timestamp>,
}

/// How long the control plane takes to put a change into the policies it
/// serves: from a change reaching the index to every watched Session it
/// affects holding its new policy (each Watch stream then sends it as is).
#[derive(Clone, Debug)]
pub struct PushMetrics {
    /// Seconds per refresh that changed at least one served policy.
    pub seconds: Histogram,
}

impl Default for PushMetrics {
    fn default() -> Self {
        // 100 µs to about 26 s.
        PushMetrics {
            seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
        }
    }
}

impl PushMetrics {
    /// Registers `wopr_policy_push_seconds` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.sub_registry_with_prefix("wopr").register(
            "policy_push_seconds",
            "Seconds from a change reaching the control plane to every watched Session it affects holding its new policy",
            self.seconds.clone(),
        );
    }
}

/// Watched sessions and their current snapshots.
pub struct ContextIndex {
    sessions: Store<DeserializeGuard<Session>>,
    stores: Stores,
    clock: Clock,
    push: PushMetrics,
    watchers: Mutex<HashMap<(String, String), Watched>>,
    /// Woken when the earliest expiry may have moved.
    expiry_moved: Notify,
}

impl ContextIndex {
    /// An index over the shared caches.
    pub fn new(sessions: Store<DeserializeGuard<Session>>, stores: Stores, clock: Clock) -> Self {
        ContextIndex {
            sessions,
            stores,
            clock,
            push: PushMetrics::default(),
            watchers: Mutex::default(),
            expiry_moved: Notify::new(),
        }
    }

    /// The index, observing its pushes in `push`.
    #[must_use]
    pub fn observed_by(self, push: PushMetrics) -> Self {
        ContextIndex { push, ..self }
    }

    /// Keeps the served policies current until `changes` ends: refreshes a
    /// namespace when something in it changes (everything after a re-list),
    /// and everything when the earliest served context expires.
    pub async fn follow(&self, changes: impl Stream<Item = NamespaceChange>) {
        let mut changes = std::pin::pin!(changes);
        loop {
            let next_expiry = self.next_expiry();
            let expired = async {
                match next_expiry {
                    Some(at) => self.clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                change = changes.next() => match change {
                    Some(Some(namespace)) => self.refresh(&namespace),
                    Some(None) => self.refresh_all(),
                    None => return,
                },
                () = expired => self.refresh_all(),
                () = self.expiry_moved.notified() => {}
            }
        }
    }

    /// Recomputes the watched sessions of `namespace`, notifying watchers of changes.
    pub fn refresh(&self, namespace: &str) {
        self.refresh_where(|watched_namespace| watched_namespace == namespace);
    }

    /// Recomputes every watched session.
    pub fn refresh_all(&self) {
        self.refresh_where(|_| true);
    }

    fn refresh_where(&self, selected: impl Fn(&str) -> bool) {
        let started = std::time::Instant::now();
        let mut pushed = false;
        let now = self.clock.now();
        let mut watchers = self
            .watchers
            .lock()
            .expect("the index lock is never poisoned");
        watchers.retain(|_, watched| watched.sender.receiver_count() > 0);
        for ((namespace, session), watched) in watchers.iter_mut() {
            if selected(namespace) {
                let (snapshot, valid_until) = self.snapshot(namespace, session, now);
                watched.valid_until = valid_until;
                pushed |= watched.sender.send_if_modified(|current| {
                    let changed = *current != snapshot;
                    if changed {
                        *current = snapshot;
                    }
                    changed
                });
            }
        }
        if pushed {
            self.push.seconds.observe(started.elapsed().as_secs_f64());
        }
        self.expiry_moved.notify_one();
    }

    /// The earliest time a served context stops being current.
    fn next_expiry(&self) -> Option<Timestamp> {
        self.watchers
            .lock()
            .expect("the index lock is never poisoned")
            .values()
            .filter_map(|watched| watched.valid_until)
            .min()
    }

    /// The snapshot of `namespace/session` at `now`, and when it expires.
    fn snapshot(
        &self,
        namespace: &str,
        session: &str,
        now: Timestamp,
    ) -> (Snapshot, Option<Timestamp>) {
        match self.context_at(namespace, session, now) {
            Ok((context, provider)) => {
                let valid_until = context.valid_until;
                (
                    Snapshot::Context(Box::new(encode(&context, provider))),
                    valid_until,
                )
            }
            Err(NoContext::Gone(reason)) => (Snapshot::Gone(reason), None),
            Err(NoContext::Unavailable(reason)) => (Snapshot::Unavailable(reason), None),
        }
    }

    /// The effective context of `namespace/session` at `now`, with the
    /// Session's model provider.
    fn context_at(
        &self,
        namespace: &str,
        session: &str,
        now: Timestamp,
    ) -> Result<(EffectiveContext, Option<pb::Provider>), NoContext> {
        let key = ObjectRef::new(session).within(namespace);
        let Some(object) = self.sessions.get(&key) else {
            return Err(NoContext::Gone(format!(
                "Session {namespace}/{session} does not exist"
            )));
        };
        let session_object = object.0.as_ref().map_err(|invalid| {
            NoContext::Unavailable(format!(
                "Session {namespace}/{session} cannot be read: {}",
                invalid.error
            ))
        })?;
        let context = self
            .stores
            .resolve(session_object, now)
            .map_err(|error| NoContext::Unavailable(error.to_string()))?;
        let provider = session_object
            .spec
            .provider
            .as_ref()
            .map(|provider| pb::Provider {
                name: provider.name.clone(),
                model: provider.model.clone().unwrap_or_default(),
            });
        Ok((context, provider))
    }
}

impl DiscoverPolicy for ContextIndex {
    fn watch(&self, namespace: &str, session: &str) -> Option<watch::Receiver<Snapshot>> {
        let key = (namespace.to_owned(), session.to_owned());
        let mut watchers = self
            .watchers
            .lock()
            .expect("the index lock is never poisoned");
        if let Some(watched) = watchers.get(&key) {
            return Some(watched.sender.subscribe());
        }
        let (snapshot, valid_until) = self.snapshot(namespace, session, self.clock.now());
        if matches!(snapshot, Snapshot::Gone(_)) {
            return None;
        }
        let (sender, receiver) = watch::channel(snapshot);
        watchers.insert(
            key,
            Watched {
                sender,
                valid_until,
            },
        );
        drop(watchers);
        self.expiry_moved.notify_one();
        Some(receiver)
    }

    fn context(&self, namespace: &str, session: &str) -> Result<EffectiveContext, NoContext> {
        let (context, _) = self.context_at(namespace, session, self.clock.now())?;
        Ok(context)
    }

    fn sessions(&self, namespace: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .sessions
            .state()
            .iter()
            .filter(|session| session.meta().namespace.as_deref() == Some(namespace))
            .filter_map(|session| session.meta().name.clone())
            .collect();
        names.sort();
        names
    }

    fn inbox_limits(&self, namespace: &str) -> InboxLimits {
        self.stores.inbox_limits(namespace)
    }

    fn session(&self, namespace: &str, name: &str) -> Option<Session> {
        let object = self.sessions.get(&ObjectRef::new(name).within(namespace))?;
        object.0.as_ref().ok().cloned()
    }

    fn spawn_policy(&self, namespace: &str) -> SpawnPolicy {
        self.stores.spawn_policy(namespace)
    }

    fn workload(
        &self,
        namespace: &str,
        session: &str,
        account: (&str, &str),
    ) -> Result<Option<Standing>, String> {
        self.stores
            .workload_standing(namespace, session, account, self.clock.now())
    }

    fn peer_policy(&self, namespace: &str) -> Result<P2pPolicy, String> {
        self.stores.peer_policy(namespace)
    }

    fn peer(
        &self,
        namespace: &str,
        session: &str,
        public_key: &str,
    ) -> Result<Option<PeerStanding>, String> {
        self.stores
            .peer_standing(namespace, session, public_key, self.clock.now())
    }

    fn peer_grants(&self, public_key: &str) -> Vec<Grant> {
        self.stores.peer_grants(public_key)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::SignedDuration;
    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;
    use crate::api::{Capability, Grant, GrantSpec, GrantSubject, SessionSpec, TrustLevel};

    fn start() -> Timestamp {
        "2026-11-29T12:00:00Z".parse().unwrap()
    }

    struct Fixture {
        index: std::sync::Arc<ContextIndex>,
        sessions: Writer<DeserializeGuard<Session>>,
        grants: Writer<DeserializeGuard<Grant>>,
        changes: mpsc::UnboundedSender<NamespaceChange>,
    }

    /// An index over stores the test fills, following `changes`.
    fn fixture() -> Fixture {
        let (session_store, sessions) = reflector::store();
        let (policies, _) = reflector::store();
        let (grant_store, grants) = reflector::store();
        let (gateways, _) = reflector::store();
        let stores = Stores {
            policies,
            grants: grant_store,
            gateways,
        };
        let index = std::sync::Arc::new(ContextIndex::new(
            session_store,
            stores,
            Clock::starting_at(start()),
        ));
        let (changes, receiver) = mpsc::unbounded_channel();
        let following = index.clone();
        tokio::spawn(async move {
            following
                .follow(UnboundedReceiverStream::new(receiver))
                .await
        });
        Fixture {
            index,
            sessions,
            grants,
            changes,
        }
    }

    fn session(name: &str) -> DeserializeGuard<Session> {
        let mut session = Session::new(name, SessionSpec::for_trust_level(TrustLevel::SemiTrusted));
        session.metadata.namespace = Some("ns".into());
        DeserializeGuard(Ok(session))
    }

    fn capabilities(snapshot: &Snapshot) -> Vec<String> {
        match snapshot {
            Snapshot::Context(context) => context.capabilities.clone(),
            other => panic!("no context: {other:?}"),
        }
    }

    /// Lets the index's task run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// The Grant `fetch` of `inject.network` to session `s`, counting from
    /// `not_before` to `expires_at` (seconds after the start).
    fn fetch_grant(not_before: Option<i64>, expires_at: Option<i64>) -> DeserializeGuard<Grant> {
        let at = |seconds| Time(start() + SignedDuration::from_secs(seconds));
        let mut grant = Grant::new(
            "fetch",
            GrantSpec {
                subject: GrantSubject::session("s"),
                profile: None,
                capabilities: vec![Capability::InjectNetwork],
                sessions: Vec::new(),
                not_before: not_before.map(at),
                expires_at: expires_at.map(at),
                previous_keys: Vec::new(),
            },
        );
        grant.metadata.namespace = Some("ns".into());
        DeserializeGuard(Ok(grant))
    }

    /// The fixture watching session `s` under `grant`.
    fn watching(grant: DeserializeGuard<Grant>) -> (Fixture, watch::Receiver<Snapshot>) {
        let mut fixture = fixture();
        fixture
            .sessions
            .apply_watcher_event(&watcher::Event::Apply(session("s")));
        fixture
            .grants
            .apply_watcher_event(&watcher::Event::Apply(grant));
        let policy = fixture.index.watch("ns", "s").unwrap();
        (fixture, policy)
    }

    /// How many pushes `push` has observed, as /metrics says.
    fn pushes(push: &PushMetrics) -> u64 {
        let mut registry = Registry::default();
        push.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("wopr_policy_push_seconds_count "))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A refresh that changes a served policy is one push observed; one
    /// that changes nothing is none.
    #[test]
    fn a_refresh_that_changes_a_served_policy_is_observed() {
        let (session_store, mut sessions) = reflector::store();
        let (policies, _) = reflector::store();
        let (grant_store, mut grants) = reflector::store();
        let (gateways, _) = reflector::store();
        let stores = Stores {
            policies,
            grants: grant_store,
            gateways,
        };
        let push = PushMetrics::default();
        let index = ContextIndex::new(session_store, stores, Clock::starting_at(start()))
            .observed_by(push.clone());
        sessions.apply_watcher_event(&watcher::Event::Apply(session("s")));
        let _policy = index.watch("ns", "s").unwrap();
        index.refresh("ns");
        assert_eq!(pushes(&push), 0, "nothing changed");
        grants.apply_watcher_event(&watcher::Event::Apply(fetch_grant(None, None)));
        index.refresh("ns");
        assert_eq!(pushes(&push), 1, "the Grant changed the served policy");
    }

    /// The served context carries the session's models: its level's
    /// patterns, its chain, and the providers of the namespace's default
    /// SecurityPolicy; a change of those is pushed.
    #[test]
    fn the_namespaces_providers_and_the_sessions_chain_are_served() {
        let (session_store, mut sessions) = reflector::store();
        let (policy_store, mut policies) = reflector::store();
        let (grant_store, _) = reflector::store();
        let (gateways, _) = reflector::store();
        let stores = Stores {
            policies: policy_store,
            grants: grant_store,
            gateways,
        };
        let index = ContextIndex::new(session_store, stores, Clock::starting_at(start()));
        let mut with_provider = session("s");
        if let Ok(session) = with_provider.0.as_mut() {
            session.spec.provider = Some(
                serde_json::from_value(
                    serde_json::json!({"name": "openai", "model": "gpt-4o-mini"}),
                )
                .unwrap(),
            );
        }
        sessions.apply_watcher_event(&watcher::Event::Apply(with_provider));
        let policy = |providers: serde_json::Value| {
            DeserializeGuard(Ok(serde_json::from_value::<crate::api::SecurityPolicy>(
                serde_json::json!({
                    "apiVersion": "wopr.dev/v1alpha1", "kind": "SecurityPolicy",
                    "metadata": {"name": "default", "namespace": "ns"},
                    "spec": {"providers": providers},
                }),
            )
            .unwrap()))
        };
        policies.apply_watcher_event(&watcher::Event::Apply(policy(serde_json::json!([
            {"name": "openai", "type": "openai", "secretRef": {"name": "keys", "key": "openai"}},
        ]))));
        let mut served = index.watch("ns", "s").unwrap();
        let models = |snapshot: &Snapshot| match snapshot {
            Snapshot::Context(context) => context.models.clone().expect("models are served"),
            other => panic!("no context: {other:?}"),
        };
        let first = models(&served.borrow_and_update());
        assert_eq!(first.chain[0].provider, "openai");
        assert_eq!(first.chain[0].model, "gpt-4o-mini");
        assert_eq!(first.providers[0].secret_name, "keys");
        assert!(first.allow.contains(&"*:*mini*".to_owned()));
        assert_eq!(first.max_tokens_per_request, 2048);

        policies.apply_watcher_event(&watcher::Event::Apply(policy(serde_json::json!([]))));
        index.refresh("ns");
        assert!(
            served.has_changed().unwrap(),
            "a provider removed is pushed"
        );
        assert!(models(&served.borrow_and_update()).providers.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_is_denied_from_the_moment_it_expires() {
        let (_fixture, mut policy) = watching(fetch_grant(None, Some(60)));
        assert!(capabilities(&policy.borrow_and_update()).contains(&"inject.network".into()));

        tokio::time::advance(Duration::from_secs(59)).await;
        settle().await;
        assert!(
            !policy.has_changed().unwrap(),
            "still valid a second before"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert!(
            policy.has_changed().unwrap(),
            "refreshed at the expiry, without polling"
        );
        assert!(!capabilities(&policy.borrow_and_update()).contains(&"inject.network".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_is_allowed_from_the_moment_it_starts() {
        let (_fixture, mut policy) = watching(fetch_grant(Some(30), None));
        assert!(
            !capabilities(&policy.borrow_and_update()).contains(&"inject.network".into()),
            "not yet valid: it confers nothing"
        );

        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert!(!policy.has_changed().unwrap(), "a second before it starts");
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert!(
            policy.has_changed().unwrap(),
            "refreshed when it starts, without polling"
        );
        assert!(capabilities(&policy.borrow_and_update()).contains(&"inject.network".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_session_is_gone_and_an_unknown_one_is_not_found() {
        let mut fixture = fixture();
        assert!(
            fixture.index.watch("ns", "s").is_none(),
            "unknown: not found"
        );
        fixture
            .sessions
            .apply_watcher_event(&watcher::Event::Apply(session("s")));
        let mut policy = fixture.index.watch("ns", "s").unwrap();
        policy.borrow_and_update();
        fixture
            .sessions
            .apply_watcher_event(&watcher::Event::Delete(session("s")));
        fixture.changes.send(Some("ns".into())).unwrap();
        settle().await;
        assert!(matches!(*policy.borrow_and_update(), Snapshot::Gone(_)));
    }
}
