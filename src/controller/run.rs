//! Running the controller role: the Session controller (triggered by the
//! shared caches' feeds and by the children it owns), the three status
//! controllers and the ApprovalRequest controller, until shutdown. Starting the process, the caches, the
//! control plane and the admin server is the operator's (`crate::operator`).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};

use super::approvals::{ApprovalContext, reconcile_approval, retry_approval};
use super::gateway_status::reconcile_gateway;
use super::grant_status::reconcile_grant;
use super::leader_only::on_the_leader;
use super::metrics::Metrics;
use super::policy_status::{GuardCache, reconcile_policy};
use super::retry::Backoff;
use super::session::config::SandboxConfig;
use super::session::context::Context;
use super::session::reconcile::{error_policy, reconcile};
use super::session::rollout::Rollouts;
use super::session::triggers::{SubjectIndex, gateway_sessions, grant_sessions, policy_sessions};
use super::status_context::{self, StatusContext};
use crate::api::{
    ApprovalRequest, DEFAULT_POLICY_NAME, Gateway, Grant, SecurityPolicy, Session, UpdatePolicy,
};
use crate::cache::{Caches, Feed, scoped};
use crate::cluster::lease::Leadership;
use crate::cluster::{FIELD_MANAGER, MANAGED_BY_LABEL};
use crate::shutdown::Shutdown;
use crate::store::Store;

/// What the controller works from.
pub struct Setup {
    /// The Kubernetes client.
    pub client: Client,
    /// Settings for the builders.
    pub config: SandboxConfig,
    /// The shared caches.
    pub caches: Caches,
    /// The caches' changes, as reconcile triggers.
    pub triggers: Triggers,
    /// Whether this replica may write (gaining it reconciles everything).
    pub leadership: Leadership,
    /// This replica's name in events.
    pub identity: String,
    /// Its metrics.
    pub metrics: Metrics,
    /// The update policy of namespaces whose SecurityPolicy sets none.
    pub default_update_policy: UpdatePolicy,
    /// The watched namespace; every namespace when `None`.
    pub namespace: Option<String>,
    /// The audit store, for the controller's own decisions.
    pub store: Store,
    /// The control plane's CA bundle, to publish where Sessions are and in
    /// the operator's namespace (`None` when it serves plaintext).
    pub ca_bundle: Option<super::ca_bundle::Publish>,
    /// The egress service's ServiceAccount, to bind to the provider keys
    /// of the namespaces that configure providers (`None`: no egress).
    pub egress_account: Option<super::provider_keys::EgressAccount>,
    /// The egress service's certificate, from the operator's CA (`None`
    /// with cert-manager, plaintext or no egress service).
    pub egress_cert: Option<super::egress_cert::EgressCert<crate::tls::ca_secret::CaSecret>>,
}

/// The feeds of the shared caches the Session controller reconciles on.
pub struct Triggers {
    /// SecurityPolicies applied or deleted.
    pub policies: Feed<DeserializeGuard<SecurityPolicy>>,
    /// Grants applied or deleted.
    pub grants: Feed<DeserializeGuard<Grant>>,
    /// Gateways applied or deleted.
    pub gateways: Feed<DeserializeGuard<Gateway>>,
    /// Sessions applied.
    pub sessions: Feed<DeserializeGuard<Session>>,
}

/// Runs the controllers until `shutdown` (each finishes its
/// in-flight reconciles).
pub async fn run(setup: Setup, shutdown: Shutdown) {
    let Setup {
        client,
        config,
        caches,
        triggers,
        leadership,
        identity,
        metrics,
        default_update_policy,
        namespace,
        store,
        ca_bundle,
        egress_account,
        egress_cert,
    } = setup;
    if let Some(cert) = egress_cert {
        tokio::spawn(super::egress_cert::issue_forever(
            client.clone(),
            cert,
            leadership.clone(),
            crate::clock::Clock::System,
            crate::tls::source::ROTATION_CHECK,
            shutdown.clone(),
        ));
    }
    if let Some(egress) = egress_account {
        tokio::spawn(super::provider_keys::bind_forever(
            client.clone(),
            caches.stores.policies.clone(),
            egress,
            leadership.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(bundle) = ca_bundle {
        tokio::spawn(super::ca_bundle::publish_forever(
            client.clone(),
            caches.sessions.clone(),
            bundle,
            leadership.clone(),
            shutdown.clone(),
        ));
    }
    let namespace = namespace.as_deref();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity),
        },
    );
    let sessions_store = caches.sessions.clone();
    let sessions = triggers
        .sessions
        .map(Ok)
        .predicate_filter(predicates::generation, PredicateConfig::default());
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let (grant_subjects, gateway_subjects) = (SubjectIndex::default(), SubjectIndex::default());
    let sessions_of_policy = caches.sessions.clone();
    let (rollouts, waiting_for_a_slot) = Rollouts::new();
    let sessions_controller = Controller::for_stream(sessions, sessions_store.clone())
        .owns(scoped::<Pod>(&client, namespace), owned.clone())
        .owns(scoped::<NetworkPolicy>(&client, namespace), owned.clone())
        .owns(scoped::<ServiceAccount>(&client, namespace), owned)
        .watches_stream(triggers.policies.map(Ok), move |policy| {
            policy_sessions(&sessions_of_policy, &policy)
        })
        .watches_stream(triggers.grants.map(Ok), move |grant| {
            grant_sessions(&grant_subjects, &grant)
        })
        .watches_stream(triggers.gateways.map(Ok), move |gateway| {
            gateway_sessions(&gateway_subjects, &gateway)
        })
        .reconcile_on(waiting_for_a_slot)
        .reconcile_all_on(leadership.gained())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            on_the_leader(reconcile),
            error_policy,
            Arc::new(Context {
                client: client.clone(),
                config,
                stores: caches.stores.clone(),
                recorder: recorder.clone(),
                metrics: metrics.clone(),
                leadership: leadership.clone(),
                clock: Timestamp::now,
                default_update_policy,
                rollouts,
                backoff: Backoff::default(),
                store: store.clone(),
            }),
        )
        .for_each(log_watch_errors);

    let status_context = Arc::new(StatusContext {
        client: client.clone(),
        sessions: sessions_store,
        leadership: leadership.clone(),
        clock: Timestamp::now,
        backoff: Backoff::default(),
        store: store.clone(),
        escalation_guard: GuardCache::default(),
    });
    let policy_status_controller = Controller::new(
        scoped::<DeserializeGuard<SecurityPolicy>>(&client, namespace),
        watcher::Config::default(),
    )
    .watches(
        scoped::<DeserializeGuard<Session>>(&client, namespace),
        watcher::Config::default(),
        |session| {
            session
                .namespace()
                .map(|ns| ObjectRef::new(DEFAULT_POLICY_NAME).within(&ns))
        },
    )
    .reconcile_all_on(leadership.gained())
    .graceful_shutdown_on(shutdown.clone())
    .run(
        on_the_leader(reconcile_policy),
        status_context::retry,
        status_context.clone(),
    )
    .for_each(log_watch_errors);
    let approval_controller = Controller::new(
        scoped::<DeserializeGuard<ApprovalRequest>>(&client, namespace),
        watcher::Config::default(),
    );
    let requests = approval_controller.store();
    let approval_controller = approval_controller
        .reconcile_all_on(leadership.gained())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            on_the_leader(reconcile_approval),
            retry_approval,
            Arc::new(ApprovalContext {
                client: client.clone(),
                store,
                stores: caches.stores.clone(),
                leadership: leadership.clone(),
                recorder: recorder.clone(),
                clock: Timestamp::now,
                backoff: Backoff::default(),
                metrics: metrics.clone(),
                requests,
            }),
        )
        .for_each(log_watch_errors);
    let grant_status_controller = Controller::new(
        scoped::<DeserializeGuard<Grant>>(&client, namespace),
        watcher::Config::default(),
    )
    .reconcile_all_on(leadership.gained())
    .graceful_shutdown_on(shutdown.clone())
    .run(
        on_the_leader(reconcile_grant),
        status_context::retry,
        status_context.clone(),
    )
    .for_each(log_watch_errors);
    let gateway_controller = Controller::new(
        scoped::<DeserializeGuard<Gateway>>(&client, namespace),
        watcher::Config::default(),
    );
    let gateways_by_session = gateway_controller.store();
    let gateway_status_controller = gateway_controller
        .watches(
            scoped::<DeserializeGuard<Session>>(&client, namespace),
            watcher::Config::default(),
            move |session| {
                let (name, namespace) = (session.name_any(), session.namespace());
                // Its level decides whether the Gateways naming it serve or
                // reach it.
                gateways_by_session
                    .state_filter(|gateway| {
                        gateway.meta().namespace == namespace
                            && gateway.0.as_ref().is_ok_and(|g| g.spec.names(&name))
                    })
                    .iter()
                    .map(|gateway| ObjectRef::from_obj(gateway.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_all_on(leadership.gained())
        .graceful_shutdown_on(shutdown)
        .run(
            on_the_leader(reconcile_gateway),
            status_context::retry,
            status_context,
        )
        .for_each(log_watch_errors);

    tokio::join!(
        sessions_controller,
        policy_status_controller,
        gateway_status_controller,
        grant_status_controller,
        approval_controller
    );
}

/// Logs the watch failures a controller's stream reports (of the children
/// and status watches it runs itself); failed reconciles are reported by
/// their error policy instead.
async fn log_watch_errors<T, R, Q: std::fmt::Display>(
    result: Result<T, kube::runtime::controller::Error<R, Q>>,
) {
    if let Err(kube::runtime::controller::Error::QueueError(error)) = result {
        tracing::warn!(%error, "watching the cluster failed; retrying with backoff");
    }
}
