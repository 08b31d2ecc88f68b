//! The network check: from inside the pod (the sidecar shares the agent's
//! network namespace), try to open TCP connections to addresses the
//! sandbox's NetworkPolicy must keep it from, such as the API server and
//! the node's kubelet. One that connects proves the promise broken: the
//! cluster's network plugin does not enforce the policy. Every one blocked
//! (dropped, refused or unreachable: each of these services listens, so no
//! answer means the network stopped the packet) is the evidence it holds.

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;
use ipnet::IpNet;
use tokio::net::TcpStream;

use super::{Check, Status};
use crate::api::{NETWORK_ISOLATED, NetworkMode};

/// Why a flag's comma-separated list of probes or egress entries is
/// unreadable: the entry, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("{0:?}: expected name=ip:port")]
    NoName(String),
    #[error("{entry:?}: {address:?} is not an ip:port")]
    NotAnAddress { entry: String, address: String },
    #[error("{0:?}: bad port")]
    BadPort(String),
    #[error("{entry:?}: {cidr:?} is not a CIDR")]
    NotACidr { entry: String, cidr: String },
}

/// The non-empty entries of a comma-separated list, trimmed.
fn entries(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

/// An address to probe, with a name for the evidence (`apiserver`, `kubelet`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    /// What it is.
    pub name: String,
    /// Where.
    pub address: SocketAddr,
}

impl ProbeTarget {
    /// Parses `name=ip:port` entries separated by commas (IPv6 in brackets).
    pub fn parse_list(list: &str) -> Result<Vec<ProbeTarget>, ListError> {
        entries(list)
            .map(|entry| {
                let (name, address) = entry
                    .split_once('=')
                    .ok_or_else(|| ListError::NoName(entry.to_owned()))?;
                let address = address.parse().map_err(|_| ListError::NotAnAddress {
                    entry: entry.to_owned(),
                    address: address.to_owned(),
                })?;
                Ok(ProbeTarget {
                    name: name.to_owned(),
                    address,
                })
            })
            .collect()
    }
}

/// A destination the sandbox's egress allow-list admits for TCP: a CIDR,
/// on one port or every port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressAllow {
    /// The network.
    pub network: IpNet,
    /// The port; every port when `None`.
    pub port: Option<u16>,
}

impl EgressAllow {
    /// Parses `cidr` and `cidr#port` entries separated by commas.
    pub fn parse_list(list: &str) -> Result<Vec<EgressAllow>, ListError> {
        entries(list)
            .map(|entry| {
                let (cidr, port) = match entry.split_once('#') {
                    Some((cidr, port)) => (
                        cidr,
                        Some(
                            port.parse()
                                .map_err(|_| ListError::BadPort(entry.to_owned()))?,
                        ),
                    ),
                    None => (entry, None),
                };
                let network = cidr.parse().map_err(|_| ListError::NotACidr {
                    entry: entry.to_owned(),
                    cidr: cidr.to_owned(),
                })?;
                Ok(EgressAllow { network, port })
            })
            .collect()
    }

    /// `cidr` or `cidr#port`, as [`EgressAllow::parse_list`] reads it.
    pub fn render(&self) -> String {
        match self.port {
            Some(port) => format!("{}#{port}", self.network),
            None => self.network.to_string(),
        }
    }

    fn admits(&self, address: SocketAddr) -> bool {
        self.network.contains(&address.ip()) && self.port.is_none_or(|port| port == address.port())
    }
}

/// How one probe went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A TCP connection opened: the address is reachable.
    Connected,
    /// Nothing answered in time (the packets were dropped).
    TimedOut(Duration),
    /// Refused or unreachable (the network rejected them).
    Rejected(String),
}

/// Tries to open a TCP connection to `address` within `timeout`.
pub async fn probe(address: SocketAddr, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(_connection)) => Outcome::Connected,
        Ok(Err(error)) => Outcome::Rejected(error.kind().to_string()),
        Err(_) => Outcome::TimedOut(timeout),
    }
}

/// The network check of a sandbox with `mode` and the egress allow-list
/// `allowed`, probing `targets` (those the allow-list admits are skipped:
/// reaching them is allowed).
pub async fn check(
    mode: Option<NetworkMode>,
    targets: &[ProbeTarget],
    allowed: &[EgressAllow],
    timeout: Duration,
) -> Check {
    match mode {
        None => {
            return Check::new(
                NETWORK_ISOLATED,
                Status::Unknown,
                "NotConfigured",
                "the controller did not tell this sidecar the sandbox's network mode".into(),
                false,
            );
        }
        Some(NetworkMode::Full) => {
            return Check::new(
                NETWORK_ISOLATED,
                Status::False,
                "NotRequested",
                "network: full: this sandbox is not network-isolated, by its policy".into(),
                true,
            );
        }
        Some(NetworkMode::None | NetworkMode::Restricted) => {}
    }
    let (skipped, probed): (Vec<&ProbeTarget>, Vec<&ProbeTarget>) = targets
        .iter()
        .partition(|target| allowed.iter().any(|allow| allow.admits(target.address)));
    let skipped_note = if skipped.is_empty() {
        String::new()
    } else {
        format!(
            "; not probed, the egress allow-list admits them: {}",
            names(&skipped)
        )
    };
    if probed.is_empty() {
        return Check::new(
            NETWORK_ISOLATED,
            Status::Unknown,
            "NothingToProbe",
            format!("no address outside the sandbox's allow-list to probe{skipped_note}"),
            false,
        );
    }
    let outcomes = join_all(probed.iter().map(|target| probe(target.address, timeout))).await;
    classify(&probed, &outcomes, &skipped_note)
}

/// The verdict on `outcomes`: one connection is enough to fail. The message
/// names every probe with its outcome either way, so that a failed check
/// also says what was blocked, and a passed one what was tried.
fn classify(probed: &[&ProbeTarget], outcomes: &[Outcome], skipped_note: &str) -> Check {
    let described = |connected: bool| -> Vec<String> {
        probed
            .iter()
            .zip(outcomes)
            .filter(|(_, outcome)| (**outcome == Outcome::Connected) == connected)
            .map(|(target, outcome)| {
                let how = match outcome {
                    Outcome::Connected => "connected".to_owned(),
                    Outcome::TimedOut(after) => format!("no answer in {after:?}"),
                    Outcome::Rejected(why) => why.clone(),
                };
                format!("{} {} ({how})", target.name, target.address)
            })
            .collect()
    };
    let (reached, blocked) = (described(true), described(false));
    if !reached.is_empty() {
        let blocked_note = if blocked.is_empty() {
            String::new()
        } else {
            format!("; blocked: {}", blocked.join(", "))
        };
        return Check::new(
            NETWORK_ISOLATED,
            Status::False,
            "Reachable",
            format!(
                "reachable from the sandbox: {}{blocked_note}; the cluster's network plugin does not enforce this pod's NetworkPolicy{skipped_note}",
                reached.join(", ")
            ),
            false,
        );
    }
    Check::new(
        NETWORK_ISOLATED,
        Status::True,
        "Blocked",
        format!("blocked: {}{skipped_note}", blocked.join(", ")),
        true,
    )
}

fn names(targets: &[&ProbeTarget]) -> String {
    targets
        .iter()
        .map(|target| format!("{} {}", target.name, target.address))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, address: &str) -> ProbeTarget {
        ProbeTarget {
            name: name.into(),
            address: address.parse().unwrap(),
        }
    }

    #[test]
    fn flags_parse_and_bad_entries_are_named() {
        assert_eq!(
            ProbeTarget::parse_list("apiserver=10.96.0.1:443, kubelet=[fd00::1]:10250").unwrap(),
            [
                target("apiserver", "10.96.0.1:443"),
                target("kubelet", "[fd00::1]:10250")
            ]
        );
        assert!(
            ProbeTarget::parse_list("10.96.0.1:443")
                .unwrap_err()
                .to_string()
                .contains("name=ip:port")
        );
        assert!(ProbeTarget::parse_list("kubelet=$(HOST_IP):10250").is_err());
        let allowed = EgressAllow::parse_list("10.0.0.0/8,2001:db8::/32#443").unwrap();
        assert_eq!(allowed[1].port, Some(443));
        assert_eq!(allowed[1].render(), "2001:db8::/32#443");
        assert!(EgressAllow::parse_list("10.0.0.0/33").is_err());
    }

    /// The verdict when the API server and the kubelet answer so.
    fn classify_probes(apiserver: Outcome, kubelet: Outcome) -> Check {
        let probed = [
            target("apiserver", "10.96.0.1:443"),
            target("kubelet", "10.0.0.5:10250"),
        ];
        classify(
            &probed.iter().collect::<Vec<_>>(),
            &[apiserver, kubelet],
            "",
        )
    }

    #[test]
    fn one_connection_fails_the_check_and_every_probe_is_named_with_its_outcome() {
        let check = classify_probes(
            Outcome::TimedOut(Duration::from_secs(1)),
            Outcome::Connected,
        );
        assert_eq!((check.status, check.reason), (Status::False, "Reachable"));
        assert_eq!(
            check.message,
            "reachable from the sandbox: kubelet 10.0.0.5:10250 (connected); blocked: apiserver 10.96.0.1:443 (no answer in 1s); the cluster's network plugin does not enforce this pod's NetworkPolicy"
        );
        assert!(!check.holds);
        let both = classify_probes(Outcome::Connected, Outcome::Connected);
        assert_eq!(
            both.message,
            "reachable from the sandbox: apiserver 10.96.0.1:443 (connected), kubelet 10.0.0.5:10250 (connected); the cluster's network plugin does not enforce this pod's NetworkPolicy"
        );
    }

    #[test]
    fn every_probe_blocked_is_the_evidence() {
        let check = classify_probes(
            Outcome::TimedOut(Duration::from_secs(1)),
            Outcome::Rejected("connection refused".into()),
        );
        assert_eq!((check.status, check.reason), (Status::True, "Blocked"));
        assert_eq!(
            check.message,
            "blocked: apiserver 10.96.0.1:443 (no answer in 1s), kubelet 10.0.0.5:10250 (connection refused)"
        );
        assert!(check.holds);
    }

    /// A listener whose accept queue is full: the kernel drops new SYNs,
    /// as a NetworkPolicy that drops packets does.
    async fn dropping_listener() -> (tokio::net::TcpListener, tokio::net::TcpStream, SocketAddr) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let address = listener.local_addr().unwrap();
        let queued = TcpStream::connect(address).await.unwrap();
        (listener, queued, address)
    }

    #[tokio::test]
    async fn probes_connect_time_out_and_are_refused_on_loopback() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open_address = open.local_addr().unwrap();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_address = closed.local_addr().unwrap();
        drop(closed);
        let (_listener, _queued, dropping) = dropping_listener().await;
        let timeout = Duration::from_millis(300);
        assert_eq!(probe(open_address, timeout).await, Outcome::Connected);
        assert!(
            matches!(probe(closed_address, timeout).await, Outcome::Rejected(why) if why.contains("refused"))
        );
        // Filling the queue is best effort on some kernels: the probe must
        // not connect, and must end within its timeout.
        let started = std::time::Instant::now();
        assert_ne!(probe(dropping, timeout).await, Outcome::Connected);
        assert!(started.elapsed() < Duration::from_secs(2));

        let isolated = check(
            Some(NetworkMode::None),
            &[
                target("apiserver", &closed_address.to_string()),
                target("kubelet", &dropping.to_string()),
            ],
            &[],
            timeout,
        )
        .await;
        assert_eq!(
            (isolated.status, isolated.holds),
            (Status::True, true),
            "{}",
            isolated.message
        );
        let leaky = check(
            Some(NetworkMode::Restricted),
            &[target("apiserver", &open_address.to_string())],
            &[],
            timeout,
        )
        .await;
        assert_eq!(
            (leaky.status, leaky.holds),
            (Status::False, false),
            "{}",
            leaky.message
        );
    }

    #[tokio::test]
    async fn full_network_promises_nothing_and_unknown_modes_verify_nothing() {
        let targets = [target("apiserver", "10.96.0.1:443")];
        let full = check(
            Some(NetworkMode::Full),
            &targets,
            &[],
            Duration::from_millis(1),
        )
        .await;
        assert_eq!(
            (full.status, full.reason, full.holds),
            (Status::False, "NotRequested", true)
        );
        let unknown = check(None, &targets, &[], Duration::from_millis(1)).await;
        assert_eq!((unknown.status, unknown.holds), (Status::Unknown, false));
    }

    #[tokio::test]
    async fn addresses_the_allow_list_admits_are_not_probed() {
        let targets = [target("apiserver", "10.96.0.1:443")];
        let allowed = EgressAllow::parse_list("10.96.0.0/12#443").unwrap();
        let check = check(
            Some(NetworkMode::Restricted),
            &targets,
            &allowed,
            Duration::from_millis(1),
        )
        .await;
        assert_eq!(
            (check.status, check.reason),
            (Status::Unknown, "NothingToProbe")
        );
        assert!(
            check
                .message
                .contains("admits them: apiserver 10.96.0.1:443"),
            "{}",
            check.message
        );
    }
}
