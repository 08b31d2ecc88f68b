//! Sandbox self-verification on a real cluster (`KUBECONFIG`): each
//! session's sidecar probes the API server and its node's kubelet from
//! inside the pod and reads its pids limit; the Session shows
//! `NetworkIsolated` and `PidsLimited` with the evidence, whatever the
//! cluster enforces. A `network: full` Session promises no isolation; a
//! Session with `requireVerifiedIsolation` runs its agent if and only if
//! the checks hold, and a broken promise is a Warning event.
//!
//! The sidecars in the pods report to the control plane of this test, so
//! they must reach it: set `WOPR_E2E_CONTROL_PLANE=IP:PORT` to an address
//! of this machine the cluster's pods can reach (the controller listens on
//! `0.0.0.0:PORT`), and `WOPR_E2E_SIDECAR_IMAGE` to an image built from
//! this tree that the nodes can pull.
//!
//! Run: `WOPR_E2E_CONTROL_PLANE=192.168.1.10:9443 KUBECONFIG=~/.kube/config cargo test --test e2e_isolation -- --ignored --nocapture`

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};
use wopr_operator::api::{SandboxSpec, Session, TrustLevel};

mod common;

use common::e2e::*;

/// A reported check of a Session: (status, reason, message).
async fn reported(sessions: &Api<Session>, name: &str, type_: &str) -> (String, String, String) {
    eventually(&format!("{name}: {type_} reported"), || async {
        let condition = sessions
            .get(name)
            .await
            .ok()?
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)?;
        (condition.reason != "NotReported").then_some((
            condition.status,
            condition.reason,
            condition.message,
        ))
    })
    .await
}

fn session(name: &str, namespace: &str, level: TrustLevel, required: bool) -> Session {
    let mut session = common::session(name, level);
    session.metadata.namespace = Some(namespace.to_owned());
    session.metadata.uid = None;
    if required {
        session.spec.sandbox = Some(SandboxSpec {
            require_verified_isolation: Some(true),
            ..SandboxSpec::default()
        });
    }
    session
}

async fn agent_running(client: &Client, namespace: &str, name: &str) -> bool {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(&format!("wopr-{name}"))
        .await
        .unwrap();
    pod.status
        .and_then(|status| status.container_statuses)
        .is_some_and(|statuses| {
            statuses.iter().any(|s| {
                s.name == "agent" && s.state.as_ref().is_some_and(|st| st.running.is_some())
            })
        })
}

async fn warnings(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|event| {
            event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && event.type_.as_deref() == Some("Warning")
        })
        .filter_map(|event| event.reason)
        .collect()
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG and WOPR_E2E_CONTROL_PLANE"]
async fn sidecars_verify_their_sandbox_and_gate_agents_that_require_it() {
    let (control_plane, port) = pod_reachable_control_plane();
    with_namespace(|client, namespace| async move {
        let controller = Controller::start(wopr_operator::operator::args::ControllerArgs {
            control_plane_address: control_plane.clone(),
            ..controller_args(&namespace, &format!("0.0.0.0:{port}"))
        });
        let sessions: Api<Session> = Api::namespaced(client.clone(), &namespace);
        for (name, level, required) in [
            ("iso-none", TrustLevel::Untrusted, false),
            ("iso-restricted", TrustLevel::SemiTrusted, false),
            ("iso-full", TrustLevel::Trusted, false),
            ("iso-required", TrustLevel::Untrusted, true),
        ] {
            apply(
                &client,
                &namespace,
                &session(name, &namespace, level, required),
            )
            .await;
        }

        let (status, reason, _) = reported(&sessions, "iso-full", "NetworkIsolated").await;
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "NotRequested")
        );
        for name in ["iso-none", "iso-restricted"] {
            let (status, reason, message) = reported(&sessions, name, "NetworkIsolated").await;
            println!("{name}: NetworkIsolated={status} ({reason}): {message}");
            assert!(
                matches!(
                    (status.as_str(), reason.as_str()),
                    ("True", "Blocked") | ("False", "Reachable")
                ),
                "{status} {reason}"
            );
            for probed in ["apiserver", "kubelet"] {
                assert!(message.contains(probed), "{message}");
            }
            if status == "False" {
                eventually(&format!("{name}: a Warning event"), || async {
                    warnings(&client, &namespace, name)
                        .await
                        .contains(&"NetworkNotIsolated".to_owned())
                        .then_some(())
                })
                .await;
            }
            let (status, reason, message) = reported(&sessions, name, "PidsLimited").await;
            println!("{name}: PidsLimited={status} ({reason}): {message}");
            assert!(
                matches!(reason.as_str(), "Limited" | "Unlimited" | "NotVisible"),
                "{reason}"
            );
        }

        // The gated agent runs if and only if the checks hold.
        let (network, _, _) = reported(&sessions, "iso-required", "NetworkIsolated").await;
        let (pids, _, _) = reported(&sessions, "iso-required", "PidsLimited").await;
        let verified = network == "True" && pids != "False";
        if verified {
            eventually("the verified agent runs", || async {
                agent_running(&client, &namespace, "iso-required")
                    .await
                    .then_some(())
            })
            .await;
        } else {
            tokio::time::sleep(Duration::from_secs(20)).await;
            assert!(
                !agent_running(&client, &namespace, "iso-required").await,
                "NetworkIsolated={network}, PidsLimited={pids}: the agent must not start"
            );
        }
        controller.stop().await;
    })
    .await;
}
