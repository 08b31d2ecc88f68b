//! End to end against a real cluster (`KUBECONFIG`): with the controller
//! running in-process, a sidecar presenting a real projected token (from the
//! TokenRequest API, audience wopr.dev) for its session's service account
//! authenticates and receives its policy; a token of another session's
//! account is refused.
//!
//! And in a real pod: the demo agent's sidecar writes the workspace
//! (`memory_write`) and reads it back (`memory_read`); the agent reads the
//! file from its own mount, which it cannot write; the Session's prompt
//! reaches the agent (`WOPR_PROMPT`) and `security_whoami`. That sidecar
//! must reach this test's control plane: set `WOPR_E2E_CONTROL_PLANE=IP:PORT`
//! to an address of this machine the cluster's pods can reach (the
//! controller listens on `0.0.0.0:PORT`), and `WOPR_E2E_SIDECAR_IMAGE` to an
//! image built from this tree that the nodes can pull (it runs the agent
//! too).
//!
//! Run: `WOPR_E2E_CONTROL_PLANE=192.168.1.10:9443 KUBECONFIG=~/.kube/config cargo test --test e2e_sidecar -- --ignored --nocapture`

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use wopr_operator::api::{SandboxSpec, Session, SessionSpec, TrustLevel};
use wopr_operator::operator::args::ControllerArgs;
use wopr_operator::sidecar::client::{WatchError, WatchTarget, watch_once};
use wopr_operator::sidecar::policy_state::PolicyState;

mod common;

use common::e2e::*;

async fn scenario(client: &Client, namespace: &str, control_plane: &str) {
    trusted_sessions_with_accounts(client, namespace, &["e2e-agent", "e2e-other"]).await;
    let dir = tempfile::tempdir().unwrap();
    let target = |token: &str| {
        let token_path = dir.path().join(format!("token-{}", token.len()));
        std::fs::write(&token_path, token).unwrap();
        WatchTarget {
            address: control_plane.into(),
            tls: common::tls::client_tls(),
            namespace: namespace.into(),
            session: "e2e-agent".into(),
            token_path,
        }
    };

    // Its own token: the policy arrives.
    let own = target(&token_of(client, namespace, "wopr-e2e-agent").await);
    let state = Arc::new(PolicyState::new(Duration::from_secs(30)));
    let watcher = tokio::spawn({
        let state = state.clone();
        async move { watch_once(&own, &state).await }
    });
    let policy = eventually("the sidecar's policy", || async { state.current().ok() }).await;
    assert_eq!(policy.context.session, "e2e-agent");
    assert_eq!(policy.context.trust_level, TrustLevel::Trusted);
    watcher.abort();

    // Another session's token: refused.
    let foreign = target(&token_of(client, namespace, "wopr-e2e-other").await);
    let refused = watch_once(&foreign, &PolicyState::new(Duration::from_secs(30)))
        .await
        .unwrap_err();
    match refused {
        WatchError::Status(status) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}")
        }
        other => panic!("expected PERMISSION_DENIED, got {other}"),
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG"]
async fn a_sidecar_with_a_real_token_gets_its_policy_and_only_its_own() {
    with_controller_on_a_free_port(|client, namespace, control_plane| async move {
        scenario(&client, &namespace, &control_plane).await
    })
    .await;
}

const AGENT: &str = "e2e-memory";
const PROMPT: &str = "You keep notes of the build.";
const MEMORY: &str = "the build is green";

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG, WOPR_E2E_CONTROL_PLANE and WOPR_E2E_SIDECAR_IMAGE"]
async fn in_a_real_pod_the_sidecar_writes_the_workspace_and_the_agent_reads_it() {
    let (control_plane, port) = pod_reachable_control_plane();
    with_namespace(|client, namespace| async move {
        let args = controller_args(&namespace, &format!("0.0.0.0:{port}"));
        // The demo agent ships in the operator's image, the sidecar's.
        let image = args.sidecar_image.clone();
        let controller = Controller::start(ControllerArgs {
            control_plane_address: control_plane.clone(),
            ..args
        });
        let mut session = Session::new(AGENT, SessionSpec::for_trust_level(TrustLevel::Trusted));
        session.spec.prompt = Some(PROMPT.into());
        session.spec.sandbox = Some(SandboxSpec {
            image: Some(image),
            args: ["demo-agent", "--remember", MEMORY].map(String::from).into(),
            ..SandboxSpec::default()
        });
        apply(&client, &namespace, &session).await;

        // Its first pass may run before the policy arrives (memory tools
        // denied); the sidecar announces the new tool list and it goes again.
        let expected = [
            format!("my prompt (WOPR_PROMPT): {PROMPT:?}; security_whoami says the same"),
            format!(
                "call memory_write demo-agent-memory.md: ALLOWED: {{\"path\":\"demo-agent-memory.md\",\"written\":{}}}",
                MEMORY.len()
            ),
            format!("call memory_read demo-agent-memory.md: ALLOWED: {{\"content\":{MEMORY:?},"),
            format!("read /workspace/demo-agent-memory.md myself: {MEMORY:?}"),
            "write /workspace/demo-agent-memory.md myself: refused: Read-only file system".to_owned(),
        ];
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let logs = logs_until(
            &pods,
            (&format!("wopr-{AGENT}"), "agent"),
            TIMEOUT,
            &format!("the demo agent has not said all of {expected:#?}"),
            |logs| expected.iter().all(|line| logs.contains(line.as_str())),
        )
        .await;
        println!("{logs}");
        controller.stop().await;
    })
    .await;
}
