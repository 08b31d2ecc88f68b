//! The settings the Session controller's pure builders take besides the
//! Session and its policy. The operator makes them from its flags
//! (`crate::operator::args`); the controller only reads them.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Where a service that sidecars dial listens (the control plane, the
/// egress service), as sidecars and NetworkPolicies need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAddress {
    /// The address as given (passed to sidecars).
    pub address: String,
    /// The host part: a DNS name or an IP address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The namespace of the service's pods.
    pub namespace: String,
    /// The IP the host *name* resolves to, written into each pod's
    /// `/etc/hosts` so sandboxes without DNS still reach the service.
    /// `None` when the host is an IP address or did not resolve.
    pub resolved_ip: Option<IpAddr>,
}

/// Where the control plane listens.
pub type ControlPlane = ServiceAddress;

/// Where the egress service listens: the sidecars' model proxies relay
/// model calls to it.
pub type Egress = ServiceAddress;

impl ServiceAddress {
    /// The host as an IP address, when it is one (a service outside the cluster).
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// What the pure builders need to know besides the Session and its policy.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxConfig {
    /// Image of the `a2a` sidecar.
    pub sidecar_image: String,
    /// Agent image for Sessions that set none.
    pub default_agent_image: String,
    /// Its entrypoint's arguments, for Sessions that set no image, command
    /// or arguments.
    pub default_agent_args: Vec<String>,
    /// The control plane sidecars talk to.
    pub control_plane: ControlPlane,
    /// The egress service sidecars relay model calls to
    /// (`--egress-address`); `None`: none is installed, model calls fail.
    pub egress: Option<Egress>,
    /// Default memory limit and request of sandboxed agents.
    pub default_memory: Quantity,
    /// Default CPU limit and request of sandboxed agents.
    pub default_cpu: Quantity,
    /// Addresses no isolated sandbox may reach (the API server's, those of
    /// `--isolation-probe`), each with a name; sidecars probe them, and the
    /// node's kubelet, to verify their network isolation.
    pub isolation_probes: Vec<(String, SocketAddr)>,
    /// The Localhost seccomp profile of sandboxed agents that name none
    /// (`--sandbox-seccomp-profile`); `None`: RuntimeDefault.
    pub default_seccomp_profile: Option<String>,
    /// Whether sidecars reach the control plane in plaintext
    /// (`--insecure-plaintext`, development only); else over TLS,
    /// verifying it against the CA bundle mounted from the namespace.
    pub insecure_plaintext: bool,
}

impl SandboxConfig {
    /// Fixed settings that no flag moves: a pod built with them changes
    /// only when its Session or policy does (the session hash).
    pub fn reference() -> SandboxConfig {
        SandboxConfig {
            sidecar_image: "reference".to_owned(),
            default_agent_image: "reference".to_owned(),
            default_agent_args: Vec::new(),
            control_plane: ControlPlane {
                address: "reference:1".to_owned(),
                host: "reference".to_owned(),
                port: 1,
                namespace: "reference".to_owned(),
                resolved_ip: None,
            },
            egress: None,
            default_memory: Quantity("0".to_owned()),
            default_cpu: Quantity("0".to_owned()),
            isolation_probes: Vec::new(),
            default_seccomp_profile: None,
            insecure_plaintext: false,
        }
    }

    /// The probes as the sidecar reads them: `name=ip:port`, comma-separated.
    pub fn isolation_probes(&self) -> String {
        self.isolation_probes
            .iter()
            .map(|(name, address)| format!("{name}={address}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}
