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
//!   Session to trusted, a trusted Grant, a loosened sandbox below trusted,
//!   `enforcement: warn`, and every way to route untrusted input to an
//!   owner Session through a Gateway (a Gateway serving it or forwarding to
//!   it, raising a Gateway's trustLevel, adding a rule to an owner
//!   Gateway); relabelling and annotating existing owner
//!   objects is not refused (every case is valid for the CRD schema, which
//!   `tests/escalation_admission.rs` checks offline, so only admission can
//!   refuse it);
//! - what the schema refuses (an untrusted Session without a sandbox) it
//!   refuses for an owner too, with 422;
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
use common::escalations::*;
use common::people_roles;
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client};
use serde_json::json;
use wopr_operator::api::ESCALATION_POLICIES;

const SEMI: &str = "e2e-semi@example.com";
const OWNER: &str = "e2e-owner@example.com";

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
        "Gateway" => "gateways",
        _ => "securitypolicies",
    };
    Api::namespaced_with(client.clone(), namespace, &resource(kind, plural))
}

fn object(write: &Write) -> DynamicObject {
    serde_json::from_value(write.created()).unwrap()
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
        let probe = object(&Write::create(
            "probe",
            "Session",
            "probe",
            json!({"trustLevel": "owner"}),
        ));
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

/// Makes `write` as `client`'s user.
async fn by(write: &Write, client: &Client, namespace: &str) -> Result<DynamicObject, kube::Error> {
    let api = api(client, namespace, write.kind);
    if write.patch {
        api.patch(
            write.name,
            &PatchParams::default(),
            &Patch::Merge(&write.body),
        )
        .await
    } else {
        api.create(&PostParams::default(), &object(write)).await
    }
}

async fn scenario(client: Client, namespace: String) {
    let ns = namespace.as_str();
    install_admission(
        &client,
        &people_roles()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
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
    for write in semi_trusted_may() {
        admitted(by(&write, &semi, ns).await, write.what);
    }

    // What it may not, each refused by name, and owner may. Every case is
    // valid for the CRD schema (tests/escalation_admission.rs checks it), so
    // only the admission policy can refuse it.
    let escalations = escalations();
    for (write, (right, role)) in &escalations {
        assert_refused(by(write, &semi, ns).await, right, role);
    }
    for (write, _) in &escalations {
        admitted(by(write, &owner, ns).await, write.what);
    }

    // Relabelling and annotating what owner wrote is RBAC's business only.
    for (write, _) in &escalations {
        admitted(
            by(&relabelling(write.kind, write.name), &semi, ns).await,
            &format!("relabelling {} {}", write.kind, write.name),
        );
    }
    // But changing what an owner Session or Gateway does is operating it,
    // which owner may.
    for (write, (right, role)) in operating_owner_objects() {
        assert_refused(by(&write, &semi, ns).await, right, role);
        admitted(by(&write, &owner, ns).await, write.what);
    }

    // What the schema refuses, it refuses for an owner too, with 422,
    // before any admission policy.
    let (write, message) = schema_refuses();
    match by(&write, &owner, ns).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains(message), "{}", status.message);
        }
        other => panic!("the schema should refuse {}: {other:?}", write.what),
    }

    // The controller's check sees the guard installed and enforced.
    let guard = wopr_operator::cluster::escalation::read_escalation_guard(&client)
        .await
        .expect("reading the escalation policies");
    assert!(guard.guarded, "{guard:?}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG"]
async fn trust_levels_are_guarded_at_admission() {
    with_namespace(scenario).await;
}
