//! The per-session NetworkPolicy: ingress denied in every mode; egress by
//! network mode (SPEC §3):
//!
//! - `none`: only the control plane and the egress service (no DNS: the
//!   pod's `/etc/hosts` names them);
//! - `restricted`: those, cluster DNS and the session's `egress` list;
//! - `full`: unrestricted egress.
//!
//! The egress service (when `--egress-address` names one) is reachable in
//! every mode: it is where the sidecar's model proxy sends model calls.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta::{CONTROL_PLANE_POD_LABELS, EGRESS_POD_LABELS, child_meta, session_selector};
use crate::api::{EgressRule, NetworkMode, PortProtocol, Session};
use crate::controller::session::config::{ControlPlane, Egress, ServiceAddress};
use crate::policy::EffectiveContext;

/// The NetworkPolicy of `session` under its effective `context`.
pub fn build_network_policy(
    session: &Session,
    context: &EffectiveContext,
    control_plane: &ControlPlane,
    egress_service: Option<&Egress>,
) -> NetworkPolicy {
    let mut policy_types = vec!["Ingress".to_owned()];
    let services = || {
        let mut rules = vec![service_egress(control_plane, &CONTROL_PLANE_POD_LABELS)];
        rules.extend(egress_service.map(|egress| service_egress(egress, &EGRESS_POD_LABELS)));
        rules
    };
    let egress = match context.network {
        NetworkMode::Full => None,
        NetworkMode::None => Some(services()),
        NetworkMode::Restricted => {
            let mut rules = services();
            rules.push(cluster_dns_egress());
            let allowed = session
                .spec
                .sandbox
                .iter()
                .flat_map(|sandbox| &sandbox.egress);
            rules.extend(allowed.map(allow_list_egress));
            Some(rules)
        }
    };
    if egress.is_some() {
        policy_types.push("Egress".to_owned());
    }
    NetworkPolicy {
        metadata: child_meta(session),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(session_selector(&session.name_any())),
                ..LabelSelector::default()
            }),
            policy_types: Some(policy_types),
            ingress: Some(Vec::new()),
            egress,
        }),
    }
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
    )
}

fn selector(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: labels(pairs),
        ..LabelSelector::default()
    })
}

fn port(number: u16, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(number))),
        protocol: Some(protocol.to_owned()),
        end_port: None,
    }
}

fn ip_block(cidr: String) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock { cidr, except: None }),
        ..NetworkPolicyPeer::default()
    }
}

/// Egress to a service's pods (those with `pod_labels` in its namespace)
/// on its port, and to its IP when it runs outside the cluster.
fn service_egress(
    service: &ServiceAddress,
    pod_labels: &[(&str, &str)],
) -> NetworkPolicyEgressRule {
    let mut to = vec![NetworkPolicyPeer {
        namespace_selector: selector(&[("kubernetes.io/metadata.name", &service.namespace)]),
        pod_selector: selector(pod_labels),
        ip_block: None,
    }];
    if let Some(ip) = service.host_ip() {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        to.push(ip_block(format!("{ip}/{bits}")));
    }
    NetworkPolicyEgressRule {
        to: Some(to),
        ports: Some(vec![port(service.port, "TCP")]),
    }
}

/// Egress to the cluster DNS (kube-system pods labelled `k8s-app: kube-dns`).
fn cluster_dns_egress() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: selector(&[("kubernetes.io/metadata.name", "kube-system")]),
            pod_selector: selector(&[("k8s-app", "kube-dns")]),
            ip_block: None,
        }]),
        ports: Some(vec![port(53, "UDP"), port(53, "TCP")]),
    }
}

fn allow_list_egress(rule: &EgressRule) -> NetworkPolicyEgressRule {
    let ports: Vec<NetworkPolicyPort> = rule
        .ports
        .iter()
        .map(|egress_port| {
            let protocol = match egress_port.protocol.unwrap_or(PortProtocol::Tcp) {
                PortProtocol::Tcp => "TCP",
                PortProtocol::Udp => "UDP",
                PortProtocol::Sctp => "SCTP",
            };
            port(egress_port.port, protocol)
        })
        .collect();
    NetworkPolicyEgressRule {
        to: Some(vec![ip_block(rule.cidr.clone())]),
        ports: (!ports.is_empty()).then_some(ports),
    }
}
