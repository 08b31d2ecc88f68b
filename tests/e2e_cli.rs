//! End to end against a real cluster (`KUBECONFIG`): the real
//! `kubectl-wopr` binary against a real API server, with the controller
//! running in-process. Grant → list-grants → revoke; a person (an
//! impersonated user bound to `wopr-approver`) approves a request and the
//! chart's admission policy records that user; a reader's token queries
//! the audit trail through the control plane; a workload bound to
//! `wopr-session-injector` sends a session a message once a Grant gives it
//! standing, and one without the role is refused; verify passes on the reference examples and fails, naming the
//! check, once the namespace is weakened.
//!
//! Run: `KUBECONFIG=~/.kube/config cargo test --test e2e_cli -- --ignored --nocapture`

mod common;

use std::path::{Path, PathBuf};

use common::e2e::*;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::config::Kubeconfig;
use kube::{Api, Client};
use serde_json::{Value, json};
use wopr_operator::api::{ApprovalRequest, WoprObject, parse_manifests};

const APPROVER: &str = "e2e-cli-approver@example.com";

/// This test's kubeconfig, written to `dir`; with `user`, every request
/// impersonates that user (kubeconfig `as:`), as `kubectl --as` would.
fn kubeconfig(dir: &Path, user: Option<&str>) -> PathBuf {
    let mut config = Kubeconfig::read().expect("a kubeconfig from KUBECONFIG");
    if let Some(user) = user {
        for named in &mut config.auth_infos {
            if let Some(auth) = named.auth_info.as_mut() {
                auth.impersonate = Some(user.to_owned());
            }
        }
    }
    let path = dir.join(user.map_or("admin".to_owned(), |u| format!("as-{u}")));
    std::fs::write(&path, serde_saphyr::to_string(&config).unwrap()).unwrap();
    path
}

/// The reference deployment (`examples/`) in `namespace`.
async fn apply_examples(client: &Client, namespace: &str) {
    for file in ["security-policy", "sessions", "grants", "gateway"] {
        let text = std::fs::read_to_string(format!("examples/{file}.yaml")).unwrap();
        for object in parse_manifests(&text).unwrap() {
            match object {
                WoprObject::SecurityPolicy(o) => apply(client, namespace, &*o).await,
                WoprObject::Session(o) => apply(client, namespace, &*o).await,
                WoprObject::Grant(o) => apply(client, namespace, &o).await,
                WoprObject::Gateway(o) => apply(client, namespace, &o).await,
                WoprObject::ApprovalRequest(o) => apply(client, namespace, &o).await,
            }
        }
    }
}

/// Binds the ClusterRole `role` in `namespace` to `subject`.
async fn bind(client: &Client, namespace: &str, role: &str, subject: Subject) {
    let mut binding = RoleBinding::default();
    binding.metadata.name = Some(format!("{role}-{}", subject.name.replace(['@', '.'], "-")));
    binding.role_ref = RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: "ClusterRole".into(),
        name: role.into(),
    };
    binding.subjects = Some(vec![subject]);
    apply(client, namespace, &binding).await;
}

/// A service account of `namespace`, and a token of it for the API
/// server's audience (what a workload's kubectl presents).
async fn account_token(client: &Client, namespace: &str, name: &str) -> String {
    let mut account = ServiceAccount::default();
    account.metadata.name = Some(name.into());
    apply(client, namespace, &account).await;
    api_token_of(client, namespace, name).await
}

fn account(namespace: &str, name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
        ..Subject::default()
    }
}

async fn scenario(client: &Client, namespace: &str, control_plane: &str) {
    install_admission(
        client,
        &[
            "wopr-approver",
            "wopr-audit-reader",
            "wopr-session-injector",
        ],
    )
    .await;
    apply_examples(client, namespace).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = kubeconfig(dir.path(), None);
    let run = |args: &[&str]| kubectl_wopr(&admin, namespace, None, args);

    // Grant → list-grants → revoke.
    let granted = run(&[
        "security",
        "grant",
        "session:research-agent",
        "a2a.call",
        "--expires",
        "1d",
    ])
    .await;
    assert_eq!(granted.code, 0);
    let listed = run(&["security", "list-grants", "-o", "json"]).await;
    let grants: Value = serde_json::from_str(&listed.stdout).unwrap();
    let names: Vec<&Value> = grants["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|grant| &grant["metadata"]["name"])
        .collect();
    assert!(
        names.contains(&&json!("session-research-agent")),
        "{names:?}"
    );
    assert_eq!(
        run(&["security", "revoke", "session:research-agent"])
            .await
            .code,
        0
    );
    assert_eq!(
        run(&["security", "revoke", "session:research-agent"])
            .await
            .code,
        2
    );
    let unknown = run(&["security", "grant", "session:ghost", "inject"]).await;
    assert_eq!(
        (unknown.code, unknown.stderr.trim()),
        (2, "error: session \"ghost\" not found")
    );

    // A person approves a waiting request; the admission policy lets the
    // patch through only because decidedBy is that person.
    let requests: Api<ApprovalRequest> = Api::namespaced(client.clone(), namespace);
    let request: ApprovalRequest = serde_json::from_value(json!({
        "apiVersion": "wopr.dev/v1alpha1", "kind": "ApprovalRequest",
        "metadata": {"name": "e2e-cli-request"},
        "spec": {"type": "forward", "gateway": "p2p-gateway",
                 "source": {"type": "p2p", "identity": "alice", "trustLevel": "semi-trusted"},
                 "target": "code-executor", "action": "execute", "payload": "{}",
                 "expiresAt": "2099-01-01T00:00:00Z"},
    }))
    .unwrap();
    requests
        .create(&Default::default(), &request)
        .await
        .unwrap();
    bind(
        client,
        namespace,
        "wopr-approver",
        Subject {
            kind: "User".into(),
            name: APPROVER.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Subject::default()
        },
    )
    .await;
    let approver = kubeconfig(dir.path(), Some(APPROVER));
    let queue = kubectl_wopr(
        &approver,
        namespace,
        None,
        &["security", "gateway", "queue"],
    )
    .await;
    assert!(queue.stdout.contains("e2e-cli-request"), "{}", queue.stdout);
    let approved = kubectl_wopr(
        &approver,
        namespace,
        None,
        &[
            "security",
            "gateway",
            "approve",
            "e2e-cli-request",
            "--reason",
            "e2e",
        ],
    )
    .await;
    assert_eq!(approved.code, 0);
    let status = requests
        .get("e2e-cli-request")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.decided_by.as_deref(), Some(APPROVER));
    assert_eq!(status.decision_reason.as_deref(), Some("e2e"));
    let again = kubectl_wopr(
        &approver,
        namespace,
        None,
        &["security", "gateway", "deny", "e2e-cli-request"],
    )
    .await;
    assert_eq!(again.code, 3, "a decision, once made, stands");

    // A reader's token queries the trail (the controller's own policy
    // events are in it by now); a person with sessions/inject sends a
    // message, one without is refused.
    let reader = account_token(client, namespace, "e2e-cli-reader").await;
    bind(
        client,
        namespace,
        "wopr-audit-reader",
        account(namespace, "e2e-cli-reader"),
    )
    .await;
    let ca = common::tls::ca_flag("control-plane-ca");
    let audit_args = ["--control-plane", control_plane, &ca, "--token", &reader];
    let trail = eventually("audit events of research-agent", || async {
        let mut args = vec![
            "security",
            "audit",
            "--session",
            "research-agent",
            "-o",
            "json",
        ];
        args.extend_from_slice(&audit_args);
        let run = kubectl_wopr(&admin, namespace, None, &args).await;
        let items = serde_json::from_str::<Value>(&run.stdout).ok()?["items"]
            .as_array()?
            .clone();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert!(
        trail
            .iter()
            .all(|event| event["session"] == "research-agent")
    );
    let injector = account_token(client, namespace, "e2e-cli-injector").await;
    bind(
        client,
        namespace,
        "wopr-session-injector",
        account(namespace, "e2e-cli-injector"),
    )
    .await;
    let inject = |token: &str| {
        kubectl_wopr(
            &admin,
            namespace,
            None,
            &[
                "session",
                "inject",
                "research-agent",
                "hello from e2e",
                "--control-plane",
                control_plane,
                &common::tls::ca_flag("control-plane-ca"),
                "--token",
                token,
            ],
        )
    };
    // A workload needs RBAC and a Grant: refused without the Grant, then
    // delivered as the trusted workload its Grant makes it; the reader has
    // no RBAC right to send at all.
    let no_grant = inject(&injector).await;
    assert_eq!(no_grant.code, 3);
    assert!(
        no_grant.stderr.contains("no Grant gives"),
        "{}",
        no_grant.stderr
    );
    let workload = format!("serviceaccount:{namespace}/e2e-cli-injector");
    let granted = run(&[
        "security",
        "grant",
        &workload,
        "--profile",
        "trusted",
        "--sessions",
        "research-agent",
    ])
    .await;
    assert_eq!(granted.code, 0);
    eventually("the workload's message is delivered", || async {
        (inject(&injector).await.code == 0).then_some(())
    })
    .await;
    let refused = inject(&reader).await;
    assert_eq!(refused.code, 3);
    assert!(
        refused.stderr.contains("wopr-session-injector"),
        "{}",
        refused.stderr
    );

    // Verify: the examples pass (once the controller has resolved every
    // session); auto-accepting peers fails the named check.
    eventually("verify passes on the examples", || async {
        (run(&["security", "verify"]).await.code == 0).then_some(())
    })
    .await;
    assert_eq!(
        run(&["config", "set", "security.p2p.autoAccept", "true"])
            .await
            .code,
        0
    );
    let weakened = run(&["security", "verify"]).await;
    assert_eq!(weakened.code, 5);
    assert_eq!(
        weakened.stderr.trim(),
        "error: failing checks: auto-accept-off"
    );
    assert!(
        weakened.stdout.contains("auto-accept-off"),
        "{}",
        weakened.stdout
    );
}

#[tokio::test]
#[ignore = "needs a real cluster (KUBECONFIG)"]
async fn the_cli_against_a_real_api_server() {
    with_controller_on_a_free_port(|client, namespace, control_plane| async move {
        scenario(&client, &namespace, &control_plane).await;
    })
    .await;
}
