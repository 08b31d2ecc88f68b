//! The flags of `wopr-operator controller` (each also an environment
//! variable), and the controller's settings made from them: the addresses
//! parsed and resolved here, once, at start-up.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{ArgAction, Args};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::{UpdatePolicy, UpdateType};
use crate::controller::session::config::{SandboxConfig, ServiceAddress};

/// The image the controller runs from, and the default sidecar image.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/wopr-network/wopr-operator:",
    env!("CARGO_PKG_VERSION")
);

/// Flags of `wopr-operator controller`.
#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Image of the `a2a` sidecar container in every session pod.
    #[arg(long, env = "WOPR_SIDECAR_IMAGE", default_value = DEFAULT_IMAGE)]
    pub sidecar_image: String,
    /// Agent image for Sessions that set no `sandbox.image`: by default
    /// this operator's image, which runs the demo agent.
    #[arg(long, env = "WOPR_AGENT_IMAGE", default_value = DEFAULT_IMAGE)]
    pub default_agent_image: String,
    /// Arguments of the default agent image's entrypoint, for Sessions that
    /// set no `sandbox.image`, `command` or `args` (comma-separated).
    #[arg(
        long,
        env = "WOPR_AGENT_ARGS",
        value_delimiter = ',',
        default_value = "demo-agent"
    )]
    pub default_agent_args: Vec<String>,
    /// Address sidecars dial to reach the control plane (`host:port`, an
    /// optional `https://` scheme; `http://` only with
    /// `--insecure-plaintext`). An IP address also works for a controller
    /// running outside the cluster. Its host is one of the names of the
    /// certificate the operator issues itself.
    #[arg(
        long,
        env = "WOPR_CONTROL_PLANE_ADDRESS",
        default_value = "https://wopr-operator.wopr-system.svc:9443"
    )]
    pub control_plane_address: String,
    /// Address sidecars dial to reach the egress service, which makes their
    /// agents' model calls (`https://host:port`, as
    /// `--control-plane-address`; its pods are in the operator namespace),
    /// such as `https://wopr-operator-egress.wopr-system.svc:8443`. Unset:
    /// no egress service, and agents' model calls fail.
    #[arg(long, env = "WOPR_EGRESS_ADDRESS")]
    pub egress_address: Option<String>,
    /// Where this replica serves the control-plane gRPC API.
    #[arg(
        long,
        env = "WOPR_CONTROL_PLANE_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    pub control_plane_listen: SocketAddr,
    /// Where this replica serves the peer ingress (WOPR peers' signed
    /// messages, HTTPS and gRPC, on the control plane's certificate);
    /// unset: no peer ingress. docs/p2p.md says how to expose it.
    #[arg(long, env = "WOPR_P2P_LISTEN")]
    pub p2p_listen: Option<SocketAddr>,
    /// How long a peer's message waits for the gateway's answer before
    /// the peer is told to fetch it from its outbox.
    #[arg(long, env = "WOPR_P2P_ANSWER_WAIT_SECONDS", default_value_t = crate::controlplane::peers::DEFAULT_ANSWER_WAIT.as_secs())]
    pub p2p_answer_wait_seconds: u64,
    /// How many peer messages this replica takes at once (each may hold a
    /// body of up to 1 MiB and wait for an answer); past it, a message is
    /// refused at once (503), so memory stays bounded under a flood.
    #[arg(long, env = "WOPR_P2P_MAX_IN_FLIGHT", default_value_t = crate::controlplane::peers::DEFAULT_MAX_IN_FLIGHT, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub p2p_max_in_flight: u32,
    /// Serve gRPC server reflection on the control-plane API (it lists
    /// every method to anyone who connects; for debugging with grpcurl).
    #[arg(long, env = "WOPR_CONTROL_PLANE_REFLECTION", default_value_t = false, action = ArgAction::Set)]
    pub control_plane_reflection: bool,
    /// The most elevation requests (`security_request`) a session may have
    /// open at once; an identical request is answered with the open one.
    #[arg(long, env = "WOPR_MAX_OPEN_ELEVATIONS", default_value_t = 3)]
    pub max_open_elevations: u32,
    /// The most bytes of each of stdout and stderr an `exec_command`
    /// returns; the rest is read and dropped, and the answer says so.
    #[arg(long, env = "WOPR_EXEC_MAX_OUTPUT_BYTES", default_value_t = crate::controlplane::exec::DEFAULT_MAX_OUTPUT_BYTES, value_parser = clap::value_parser!(usize))]
    pub exec_max_output_bytes: usize,
    /// Namespace the controller runs in (its control-plane pods are there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "wopr-system")]
    pub operator_namespace: String,
    /// Watch only this namespace; every namespace when unset.
    #[arg(long, env = "WOPR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "WOPR_ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub admin_address: SocketAddr,
    /// Elect a leader with a Lease; only the leader writes.
    #[arg(long, env = "WOPR_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease used for leader election (in the operator namespace).
    #[arg(long, env = "WOPR_LEASE_NAME", default_value = "wopr-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Memory limit (and request) of sandboxed agents that set none.
    #[arg(long, env = "WOPR_DEFAULT_MEMORY", default_value = "512Mi")]
    pub default_memory: String,
    /// CPU limit (and request) of sandboxed agents that set none.
    #[arg(long, env = "WOPR_DEFAULT_CPU", default_value = "500m")]
    pub default_cpu: String,
    /// Seconds to drain after SIGTERM: the Lease is released and every
    /// policy stream ended at once, then in-flight reconciles and
    /// connections get up to this long before the process exits anyway.
    #[arg(long, env = "WOPR_SHUTDOWN_DRAIN_SECONDS", default_value_t = 5)]
    pub shutdown_drain_seconds: u64,
    /// The operator's database, where the audit trail is stored:
    /// `sqlite:///PATH` (embedded, on a volume; one replica) or
    /// `postgres://USER:PASSWORD@HOST/DB` (any number of replicas).
    #[arg(
        long,
        env = "WOPR_STORE_URL",
        default_value = "sqlite:///var/lib/wopr/wopr.db",
        hide_env_values = true
    )]
    pub store: String,
    /// Audit events older than this many hours are deleted.
    #[arg(long, env = "WOPR_AUDIT_RETENTION_HOURS", default_value_t = 720)]
    pub audit_retention_hours: u64,
    /// At most this many audit events are kept per namespace (the oldest go first).
    #[arg(
        long,
        env = "WOPR_AUDIT_MAX_EVENTS_PER_NAMESPACE",
        default_value_t = 1_000_000
    )]
    pub audit_max_events_per_namespace: u64,
    /// The cap on events per namespace never deletes one younger than this
    /// many hours: one session's flood cannot evict the others' recent
    /// events (a namespace holds more than the cap meanwhile).
    #[arg(long, env = "WOPR_AUDIT_MIN_AGE_HOURS", default_value_t = 24)]
    pub audit_min_age_hours: u64,
    /// Export the audit trail as OpenTelemetry logs to this OTLP/gRPC
    /// receiver (`http://collector:4317`); off when unset. Only the Lease
    /// holder exports, from a cursor kept in the store.
    #[arg(long, env = "WOPR_AUDIT_EXPORT_OTLP_ENDPOINT")]
    pub audit_export_otlp_endpoint: Option<String>,
    /// The CA bundle (PEM file) an `https://` OTLP receiver's certificate
    /// is verified against; the system's roots when unset.
    #[arg(
        long,
        env = "WOPR_AUDIT_EXPORT_OTLP_CA",
        requires = "audit_export_otlp_endpoint"
    )]
    pub audit_export_otlp_ca: Option<PathBuf>,
    /// Export the audit trail as OCSF API Activity JSON lines to this file
    /// (appended), or to stdout with `-`; off when unset.
    #[arg(long, env = "WOPR_AUDIT_EXPORT_OCSF")]
    pub audit_export_ocsf: Option<String>,
    /// The egress service's ServiceAccount in the operator's namespace
    /// (the chart names its Service the same): bound to read the provider
    /// keys of each namespace whose default SecurityPolicy configures
    /// providers. No egress service when unset.
    #[arg(long, env = "WOPR_EGRESS_SERVICE")]
    pub egress_service: Option<String>,
    /// How session pods take operator-level changes (sidecar image, these
    /// flags) in namespaces whose SecurityPolicy sets no `updatePolicy`:
    /// Immediate, Rolling or OnRestart.
    #[arg(long, env = "WOPR_UPDATE_POLICY", default_value = "Rolling")]
    pub update_policy: UpdateType,
    /// With `--update-policy Rolling`: how many session pods of a namespace
    /// are replaced at a time.
    #[arg(long, env = "WOPR_UPDATE_MAX_UNAVAILABLE", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub update_max_unavailable: u32,
    /// An address no isolated sandbox may reach, `name=ip:port` (repeat the
    /// flag for more): sidecars probe it, besides the API server and their
    /// node's kubelet, to verify their network isolation. A cloud metadata
    /// endpoint (`metadata=169.254.169.254:80`) is a good one.
    #[arg(long, env = "WOPR_SANDBOX_ISOLATION_PROBES", value_delimiter = ',')]
    pub isolation_probe: Vec<String>,
    /// A Localhost seccomp profile (a path under the kubelet's seccomp
    /// root) for sandboxed agents whose Session and policy name none; unset,
    /// they get RuntimeDefault. The chart sets `profiles/wopr-sandbox.json`
    /// when its profile installer puts that file on every node: a pod
    /// naming a profile its node lacks does not start.
    #[arg(long, env = "WOPR_SANDBOX_SECCOMP_PROFILE")]
    pub sandbox_seccomp_profile: Option<String>,
    /// How the control plane is secured.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The control plane's TLS: a certificate from files (cert-manager's
/// Secret, reloaded when it changes), else one the operator issues itself
/// from its CA in a Secret; plaintext only with `--insecure-plaintext`.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Serve the control plane in plaintext h2c, and tell sidecars to
    /// dial it so: for development only (tokens cross the network
    /// readable; `kubectl wopr security verify` fails it).
    #[arg(long, env = crate::contract::env::INSECURE_PLAINTEXT, default_value_t = false, action = ArgAction::Set)]
    pub insecure_plaintext: bool,
    /// The server certificate chain (PEM), e.g. cert-manager's `tls.crt`;
    /// with `--tls-key-file` and `--tls-ca-file`, read again every 10 s.
    #[arg(long, env = "WOPR_TLS_CERT_FILE", requires_all = ["tls_key_file", "tls_ca_file"])]
    pub tls_cert_file: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    #[arg(long, env = "WOPR_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// The CA bundle clients verify the certificate against (PEM),
    /// published to the namespaces with Sessions.
    #[arg(long, env = "WOPR_TLS_CA_FILE", requires = "tls_cert_file")]
    pub tls_ca_file: Option<PathBuf>,
    /// Without certificate files: the Secret of the operator's namespace
    /// holding the operator's own CA (created when missing).
    #[arg(long, env = "WOPR_TLS_CA_SECRET", default_value = "wopr-operator-ca")]
    pub tls_ca_secret: String,
    /// Without certificate files: the control plane's Service, whose
    /// names (`NAME`, `NAME.NS`, `NAME.NS.svc`, `NAME.NS.svc.cluster.local`)
    /// the issued certificate carries.
    #[arg(long, env = "WOPR_TLS_SERVICE_NAME", default_value = "wopr-operator")]
    pub tls_service_name: String,
    /// Without certificate files: more DNS names or IPs the issued
    /// certificate carries (comma-separated), e.g. a host-run controller's
    /// address; the host of `--control-plane-address` is always one.
    #[arg(long, env = "WOPR_TLS_SERVER_NAMES", value_delimiter = ',')]
    pub tls_server_name: Vec<String>,
}

impl ControllerArgs {
    /// The update policy of namespaces whose SecurityPolicy sets none.
    pub fn default_update_policy(&self) -> UpdatePolicy {
        UpdatePolicy {
            type_: self.update_policy,
            max_unavailable: (self.update_policy == UpdateType::Rolling)
                .then_some(self.update_max_unavailable),
        }
    }
}

/// A malformed flag value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The control-plane address is not `host:port`.
    #[error(
        "--control-plane-address {0:?}: expected host:port, optionally with http:// or https://"
    )]
    ControlPlaneAddress(String),
    /// The egress address is not `host:port`.
    #[error("--egress-address {0:?}: expected host:port, optionally with http:// or https://")]
    EgressAddress(String),
    /// An address's scheme contradicts `--insecure-plaintext`.
    #[error(
        "{flag} {address:?}: http:// is plaintext, which needs --insecure-plaintext (development only); https:// or host:port is TLS, which it forbids"
    )]
    Transport {
        /// The flag.
        flag: &'static str,
        /// Its value.
        address: String,
    },
    /// An isolation probe is not `name=ip:port`.
    #[error("--isolation-probe {0:?}: expected name=ip:port, such as metadata=169.254.169.254:80")]
    IsolationProbe(String),
}

/// Parses `name=ip:port`.
fn parse_probe(probe: &str) -> Result<(String, SocketAddr), ConfigError> {
    let invalid = || ConfigError::IsolationProbe(probe.to_owned());
    let (name, address) = probe.split_once('=').ok_or_else(invalid)?;
    let valid_name =
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid_name {
        return Err(invalid());
    }
    Ok((name.to_owned(), address.parse().map_err(|_| invalid())?))
}

/// Parsing the flags' addresses: the controller's [`ServiceAddress`] knows
/// nothing of flags.
impl ServiceAddress {
    /// Parses `address` (`[scheme://]host:port`, IPv6 hosts in brackets);
    /// `None` when it is not one.
    pub fn parse(address: &str, namespace: &str) -> Option<ServiceAddress> {
        let without_scheme = address
            .strip_prefix("https://")
            .or_else(|| address.strip_prefix("http://"))
            .unwrap_or(address)
            .trim_end_matches('/');
        let (host, port) = without_scheme.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().ok()?;
        if host.is_empty() || port == 0 || host.contains('/') {
            return None;
        }
        Some(ServiceAddress {
            address: address.to_owned(),
            host: host.to_owned(),
            port,
            namespace: namespace.to_owned(),
            resolved_ip: None,
        })
    }
}

/// Refuses an address whose scheme contradicts `--insecure-plaintext`:
/// `http://` needs it, `https://` forbids it.
fn check_transport(flag: &'static str, address: &str, plaintext: bool) -> Result<(), ConfigError> {
    let plaintext_address = address.starts_with("http://");
    let https_address = address.starts_with("https://");
    if (plaintext_address && !plaintext) || (https_address && plaintext) {
        return Err(ConfigError::Transport {
            flag,
            address: address.to_owned(),
        });
    }
    Ok(())
}

/// Making the builders' settings from the flags.
impl SandboxConfig {
    /// The settings from the flags, with the addresses resolved: the
    /// control-plane host's IP (for sandboxes without DNS) and the API
    /// server reached at `api_server_url` (a probe target).
    pub async fn resolve(
        args: &ControllerArgs,
        api_server_url: &str,
    ) -> Result<SandboxConfig, ConfigError> {
        let mut config = SandboxConfig::from_args(args)?;
        config.control_plane.resolved_ip = resolve_host(&config.control_plane).await;
        if let Some(egress) = config.egress.as_mut() {
            egress.resolved_ip = resolve_host(egress).await;
        }
        if let Some(address) = api_server_address(api_server_url).await {
            config
                .isolation_probes
                .insert(0, ("apiserver".to_owned(), address));
        }
        Ok(config)
    }

    /// The settings from the flags (without resolving the control-plane host).
    pub fn from_args(args: &ControllerArgs) -> Result<SandboxConfig, ConfigError> {
        let plaintext = args.tls.insecure_plaintext;
        let namespace = &args.operator_namespace;
        let control_plane = &args.control_plane_address;
        check_transport("--control-plane-address", control_plane, plaintext)?;
        let egress = match args.egress_address.as_deref().filter(|a| !a.is_empty()) {
            Some(address) => {
                check_transport("--egress-address", address, plaintext)?;
                Some(
                    ServiceAddress::parse(address, namespace)
                        .ok_or_else(|| ConfigError::EgressAddress(address.to_owned()))?,
                )
            }
            None => None,
        };
        Ok(SandboxConfig {
            sidecar_image: args.sidecar_image.clone(),
            default_agent_image: args.default_agent_image.clone(),
            default_agent_args: args
                .default_agent_args
                .iter()
                .filter(|arg| !arg.is_empty())
                .cloned()
                .collect(),
            control_plane: ServiceAddress::parse(control_plane, namespace)
                .ok_or_else(|| ConfigError::ControlPlaneAddress(control_plane.clone()))?,
            egress,
            default_memory: Quantity(args.default_memory.clone()),
            default_cpu: Quantity(args.default_cpu.clone()),
            isolation_probes: args
                .isolation_probe
                .iter()
                .map(|probe| parse_probe(probe))
                .collect::<Result<_, _>>()?,
            default_seccomp_profile: args
                .sandbox_seccomp_profile
                .clone()
                .filter(|profile| !profile.is_empty()),
            insecure_plaintext: args.tls.insecure_plaintext,
        })
    }
}

/// The IP a service's host name resolves to, for `/etc/hosts` in
/// sandboxes that have no DNS. `None` for an IP address or a name that does
/// not resolve here.
async fn resolve_host(service: &ServiceAddress) -> Option<IpAddr> {
    if service.host_ip().is_some() {
        return None;
    }
    match tokio::net::lookup_host((service.host.as_str(), service.port)).await {
        Ok(mut addresses) => addresses.next().map(|address| address.ip()),
        Err(error) => {
            tracing::warn!(host = %service.host, %error, "host does not resolve; sandboxes without DNS will not reach it");
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        controller: ControllerArgs,
    }

    fn config(flags: &[&str]) -> Result<SandboxConfig, ConfigError> {
        let parsed = Flags::try_parse_from(["controller"].iter().chain(flags)).unwrap();
        SandboxConfig::from_args(&parsed.controller)
    }

    #[test]
    fn plaintext_is_only_with_the_development_flag() {
        let tls = config(&[]).unwrap();
        assert!(!tls.insecure_plaintext, "TLS by default");
        let refused = config(&["--control-plane-address=http://cp:9443"]).unwrap_err();
        assert!(
            matches!(refused, ConfigError::Transport { .. }),
            "{refused}"
        );
        let plaintext = config(&[
            "--control-plane-address=http://cp:9443",
            "--insecure-plaintext=true",
        ])
        .unwrap();
        assert!(plaintext.insecure_plaintext);
        assert!(matches!(
            config(&["--insecure-plaintext=true"]),
            Err(ConfigError::Transport { .. })
        ));
    }

    #[test]
    fn the_egress_address_is_optional_and_parsed_like_the_control_planes() {
        assert_eq!(config(&[]).unwrap().egress, None);
        let egress = config(&[
            "--egress-address=https://wopr-operator-egress.wopr-system.svc:8443",
            "--operator-namespace=ops",
        ])
        .unwrap()
        .egress
        .unwrap();
        assert_eq!(
            (egress.host.as_str(), egress.port, egress.namespace.as_str()),
            ("wopr-operator-egress.wopr-system.svc", 8443, "ops")
        );
        assert_eq!(
            egress.address,
            "https://wopr-operator-egress.wopr-system.svc:8443"
        );
        assert!(matches!(
            config(&["--egress-address=egress"]),
            Err(ConfigError::EgressAddress(_))
        ));
        let plaintext = config(&["--egress-address=http://egress:8443"]).unwrap_err();
        assert!(
            plaintext.to_string().starts_with("--egress-address"),
            "{plaintext}"
        );
    }

    #[test]
    fn parses_control_plane_addresses() {
        let parsed =
            ServiceAddress::parse("https://wopr-operator.wopr-system.svc:9443", "wopr-system")
                .unwrap();
        assert_eq!(parsed.host, "wopr-operator.wopr-system.svc");
        assert_eq!(parsed.port, 9443);
        assert_eq!(parsed.host_ip(), None);
        let ip = ServiceAddress::parse("10.1.2.3:9443", "x").unwrap();
        assert_eq!(ip.host_ip(), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(ip.resolved_ip, None, "only names are resolved");
        let v6 = ServiceAddress::parse("http://[fd00::1]:9443/", "x").unwrap();
        assert_eq!(v6.host_ip(), Some("fd00::1".parse().unwrap()));
        for bad in [
            "wopr-operator",
            "host:port",
            ":9443",
            "host:0",
            "https://a/b:1",
            "host:70000",
        ] {
            assert!(ServiceAddress::parse(bad, "x").is_none(), "{bad}");
        }
    }
}
