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

/// One verb on one resource, where it applies, on one object by name or on
/// every object (`""`).
type Permission = (Scope, String, String, String, String);

/// The name of a [`Permission`] on every object.
const ANY: &str = "";

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
        let names = if rights.names.is_empty() {
            &[ANY][..]
        } else {
            rights.names
        };
        for resource in rights.resources {
            for verb in rights.verbs {
                for name in names {
                    permissions.insert((
                        scope,
                        rights.group.to_string(),
                        resource.to_string(),
                        verb.to_string(),
                        name.to_string(),
                    ));
                }
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
const ROLES_FOR_PEOPLE: [&str; 11] = [
    "wopr-audit-reader",
    "wopr-approver",
    "wopr-session-injector",
    "wopr-view",
    "wopr-edit",
    "wopr-admin",
    "wopr-trust-untrusted",
    "wopr-trust-semi-trusted",
    "wopr-trust-trusted",
    "wopr-trust-owner",
    "wopr-sandbox-overrides",
];

/// The one Role the chart ships for people: reaching the control plane
/// through a port-forward, in the operator's namespace only.
const CONTROL_PLANE_CLIENT: &str = wopr_operator::cli::portforward::CLIENT_ROLE;

/// The egress service's ClusterRole, bound per namespace by the controller.
const PROVIDER_KEYS_ROLE: &str = wopr_operator::contract::PROVIDER_KEYS_ROLE;

/// The inventory above is every role the chart binds to nobody.
#[test]
fn the_roles_for_people_are_those_the_chart_binds_to_nobody() {
    let mut listed: Vec<String> = ROLES_FOR_PEOPLE
        .iter()
        .map(|name| name.to_string())
        .collect();
    listed.sort();
    assert_eq!(people_roles(), listed);
}

/// The chart's roles of `kind` (ClusterRole or Role) for the controller.
fn controller_roles<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind)
        .filter(|o| {
            !ROLES_FOR_PEOPLE
                .iter()
                .chain([&CONTROL_PLANE_CLIENT, &PROVIDER_KEYS_ROLE])
                .any(|name| o["metadata"]["name"] == *name)
        })
        .collect()
}

/// `kubectl wopr` without `--control-plane` port-forwards to a controller
/// pod: the Role for it, bound to nobody, lives in the operator's namespace
/// (so it reaches no session pod) and holds exactly what the CLI sends
/// (list the pods; read the CA bundle the operator publishes there; the
/// WebSocket upgrade, `get` before Kubernetes 1.35 and `create` too since). No role for people grants port-forward anywhere
/// else.
#[test]
fn the_control_plane_client_role_port_forwards_in_the_operator_namespace_only() {
    let objects = install_yaml();
    let role = rendered("Role", CONTROL_PLANE_CLIENT);
    assert_eq!(role["metadata"]["namespace"], INSTALL_NAMESPACE);
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
            {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["wopr-ca-bundle"], "verbs": ["get"]},
        ])
    );
    assert!(
        !objects
            .iter()
            .any(|o| o["roleRef"]["name"] == CONTROL_PLANE_CLIENT),
        "the chart binds {CONTROL_PLANE_CLIENT} to nobody"
    );
    let unbound_roles: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "Role")
        .filter(|o| {
            !objects
                .iter()
                .any(|b| b["roleRef"]["name"] == o["metadata"]["name"])
        })
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(unbound_roles, [CONTROL_PLANE_CLIENT]);
    for name in ROLES_FOR_PEOPLE {
        let role = rendered("ClusterRole", name);
        for rule in role["rules"].as_array().unwrap() {
            assert!(
                !rule_rights(rule)
                    .iter()
                    .any(|(_, resource, _, _)| resource.starts_with("pods")),
                "{name} grants pods: {rule}"
            );
        }
    }
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
                rule.get("nonResourceURLs").is_none(),
                "unexpected rule shape: {rule}"
            );
            for (group, resource, verb, name) in rule_rights(rule) {
                permissions.insert((scope, group, resource, verb, name));
            }
        }
    }
    permissions
}

/// Every (group, resource, verb, name) one RBAC rule grants; the name is
/// [`ANY`] for a rule without `resourceNames`.
fn rule_rights(rule: &Value) -> Vec<(String, String, String, String)> {
    let mut names = strings(&rule["resourceNames"]);
    if names.is_empty() {
        names.push(ANY.to_owned());
    }
    let mut rights = Vec::new();
    for group in strings(&rule["apiGroups"]) {
        for resource in strings(&rule["resources"]) {
            for verb in strings(&rule["verbs"]) {
                for name in &names {
                    rights.push((group.clone(), resource.clone(), verb.clone(), name.clone()));
                }
            }
        }
    }
    rights
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

/// No role of the chart, the controller's or people's, holds a `*`.
#[test]
fn no_wildcards_anywhere() {
    let objects = install_yaml();
    for role in objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")))
    {
        for rule in role["rules"].as_array().expect("rules") {
            for list in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[list]).iter().any(|item| item.contains('*')),
                    "wildcard in {} {list}: {rule}",
                    role["metadata"]["name"]
                );
            }
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
        let role = rendered("ClusterRole", name);
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

/// The built-in roles (`view`, `edit`, `admin`) a ClusterRole is aggregated into.
fn aggregated_into(role: &Value) -> Vec<&str> {
    ["view", "edit", "admin"]
        .into_iter()
        .filter(|builtin| {
            role["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{builtin}")]
                == "true"
        })
        .collect()
}

/// Each trust level's role holds `use` on its level and every level below
/// (a superset of the one below), nothing else but, for owner, sandbox
/// overrides; only semi-trusted is
/// aggregated (into `edit`); trusted, owner and sandbox overrides are given
/// by name, and the chart binds none of them.
#[test]
fn each_trust_role_holds_the_levels_below_it_and_nothing_else() {
    let objects = install_yaml();
    let mut below = BTreeSet::new();
    for level in TrustLevel::ALL {
        let name = format!("wopr-trust-{level}");
        let role = &rendered("ClusterRole", &name);
        let rules = role["rules"].as_array().unwrap();
        // Owner (no sandbox at all) also holds sandbox overrides.
        let overrides =
            json!({"apiGroups": ["wopr.dev"], "resources": ["sandboxoverrides"], "verbs": ["use"]});
        let expected_rules = if level == TrustLevel::Owner { 2 } else { 1 };
        assert_eq!(rules.len(), expected_rules, "{name}");
        assert_eq!(
            rules.contains(&overrides),
            level == TrustLevel::Owner,
            "{name}"
        );
        assert_eq!(strings(&rules[0]["apiGroups"]), ["wopr.dev"]);
        assert_eq!(strings(&rules[0]["resources"]), ["trustlevels"]);
        assert_eq!(strings(&rules[0]["verbs"]), ["use"]);
        let names: BTreeSet<String> = strings(&rules[0]["resourceNames"]).into_iter().collect();
        assert!(
            names.is_superset(&below),
            "{name} holds every level below it"
        );
        below.insert(level.as_str().to_owned());
        assert_eq!(
            names, below,
            "{name} holds its level and those below, no more"
        );
        let aggregated = if level == TrustLevel::SemiTrusted {
            vec!["edit"]
        } else {
            vec![]
        };
        assert_eq!(aggregated_into(role), aggregated, "{name}");
        assert!(
            !objects
                .iter()
                .any(|o| o["roleRef"]["name"] == name.as_str()),
            "the chart binds {name} to nobody"
        );
    }
    let role = &rendered("ClusterRole", "wopr-sandbox-overrides");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["wopr.dev"], "resources": ["sandboxoverrides"], "verbs": ["use"]}])
    );
    assert!(aggregated_into(role).is_empty());
    assert!(
        !objects
            .iter()
            .any(|o| o["roleRef"]["name"] == "wopr-sandbox-overrides")
    );
}

/// What `view`, `edit` and `admin` gain from the chart by aggregation
/// (each holds the one before it): reading every kind; writing Sessions,
/// Grants and Gateways, at trust levels up to semi-trusted; the
/// SecurityPolicy for `admin` only, without delete. ApprovalRequests are
/// decided through wopr-approver, statuses are the operator's.
#[test]
fn view_edit_and_admin_gain_sensible_defaults() {
    let objects = install_yaml();
    let gained = |builtin: &str| -> BTreeSet<(String, String, String)> {
        let includes: &[&str] = match builtin {
            "view" => &["view"],
            "edit" => &["view", "edit"],
            _ => &["view", "edit", "admin"],
        };
        let mut rights = BTreeSet::new();
        for role in objects.iter().filter(|o| o["kind"] == "ClusterRole") {
            if !aggregated_into(role)
                .iter()
                .any(|into| includes.contains(into))
            {
                continue;
            }
            for rule in role["rules"].as_array().unwrap() {
                for (_, resource, verb, name) in rule_rights(rule) {
                    rights.insert((resource, verb, name));
                }
            }
        }
        rights
    };
    let right = |resource: &str, verb: &str| (resource.to_owned(), verb.to_owned(), ANY.to_owned());
    let view = gained("view");
    for kind in [
        "sessions",
        "grants",
        "gateways",
        "securitypolicies",
        "approvalrequests",
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(view.contains(&right(kind, verb)), "view reads {kind}");
        }
    }
    assert!(
        view.iter()
            .all(|(_, verb, _)| ["get", "list", "watch"].contains(&verb.as_str())),
        "view only reads: {view:?}"
    );

    let edit = gained("edit");
    for kind in ["sessions", "grants", "gateways"] {
        for verb in ["create", "update", "patch", "delete"] {
            assert!(edit.contains(&right(kind, verb)), "edit writes {kind}");
        }
    }
    let uses: Vec<&str> = edit
        .iter()
        .filter(|(resource, verb, _)| resource == "trustlevels" && verb == "use")
        .map(|(_, _, name)| name.as_str())
        .collect();
    assert_eq!(
        uses,
        ["semi-trusted", "untrusted"],
        "edit uses trust levels up to semi-trusted only"
    );
    let admin = gained("admin");
    for (who, rights) in [("edit", &edit), ("admin", &admin)] {
        assert!(!rights.contains(&right("sandboxoverrides", "use")), "{who}");
        assert!(
            !rights
                .iter()
                .any(|(resource, verb, _)| resource.ends_with("/status") && verb != "get"),
            "{who} writes no status"
        );
        assert!(
            !rights
                .iter()
                .any(|(resource, verb, _)| resource == "approvalrequests"
                    && !["get", "list", "watch"].contains(&verb.as_str())),
            "{who}"
        );
    }
    assert!(
        !edit
            .iter()
            .any(|(resource, verb, _)| resource == "securitypolicies"
                && verb != "get"
                && verb != "list"
                && verb != "watch")
    );
    for verb in ["create", "update", "patch"] {
        assert!(
            admin.contains(&right("securitypolicies", verb)),
            "admin {verb}s the SecurityPolicy"
        );
    }
    assert!(!admin.contains(&right("securitypolicies", "delete")));
    assert_eq!(
        admin
            .iter()
            .filter(|(resource, _, _)| resource == "trustlevels")
            .count(),
        2,
        "admin uses no more levels than edit"
    );
}

/// The control plane's reviews as the caller are granted: a reader's one
/// SubjectAccessReview, and a person's message's two (sessions/inject,
/// then the session's trust level) after one TokenReview.
#[tokio::test]
async fn the_subject_access_reviews_are_granted() {
    let (client, api) = FakeApi::start();
    api.insert(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": {},
               "status": {"authenticated": true, "user": {"username": "alice"}}}),
    );
    api.insert(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {}, "spec": {},
               "status": {"allowed": true}}),
    );
    let reviewer = TokenReviewer::new(client);
    let reviews = |requests: &[Recorded]| {
        requests
            .iter()
            .filter(|r| r.path.ends_with("/subjectaccessreviews"))
            .count()
    };
    assert_eq!(
        reviewer.may_read_audit("t", Some("team-a")).await.unwrap(),
        "alice"
    );
    let mut requests = api.take_requests();
    assert_eq!(reviews(&requests), 1);
    let sender = reviewer
        .may_inject("t", "team-a", "lead", Some(TrustLevel::Owner))
        .await;
    assert_eq!(sender.unwrap(), "alice");
    let message = api.take_requests();
    assert_eq!(reviews(&message), 2);
    requests.extend(message);
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

/// The RBAC permissions one recorded request needs, none for discovery. A
/// server-side apply of an object (not of a subresource) may create it, and
/// the API server then authorizes it as `create` too (with its name), so it
/// needs both `patch` and `create`.
fn permissions_of(request: &Recorded) -> Vec<Permission> {
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("unexpected path {}", request.path),
    };
    let (resource, name, subresource) = match rest {
        [] => return Vec::new(),
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
    let applies = request.method == "PATCH"
        && subresource.is_none()
        && request.query.contains("fieldManager=")
        && request
            .body
            .as_ref()
            .is_some_and(|body| body.get("kind").is_some());
    let resource = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    let verbs: &[&str] = if applies { &[verb, "create"] } else { &[verb] };
    verbs
        .iter()
        .map(|verb| {
            (
                Scope::Cluster,
                group.to_owned(),
                resource.clone(),
                (*verb).to_owned(),
                name.unwrap_or(ANY).to_owned(),
            )
        })
        .collect()
}

fn assert_granted(requests: &[Recorded], granted: &BTreeSet<Permission>) {
    assert!(!requests.is_empty());
    for request in requests {
        for permission in permissions_of(request) {
            let (scope, group, resource, verb, _) = permission.clone();
            assert!(
                granted.contains(&permission)
                    || granted.contains(&(scope, group, resource, verb, ANY.to_owned())),
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

/// `exec_command`'s requests: the read of the caller's pod and the exec
/// (a WebSocket GET, which newer API servers authorize as `create`).
#[tokio::test]
async fn the_exec_requests_are_granted() {
    use wopr_operator::controlplane::exec::Executor;
    let api = FakeApi::default();
    let address = api.serve_http().await;
    let mut session = session("coder", TrustLevel::Trusted);
    session.status = Some(wopr_operator::api::SessionStatus {
        pod_name: Some("wopr-coder".into()),
        ..Default::default()
    });
    api.insert(
        &pod_path("coder"),
        serde_json::to_value(pod_of(&session)).unwrap(),
    );
    api.script_exec(|_| common::fake_api::ExecReply::exited(0, b"", b""));
    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    let executor = Executor::new(kube::Client::try_from(config).unwrap(), 1024);
    executor
        .session_pod(NAMESPACE, "wopr-coder", &session)
        .await
        .unwrap();
    let run = wopr_operator::policy::tools::arguments::CommandRun {
        command: "true".into(),
        args: Vec::new(),
        cwd: None,
        timeout: None,
        stdin: None,
    };
    executor.run(NAMESPACE, "wopr-coder", &run).await.unwrap();
    let granted = granted(&install_yaml());
    let requests = api.take_requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_granted(&requests, &granted);
    let create = (
        Scope::Cluster,
        String::new(),
        "pods/exec".into(),
        "create".into(),
        ANY.into(),
    );
    assert!(granted.contains(&create));
    for (resource, verb) in [
        ("pods/attach", "create"),
        ("pods/attach", "get"),
        ("pods/portforward", "create"),
    ] {
        let right = (
            Scope::Cluster,
            String::new(),
            resource.into(),
            verb.into(),
            ANY.into(),
        );
        assert!(!granted.contains(&right), "the controller holds {right:?}");
    }
}

/// Whether `subject` (a ServiceAccount `namespace/name`) may `verb`
/// Secrets in `namespace`, by the chart's roles and `extra` bindings:
/// RBAC's rules (a ClusterRoleBinding grants everywhere, a RoleBinding in
/// its namespace only), without wildcards (no_wildcards_anywhere).
fn may_on_secrets(objects: &[Value], subject: &str, verb: &str, namespace: &str) -> bool {
    let role = |kind: &str, name: &str, role_namespace: Option<&str>| {
        objects.iter().find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && role_namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns)
        })
    };
    objects
        .iter()
        .filter(|binding| {
            binding["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    format!(
                        "{}/{}",
                        s["namespace"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or("")
                    ) == subject
                })
        })
        .filter_map(|binding| {
            let binding_namespace = binding["metadata"]["namespace"].as_str();
            let reaches = match binding["kind"].as_str() {
                Some("ClusterRoleBinding") => true,
                Some("RoleBinding") => binding_namespace == Some(namespace),
                _ => false,
            };
            let role_kind = binding["roleRef"]["kind"].as_str()?;
            let role_name = binding["roleRef"]["name"].as_str()?;
            let scope = (role_kind == "Role").then_some(binding_namespace?);
            reaches.then(|| role(role_kind, role_name, scope)).flatten()
        })
        .flat_map(|role| role["rules"].as_array().cloned().unwrap_or_default())
        .any(|rule| {
            rule_rights(&rule)
                .iter()
                .any(|(group, resource, rule_verb, _)| {
                    group.is_empty() && resource == "secrets" && rule_verb == verb
                })
        })
}

/// The egress service may `get` Secrets only in a namespace where the
/// controller bound it (one whose default SecurityPolicy configures
/// providers), never list or watch them; the controller reads no Secret
/// outside its own namespace (its CA), binding or not.
#[test]
fn the_egress_service_gets_secrets_only_where_bound_and_the_controller_none() {
    use kube::core::DeserializeGuard;
    use wopr_operator::api::SecurityPolicy;
    use wopr_operator::controller::provider_keys::{EgressAccount, binding_for};
    let mut objects = install_yaml();
    let mut policy: SecurityPolicy = serde_json::from_value(json!({
        "apiVersion": "wopr.dev/v1alpha1",
        "kind": "SecurityPolicy",
        "metadata": {"name": "default", "namespace": "team-a", "uid": "u-1"},
        "spec": {"providers": [{"name": "openai", "type": "openai", "secretRef": {"name": "openai-key", "key": "apiKey"}}]}
    }))
    .unwrap();
    let egress = EgressAccount {
        name: "wopr-operator-egress".into(),
        namespace: INSTALL_NAMESPACE.into(),
    };
    let binding = binding_for(&DeserializeGuard(Ok(policy.clone())), &egress).expect("a binding");
    objects.push(serde_json::to_value(&binding).unwrap());
    objects.last_mut().unwrap()["kind"] = json!("RoleBinding");

    let egress_sa = format!("{INSTALL_NAMESPACE}/wopr-operator-egress");
    assert!(may_on_secrets(&objects, &egress_sa, "get", "team-a"));
    for verb in ["list", "watch", "create", "update", "patch", "delete"] {
        assert!(
            !may_on_secrets(&objects, &egress_sa, verb, "team-a"),
            "{verb}"
        );
    }
    assert!(!may_on_secrets(&objects, &egress_sa, "get", "team-b"));
    assert!(!may_on_secrets(
        &objects,
        &egress_sa,
        "get",
        INSTALL_NAMESPACE
    ));

    let controller = format!("{INSTALL_NAMESPACE}/{SERVICE_ACCOUNT}");
    for verb in ["get", "list", "watch"] {
        assert!(
            !may_on_secrets(&objects, &controller, verb, "team-a"),
            "{verb}"
        );
    }

    policy.spec.providers.clear();
    assert!(
        binding_for(&DeserializeGuard(Ok(policy)), &egress).is_none(),
        "no providers, no binding"
    );
}
