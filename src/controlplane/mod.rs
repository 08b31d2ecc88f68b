//! The control plane (served by every operator replica): a gRPC API that
//! streams each sidecar the effective policy of its session, takes its
//! reports on its sandbox, brokers messages between sessions, stores and
//! serves the audit trail, and records when Grants are used; and, on a
//! listener of its own, the peer ingress ([`peers`]).

pub mod audit;
mod audit_metrics;
pub mod auth;
pub mod broker;
pub mod denials;
pub mod discover;
pub mod exec;
pub mod grant_use;
pub mod index;
pub mod isolation;
pub mod peers;
pub mod policy_service;
pub mod refusals;
pub mod reviews;
pub mod writes;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use audit::{AuditService, AuditSetup};
use auth::Authenticator;
use broker::{BrokerService, Recording};
use denials::{DenialEvents, SessionEvents};
use discover::DiscoverPolicy;
use exec::Executor;
use grant_use::GrantUses;
use isolation::IsolationRecorder;
use peers::PeerAdminService;
use policy_service::PolicyService;
use refusals::{RefusalMetrics, Refusals};
use writes::ClusterWriter;

use crate::clock::Clock;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::v1alpha1::audit_server::AuditServer;
use crate::proto::v1alpha1::broker_server::BrokerServer;
use crate::proto::v1alpha1::peer_admin_server::PeerAdminServer;
use crate::proto::v1alpha1::policy_server::PolicyServer;
use crate::shutdown::Shutdown;
use crate::tls;
use crate::tls::server::Transport;

/// How the control plane serves, beyond what it serves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's own namespace: its chain is the trail of refusals of
    /// callers with no right in the namespace they named.
    pub operator_namespace: String,
    /// The most elevation requests a session may have open at once.
    pub max_open_elevations: u32,
    /// The most calls of one connection served at once (more wait).
    pub concurrency_per_connection: usize,
    /// How long a call may take until its answer starts: a unary call
    /// whole, a stream until its first response (streams then run on).
    pub timeout: Duration,
    /// Whether gRPC server reflection is served (it lists every method to
    /// anyone who connects).
    pub reflection: bool,
    /// Where refusals are counted.
    pub refusal_metrics: RefusalMetrics,
    /// What runs `exec_command` in session pods; none: the tool fails.
    pub exec: Option<Executor>,
    /// The namespaces' ingress keys, with which `PeerAdmin` signs invites
    /// for people; none: the peer ingress is off, and so is `PeerAdmin`.
    pub peer_keys: Option<PeerKeys>,
}

/// The namespaces' ingress keys ([`peers::IngressKeys`]), shared.
#[derive(Clone)]
pub struct PeerKeys(pub Arc<dyn peers::IngressKeys>);

impl std::fmt::Debug for PeerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKeys")
    }
}

/// The open elevation requests a session may have by default.
pub const DEFAULT_MAX_OPEN_ELEVATIONS: u32 = 3;
/// The calls one connection is served at once by default.
pub const DEFAULT_CONCURRENCY_PER_CONNECTION: usize = 32;
/// How long a call may take until its answer starts, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle connection is pinged, and how long a ping may wait
/// for its answer before the connection is closed: a peer that went away
/// without closing does not hold its streams open.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Settings {
    fn default() -> Self {
        Settings {
            operator_namespace: "wopr-system".into(),
            max_open_elevations: DEFAULT_MAX_OPEN_ELEVATIONS,
            concurrency_per_connection: DEFAULT_CONCURRENCY_PER_CONNECTION,
            timeout: DEFAULT_TIMEOUT,
            reflection: false,
            refusal_metrics: RefusalMetrics::default(),
            exec: None,
            peer_keys: None,
        }
    }
}

/// Serves the Policy, Broker and Audit services and gRPC health (and
/// server reflection when `settings` ask) on `listener`, over TLS unless
/// `transport` asks for plaintext by name (writing
/// ApprovalRequests, spawned Sessions and Grants' use with `writer`) until
/// `shutdown` completes; then ends every open policy stream (their
/// sidecars reconnect to another replica) and returns once the connections
/// have closed.
#[allow(clippy::too_many_arguments)]
pub async fn serve<D, A, R, E>(
    listener: TcpListener,
    transport: Transport,
    discover: Arc<D>,
    authenticator: Arc<A>,
    recorder: Arc<R>,
    audit: AuditSetup<E>,
    writer: Arc<dyn ClusterWriter>,
    settings: Settings,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error>
where
    D: DiscoverPolicy,
    A: Authenticator,
    R: IsolationRecorder,
    E: SessionEvents,
{
    let denials = DenialEvents::new(audit.events.clone());
    let uses = Arc::new(GrantUses::new(
        discover.clone(),
        writer.clone(),
        Clock::System,
    ));
    let refusals = Arc::new(Refusals::new(
        audit.store.clone(),
        settings.operator_namespace.clone(),
        settings.refusal_metrics.clone(),
    ));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PolicyServer<PolicyService<D, A, R>>>()
        .await;
    let reflection = settings.reflection.then(|| {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the embedded descriptor sets are valid")
    });
    let router = tonic::transport::Server::builder()
        // Per connection: a caller cannot have more calls worked on at
        // once, nor more streams open than a few times that.
        .concurrency_limit_per_connection(settings.concurrency_per_connection)
        .max_concurrent_streams(u32::try_from(4 * settings.concurrency_per_connection).ok())
        // Until the answer starts: Watch and Inbox streams run on after.
        .timeout(settings.timeout)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health)
        .add_optional_service(reflection)
        .add_service(PolicyServer::new(PolicyService::new(
            discover.clone(),
            authenticator.clone(),
            recorder,
            refusals.clone(),
            shutdown.clone(),
        )))
        .add_service(BrokerServer::new(
            BrokerService::new(
                discover.clone(),
                authenticator.clone(),
                Recording {
                    store: audit.store.clone(),
                    metrics: audit.metrics.clone(),
                    denials: denials.clone(),
                    uses: uses.clone(),
                    refusals: refusals.clone(),
                },
                writer,
                settings.max_open_elevations,
                shutdown.clone(),
            )
            .running_commands_with(settings.exec),
        ))
        .add_optional_service(settings.peer_keys.map(|PeerKeys(keys)| {
            PeerAdminServer::new(PeerAdminService::new(
                authenticator.clone(),
                keys,
                audit.store.clone(),
                Clock::System,
            ))
        }))
        .add_service(AuditServer::new(AuditService::new(
            audit.store,
            discover,
            audit.metrics,
            denials,
            uses,
            authenticator,
            refusals,
        )));
    match transport {
        Transport::Tls(cert) => {
            router
                .serve_with_incoming_shutdown(tls::server::incoming(listener, cert), shutdown)
                .await
        }
        Transport::InsecurePlaintext => {
            tracing::warn!(
                "the control plane serves plaintext (--insecure-plaintext): credentials cross the network readable"
            );
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
        }
    }
}
