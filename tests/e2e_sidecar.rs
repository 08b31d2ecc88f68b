//! End to end against a real cluster (`KUBECONFIG`): with the controller
//! running in-process, a sidecar presenting a real projected token (from the
//! TokenRequest API, audience wopr.dev) for its session's service account
//! authenticates and receives its policy; a token of another session's
//! account is refused.
//!
//! Run: `KUBECONFIG=~/.kube/config cargo test --test e2e_sidecar -- --ignored --nocapture`

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use wopr_operator::api::TrustLevel;
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
