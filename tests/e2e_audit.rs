//! End to end against a real cluster (`KUBECONFIG`): with the controller
//! running in-process (its store a SQLite file), a sidecar's spool shipped
//! with a real projected token (TokenRequest, audience wopr.dev) is stored,
//! and the sidecar's query returns it; events shipped with another
//! session's token are refused and stay in the spool's `rejected/`. A
//! reader's credential (the API server's audience) reads the namespace when
//! its RBAC allows `list auditevents.wopr.dev` there (a real
//! SubjectAccessReview), and is refused, naming the role, when not.
//!
//! Run: `KUBECONFIG=~/.kube/config cargo test --test e2e_audit -- --ignored --nocapture`

use kube::Client;
use wopr_operator::proto::v1alpha1::AuditQueryRequest;
use wopr_operator::proto::v1alpha1::audit_client::AuditClient;
use wopr_operator::sidecar::client::WatchTarget;
use wopr_operator::sidecar::shipper::ship_sealed;
use wopr_operator::sidecar::spool::Spool;

mod common;

use common::e2e::*;
use common::store::event;
use wopr_operator::policy::Outcome;

async fn scenario(client: &Client, namespace: &str, control_plane: &str) {
    trusted_sessions_with_accounts(client, namespace, &["e2e-agent", "e2e-other"]).await;
    let dir = tempfile::tempdir().unwrap();
    let own_token = token_of(client, namespace, "wopr-e2e-agent").await;
    let target = |name: &str, token: &str| {
        let token_path = dir.path().join(format!("token-{name}"));
        std::fs::write(&token_path, token).unwrap();
        WatchTarget {
            address: control_plane.into(),
            tls: common::tls::client_tls(),
            namespace: namespace.into(),
            session: "e2e-agent".into(),
            token_path,
        }
    };

    // The session's own sidecar ships its spool.
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let events: Vec<_> = (0..25)
        .map(|n| event(namespace, "e2e-agent", Outcome::Denied, n))
        .collect();
    for event in &events {
        spool
            .append(&serde_json::to_string(event).unwrap())
            .unwrap();
    }
    spool.seal().unwrap();
    let own = target("own", &own_token);
    assert_eq!(ship_sealed(&spool, &own).await.unwrap(), 25);

    // ... and reads them back, newest first.
    let mut audit = AuditClient::new(common::tls::channel(control_plane).await);
    let mut query = tonic::Request::new(AuditQueryRequest {
        namespace: namespace.into(),
        session: "e2e-agent".into(),
        decision: "denied".into(),
        limit: 10,
        ..AuditQueryRequest::default()
    });
    let bearer = format!("Bearer {own_token}").parse().unwrap();
    query.metadata_mut().insert("authorization", bearer);
    let page = audit.query(query).await.unwrap().into_inner();
    let newest: Vec<String> = events
        .iter()
        .rev()
        .take(10)
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    assert_eq!(page.events, newest);

    // Another session's token cannot ship e2e-agent's events: the segment
    // is refused and kept aside.
    for event in &events[..3] {
        spool
            .append(&serde_json::to_string(event).unwrap())
            .unwrap();
    }
    spool.seal().unwrap();
    let foreign = target(
        "foreign",
        &token_of(client, namespace, "wopr-e2e-other").await,
    );
    assert_eq!(ship_sealed(&spool, &foreign).await.unwrap(), 0);
    let rejected = std::fs::read_dir(dir.path().join("spool/rejected"))
        .unwrap()
        .count();
    assert_eq!(rejected, 1);

    readers_need_the_rbac_right(client, namespace, control_plane, &own_token).await;
}

/// A Role granting what `wopr-audit-reader` grants, bound to the
/// ServiceAccount `reader`; `stranger` gets nothing.
async fn readers_need_the_rbac_right(
    client: &Client,
    namespace: &str,
    control_plane: &str,
    sidecar_token: &str,
) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    for name in ["reader", "stranger"] {
        let mut account = ServiceAccount::default();
        account.metadata.name = Some(name.into());
        apply(client, namespace, &account).await;
    }
    let mut role = Role::default();
    role.metadata.name = Some("audit-reader".into());
    role.rules = Some(vec![PolicyRule {
        api_groups: Some(vec!["wopr.dev".into()]),
        resources: Some(vec!["auditevents".into()]),
        verbs: vec!["list".into()],
        ..PolicyRule::default()
    }]);
    apply(client, namespace, &role).await;
    let mut binding = RoleBinding::default();
    binding.metadata.name = Some("audit-reader".into());
    binding.role_ref = RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: "Role".into(),
        name: "audit-reader".into(),
    };
    binding.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: "reader".into(),
        namespace: Some(namespace.into()),
        ..Subject::default()
    }]);
    apply(client, namespace, &binding).await;

    let mut audit = AuditClient::new(common::tls::channel(control_plane).await);
    let query = |token: &str| {
        let mut query = tonic::Request::new(AuditQueryRequest {
            namespace: namespace.into(),
            limit: 5,
            ..AuditQueryRequest::default()
        });
        let bearer = format!("Bearer {token}").parse().unwrap();
        query.metadata_mut().insert("authorization", bearer);
        query
    };
    let reader = api_token_of(client, namespace, "reader").await;
    // RBAC caches settle within moments of the binding.
    let page = eventually("the reader's query", || {
        let request = query(&reader);
        let mut audit = audit.clone();
        async move { audit.query(request).await.ok() }
    })
    .await;
    assert_eq!(page.into_inner().events.len(), 5);

    let stranger = api_token_of(client, namespace, "stranger").await;
    let refused = audit.query(query(&stranger)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let expected = format!(
        "system:serviceaccount:{namespace}:stranger may not list auditevents.wopr.dev in namespace {namespace}"
    );
    assert!(refused.message().contains(&expected), "{refused:?}");

    // The sidecar's own token reads its session, never the namespace.
    let refused = audit.query(query(sidecar_token)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG"]
async fn a_sidecar_ships_with_its_real_token_and_reads_its_events_back() {
    with_controller_on_a_free_port(|client, namespace, control_plane| async move {
        scenario(&client, &namespace, &control_plane).await
    })
    .await;
}
