//! A Session reconciler wired to the fake API server, for scenario tests
//! and the controller benchmark.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio_stream::wrappers::UnboundedReceiverStream;
use wopr_operator::api::{Gateway, Grant, SecurityPolicy, Session, UpdatePolicy};
use wopr_operator::cache::Stores;
use wopr_operator::cluster::lease::Leadership;
use wopr_operator::controller::leader_only::on_the_leader;
use wopr_operator::controller::metrics::Metrics;
use wopr_operator::controller::retry::Backoff;
use wopr_operator::controller::session::config::SandboxConfig;
use wopr_operator::controller::session::context::Context;
use wopr_operator::controller::session::reconcile::reconcile;
use wopr_operator::controller::session::rollout::Rollouts;
use wopr_operator::controller::session::triggers::SessionRef;

use super::fake_api::FakeApi;
use super::{NAMESPACE, now, sandbox_config};

fn fixed_now() -> Timestamp {
    now()
}

pub fn session_path(name: &str) -> String {
    format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/sessions/{name}")
}
pub fn account_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts/wopr-{name}")
}
pub fn network_policy_path(name: &str) -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies/wopr-{name}")
}
pub fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/pods/wopr-{name}")
}
pub fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events")
}

pub struct Harness {
    pub api: FakeApi,
    /// The audit store the controller records its decisions in.
    pub store: super::store::TestStore,
    pub ctx: Arc<Context>,
    pub policies: Writer<DeserializeGuard<SecurityPolicy>>,
    pub grants: Writer<DeserializeGuard<Grant>>,
    _gateways: Writer<DeserializeGuard<Gateway>>,
    /// The Sessions the rollouts woke (the controller would reconcile them).
    pub waiting_for_a_slot: UnboundedReceiverStream<SessionRef>,
}

impl Harness {
    pub async fn new(leadership: Leadership) -> Harness {
        let (client, api) = FakeApi::start();
        let store = super::store::sqlite().await;
        let (policy_store, policies) = reflector::store();
        let (grant_store, grants) = reflector::store();
        let (gateway_store, gateways) = reflector::store();
        let (rollouts, waiting_for_a_slot) = Rollouts::new();
        let ctx = Context {
            client: client.clone(),
            config: sandbox_config(),
            stores: Stores {
                policies: policy_store,
                grants: grant_store,
                gateways: gateway_store,
            },
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "wopr-operator".into(),
                    instance: None,
                },
            ),
            metrics: Metrics::new(&mut Registry::default()),
            leadership,
            clock: fixed_now,
            default_update_policy: UpdatePolicy::DEFAULT,
            rollouts,
            backoff: Backoff::default(),
            store: store.store.clone(),
        };
        Harness {
            api,
            store,
            ctx: Arc::new(ctx),
            policies,
            grants,
            _gateways: gateways,
            waiting_for_a_slot,
        }
    }

    pub async fn leader() -> Harness {
        Harness::new(Leadership::always()).await
    }

    /// A controller restarted with other settings and default update
    /// policy: same API server, caches and rollouts in flight.
    pub fn reconfigure(&mut self, config: SandboxConfig, default_update_policy: UpdatePolicy) {
        let ctx = &self.ctx;
        self.ctx = Arc::new(Context {
            client: ctx.client.clone(),
            config,
            stores: ctx.stores.clone(),
            recorder: ctx.recorder.clone(),
            metrics: ctx.metrics.clone(),
            leadership: ctx.leadership.clone(),
            clock: ctx.clock,
            default_update_policy,
            rollouts: ctx.rollouts.clone(),
            backoff: ctx.backoff.clone(),
            store: ctx.store.clone(),
        });
    }

    /// Creates a Session in the fake API server.
    pub fn create(&self, session: &Session) {
        self.api.insert(
            &session_path(&session.metadata.name.clone().unwrap()),
            serde_json::to_value(session).unwrap(),
        );
    }

    /// Changes a Session's spec as `kubectl apply` would (bumping its generation).
    pub fn edit(&self, name: &str, change: impl FnOnce(&mut Value)) {
        self.api.modify(&session_path(name), |session| {
            change(&mut session["spec"]);
            let generation = session["metadata"]["generation"].as_i64().unwrap_or(1);
            session["metadata"]["generation"] = json!(generation + 1);
        });
    }

    /// Reconciles the Session as the API server has it now.
    pub async fn reconcile(&self, name: &str) -> Action {
        self.try_reconcile(name).await.expect("reconcile succeeds")
    }

    /// Reconciles `name`, which may fail.
    pub async fn try_reconcile(
        &self,
        name: &str,
    ) -> Result<Action, wopr_operator::controller::error::Error> {
        let stored = self
            .api
            .get(&session_path(name))
            .expect("the session exists");
        let object: DeserializeGuard<Session> = serde_json::from_value(stored).unwrap();
        // As the controller runs it: on the leader only.
        on_the_leader(reconcile)(Arc::new(object), self.ctx.clone()).await
    }

    pub fn add_grant(&mut self, grant: Grant) {
        self.grants
            .apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(grant))));
    }

    pub fn status(&self, name: &str) -> Value {
        self.api.get(&session_path(name)).unwrap()["status"].clone()
    }
}
