//! End to end against a real cluster (`KUBECONFIG`): the elevation flow on
//! a real API server, with the controller running in-process. A session's
//! `security_request` (its sidecar's broker call, with a real projected
//! token) creates an ApprovalRequest of type elevation; a person (an
//! impersonated user bound to `wopr-approver`) approves it with a status
//! patch, as `kubectl patch --subresource=status` would; the controller
//! makes the Grant and the capability reaches the session's served
//! policy. The chart's real ValidatingAdmissionPolicy refuses a decision
//! whose `decidedBy` is not its maker and one made by the session's own
//! service account, and a decision, once made, cannot change.
//!
//! Run: `KUBECONFIG=~/.kube/config cargo test --test e2e_broker -- --ignored --nocapture`

mod common;

use std::path::Path;

use common::e2e::*;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use wopr_operator::api::{ApprovalRequest, Capability, Grant};
use wopr_operator::proto::v1alpha1::WatchRequest;
use wopr_operator::proto::v1alpha1::policy_client::PolicyClient;
use wopr_operator::proto::v1alpha1::policy_update::Update;
use wopr_operator::sidecar::broker::BrokerLink;
use wopr_operator::sidecar::client::WatchTarget;
use wopr_operator::sidecar::tools::Messenger;

const AGENT: &str = "e2e-elevated";
const APPROVER: &str = "e2e-approver@example.com";

/// Binds `wopr-approver` in `namespace` to the person and to the session's
/// own service account (so that only the admission policy stands in the
/// account's way).
async fn bind_approvers(client: &Client, namespace: &str) {
    let mut binding = RoleBinding::default();
    binding.metadata.name = Some("approvers".into());
    binding.role_ref = RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: "ClusterRole".into(),
        name: "wopr-approver".into(),
    };
    binding.subjects = Some(vec![
        Subject {
            kind: "User".into(),
            name: APPROVER.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Subject::default()
        },
        Subject {
            kind: "ServiceAccount".into(),
            name: format!("wopr-{AGENT}"),
            namespace: Some(namespace.into()),
            ..Subject::default()
        },
    ]);
    apply(client, namespace, &binding).await;
}

/// A status decision as `kubectl patch --subresource=status --type=merge`.
async fn decide(
    client: &Client,
    namespace: &str,
    name: &str,
    state: &str,
    by: &str,
) -> Result<(), String> {
    let api: Api<ApprovalRequest> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"status": {"state": state, "decidedBy": by, "decisionReason": "e2e"}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|error| error.to_string())
}

/// The capabilities the control plane serves the session now.
async fn served_capabilities(control_plane: &str, namespace: &str, token: &str) -> Vec<String> {
    let mut policy = PolicyClient::new(common::tls::channel(control_plane).await);
    let mut request = tonic::Request::new(WatchRequest {
        namespace: namespace.into(),
        session: AGENT.into(),
        heartbeat_seconds: 0,
    });
    let bearer = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    let mut stream = policy.watch(request).await.unwrap().into_inner();
    match stream
        .message()
        .await
        .unwrap()
        .and_then(|update| update.update)
    {
        Some(Update::Context(context)) => context.capabilities,
        other => panic!("no policy served: {other:?}"),
    }
}

async fn scenario(client: &Client, namespace: &str, control_plane: &str) {
    install_admission(client, &["wopr-approver"]).await;
    trusted_sessions_with_accounts(client, namespace, &[AGENT]).await;
    bind_approvers(client, namespace).await;
    let projected = token_of(client, namespace, &format!("wopr-{AGENT}")).await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, &projected).unwrap();
    let sidecar = BrokerLink::new(WatchTarget {
        address: control_plane.into(),
        tls: common::tls::client_tls(),
        namespace: namespace.into(),
        session: AGENT.into(),
        token_path: Path::new(&token_path).to_path_buf(),
    });
    assert!(
        !served_capabilities(control_plane, namespace, &projected)
            .await
            .contains(&"cross.inject".to_owned())
    );

    // security_request: the ApprovalRequest appears, Pending.
    let asked = sidecar
        .elevate(
            &[Capability::CrossInject],
            "tell the on-call session the build broke",
            std::time::Duration::from_secs(1800),
        )
        .await
        .expect("security_request");
    let id = asked["requestId"].as_str().unwrap().to_owned();
    let requests: Api<ApprovalRequest> = Api::namespaced(client.clone(), namespace);
    eventually("the ApprovalRequest, Pending", || async {
        let request = requests.get_opt(&id).await.unwrap()?;
        let pending = request.status?.state? == wopr_operator::api::ApprovalState::Pending;
        pending.then_some(())
    })
    .await;

    // The admission policy refuses a decision in someone else's name, and
    // any decision by the session's own service account.
    let person = client_as(Some(APPROVER), None).await;
    let forged = decide(
        &person,
        namespace,
        &id,
        "Approved",
        "someone-else@example.com",
    )
    .await
    .unwrap_err();
    assert!(
        forged.contains(&format!("status.decidedBy must be {APPROVER}")),
        "{forged}"
    );
    let account = format!("system:serviceaccount:{namespace}:wopr-{AGENT}");
    let own_account = client_as(
        None,
        Some(api_token_of(client, namespace, &format!("wopr-{AGENT}")).await),
    )
    .await;
    let by_itself = decide(&own_account, namespace, &id, "Approved", &account)
        .await
        .unwrap_err();
    assert!(
        by_itself.contains("a session's service account cannot decide"),
        "{by_itself}"
    );

    // The person approves in their own name: the Grant is made, the
    // request Completed, and the capability is served to the session.
    decide(&person, namespace, &id, "Approved", APPROVER)
        .await
        .expect("the approver's decision");
    let grants: Api<Grant> = Api::namespaced(client.clone(), namespace);
    let grant = eventually("the Grant", || async {
        grants.get_opt(&format!("elevation-{id}")).await.unwrap()
    })
    .await;
    assert_eq!(grant.spec.subject.session.as_deref(), Some(AGENT));
    assert_eq!(grant.spec.capabilities, [Capability::CrossInject]);
    eventually("cross.inject served", || async {
        served_capabilities(control_plane, namespace, &projected)
            .await
            .contains(&"cross.inject".to_owned())
            .then_some(())
    })
    .await;
    eventually("the request Completed", || async {
        let request = requests.get(&id).await.unwrap();
        (request.status?.state? == wopr_operator::api::ApprovalState::Completed).then_some(())
    })
    .await;

    // A decision, once made, never changes.
    let changed = decide(&person, namespace, &id, "Denied", APPROVER)
        .await
        .unwrap_err();
    assert!(
        changed.contains("a decision, once made, never changes"),
        "{changed}"
    );
    let shown: Value = serde_json::to_value(requests.get(&id).await.unwrap()).unwrap();
    assert_eq!(shown["status"]["decidedBy"], APPROVER);
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG"]
async fn an_approved_elevation_becomes_a_grant_and_decisions_cannot_be_forged() {
    with_controller_on_a_free_port(|client, namespace, control_plane| async move {
        scenario(&client, &namespace, &control_plane).await;
    })
    .await;
}
