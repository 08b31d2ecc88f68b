//! End to end against a real cluster (`KUBECONFIG`): `kubectl wopr security
//! audit` with only a kubeconfig, no `--control-plane`, reaches the control
//! plane through the real API server's `pods/portforward` (and the kubelet
//! behind it), and the person's RBAC decides.
//!
//! The controller runs in-process on this machine, as in the other e2e
//! tests; in the test's own temporary namespace (`--operator-namespace`) a
//! pod carrying the controller pods' label and a container port named
//! `grpc` relays that port to it with socat. So the CLI chooses a Ready
//! pod by the chart's label and port name, and every byte of the audit
//! query crosses the API server's port-forward to a real pod.
//!
//! A service account's token is the kubeconfig's user: with only
//! `wopr-audit-reader` (and `wopr-view`) it is refused by the API server,
//! naming the Role the chart ships for this path; with that Role too, it
//! reads the trail, and `whoami` names the pod.
//!
//! Needs `WOPR_E2E_CONTROL_PLANE` (IP:PORT of this machine the cluster's
//! pods can reach) and a pullable socat image (`WOPR_E2E_RELAY_IMAGE`,
//! default `docker.io/alpine/socat:1.8.0.3`):
//! `KUBECONFIG=~/.kube/config WOPR_E2E_CONTROL_PLANE=10.0.0.5:9443 cargo test --test e2e_portforward -- --ignored --nocapture`

mod common;

use std::path::{Path, PathBuf};

use common::e2e::*;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use kube::Client;
use kube::config::{AuthInfo, Kubeconfig};
use serde_json::{Value, json};
use wopr_operator::cli::portforward::CLIENT_ROLE;

/// The relay pod, named as a controller pod might be.
const RELAY: &str = "wopr-operator-relay";
/// The service account whose token is the kubeconfig's user.
const READER: &str = "e2e-pf-reader";

/// The test's kubeconfig, its user replaced by `token` alone.
fn kubeconfig_with_token(dir: &Path, token: &str) -> PathBuf {
    let mut config = Kubeconfig::read().expect("a kubeconfig from KUBECONFIG");
    for named in &mut config.auth_infos {
        named.auth_info = Some(AuthInfo {
            token: Some(token.to_owned().into()),
            ..AuthInfo::default()
        });
    }
    let path = dir.join("reader");
    std::fs::write(&path, serde_saphyr::to_string(&config).unwrap()).unwrap();
    path
}

/// A pod with the controller pods' label and a port named `grpc`, relaying
/// it to `control_plane`; Ready once it listens.
fn relay_pod(control_plane: &str) -> Pod {
    let image = std::env::var("WOPR_E2E_RELAY_IMAGE")
        .unwrap_or_else(|_| "docker.io/alpine/socat:1.8.0.3".into());
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": RELAY, "labels": {"app.kubernetes.io/name": "wopr-operator"}},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "controller", "image": image,
                "args": ["TCP-LISTEN:9443,fork,reuseaddr", format!("TCP:{control_plane}")],
                "ports": [{"name": "grpc", "containerPort": 9443, "protocol": "TCP"}],
                "readinessProbe": {"tcpSocket": {"port": "grpc"}, "periodSeconds": 2},
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .unwrap()
}

/// Binds `role` (a `kind`, Role or ClusterRole) in `namespace` to the
/// service account [`READER`].
async fn bind_reader(client: &Client, namespace: &str, kind: &str, role: &str) {
    let mut binding = RoleBinding::default();
    binding.metadata.name = Some(format!("{role}-{READER}"));
    binding.role_ref = RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: role.into(),
    };
    binding.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: READER.into(),
        namespace: Some(namespace.into()),
        ..Subject::default()
    }]);
    apply(client, namespace, &binding).await;
}

async fn scenario(client: &Client, namespace: &str, control_plane: &str) {
    install_admission(client, &["wopr-audit-reader", "wopr-view"]).await;
    // A Session's first effective policy is an event of the trail.
    trusted_sessions_with_accounts(client, namespace, &["research-agent"]).await;
    apply(client, namespace, &relay_pod(control_plane)).await;

    let mut account = ServiceAccount::default();
    account.metadata.name = Some(READER.into());
    apply(client, namespace, &account).await;
    // Reading the trail, and (for whoami) the namespace's Sessions and Grants.
    for role in ["wopr-audit-reader", "wopr-view"] {
        bind_reader(client, namespace, "ClusterRole", role).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let reader = kubeconfig_with_token(dir.path(), &api_token_of(client, namespace, READER).await);
    let audit = [
        "security",
        "audit",
        "--session",
        "research-agent",
        "-o",
        "json",
    ];

    // The API server refuses the reader the pods: the error names the Role.
    let refused = kubectl_wopr(&reader, namespace, Some(namespace), &audit).await;
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("cannot list the controller's pods")
            && refused.stderr.contains(CLIENT_ROLE),
        "{}",
        refused.stderr
    );

    // The chart's Role, in this namespace as it is in the operator's.
    let mut role: Role = serde_json::from_value(common::rendered("Role", CLIENT_ROLE)).unwrap();
    role.metadata.namespace = Some(namespace.into());
    apply(client, namespace, &role).await;
    bind_reader(client, namespace, "Role", CLIENT_ROLE).await;

    let trail = eventually("the trail through the port-forward", || async {
        let run = kubectl_wopr(&reader, namespace, Some(namespace), &audit).await;
        let items = serde_json::from_str::<Value>(&run.stdout).ok()?["items"]
            .as_array()?
            .clone();
        (run.code == 0 && !items.is_empty()).then_some(items)
    })
    .await;
    assert!(
        trail
            .iter()
            .all(|event| event["session"] == "research-agent"),
        "{trail:?}"
    );
    let whoami = kubectl_wopr(&reader, namespace, Some(namespace), &["security", "whoami"]).await;
    assert_eq!(whoami.code, 0, "{}", whoami.stderr);
    assert!(
        whoami.stdout.contains(&format!(
            "Control plane: port-forward to pod {namespace}/{RELAY} port 9443 (through the API server)"
        )),
        "{}",
        whoami.stdout
    );
}

#[tokio::test]
#[ignore = "needs a real cluster (KUBECONFIG) and WOPR_E2E_CONTROL_PLANE"]
async fn audit_needs_only_a_kubeconfig() {
    let (control_plane, port) = pod_reachable_control_plane();
    with_controller(&format!("0.0.0.0:{port}"), |client, namespace| async move {
        scenario(&client, &namespace, &control_plane).await;
    })
    .await;
}
