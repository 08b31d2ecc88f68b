//! Starting the controller: check the CRDs, elect a leader, fill the caches,
//! run the reconcilers and the admin server, stop cleanly on SIGTERM.

use std::fmt::Debug;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::core::{DeserializeGuard, NamespaceResourceScope};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerError;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::admin::{self, AdminState};
use super::config::{ConfigError, ControlPlane, ControllerArgs, SandboxConfig};
use super::context::{Context, Leadership, Stores};
use super::leader;
use super::metrics::Metrics;
use super::policy_status::{self, StatusContext};
use super::reconcile::{error_policy, reconcile};
use super::retry::Backoff;
use super::rollout::Rollouts;
use super::triggers::{SubjectIndex, gateway_sessions, grant_sessions, policy_sessions};
use crate::api::{DEFAULT_POLICY_NAME, Gateway, Grant, SecurityPolicy, Session};
use crate::cluster::FIELD_MANAGER;
use crate::cluster::preflight::{ApiServer, PreflightError};
use crate::controlplane::isolation::PodStatusConditions;
use crate::controlplane::{self, auth::TokenReviewer, index::ContextIndex};

/// Why the controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The cluster is not ready for the controller (see [`PreflightError`]).
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// A flag has a bad value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Leader election could not start.
    #[error("leader election: {0}")]
    Leader(String),
    /// The admin server failed.
    #[error("admin server: {0}")]
    Admin(#[source] std::io::Error),
    /// The control-plane port could not be opened.
    #[error("control-plane API: {0}")]
    ControlPlane(#[source] std::io::Error),
    /// The control-plane server failed.
    #[error("control-plane API: {0}")]
    ControlPlaneServer(#[from] tonic::transport::Error),
}

/// Runs the controller until `shutdown` completes (in the binary: SIGTERM or Ctrl-C).
pub async fn run(
    args: ControllerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let api_server = ApiServer::infer().await?;
    let client = api_server.client.clone();
    api_server.ensure_crds_installed().await?;
    api_server
        .ensure_rights(
            args.watch_namespace.as_deref(),
            args.leader_election
                .then_some(args.operator_namespace.as_str()),
        )
        .await?;
    let mut config = SandboxConfig::from_args(&args)?;
    config.control_plane.resolved_ip = resolve_host(&config.control_plane).await;
    if let Some(address) = api_server_address(&api_server.url).await {
        config
            .isolation_probes
            .insert(0, ("apiserver".to_owned(), address));
    }
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("wopr-operator-{}", std::process::id()));
    let shutdown = shutdown.shared();
    let (leadership, gained, lease_released) = if args.leader_election {
        let election = leader::elect(
            client.clone(),
            &args.operator_namespace,
            &args.lease_name,
            &identity,
            shutdown.clone(),
        )
        .await
        .map_err(|error| match error {
            LeaseManagerError::KubeError(error) => RunError::Preflight(api_server.explain(&error)),
            other => RunError::Leader(other.to_string()),
        })?;
        (
            election.leadership,
            election.gained.boxed(),
            Some(election.released),
        )
    } else {
        (Leadership::always(), stream::empty().boxed(), None)
    };
    let listener = tokio::net::TcpListener::bind(args.admin_address)
        .await
        .map_err(RunError::Admin)?;
    let control_plane_listener = tokio::net::TcpListener::bind(args.control_plane_listen)
        .await
        .map_err(RunError::ControlPlane)?;
    tracing::info!(
        admin = %local_address(&listener),
        control_plane = %local_address(&control_plane_listener),
        %identity,
        "controller starting"
    );

    let namespace = args.watch_namespace.as_deref();
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);

    // Caches of what a Session's policy depends on, each a trigger too.
    let (policy_store, policies) = cache::<DeserializeGuard<SecurityPolicy>>(&client, namespace);
    let (grant_store, grants) = cache::<DeserializeGuard<Grant>>(&client, namespace);
    let (gateway_store, gateways) = cache::<DeserializeGuard<Gateway>>(&client, namespace);
    let (session_store, session_writer) = reflector::store();
    let sessions = watcher(
        scoped::<DeserializeGuard<Session>>(&client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(session_writer)
    .applied_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());

    let stores = Stores {
        policies: policy_store,
        grants: grant_store,
        gateways: gateway_store,
    };
    // The control plane serves sidecars from the same caches, on every replica.
    let index = Arc::new(ContextIndex::new(
        session_store.clone(),
        stores.clone(),
        Timestamp::now,
    ));
    let policies = policies.inspect(refresh_on_change(index.clone()));
    let grants = grants.inspect(refresh_on_change(index.clone()));
    let gateways = gateways.inspect(refresh_on_change(index.clone()));
    let sessions = sessions.inspect(refresh_on_change(index.clone()));
    tokio::spawn(refresh_every_second(index.clone()));
    let control_plane = controlplane::serve(
        control_plane_listener,
        index,
        Arc::new(TokenReviewer::new(client.clone())),
        Arc::new(PodStatusConditions::new(client.clone())),
        shutdown.clone(),
    );

    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(mark_ready_when_synced(
        stores.clone(),
        session_store.clone(),
        ready.clone(),
    ));

    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=wopr-operator");
    let grant_subjects = SubjectIndex::default();
    let gateway_subjects = SubjectIndex::default();
    let sessions_of_policy = session_store.clone();
    let (gained_sessions, gained_policies, gained_gateways) = fan_out(gained);
    let sessions_controller = Controller::for_stream(sessions, session_store.clone())
        .owns(scoped::<Pod>(&client, namespace), owned.clone())
        .owns(scoped::<NetworkPolicy>(&client, namespace), owned.clone())
        .owns(scoped::<ServiceAccount>(&client, namespace), owned)
        .watches_stream(policies, move |policy| {
            policy_sessions(&sessions_of_policy, &policy)
        })
        .watches_stream(grants, move |grant| grant_sessions(&grant_subjects, &grant))
        .watches_stream(gateways, move |gateway| {
            gateway_sessions(&gateway_subjects, &gateway)
        })
        .reconcile_all_on(gained_sessions)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            reconcile,
            error_policy,
            Arc::new(Context {
                client: client.clone(),
                config,
                stores,
                recorder: Recorder::new(
                    client.clone(),
                    Reporter {
                        controller: FIELD_MANAGER.into(),
                        instance: Some(identity.clone()),
                    },
                ),
                metrics: metrics.clone(),
                leadership: leadership.clone(),
                clock: Timestamp::now,
                default_update_policy: args.default_update_policy(),
                rollouts: Rollouts::default(),
                backoff: Backoff::default(),
            }),
        )
        .for_each(log_watch_errors);

    let status_context = Arc::new(StatusContext {
        client: client.clone(),
        sessions: session_store.clone(),
        leadership,
        clock: Timestamp::now,
        backoff: Backoff::default(),
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
    .reconcile_all_on(gained_policies)
    .graceful_shutdown_on(shutdown.clone())
    .run(
        policy_status::reconcile_policy,
        policy_status::retry,
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
                gateways_by_session
                    .state_filter(|gateway| {
                        gateway.meta().namespace == namespace
                            && gateway.0.as_ref().is_ok_and(|g| g.spec.session == name)
                    })
                    .iter()
                    .map(|gateway| ObjectRef::from_obj(gateway.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_all_on(gained_gateways)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            policy_status::reconcile_gateway,
            policy_status::retry,
            status_context,
        )
        .for_each(log_watch_errors);

    let admin_state = Arc::new(AdminState {
        registry,
        metrics,
        sessions: session_store,
        ready,
    });
    let admin_server = admin::serve(listener, admin_state, shutdown.clone());
    let lease_released = async {
        if let Some(released) = lease_released {
            let _ = released.await;
        }
    };
    let everything = async {
        tokio::join!(
            admin_server,
            control_plane,
            sessions_controller,
            policy_status_controller,
            gateway_status_controller,
            lease_released,
        )
    };
    let drain = Duration::from_secs(args.shutdown_drain_seconds);
    let drain_over = async {
        shutdown.clone().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        (admin_result, control_plane_result, _, _, _, ()) = everything => {
            tracing::info!("controller stopped");
            admin_result.map_err(RunError::Admin)?;
            Ok(control_plane_result?)
        }
        () = drain_over => {
            tracing::warn!(drain = ?drain, "stopping with work left: the drain time is over");
            Ok(())
        }
    }
}

/// Logs the watch failures a controller's stream reports (a lost API
/// server, a right taken away); failed reconciles are reported by their
/// error policy instead.
async fn log_watch_errors<T, R, Q: std::fmt::Display>(
    result: Result<T, kube::runtime::controller::Error<R, Q>>,
) {
    if let Err(kube::runtime::controller::Error::QueueError(error)) = result {
        tracing::warn!(%error, "watching the cluster failed; retrying with backoff");
    }
}

/// Where `listener` listens (the port the OS chose for port 0).
fn local_address(listener: &tokio::net::TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|error| error.to_string(), |address| address.to_string())
}

/// Refreshes the served policies of an object's namespace when it changes.
fn refresh_on_change<K: Resource>(
    index: Arc<ContextIndex>,
) -> impl FnMut(&Result<K, watcher::Error>) {
    move |change| {
        if let Ok(object) = change {
            index.refresh(object.meta().namespace.as_deref().unwrap_or_default());
        }
    }
}

/// Recomputes every served policy each second (grant expiry, missed events).
async fn refresh_every_second(index: Arc<ContextIndex>) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticker.tick().await;
        index.refresh_all();
    }
}

/// An Api for every namespace, or for the watched one.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// A cache of every `K` in scope, and the stream of its changes (deletions
/// included) to trigger reconciles with.
fn cache<K>(
    client: &Client,
    namespace: Option<&str>,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + use<K>,
)
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
    let changes = watcher(scoped::<K>(client, namespace), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    (store, changes)
}

/// The IP the control-plane host name resolves to, for `/etc/hosts` in
/// sandboxes that have no DNS. `None` for an IP address or a name that does
/// not resolve here.
async fn resolve_host(control_plane: &ControlPlane) -> Option<IpAddr> {
    if control_plane.host_ip().is_some() {
        return None;
    }
    match tokio::net::lookup_host((control_plane.host.as_str(), control_plane.port)).await {
        Ok(mut addresses) => addresses.next().map(|address| address.ip()),
        Err(error) => {
            tracing::warn!(host = %control_plane.host, %error, "control-plane host does not resolve; sandboxes without DNS will not reach it");
            None
        }
    }
}

/// The API server's address as sidecars would reach it, to probe from
/// isolated sandboxes; `None` when it is on this machine's loopback (a
/// controller running outside the cluster) or does not resolve.
async fn api_server_address(url: &str) -> Option<SocketAddr> {
    let uri: axum::http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let address = tokio::net::lookup_host((host, port)).await.ok()?.next()?;
    if address.ip().is_loopback() {
        tracing::info!(%address, "the API server is on loopback here; sandboxes do not probe it");
        return None;
    }
    Some(address)
}

/// Sets `ready` once every cache has its first full list.
async fn mark_ready_when_synced(
    stores: Stores,
    sessions: reflector::Store<DeserializeGuard<Session>>,
    ready: Arc<AtomicBool>,
) {
    let synced = futures::future::join4(
        stores.policies.wait_until_ready(),
        stores.grants.wait_until_ready(),
        stores.gateways.wait_until_ready(),
        sessions.wait_until_ready(),
    )
    .await;
    if matches!(synced, (Ok(()), Ok(()), Ok(()), Ok(()))) {
        ready.store(true, Ordering::Release);
        tracing::info!("caches synced");
    }
}

/// Three copies of a trigger stream, one per controller.
fn fan_out(
    trigger: stream::BoxStream<'static, ()>,
) -> (
    UnboundedReceiverStream<()>,
    UnboundedReceiverStream<()>,
    UnboundedReceiverStream<()>,
) {
    let (first, first_rx) = tokio::sync::mpsc::unbounded_channel();
    let (second, second_rx) = tokio::sync::mpsc::unbounded_channel();
    let (third, third_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(trigger.for_each(move |()| {
        let _ = (first.send(()), second.send(()), third.send(()));
        async {}
    }));
    (
        UnboundedReceiverStream::new(first_rx),
        UnboundedReceiverStream::new(second_rx),
        UnboundedReceiverStream::new(third_rx),
    )
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
