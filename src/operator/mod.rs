//! `wopr-operator controller`: one process running the shared caches, the
//! controller role and the control plane, the admin server, and leader
//! election; the composition root, the only place that knows every role.
//!
//! Start-up checks the cluster first (one-line errors with the fix). On
//! shutdown the Lease is released and every policy stream ended at once;
//! in-flight work gets `--shutdown-drain-seconds` before the process stops
//! anyway. Its flags are [`args`]; its admin server (`/metrics`,
//! `/healthz`, `/readyz`) is [`admin`].

pub mod admin;
pub mod args;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube_lease_manager::LeaseManagerError;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::cache;
use crate::clock::Clock;
use crate::cluster::lease::{self, Leadership};
use crate::cluster::preflight::{ApiServer, PreflightError};
use crate::controller::ca_bundle::Publish;
use crate::controller::metrics::Metrics;
use crate::controller::run::{self as controller, Setup, Triggers};
use crate::controller::session::config::SandboxConfig;
use crate::controlplane::PeerKeys;
use crate::controlplane::audit::{AuditMetrics, AuditSetup};
use crate::controlplane::denials::KubeSessionEvents;
use crate::controlplane::grant_use::GrantUses;
use crate::controlplane::index::{ContextIndex, PushMetrics};
use crate::controlplane::isolation::PodStatusConditions;
use crate::controlplane::peers::{
    self, Ingress, IngressKeys, IngressSettings, KubeIngressKeys, PeerMetrics,
};
use crate::controlplane::refusals::RefusalMetrics;
use crate::controlplane::refusals::Refusals;
use crate::controlplane::writes::{ClusterWriter, KubeWriter};
use crate::controlplane::{self, auth::TokenReviewer};
use crate::export::ocsf::OcsfSink;
use crate::export::otlp::OtlpSink;
use crate::export::{ExportMetrics, Exporter, SinkError};
use crate::shutdown::{self, Shutdown};
use crate::store::{Retention, Store, StoreError};
use admin::AdminState;
use args::{ConfigError, ControllerArgs};

/// Why the operator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The cluster is not ready for the operator (see [`PreflightError`]).
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// A flag has a bad value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Leader election could not start.
    #[error("leader election: {0}")]
    Leader(#[source] LeaseManagerError),
    /// The admin server failed.
    #[error("admin server: {0}")]
    Admin(#[source] std::io::Error),
    /// The control-plane port could not be opened.
    #[error("control-plane API: {0}")]
    ControlPlane(#[source] std::io::Error),
    /// The control-plane server failed.
    #[error("control-plane API: {0}")]
    ControlPlaneServer(#[from] tonic::transport::Error),
    /// The peer ingress's port could not be opened, or its server failed.
    #[error("peer ingress: {0}")]
    PeerIngress(#[source] std::io::Error),
    /// The control plane's certificate could not be set up.
    #[error("control-plane TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The store could not be opened.
    #[error("{0} (set --store to a writable sqlite:///PATH or a reachable postgres:// URL)")]
    Store(#[from] StoreError),
    /// An audit exporter could not be set up from its flag.
    #[error("audit export: {0} (check --audit-export-otlp-endpoint and --audit-export-ocsf)")]
    Export(#[from] SinkError),
}

/// Runs the operator until `shutdown` completes (in the binary: SIGTERM or Ctrl-C).
pub async fn run(
    args: ControllerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let api_server = ApiServer::infer().await?;
    let client = api_server.client.clone();
    api_server.ensure_crds_installed().await?;
    let lease_namespace = args
        .leader_election
        .then_some(args.operator_namespace.as_str());
    api_server
        .ensure_rights(args.watch_namespace.as_deref(), lease_namespace)
        .await?;
    let config = SandboxConfig::resolve(&args, &api_server.url).await?;
    let store = Store::open(&args.store).await?;
    let tls = tls::start(&args, &config.control_plane.host, &client).await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("wopr-operator-{}", std::process::id()));
    let shutdown = shutdown::on(shutdown);
    let (leadership, lease_released) = if args.leader_election {
        let (leadership, released) = lease::elect(
            client.clone(),
            &args.operator_namespace,
            &args.lease_name,
            &identity,
            shutdown.clone(),
        )
        .await
        .map_err(|error| match error {
            LeaseManagerError::KubeError(error) => RunError::Preflight(api_server.explain(&error)),
            other => RunError::Leader(other),
        })?;
        (leadership, Some(released))
    } else {
        (Leadership::always(), None)
    };
    let retention = Retention {
        max_age: Duration::from_secs(args.audit_retention_hours * 3600),
        max_per_namespace: args.audit_max_events_per_namespace,
        min_age: Duration::from_secs(args.audit_min_age_hours * 3600),
    };
    let pruning = leadership.clone();
    let retention = tokio::spawn(
        store
            .clone()
            .prune_forever(retention, move || pruning.is_leader()),
    );
    let admin_listener = TcpListener::bind(args.admin_address)
        .await
        .map_err(RunError::Admin)?;
    let control_plane_listener = TcpListener::bind(args.control_plane_listen)
        .await
        .map_err(RunError::ControlPlane)?;
    let peer_listener = match args.p2p_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(RunError::PeerIngress)?,
        ),
        None => None,
    };
    tracing::info!(
        admin = %local_address(&admin_listener),
        control_plane = %local_address(&control_plane_listener),
        peer_ingress = %peer_listener.as_ref().map(local_address).unwrap_or_else(|| "off".into()),
        %identity,
        "controller starting"
    );

    let namespace = args.watch_namespace.clone();
    let (caches, feeds) = cache::start(&client, namespace.as_deref());
    // The control plane serves sidecars from the shared caches, on every replica.
    let OperatorMetrics {
        registry,
        controller: metrics,
        audit: audit_metrics,
        refusals,
        export: export_metrics,
        push,
        peers: peer_metrics,
    } = OperatorMetrics::new();
    let index = Arc::new(
        ContextIndex::new(
            caches.sessions.clone(),
            caches.stores.clone(),
            Clock::System,
        )
        .observed_by(push),
    );
    let following = index.clone();
    tokio::spawn(async move { following.follow(feeds.namespaces).await });
    let peer_keys: Option<Arc<dyn IngressKeys>> = peer_listener.as_ref().map(|_| {
        Arc::new(KubeIngressKeys::new(
            client.clone(),
            &args.operator_namespace,
        )) as Arc<dyn IngressKeys>
    });
    let writer: Arc<dyn ClusterWriter> = Arc::new(KubeWriter(client.clone()));
    let peer_ingress = peer_listener
        .zip(peer_keys.clone())
        .map(|(listener, keys)| {
            let ingress = Ingress::new(
                index.clone(),
                store.clone(),
                writer.clone(),
                keys,
                Arc::new(GrantUses::new(index.clone(), writer.clone(), Clock::System)),
                Arc::new(Refusals::new(
                    store.clone(),
                    args.operator_namespace.clone(),
                    refusals.clone(),
                )),
                Clock::System,
                IngressSettings {
                    answer_wait: Duration::from_secs(args.p2p_answer_wait_seconds),
                    max_in_flight: args.p2p_max_in_flight,
                    metrics: peer_metrics,
                },
            );
            peers::serve(
                listener,
                tls.transport.clone(),
                Arc::new(ingress),
                shutdown.clone(),
            )
        });
    let peer_ingress = async {
        match peer_ingress {
            Some(serving) => serving.await,
            None => Ok(()),
        }
    };
    let settings = controlplane::Settings {
        operator_namespace: args.operator_namespace.clone(),
        max_open_elevations: args.max_open_elevations,
        reflection: args.control_plane_reflection,
        refusal_metrics: refusals,
        exec: Some(controlplane::exec::Executor::new(
            client.clone(),
            args.exec_max_output_bytes,
        )),
        peer_keys: peer_keys.clone().map(PeerKeys),
        ..controlplane::Settings::default()
    };
    let exporters = start_exporters(&args, &store, &export_metrics, &leadership, &shutdown)?;
    let control_plane = controlplane::serve(
        control_plane_listener,
        tls.transport,
        index,
        Arc::new(TokenReviewer::new(client.clone())),
        Arc::new(PodStatusConditions::new(client.clone())),
        AuditSetup {
            store: store.clone(),
            events: Arc::new(KubeSessionEvents::new(client.clone(), identity.clone())),
            metrics: audit_metrics,
        },
        writer,
        settings,
        shutdown.clone(),
    );

    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(admin::mark_ready_when_synced(caches.clone(), ready.clone()));
    let admin_server = admin::serve(
        admin_listener,
        Arc::new(AdminState {
            registry,
            metrics: metrics.clone(),
            sessions: caches.sessions.clone(),
            ready,
        }),
        shutdown.clone(),
    );
    let controller =
        controller::run(
            Setup {
                client,
                config,
                caches,
                triggers: Triggers {
                    policies: feeds.policies,
                    grants: feeds.grants,
                    gateways: feeds.gateways,
                    sessions: feeds.sessions,
                },
                leadership,
                identity,
                metrics,
                default_update_policy: args.default_update_policy(),
                namespace,
                store: store.clone(),
                ca_bundle: tls.bundle.map(|bundle| Publish {
                    bundle,
                    operator_namespace: args.operator_namespace.clone(),
                }),
                egress_cert: args.egress_service.as_deref().zip(tls.ca.clone()).map(
                    |(service, ca)| crate::controller::egress_cert::EgressCert {
                        ca,
                        secret: format!("{service}-tls"),
                        namespace: args.operator_namespace.clone(),
                        names: crate::controller::egress_cert::service_names(
                            service,
                            &args.operator_namespace,
                        ),
                    },
                ),
                egress_account: args.egress_service.clone().map(|name| {
                    crate::controller::provider_keys::EgressAccount {
                        name,
                        namespace: args.operator_namespace.clone(),
                    }
                }),
            },
            shutdown.clone(),
        );
    let exporters = futures::future::join_all(exporters);
    let lease_released = async {
        if let Some(released) = lease_released {
            let _ = released.await;
        }
    };
    let everything = async {
        tokio::join!(
            admin_server,
            control_plane,
            peer_ingress,
            controller,
            exporters,
            lease_released
        )
    };
    let drain = Duration::from_secs(args.shutdown_drain_seconds);
    let _stop_retention = AbortOnDrop(retention);
    tokio::select! {
        (admin, control_plane, peer_ingress, (), _, ()) = everything => {
            tracing::info!("controller stopped");
            admin.map_err(RunError::Admin)?;
            peer_ingress.map_err(RunError::PeerIngress)?;
            Ok(control_plane?)
        }
        () = drained(shutdown, drain) => {
            tracing::warn!(drain = ?drain, "stopping with work left: the drain time is over");
            Ok(())
        }
    }
}

/// Every metric the operator serves on `/metrics`, registered in one
/// registry: what the chart's Grafana dashboard may name (tests/chart.rs).
pub struct OperatorMetrics {
    pub registry: Registry,
    pub controller: Metrics,
    pub audit: AuditMetrics,
    pub refusals: RefusalMetrics,
    pub export: ExportMetrics,
    pub push: PushMetrics,
    pub peers: PeerMetrics,
}

impl OperatorMetrics {
    pub fn new() -> OperatorMetrics {
        let mut registry = Registry::default();
        let controller = Metrics::new(&mut registry);
        let audit = AuditMetrics::default();
        audit.register(&mut registry);
        let refusals = RefusalMetrics::default();
        refusals.register(&mut registry);
        let export = ExportMetrics::default();
        export.register(&mut registry);
        let push = PushMetrics::default();
        push.register(&mut registry);
        let peers = PeerMetrics::default();
        peers.register(&mut registry);
        OperatorMetrics {
            registry,
            controller,
            audit,
            refusals,
            export,
            push,
            peers,
        }
    }
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        OperatorMetrics::new()
    }
}

/// The audit exporters the flags turn on, each running on the Lease holder
/// until shutdown (a batch in flight is finished first).
fn start_exporters(
    args: &ControllerArgs,
    store: &Store,
    metrics: &ExportMetrics,
    leadership: &Leadership,
    shutdown: &Shutdown,
) -> Result<Vec<tokio::task::JoinHandle<()>>, RunError> {
    let mut running = Vec::new();
    if let Some(endpoint) = &args.audit_export_otlp_endpoint {
        let exporter = Exporter {
            name: "otlp".to_owned(),
            sink: OtlpSink::new(endpoint, args.audit_export_otlp_ca.as_deref())?,
            store: store.clone(),
            metrics: metrics.clone(),
        };
        running.push(tokio::spawn(
            exporter.run(leadership.clone(), shutdown.clone()),
        ));
    }
    if let Some(target) = &args.audit_export_ocsf {
        let exporter = Exporter {
            name: "ocsf".to_owned(),
            sink: OcsfSink::open(target)?,
            store: store.clone(),
            metrics: metrics.clone(),
        };
        running.push(tokio::spawn(
            exporter.run(leadership.clone(), shutdown.clone()),
        ));
    }
    Ok(running)
}

/// Aborts a background task when the operator returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Completes `drain` after `shutdown`.
async fn drained(shutdown: Shutdown, drain: Duration) {
    shutdown.await;
    tokio::time::sleep(drain).await;
}

/// Where `listener` listens (the port the OS chose for port 0).
fn local_address(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|error| error.to_string(), |address| address.to_string())
}
