//! The chart's RBAC (as rendered into `manifests/install.yaml`) grants
//! exactly what the controller's code uses, nothing broader: no `*`, no
//! verb or resource the code does not call. And every request the
//! reconciler and the control plane actually send, recorded by the mock API,
//! is one the chart grants.

mod common;

use std::collections::BTreeSet;

use common::fake_api::{FakeApi, Recorded};
use common::harness::*;
use common::*;
use serde_json::{Value, json};
use wopr_operator::api::TrustLevel;
use wopr_operator::cluster::preflight::{self, REQUIRED_RIGHTS};
use wopr_operator::controlplane::auth::{Authenticator, TokenReviewer};

const SERVICE_ACCOUNT: &str = "wopr-operator";

/// Where a grant applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    /// Every namespace (a ClusterRole): the watched namespaces when the
    /// chart watches them all, and cluster-scoped resources.
    Cluster,
    /// Only the operator's own namespace (a Role there).
    ReleaseNamespace,
}

/// One verb on one resource, where it applies.
type Permission = (Scope, String, String, String);

/// What the code calls ([`REQUIRED_RIGHTS`]), where the chart rendered
/// with default values must grant it: the watched namespaces are all of
/// them, so those rights come from the ClusterRole.
fn needed() -> BTreeSet<Permission> {
    let mut permissions = BTreeSet::new();
    for rights in REQUIRED_RIGHTS {
        let scope = match rights.scope {
            preflight::Scope::Watched | preflight::Scope::Cluster => Scope::Cluster,
            preflight::Scope::OperatorNamespace => Scope::ReleaseNamespace,
        };
        for resource in rights.resources {
            for verb in rights.verbs {
                permissions.insert((
                    scope,
                    rights.group.to_string(),
                    resource.to_string(),
                    verb.to_string(),
                ));
            }
        }
    }
    permissions
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The roles the chart ships for people to bind (not the controller's).
const ROLES_FOR_PEOPLE: [&str; 3] = [
    "wopr-audit-reader",
    "wopr-approver",
    "wopr-session-injector",
];

/// The chart's roles of `kind` (ClusterRole or Role) for the controller.
fn controller_roles<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind)
        .filter(|o| {
            !ROLES_FOR_PEOPLE
                .iter()
                .any(|name| o["metadata"]["name"] == *name)
        })
        .collect()
}

/// Every (scope, group, resource, verb) the chart's roles for the
/// controller grant, after checking each is bound to the controller's
/// ServiceAccount only.
fn granted(objects: &[Value]) -> BTreeSet<Permission> {
    let mut permissions = BTreeSet::new();
    let roles = [
        controller_roles(objects, "ClusterRole"),
        controller_roles(objects, "Role"),
    ];
    for role in roles.into_iter().flatten() {
        let scope = if role["kind"] == "ClusterRole" {
            Scope::Cluster
        } else {
            assert_eq!(
                role["metadata"]["namespace"], INSTALL_NAMESPACE,
                "a Role outside the release namespace"
            );
            Scope::ReleaseNamespace
        };
        assert_bound_to_the_controller_only(objects, role);
        for rule in role["rules"].as_array().expect("rules") {
            assert!(
                rule.get("nonResourceURLs").is_none() && rule.get("resourceNames").is_none(),
                "unexpected rule shape: {rule}"
            );
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        permissions.insert((scope, group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    permissions
}

fn assert_bound_to_the_controller_only(objects: &[Value], role: &Value) {
    let binding_kind = format!("{}Binding", role["kind"].as_str().unwrap());
    let bindings: Vec<_> = objects
        .iter()
        .filter(|o| {
            o["kind"] == binding_kind.as_str() && o["roleRef"]["name"] == role["metadata"]["name"]
        })
        .collect();
    assert_eq!(
        bindings.len(),
        1,
        "one binding of {}",
        role["metadata"]["name"]
    );
    assert_eq!(
        bindings[0]["subjects"],
        json!([{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": INSTALL_NAMESPACE}])
    );
}

#[test]
fn the_chart_grants_exactly_what_the_code_needs() {
    let objects = install_yaml();
    let granted = granted(&objects);
    let needed = needed();
    let broader: Vec<_> = granted.difference(&needed).collect();
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(
        broader.is_empty() && missing.is_empty(),
        "the chart grants more than the code uses: {broader:?}\nthe chart lacks: {missing:?}"
    );
}

#[test]
fn no_wildcards_anywhere() {
    for (_, group, resource, verb) in granted(&install_yaml()) {
        for part in [&group, &resource, &verb] {
            assert!(!part.contains('*'), "wildcard in {group}/{resource} {verb}");
        }
    }
}

/// Reading the audit trail (`list auditevents.wopr.dev`) and sending a
/// session a message (`create sessions/inject`) are one right each, in a
/// ClusterRole the chart binds to nobody and aggregates into `edit` (and so
/// `admin`), never `view`.
#[test]
fn the_reader_and_injector_roles_grant_one_right_each() {
    let objects = install_yaml();
    for (name, rule) in [
        (
            "wopr-audit-reader",
            json!({"apiGroups": ["wopr.dev"], "resources": ["auditevents"], "verbs": ["list"]}),
        ),
        (
            "wopr-session-injector",
            json!({"apiGroups": ["wopr.dev"], "resources": ["sessions/inject"], "verbs": ["create"]}),
        ),
    ] {
        let role = objects
            .iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the {name} ClusterRole"));
        assert_eq!(role["rules"], json!([rule]), "{name}");
        let labels = &role["metadata"]["labels"];
        assert_eq!(
            labels["rbac.authorization.k8s.io/aggregate-to-edit"], "true",
            "{name}"
        );
        assert!(
            labels
                .get("rbac.authorization.k8s.io/aggregate-to-view")
                .is_none(),
            "{name}"
        );
        assert!(
            !objects.iter().any(|o| o["roleRef"]["name"] == name),
            "the chart binds {name} to nobody"
        );
    }
}

#[tokio::test]
async fn the_subject_access_review_is_granted() {
    let (client, api) = FakeApi::start();
    api.insert(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": {},
               "status": {"authenticated": true, "user": {"username": "alice"}}}),
    );
    api.insert(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {}, "spec": {},
               "status": {"allowed": false}}),
    );
    let _refused = TokenReviewer::new(client)
        .may_read_audit("t", Some("team-a"))
        .await;
    let requests = api.take_requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.ends_with("/subjectaccessreviews"))
    );
    assert_granted(&requests, &granted(&install_yaml()));
}

#[test]
fn the_controller_runs_as_the_bound_service_account() {
    let objects = install_yaml();
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("the controller Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        SERVICE_ACCOUNT
    );
    assert_eq!(deployment["metadata"]["namespace"], INSTALL_NAMESPACE);
}

/// The RBAC permission one recorded request needs, None for discovery.
fn permission_of(request: &Recorded) -> Option<Permission> {
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("unexpected path {}", request.path),
    };
    let (resource, name, subresource) = match rest {
        [] => return None,
        ["namespaces", _, resource] => (*resource, None, None),
        ["namespaces", _, resource, name] => (*resource, Some(*name), None),
        ["namespaces", _, resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        _ => panic!("unexpected path {}", request.path),
    };
    let verb = match (request.method.as_str(), name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if request.query.contains("watch=true") => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        (method, _) => panic!("unexpected method {method}"),
    };
    let resource = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    Some((Scope::Cluster, group.to_owned(), resource, verb.to_owned()))
}

fn assert_granted(requests: &[Recorded], granted: &BTreeSet<Permission>) {
    assert!(!requests.is_empty());
    for request in requests {
        if let Some(permission) = permission_of(request) {
            assert!(
                granted.contains(&permission),
                "{} needs {permission:?}, which the chart does not grant",
                request.line()
            );
        }
    }
}

async fn run(harness: &Harness, requests: &mut Vec<Recorded>, name: &str) {
    harness.reconcile(name).await;
    requests.extend(harness.api.take_requests());
}

#[tokio::test]
async fn every_request_of_a_sessions_life_is_granted() {
    let granted = granted(&install_yaml());
    let mut harness = Harness::leader().await;
    let mut requests = Vec::new();
    harness.create(&session("research", TrustLevel::SemiTrusted));
    run(&harness, &mut requests, "research").await;
    harness.add_grant(session_grant(
        "g",
        "research",
        &[wopr_operator::api::Capability::A2aCall],
    ));
    run(&harness, &mut requests, "research").await;
    harness.edit("research", |spec| {
        spec["sandbox"] = json!({"image": "example.com/agent:2"})
    });
    run(&harness, &mut requests, "research").await; // deletes the pod, records an event
    run(&harness, &mut requests, "research").await; // creates the new pod
    harness.edit("research", |spec| {
        spec["sandbox"] = json!({"enabled": false})
    });
    run(&harness, &mut requests, "research").await; // invalid: a Warning event
    harness.api.modify(&session_path("research"), |session| {
        session["metadata"]["deletionTimestamp"] = json!("2026-11-24T12:01:00Z");
    });
    run(&harness, &mut requests, "research").await;
    let kinds: BTreeSet<_> = requests.iter().map(|r| r.method.to_string()).collect();
    assert_eq!(
        kinds,
        ["DELETE", "GET", "PATCH", "POST"].map(String::from).into()
    );
    assert_granted(&requests, &granted);
}

#[tokio::test]
async fn the_token_review_is_granted() {
    let (client, api) = FakeApi::start();
    api.insert(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": {},
               "status": {"authenticated": false}}),
    );
    let _refused = TokenReviewer::new(client).authenticate("t").await;
    assert_granted(&api.take_requests(), &granted(&install_yaml()));
}
