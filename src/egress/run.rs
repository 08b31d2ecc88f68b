//! `wopr-operator egress`: its flags, and the process that serves the
//! Models service (TLS with a certificate from files, followed for
//! rotation), its admin server, and stdout audit lines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use ipnet::IpNet;

use super::credentials::KubeSecrets;
use super::fetch::client::ClientError as FetchClientError;
use super::fetch::resolver::SystemResolver;
use super::fetch::service::FetchService;
use super::fetch::{Fetcher, MAX_RESPONSE_BYTES, MAX_RESPONSE_LIMIT, Settings as FetchSettings};
use super::metrics::ModelMetrics;
use super::service::{MAX_BODY, ModelsService, Settings};
use super::sessions::{ControlPlane, SessionSettings};
use super::upstream::{ClientError, Timeouts, Upstream, system_roots};
use crate::audit::QueuedLineSink;
use crate::clock::Clock;
use crate::contract::env;
use crate::shutdown;
use crate::tls::TlsError;
use crate::tls::client::{Bundle, ClientTls};
use crate::tls::server::{ServerCert, Transport};
use crate::tls::source::{CertFiles, FILE_POLL, follow_files};

/// The flags of `wopr-operator egress`.
#[derive(Args, Debug, Clone)]
pub struct EgressArgs {
    /// Where the Models gRPC service listens.
    #[arg(long, env = "WOPR_EGRESS_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "WOPR_ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub admin_address: SocketAddr,
    /// The control plane, whose Policy watch each caller's token opens
    /// (`https://host:port` or `host:port`; `http://host:port` only with
    /// `--insecure-plaintext`).
    #[arg(long, env = env::CONTROL_PLANE_ADDRESS)]
    pub control_plane_address: String,
    /// The CA bundle the control plane's certificate is verified against
    /// (read again at every connect).
    #[arg(long, env = env::CONTROL_PLANE_CA, default_value = crate::contract::CA_PATH)]
    pub control_plane_ca: PathBuf,
    /// The name the control plane's certificate must carry, when not the
    /// host of `--control-plane-address`.
    #[arg(long, env = "WOPR_CONTROL_PLANE_SERVER_NAME")]
    pub control_plane_server_name: Option<String>,
    /// The egress service's certificate chain (PEM), e.g. cert-manager's
    /// `tls.crt`; read again every 10 s.
    #[arg(
        long,
        env = "WOPR_TLS_CERT_FILE",
        required_unless_present = "insecure_plaintext",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "WOPR_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Serve in plaintext h2c and reach the control plane so: for
    /// development and tests only (tokens cross the network readable).
    #[arg(long, env = env::INSECURE_PLAINTEXT, default_value_t = false, action = ArgAction::Set)]
    pub insecure_plaintext: bool,
    /// Seconds to wait for a provider's connection.
    #[arg(
        long,
        env = "WOPR_UPSTREAM_CONNECT_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub upstream_connect_timeout_seconds: u64,
    /// Seconds to wait for a provider's answer to start.
    #[arg(
        long,
        env = "WOPR_UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    pub upstream_first_byte_timeout_seconds: u64,
    /// Seconds a provider may fall silent between two chunks.
    #[arg(long, env = "WOPR_UPSTREAM_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub upstream_idle_timeout_seconds: u64,
    /// The largest request body taken, in bytes.
    #[arg(long, env = "WOPR_MAX_REQUEST_BYTES", default_value_t = MAX_BODY)]
    pub max_request_bytes: usize,
    /// A network `http_fetch` never reaches (the cluster's pod and service
    /// CIDRs), refused like private addresses unless an `allowHosts` entry
    /// names the address; repeatable, or comma-separated in the variable.
    #[arg(
        long = "fetch-deny-cidr",
        env = "WOPR_FETCH_DENY_CIDRS",
        value_delimiter = ','
    )]
    pub fetch_deny_cidrs: Vec<IpNet>,
    /// The largest `http_fetch` answer body, in bytes (at most 16 MiB): a
    /// larger one is cut with an error.
    #[arg(long, env = "WOPR_FETCH_MAX_RESPONSE_BYTES", default_value_t = MAX_RESPONSE_BYTES,
        value_parser = response_limit)]
    pub fetch_max_response_bytes: usize,
    /// Seconds a whole `http_fetch` may take, redirects included.
    #[arg(long, env = "WOPR_FETCH_TIMEOUT_SECONDS", default_value_t = 30)]
    pub fetch_timeout_seconds: u64,
    /// Seconds to drain after SIGTERM before the process exits anyway.
    #[arg(long, env = "WOPR_SHUTDOWN_DRAIN_SECONDS", default_value_t = 5)]
    pub shutdown_drain_seconds: u64,
}

/// A response limit from 1 byte to [`MAX_RESPONSE_LIMIT`].
fn response_limit(value: &str) -> Result<usize, String> {
    let bytes: usize = value.parse().map_err(|error| format!("{error}"))?;
    if (1..=MAX_RESPONSE_LIMIT).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!("from 1 to {MAX_RESPONSE_LIMIT} bytes"))
    }
}

impl EgressArgs {
    /// How `http_fetch` is limited.
    pub fn fetch(&self) -> FetchSettings {
        FetchSettings {
            max_response_bytes: self.fetch_max_response_bytes,
            timeout: Duration::from_secs(self.fetch_timeout_seconds),
            deny_cidrs: self.fetch_deny_cidrs.clone(),
        }
    }

    /// How the control plane is reached.
    pub fn control_plane(&self) -> ControlPlane {
        ControlPlane {
            address: self.control_plane_address.clone(),
            tls: if self.insecure_plaintext {
                ClientTls::Plaintext
            } else {
                ClientTls::Verify {
                    bundle: Bundle::File(self.control_plane_ca.clone()),
                    server_name: self.control_plane_server_name.clone(),
                }
            },
        }
    }

    /// The upstream timeouts.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(self.upstream_connect_timeout_seconds),
            first_byte: Duration::from_secs(self.upstream_first_byte_timeout_seconds),
            idle: Duration::from_secs(self.upstream_idle_timeout_seconds),
        }
    }
}

/// Why the egress service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A port could not be opened.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The admin server failed.
    #[error("admin server: {0}")]
    Admin(#[source] std::io::Error),
    /// The certificate could not be served.
    #[error("egress TLS: {0} (check --tls-cert-file and --tls-key-file)")]
    Tls(#[from] TlsError),
    /// TLS without a certificate.
    #[error(
        "no certificate: set --tls-cert-file and --tls-key-file (--insecure-plaintext for development only)"
    )]
    NoCertificate,
    /// The gRPC server failed.
    #[error("Models API: {0}")]
    Server(#[from] tonic::transport::Error),
    /// No Kubernetes client (to read providers' Secrets).
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// No HTTP client.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No http_fetch client.
    #[error(transparent)]
    FetchClient(#[from] FetchClientError),
}

/// Runs the egress service until `shutdown` completes.
pub async fn run(
    args: EgressArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let transport = transport(&args).await?;
    let client = kube::Client::try_default().await?;
    let listen = |address| async move {
        TcpListener::bind(address)
            .await
            .map_err(|source| RunError::Listen { address, source })
    };
    let listener = listen(args.listen).await?;
    let admin_listener = listen(args.admin_address).await?;
    let metrics = ModelMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let audit = Arc::new(QueuedLineSink::stdout());
    let service = ModelsService::new(
        Arc::new(args.control_plane()),
        KubeSecrets::new(client),
        Upstream::new(args.timeouts())?,
        audit.clone(),
        metrics,
        Settings {
            max_body: args.max_request_bytes,
            sessions: SessionSettings::default(),
            clock: Clock::System,
        },
    );
    let fetch = FetchService::new(
        service.sessions(),
        Fetcher::new(args.fetch(), Arc::new(SystemResolver), system_roots())?,
        audit.clone(),
        Clock::System,
    );
    tracing::info!(listen = %args.listen, admin = %args.admin_address, control_plane = %args.control_plane_address, "egress service starting");
    let shutdown = shutdown::on(shutdown);
    let served = super::serve(
        listener,
        transport,
        service,
        fetch,
        args.max_request_bytes,
        shutdown.clone(),
    );
    let admin = super::admin::serve(admin_listener, Arc::new(registry), shutdown.clone());
    let drain = Duration::from_secs(args.shutdown_drain_seconds);
    let drained = async {
        shutdown.clone().await;
        tokio::time::sleep(drain).await;
    };
    let result = tokio::select! {
        (served, admin) = async { tokio::join!(served, admin) } => {
            admin.map_err(RunError::Admin)?;
            served.map_err(RunError::from)
        }
        () = drained => {
            tracing::warn!(?drain, "stopping with calls in flight: the drain time is over");
            Ok(())
        }
    };
    audit.flush(Duration::from_secs(1));
    result
}

/// The transport as the flags say: the certificate files, followed for
/// changes; plaintext only when asked for by name.
async fn transport(args: &EgressArgs) -> Result<Transport, RunError> {
    if args.insecure_plaintext {
        return Ok(Transport::InsecurePlaintext);
    }
    let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) else {
        return Err(RunError::NoCertificate);
    };
    // The egress service publishes no CA bundle (sessions trust the
    // control plane's, which must have issued this certificate too): the
    // chain itself stands in for the bundle the follower tracks.
    let files = CertFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: cert.clone(),
    };
    let loaded = files.load().await?;
    let served = Arc::new(ServerCert::new(
        &loaded.served.cert_pem,
        &loaded.served.key_pem,
    )?);
    let (bundle, _) = tokio::sync::watch::channel(loaded.bundle.clone());
    tokio::spawn(follow_files(
        files,
        loaded,
        served.clone(),
        bundle,
        FILE_POLL,
    ));
    Ok(Transport::Tls(served))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        egress: EgressArgs,
    }

    fn parse(flags: &[&str]) -> Result<EgressArgs, clap::Error> {
        Flags::try_parse_from(["egress"].iter().chain(flags)).map(|flags| flags.egress)
    }

    #[test]
    fn tls_is_required_unless_plaintext_is_asked_for() {
        let refused = parse(&["--control-plane-address=cp:9443"]).err().unwrap();
        assert!(refused.to_string().contains("--tls-cert-file"), "{refused}");
        let args = parse(&[
            "--control-plane-address=cp:9443",
            "--tls-cert-file=/tls/tls.crt",
            "--tls-key-file=/tls/tls.key",
        ])
        .unwrap();
        assert_eq!(args.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(args.max_request_bytes, 4 * 1024 * 1024);
        assert_eq!(args.timeouts(), Timeouts::default());
        let fetch = args.fetch();
        assert_eq!(fetch.max_response_bytes, 1024 * 1024);
        assert_eq!(fetch.timeout, Duration::from_secs(30));
        assert!(fetch.deny_cidrs.is_empty());
        assert!(matches!(args.control_plane().tls, ClientTls::Verify { .. }));
        let plaintext = parse(&[
            "--control-plane-address=http://cp:9443",
            "--insecure-plaintext=true",
        ])
        .unwrap();
        assert_eq!(plaintext.control_plane().tls, ClientTls::Plaintext);
    }

    #[test]
    fn fetch_limits_and_cluster_networks_are_flags() {
        let args = parse(&[
            "--control-plane-address=http://cp:9443",
            "--insecure-plaintext=true",
            "--fetch-deny-cidr=10.244.0.0/16",
            "--fetch-deny-cidr=10.96.0.0/12,fd00:10::/48",
            "--fetch-max-response-bytes=4096",
            "--fetch-timeout-seconds=5",
        ])
        .unwrap();
        let fetch = args.fetch();
        let cidrs: Vec<String> = fetch.deny_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["10.244.0.0/16", "10.96.0.0/12", "fd00:10::/48"]);
        assert_eq!(fetch.max_response_bytes, 4096);
        assert_eq!(fetch.timeout, Duration::from_secs(5));
        for bad in [
            "--fetch-deny-cidr=10.0.0.300/8",
            "--fetch-max-response-bytes=0",
        ] {
            let refused = parse(&[
                "--control-plane-address=cp:1",
                "--insecure-plaintext=true",
                bad,
            ]);
            assert!(refused.is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn no_certificate_without_the_plaintext_flag_is_an_error() {
        let args = parse(&[
            "--control-plane-address=cp:9443",
            "--insecure-plaintext=false",
        ])
        .unwrap();
        assert!(matches!(
            transport(&args).await,
            Err(RunError::NoCertificate)
        ));
    }
}
