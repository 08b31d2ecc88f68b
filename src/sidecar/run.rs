//! Starting the sidecar: watch the policy, serve the tools over gRPC on a
//! unix socket and MCP on loopback, the model proxy on loopback, and gRPC
//! health on a TCP port for the kubelet's native gRPC probes.

use axum::serve::ListenerExt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args};
use futures::FutureExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use super::broker::BrokerLink;
use super::client::{WatchTarget, report_isolation, watch_forever};
use super::denials::DENIAL_WINDOW;
use super::engine::{ELEVATION_REQUESTS_PER_MINUTE, Limits, ToolEngine};
use super::grpc::{InboxService, ToolsService};
use super::inbox::{self, Inbox};
use super::isolation::network::{EgressAllow, ListError, ProbeTarget};
use super::isolation::pids::CgroupFiles;
use super::isolation::{IsolationConfig, verify_forever};
use super::mcp;
use super::models::{self, Egress, ModelsOptions};
use super::policy_state::PolicyState;
use super::shipper::ship_forever;
use super::spool::{Spool, SpooledSink};
use super::workspace::Workspace;
use k8s_openapi::jiff::Timestamp;

use crate::api::{NetworkMode, RateLimit};
use crate::audit::QueuedLineSink;
use crate::contract::{self, env};
use crate::policy::ToolId;
use crate::proto::v1alpha1::inbox_server::InboxServer;
use crate::proto::v1alpha1::tools_server::ToolsServer;
use crate::tls::client::{Bundle, ClientTls};

/// Flags of `wopr-operator sidecar`.
#[derive(Args, Debug, Clone)]
pub struct SidecarArgs {
    /// The Session this sidecar serves.
    #[arg(long, env = "WOPR_SESSION")]
    pub session: String,
    /// The Session's namespace.
    #[arg(long, env = env::NAMESPACE)]
    pub namespace: String,
    /// The control plane (`https://host:port` or `host:port`;
    /// `http://host:port` only with `--insecure-plaintext`).
    #[arg(long, env = env::CONTROL_PLANE_ADDRESS)]
    pub control_plane_address: String,
    /// The CA bundle the control plane's certificate is verified against
    /// (read again at every connect).
    #[arg(long, env = env::CONTROL_PLANE_CA, default_value = contract::CA_PATH)]
    pub control_plane_ca: PathBuf,
    /// The name the control plane's certificate must carry, when not the
    /// host of `--control-plane-address`.
    #[arg(long, env = "WOPR_CONTROL_PLANE_SERVER_NAME")]
    pub control_plane_server_name: Option<String>,
    /// Reach the control plane in plaintext h2c: for development only.
    #[arg(long, env = env::INSECURE_PLAINTEXT, default_value_t = false, action = ArgAction::Set)]
    pub insecure_plaintext: bool,
    /// The projected service-account token.
    #[arg(
        long,
        env = env::TOKEN_PATH,
        default_value = contract::TOKEN_PATH
    )]
    pub token_path: PathBuf,
    /// The unix socket of the gRPC Tools service.
    #[arg(long, env = env::SOCKET_PATH, default_value = contract::SOCKET_PATH)]
    pub socket_path: PathBuf,
    /// The MCP endpoint's address (keep it on loopback).
    #[arg(long, env = env::MCP_ADDRESS, default_value = contract::MCP_ADDRESS)]
    pub mcp_address: SocketAddr,
    /// The model proxy's address (OpenAI- and Anthropic-compatible HTTP):
    /// loopback only, the agent's SDKs are pointed at it.
    #[arg(long, env = env::MODELS_ADDRESS, default_value = contract::MODELS_ADDRESS)]
    pub models_address: SocketAddr,
    /// The egress service the model proxy relays to (`https://host:port`
    /// or `host:port`; `http://` only with `--insecure-plaintext`),
    /// verified with the control plane's CA bundle and called with the
    /// same token. Without it every model call is refused.
    #[arg(long, env = env::EGRESS_ADDRESS)]
    pub egress_address: Option<String>,
    /// Largest model request body, in bytes (refused before it is buffered whole).
    #[arg(long, env = "WOPR_MAX_MODEL_REQUEST_BYTES", default_value_t = models::MAX_BODY_BYTES)]
    pub max_model_request_bytes: usize,
    /// The gRPC health endpoint for the kubelet's probes.
    #[arg(long, env = env::HEALTH_ADDRESS, default_value = contract::HEALTH_ADDRESS)]
    pub health_address: SocketAddr,
    /// The audit spool: events wait here until the control plane has them.
    #[arg(long, env = env::SPOOL_DIR, default_value = contract::SPOOL_DIR)]
    pub spool_dir: PathBuf,
    /// The session's workspace (memory tools stay inside it).
    #[arg(long, env = env::WORKSPACE, default_value = contract::WORKSPACE_DIR)]
    pub workspace: PathBuf,
    /// The system prompt the agent is given (the pod gives both containers
    /// the same), which `security_whoami` answers.
    #[arg(long, env = env::PROMPT)]
    pub prompt: Option<String>,
    /// Seconds a policy stays in force after the control plane becomes unreachable.
    #[arg(long, env = "WOPR_MAX_POLICY_AGE_SECONDS", default_value_t = 30)]
    pub max_policy_age_seconds: u64,
    /// Largest request body (MCP) or message (gRPC), in bytes.
    #[arg(long, env = "WOPR_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Tool calls per minute for the whole session.
    #[arg(long, env = "WOPR_SESSION_CALLS_PER_MINUTE", default_value_t = 600)]
    pub session_calls_per_minute: u32,
    /// Calls per minute of each tool.
    #[arg(long, env = "WOPR_TOOL_CALLS_PER_MINUTE", default_value_t = 300)]
    pub tool_calls_per_minute: u32,
    /// Elevation requests (`security_request`) per minute, whatever the
    /// per-tool limit: each one asks a person.
    #[arg(long, env = "WOPR_ELEVATION_REQUESTS_PER_MINUTE", default_value_t = ELEVATION_REQUESTS_PER_MINUTE)]
    pub elevation_requests_per_minute: u32,
    /// The sandbox's network mode (none, restricted, full), to verify from
    /// inside the pod.
    #[arg(long, env = env::NETWORK_MODE)]
    pub network_mode: Option<NetworkMode>,
    /// What the sandbox's egress allow-list admits: `cidr` or `cidr#port`
    /// entries, comma-separated (TCP).
    #[arg(long, env = env::EGRESS_ALLOWED, default_value = "")]
    pub egress_allowed: String,
    /// Addresses the sandbox must not reach, probed to verify its network
    /// isolation: `name=ip:port` entries, comma-separated.
    #[arg(long, env = env::ISOLATION_PROBES, default_value = "")]
    pub isolation_probes: String,
    /// The node's IP: its kubelet is probed too.
    #[arg(long, env = env::NODE_IP)]
    pub node_ip: Option<IpAddr>,
    /// The kubelet's port on the node.
    #[arg(long, env = "WOPR_KUBELET_PORT", default_value_t = contract::KUBELET_PORT)]
    pub kubelet_port: u16,
    /// Milliseconds a probe waits for an answer.
    #[arg(
        long,
        env = "WOPR_ISOLATION_PROBE_TIMEOUT_MILLIS",
        default_value_t = 1000
    )]
    pub isolation_probe_timeout_millis: u64,
    /// Keep the agent from starting (overall gRPC health NOT_SERVING) until
    /// the isolation checks hold and the control plane has their report.
    #[arg(long, env = env::REQUIRE_VERIFIED_ISOLATION, default_value_t = false, action = ArgAction::Set)]
    pub require_verified_isolation: bool,
    /// The cgroup filesystem whose pids limits are checked.
    #[arg(long, env = "WOPR_CGROUP_MOUNT", default_value = "/sys/fs/cgroup")]
    pub cgroup_mount: PathBuf,
    /// This process's cgroup membership.
    #[arg(
        long,
        env = "WOPR_CGROUP_MEMBERSHIP",
        default_value = "/proc/self/cgroup"
    )]
    pub cgroup_membership: PathBuf,
}

impl SidecarArgs {
    /// The isolation checks these flags ask for.
    pub fn isolation(&self) -> Result<IsolationConfig, SidecarError> {
        Ok(IsolationConfig {
            network: self.network_mode,
            egress_allowed: EgressAllow::parse_list(&self.egress_allowed)
                .map_err(|error| SidecarError::Flag("--egress-allowed", error))?,
            probes: ProbeTarget::parse_list(&self.isolation_probes)
                .map_err(|error| SidecarError::Flag("--isolation-probes", error))?
                .into_iter()
                .chain(self.node_ip.map(|ip| ProbeTarget {
                    name: "kubelet".to_owned(),
                    address: SocketAddr::new(ip, self.kubelet_port),
                }))
                .collect(),
            probe_timeout: Duration::from_millis(self.isolation_probe_timeout_millis),
            cgroup: CgroupFiles {
                proc_self_cgroup: self.cgroup_membership.clone(),
                mount: self.cgroup_mount.clone(),
            },
            required: self.require_verified_isolation,
        })
    }

    /// Where this sidecar reaches the control plane, as whom.
    fn watch_target(&self) -> WatchTarget {
        WatchTarget {
            address: self.control_plane_address.clone(),
            tls: self.tls(self.control_plane_server_name.clone()),
            namespace: self.namespace.clone(),
            session: self.session.clone(),
            token_path: self.token_path.clone(),
        }
    }

    /// How the model proxy reaches the egress service: as the control
    /// plane, with the same CA bundle and token (its certificate names
    /// the host dialled).
    pub fn models(&self) -> ModelsOptions {
        ModelsOptions {
            egress: self.egress_address.as_ref().map(|address| WatchTarget {
                address: address.clone(),
                tls: self.tls(None),
                namespace: self.namespace.clone(),
                session: self.session.clone(),
                token_path: self.token_path.clone(),
            }),
            max_body_bytes: self.max_model_request_bytes,
        }
    }

    /// TLS verified against the control plane's CA bundle, the server
    /// named `server_name` or the host dialled (or the plaintext flag).
    fn tls(&self, server_name: Option<String>) -> ClientTls {
        if self.insecure_plaintext {
            ClientTls::Plaintext
        } else {
            ClientTls::Verify {
                bundle: Bundle::File(self.control_plane_ca.clone()),
                server_name,
            }
        }
    }
}

/// The sidecar's runtime: one thread. Its CPU limit is a tenth of a core,
/// and on one thread a request never waits for a wake-up across CPUs.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// How long the sidecar keeps shipping its spool after the drain.
const SHIPPING_DRAIN: Duration = Duration::from_secs(5);

/// Why the sidecar stopped.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// A flag has a bad value.
    #[error("{0}: {1}")]
    Flag(&'static str, ListError),
    /// A listener could not be opened.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// Which endpoint.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The MCP server failed.
    #[error("MCP server: {0}")]
    Mcp(#[source] std::io::Error),
    /// The model proxy failed.
    #[error("model proxy: {0}")]
    Models(#[source] std::io::Error),
    /// An endpoint that must stay inside the pod asked for another address.
    #[error(
        "{flag} must be a loopback address (the agent's SDKs reach it inside the pod), not {address}"
    )]
    NotLoopback {
        /// The flag.
        flag: &'static str,
        /// What it said.
        address: SocketAddr,
    },
    /// The audit spool cannot be written.
    #[error(
        "cannot open the audit spool {dir}: {source} (it needs a writable directory: the pod mounts an emptyDir there)"
    )]
    Spool {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
}

fn listen_error(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> SidecarError {
    move |source| SidecarError::Listen {
        what: what.to_string(),
        source,
    }
}

/// Runs the sidecar until `shutdown` completes.
pub async fn run(
    args: SidecarArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SidecarError> {
    let isolation = args.isolation()?;
    if !args.models_address.ip().is_loopback() {
        return Err(SidecarError::NotLoopback {
            flag: "--models-address",
            address: args.models_address,
        });
    }
    let spool = Arc::new(
        Spool::open(&args.spool_dir).map_err(|source| SidecarError::Spool {
            dir: args.spool_dir.display().to_string(),
            source,
        })?,
    );
    let audit = Arc::new(SpooledSink::new(spool.clone(), QueuedLineSink::stdout()));
    let state = Arc::new(PolicyState::new(Duration::from_secs(
        args.max_policy_age_seconds,
    )));
    let inbox = Arc::new(Inbox::default());
    let engine = ToolEngine::new(
        &args.namespace,
        &args.session,
        state.clone(),
        audit.clone(),
        Workspace::new(&args.workspace),
        Limits::new(
            RateLimit {
                per_minute: args.session_calls_per_minute,
            },
            RateLimit {
                per_minute: args.tool_calls_per_minute,
            },
        )
        .with_tool_limit(
            ToolId::SecurityRequest,
            RateLimit {
                per_minute: args.elevation_requests_per_minute,
            },
        ),
        Timestamp::now,
    )
    .with_prompt(args.prompt.clone())
    .with_broker(
        Arc::new(BrokerLink::new(args.watch_target())),
        inbox.clone(),
    );
    // http_fetch reaches the egress service as the model proxy does.
    let engine = match args.models().egress {
        Some(target) => engine.with_egress(Arc::new(Egress::new(target))),
        None => engine,
    };
    let engine = Arc::new(engine);
    let _ = std::fs::remove_file(&args.socket_path);
    let socket =
        UnixListener::bind(&args.socket_path).map_err(listen_error(args.socket_path.display()))?;
    let mcp_listener = TcpListener::bind(args.mcp_address)
        .await
        .map_err(listen_error(args.mcp_address))?;
    let health_listener = TcpListener::bind(args.health_address)
        .await
        .map_err(listen_error(args.health_address))?;
    let models_listener = TcpListener::bind(args.models_address)
        .await
        .map_err(listen_error(args.models_address))?;
    let bound = |listener: &TcpListener| {
        listener
            .local_addr()
            .map_or_else(|error| error.to_string(), |address| address.to_string())
    };
    tracing::info!(
        session = %args.session,
        socket = %args.socket_path.display(),
        mcp = %bound(&mcp_listener),
        models = %bound(&models_listener),
        egress = args.egress_address.as_deref().unwrap_or("none: model calls are refused"),
        health = %bound(&health_listener),
        "sidecar serving"
    );

    let target = args.watch_target();
    let health = HealthReporter::new();
    if isolation.required {
        // Before anything serves health: the agent waits for the checks.
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
    let report_target = target.clone();
    let verifier = tokio::spawn(verify_forever(isolation, health.clone(), move |checks| {
        let target = report_target.clone();
        async move { report_isolation(&target, checks).await }
    }));
    let watcher = tokio::spawn(watch_forever(target.clone(), state));
    let inbox_follower = tokio::spawn(inbox::follow_forever(target.clone(), inbox));
    let (stop_shipping, shipping_stopped) = tokio::sync::oneshot::channel::<()>();
    let shipper = tokio::spawn(ship_forever(
        spool,
        target,
        async move {
            let _ = shipping_stopped.await;
        },
        SHIPPING_DRAIN,
    ));
    let served = serve(
        engine,
        Listeners {
            socket,
            mcp: mcp_listener,
            health: health_listener,
            models: models_listener,
        },
        ServeOptions {
            max_request_bytes: args.max_request_bytes,
            health,
            models: args.models(),
        },
        shutdown,
    )
    .await;
    watcher.abort();
    inbox_follower.abort();
    verifier.abort();
    // The last events, answered before the drain, go to the control plane
    // before the pod (and its spool) does.
    let _ = stop_shipping.send(());
    let _ = shipper.await;
    let _ = std::fs::remove_file(&args.socket_path);
    if !audit.flush(Duration::from_secs(2)) {
        tracing::warn!("audit events still queued at exit could not be written");
    }
    served
}

/// Records the held repeats of denials as their windows end, also when
/// the agent has gone quiet.
async fn record_denials_forever(engine: Arc<ToolEngine>) {
    let mut ticks = tokio::time::interval(DENIAL_WINDOW);
    loop {
        ticks.tick().await;
        engine.record_due_denials();
    }
}

/// Where the sidecar serves.
pub struct Listeners {
    /// The unix socket of the gRPC Tools service (and health).
    pub socket: UnixListener,
    /// The MCP endpoint.
    pub mcp: TcpListener,
    /// gRPC health for the kubelet's probes.
    pub health: TcpListener,
    /// The model proxy (on loopback).
    pub models: TcpListener,
}

/// How the sidecar serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest MCP request body or gRPC message, in bytes.
    pub max_request_bytes: usize,
    /// The gRPC health statuses: the Tools service's (liveness) and the
    /// overall one, SERVING once the agent may start (`sidecar-ready`).
    pub health: HealthReporter,
    /// The model proxy's egress service and body limit.
    pub models: ModelsOptions,
}

/// Serves `engine` on `listeners` until `shutdown` completes.
pub async fn serve(
    engine: Arc<ToolEngine>,
    listeners: Listeners,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SidecarError> {
    let ServeOptions {
        max_request_bytes,
        health: health_reporter,
        models: models_options,
    } = options;
    let shutdown = shutdown.shared();
    health_reporter
        .set_serving::<ToolsServer<ToolsService>>()
        .await;
    let health = HealthServer::new(HealthService::from_health_reporter(health_reporter));
    let tools = ToolsServer::new(ToolsService::new(engine.clone()))
        .max_decoding_message_size(max_request_bytes);
    // Ended at shutdown, so the servers' graceful shutdowns do not wait on
    // the open MCP and inbox streams and model calls.
    let streams_end = CancellationToken::new();
    let inbox = InboxServer::new(InboxService::new(engine.clone(), streams_end.clone()))
        .max_decoding_message_size(max_request_bytes);
    let grpc = tonic::transport::Server::builder()
        .add_service(health.clone())
        .add_service(tools)
        .add_service(inbox)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listeners.socket), shutdown.clone());
    let health_server = tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.health), shutdown.clone());
    let (tool_list, listed) = watch::channel(engine.list());
    let follower = tokio::spawn(mcp::follow_tool_list(engine.clone(), tool_list));
    let held_denials = tokio::spawn(record_denials_forever(engine.clone()));
    let mcp_router = mcp::router(
        engine.clone(),
        listed,
        max_request_bytes,
        streams_end.clone(),
    );
    let models_router = models::router(engine.clone(), models_options, streams_end.clone());
    let models_end = streams_end.clone();
    let models_shutdown = shutdown.clone();
    let models_server = axum::serve(listeners.models.tap_io(no_delay), models_router)
        .with_graceful_shutdown(async move {
            models_shutdown.await;
            models_end.cancel();
        });
    let mcp_server = axum::serve(listeners.mcp.tap_io(no_delay), mcp_router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            streams_end.cancel();
        });
    let (grpc, health, mcp, models) = tokio::join!(grpc, health_server, mcp_server, models_server);
    follower.abort();
    held_denials.abort();
    // Every call is answered: the repeats still held go to the audit now.
    engine.record_held_denials();
    grpc?;
    health?;
    models.map_err(SidecarError::Models)?;
    mcp.map_err(SidecarError::Mcp)
}

/// No Nagle on the loopback HTTP servers: a streamed reply is written as a
/// head and then chunks, and an agent delaying its ACK would hold each
/// small write back by 40 ms.
fn no_delay(connection: &mut tokio::net::TcpStream) {
    if let Err(error) = connection.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SidecarArgs,
    }

    fn args(extra: &[&str]) -> SidecarArgs {
        let base = [
            "sidecar",
            "--session=s",
            "--namespace=ns",
            "--control-plane-address=cp.wopr-system.svc:9443",
            "--control-plane-ca=/ca/ca.crt",
            "--token-path=/token/token",
        ];
        Cli::parse_from(base.iter().chain(extra)).args
    }

    /// The model proxy reaches the egress service as the sidecar reaches
    /// the control plane: the same CA bundle and token, its own name.
    #[test]
    fn the_egress_service_is_called_with_the_control_planes_bundle_and_token() {
        let models = args(&[
            "--egress-address=wopr-egress.wopr-system.svc:9444",
            "--control-plane-server-name=cp.example",
        ])
        .models();
        let egress = models.egress.expect("an egress service");
        assert_eq!(egress.address, "wopr-egress.wopr-system.svc:9444");
        assert_eq!(
            egress.tls,
            ClientTls::Verify {
                bundle: Bundle::File("/ca/ca.crt".into()),
                server_name: None,
            }
        );
        assert_eq!(egress.token_path, PathBuf::from("/token/token"));
        assert_eq!(
            (egress.namespace.as_str(), egress.session.as_str()),
            ("ns", "s")
        );
        assert_eq!(models.max_body_bytes, models::MAX_BODY_BYTES);
        let plaintext = args(&["--egress-address=http://e:1", "--insecure-plaintext=true"]);
        assert_eq!(plaintext.models().egress.unwrap().tls, ClientTls::Plaintext);
        assert!(
            args(&[]).models().egress.is_none(),
            "no egress service unless named"
        );
        assert_eq!(
            args(&[]).models_address.to_string(),
            contract::MODELS_ADDRESS
        );
    }

    #[tokio::test]
    async fn a_model_proxy_off_loopback_is_refused_at_startup() {
        let refused = run(args(&["--models-address=0.0.0.0:7782"]), async {}).await;
        assert!(
            matches!(
                refused,
                Err(SidecarError::NotLoopback {
                    flag: "--models-address",
                    ..
                })
            ),
            "{refused:?}"
        );
    }
}
