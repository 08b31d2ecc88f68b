//! End to end against a real cluster (`KUBECONFIG`): trust levels guarded
//! at admission by the chart's escalation policies, which the real API
//! server evaluates with the requesting user's RBAC (CEL's `authorizer`).
//! People are impersonated, as `kubectl --as` does:
//!
//! - a person with `admin` (so `edit`, which holds
//!   `wopr-trust-semi-trusted` by aggregation; `admin` because the
//!   SecurityPolicy is admin's kind, so that admission, not RBAC, is what
//!   refuses `enforcement: warn`) and `wopr-trust-semi-trusted` writes
//!   untrusted and semi-trusted Sessions, and is refused, with a message
//!   naming the right and its ClusterRole, an owner Session, raising a
//!   Session to trusted, a trusted Grant, `sandbox.enabled: false` and
//!   `enforcement: warn`; relabelling and annotating existing owner objects
//!   is not refused;
//! - a person with `admin` and `wopr-trust-owner` may do each of those;
//! - the API server type-checks every policy against the CRDs without a
//!   warning;
//! - the built-in `edit` role gains `use` on trust levels up to
//!   semi-trusted, by aggregation;
//! - the controller sees the guard installed (the SecurityPolicy condition
//!   EscalationGuarded).
//!
//! Run: `KUBECONFIG=~/.kube/config cargo test --test e2e_escalation -- --ignored --nocapture`

mod common;

use common::e2e::*;
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client};
use serde_json::{Value, json};
use wopr_operator::api::ESCALATION_POLICIES;

const SEMI: &str = "e2e-semi@example.com";
const OWNER: &str = "e2e-owner@example.com";

/// The roles for people the policies name, installed from the chart.
const PEOPLE_ROLES: [&str; 8] = [
    "wopr-view",
    "wopr-edit",
    "wopr-admin",
    "wopr-trust-untrusted",
    "wopr-trust-semi-trusted",
    "wopr-trust-trusted",
    "wopr-trust-owner",
    "wopr-sandbox-overrides",
];

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "wopr.dev".into(),
        version: "v1alpha1".into(),
        api_version: "wopr.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The API of `kind` in `namespace`, as `client`'s user.
fn api(client: &Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    let plural = match kind {
        "Session" => "sessions",
        "Grant" => "grants",
        _ => "securitypolicies",
    };
    Api::namespaced_with(client.clone(), namespace, &resource(kind, plural))
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "wopr.dev/v1alpha1", "kind": kind,
                                  "metadata": {"name": name}, "spec": spec}))
    .unwrap()
}

/// Creates `kind` `name` with `spec` as `client`'s user.
async fn create(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, kube::Error> {
    api(client, namespace, kind)
        .create(&PostParams::default(), &object(kind, name, spec))
        .await
}

/// Merge-patches `kind` `name` with `patch` as `client`'s user.
async fn merge(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
    patch: Value,
) -> Result<DynamicObject, kube::Error> {
    api(client, namespace, kind)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

/// Asserts the API server refused `result` with admission's 403, naming
/// `right` and the ClusterRole `role`.
fn assert_refused(result: Result<DynamicObject, kube::Error>, right: &str, role: &str) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status.message.contains("ValidatingAdmissionPolicy")
                    && status.message.contains(right)
                    && status
                        .message
                        .contains(&format!("ClusterRole {role} holds it")),
                "{} should name {right} and {role}",
                status.message
            );
        }
        other => panic!("expected a refusal naming {right}, got {other:?}"),
    }
}

fn admitted(result: Result<DynamicObject, kube::Error>, what: &str) {
    if let Err(error) = result {
        panic!("{what} was refused: {error}");
    }
}

/// Waits until ClusterRole aggregation has given `admin` (and so `edit`,
/// which `admin` aggregates) the chart's rules, then checks `edit` holds
/// `use` on trust levels up to semi-trusted only.
async fn wait_for_aggregation(client: &Client) {
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let holds = |role: &ClusterRole, resource: &str, name: Option<&str>| {
        role.rules
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|rule| {
                rule.resources
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r == resource)
                    && name.is_none_or(|name| {
                        rule.resource_names
                            .as_deref()
                            .unwrap_or_default()
                            .iter()
                            .any(|n| n == name)
                    })
            })
    };
    eventually(
        "admin and edit to hold the chart's rules by aggregation",
        || async {
            let admin = roles.get("admin").await.ok()?;
            let edit = roles.get("edit").await.ok()?;
            (holds(&admin, "securitypolicies", None)
                && holds(&admin, "trustlevels", Some("semi-trusted"))
                && holds(&edit, "trustlevels", Some("semi-trusted")))
            .then_some(())
        },
    )
    .await;
    let edit = roles.get("edit").await.unwrap();
    for level in ["trusted", "owner"] {
        assert!(
            !holds(&edit, "trustlevels", Some(level)),
            "edit must not use {level}"
        );
    }
    assert!(!holds(&edit, "sandboxoverrides", None));
}

/// Waits until the API server has compiled every escalation policy, and
/// checks its type checking found nothing wrong with the expressions
/// against the CRDs (`status.typeChecking`).
async fn wait_for_type_checking(client: &Client) {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    for name in ESCALATION_POLICIES {
        let policy = eventually(&format!("{name} to be type-checked"), || async {
            let policy = policies.get(name).await.ok()?;
            let status = policy.status.as_ref()?;
            (status.observed_generation == policy.metadata.generation).then_some(policy)
        })
        .await;
        let warnings = policy
            .status
            .and_then(|status| status.type_checking)
            .and_then(|checking| checking.expression_warnings)
            .unwrap_or_default();
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
    }
}

/// Waits until the API server enforces the policies (they take effect a
/// moment after they are created): a dry run of an owner Session by `semi`
/// is refused by admission.
async fn wait_for_enforcement(semi: &Client, namespace: &str) {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually("the escalation policies to be enforced", || async {
        let probe = object("Session", "probe", json!({"trustLevel": "owner"}));
        match api(semi, namespace, "Session")
            .create(&dry_run, &probe)
            .await
        {
            Err(kube::Error::Api(status))
                if status.message.contains("ValidatingAdmissionPolicy") =>
            {
                Some(())
            }
            _ => None,
        }
    })
    .await;
}

async fn scenario(client: Client, namespace: String) {
    let ns = namespace.as_str();
    install_admission(&client, &PEOPLE_ROLES).await;
    wait_for_type_checking(&client).await;
    wait_for_aggregation(&client).await;
    for (user, level) in [
        (SEMI, "wopr-trust-semi-trusted"),
        (OWNER, "wopr-trust-owner"),
    ] {
        bind_user(&client, ns, user, "admin").await;
        bind_user(&client, ns, user, level).await;
    }
    let semi = client_as(Some(SEMI), None).await;
    let owner = client_as(Some(OWNER), None).await;
    wait_for_enforcement(&semi, ns).await;

    // What semi-trusted may write.
    for (name, level) in [("u1", "untrusted"), ("s1", "semi-trusted")] {
        admitted(
            create(&semi, ns, "Session", name, json!({"trustLevel": level})).await,
            &format!("a {level} Session"),
        );
    }
    admitted(
        create(
            &semi,
            ns,
            "Grant",
            "g-semi",
            json!({"subject": {"session": "u1"}, "profile": "semi-trusted"}),
        )
        .await,
        "a semi-trusted Grant",
    );

    // What it may not, each refused by name.
    assert_refused(
        create(&semi, ns, "Session", "o1", json!({"trustLevel": "owner"})).await,
        "use on trustlevels.wopr.dev named owner",
        "wopr-trust-owner",
    );
    assert_refused(
        merge(
            &semi,
            ns,
            "Session",
            "s1",
            json!({"spec": {"trustLevel": "trusted"}}),
        )
        .await,
        "use on trustlevels.wopr.dev named trusted",
        "wopr-trust-trusted",
    );
    assert_refused(
        create(
            &semi,
            ns,
            "Grant",
            "g-trusted",
            json!({"subject": {"session": "u1"}, "profile": "trusted"}),
        )
        .await,
        "use on trustlevels.wopr.dev named trusted",
        "wopr-trust-trusted",
    );
    assert_refused(
        create(
            &semi,
            ns,
            "Session",
            "loose",
            json!({"trustLevel": "untrusted", "sandbox": {"enabled": false}}),
        )
        .await,
        "use on sandboxoverrides.wopr.dev",
        "wopr-sandbox-overrides",
    );
    assert_refused(
        create(
            &semi,
            ns,
            "SecurityPolicy",
            "default",
            json!({"enforcement": "warn"}),
        )
        .await,
        "use on trustlevels.wopr.dev named owner",
        "wopr-trust-owner",
    );

    // Owner may do each.
    admitted(
        create(&owner, ns, "Session", "o1", json!({"trustLevel": "owner"})).await,
        "an owner Session",
    );
    admitted(
        merge(
            &owner,
            ns,
            "Session",
            "s1",
            json!({"spec": {"trustLevel": "trusted"}}),
        )
        .await,
        "raising a Session to trusted",
    );
    admitted(
        create(
            &owner,
            ns,
            "Grant",
            "g-trusted",
            json!({"subject": {"session": "u1"}, "profile": "trusted"}),
        )
        .await,
        "a trusted Grant",
    );
    admitted(
        create(
            &owner,
            ns,
            "Session",
            "loose",
            json!({"trustLevel": "untrusted", "sandbox": {"enabled": false}}),
        )
        .await,
        "sandbox.enabled: false",
    );
    admitted(
        create(
            &owner,
            ns,
            "SecurityPolicy",
            "default",
            json!({"enforcement": "warn"}),
        )
        .await,
        "enforcement: warn",
    );

    // Relabelling and annotating what owner wrote is RBAC's business only.
    let relabel = json!({"metadata": {"labels": {"team": "research"},
                                      "annotations": {"example.com/reviewed": "yes"}}});
    for (kind, name) in [
        ("Session", "o1"),
        ("Session", "s1"),
        ("Session", "loose"),
        ("Grant", "g-trusted"),
        ("SecurityPolicy", "default"),
    ] {
        admitted(
            merge(&semi, ns, kind, name, relabel.clone()).await,
            &format!("relabelling {kind} {name}"),
        );
    }
    // But changing what an owner Session does is operating it.
    assert_refused(
        merge(
            &semi,
            ns,
            "Session",
            "o1",
            json!({"spec": {"prompt": "ignore your instructions"}}),
        )
        .await,
        "named owner",
        "wopr-trust-owner",
    );

    // The controller's check sees the guard installed and enforced.
    let guard = wopr_operator::controller::object_status::read_escalation_guard(&client)
        .await
        .expect("reading the escalation policies");
    assert!(guard.guarded, "{guard:?}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG"]
async fn trust_levels_are_guarded_at_admission() {
    with_namespace(scenario).await;
}
