//! End to end against a real cluster (`KUBECONFIG`): installs the CRDs, runs
//! the controller in-process for a temporary namespace that enforces Pod
//! Security "restricted", applies examples/, and checks that every Session's
//! pod is admitted, its NetworkPolicy and ServiceAccount exist, its status
//! is written, and deleting a Session removes its children.
//!
//! Run: `KUBECONFIG=~/.kube/config cargo test --test e2e_controller -- --ignored --nocapture`

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::DeleteParams;
use kube::{Api, Client, ResourceExt};
use wopr_operator::api::{Session, WoprObject, parse_manifests};

mod common;

use common::e2e::*;

/// Applies every object of examples/ and returns the Session names.
async fn apply_examples(client: &Client, namespace: &str) -> Vec<String> {
    let mut sessions = Vec::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        for object in parse_manifests(&std::fs::read_to_string(&path).unwrap()).unwrap() {
            match object {
                WoprObject::SecurityPolicy(p) => apply(client, namespace, p.as_ref()).await,
                WoprObject::Session(s) => {
                    sessions.push(s.name_any());
                    apply(client, namespace, s.as_ref()).await
                }
                WoprObject::Grant(g) => apply(client, namespace, &g).await,
                WoprObject::Gateway(g) => apply(client, namespace, &g).await,
                WoprObject::ApprovalRequest(a) => apply(client, namespace, &a).await,
            }
        }
    }
    sessions
}

async fn scenario(client: &Client, namespace: &str) {
    let sessions = apply_examples(client, namespace).await;
    assert_eq!(sessions.len(), 4);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let session_api: Api<Session> = Api::namespaced(client.clone(), namespace);

    for name in &sessions {
        let child = format!("wopr-{name}");
        // The pod exists only if the API server admitted it under "restricted".
        let pod = eventually(&format!("pod {child}"), || async {
            pods.get_opt(&child).await.unwrap()
        })
        .await;
        let spec = pod.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.service_account_name.as_deref(), Some(child.as_str()));

        let policy = policies
            .get(&child)
            .await
            .expect("the NetworkPolicy exists");
        let policy_spec = policy.spec.unwrap();
        assert!(
            policy_spec
                .policy_types
                .unwrap()
                .contains(&"Ingress".to_string())
        );
        let selector: BTreeMap<String, String> =
            policy_spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(selector["wopr.dev/session"], *name);
        let account = accounts
            .get(&child)
            .await
            .expect("the ServiceAccount exists");
        assert_eq!(account.automount_service_account_token, Some(false));

        let status = eventually(&format!("status of {name}"), || async {
            session_api
                .get(name)
                .await
                .unwrap()
                .status
                .filter(|status| status.policy_hash.is_some())
        })
        .await;
        assert_eq!(status.pod_name.as_deref(), Some(child.as_str()));
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "PolicyResolved" && c.status == "True")
        );
    }

    // Deleting a Session removes everything it owns (garbage collection).
    let gone = "api-handler";
    session_api
        .delete(gone, &DeleteParams::foreground())
        .await
        .unwrap();
    let child = format!("wopr-{gone}");
    eventually("children of the deleted session to go", || async {
        let left = (
            pods.get_opt(&child).await.unwrap(),
            policies.get_opt(&child).await.unwrap(),
            accounts.get_opt(&child).await.unwrap(),
        );
        matches!(left, (None, None, None)).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG"]
async fn sessions_become_restricted_sandbox_pods() {
    with_controller("127.0.0.1:0", |client, namespace| async move {
        scenario(&client, &namespace).await
    })
    .await;
}
