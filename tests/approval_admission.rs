//! The chart's ValidatingAdmissionPolicy on `approvalrequests/status`, as
//! rendered into `manifests/install.yaml`, evaluated offline with a CEL
//! interpreter over a table of status edits: a decision must name its
//! maker, no session's service account decides, a decision never changes,
//! only the operator closes requests. It fails closed and is bound with
//! `Deny`. `tests/e2e_broker.rs` checks the same on a real API server.

mod common;

use common::INSTALL_NAMESPACE;
use common::admission::Request;
use common::rendered;
use serde_json::{Value, json};

const POLICY: &str = "wopr-approval-decisions";
const ALICE: &str = "alice@example.com";
const OPERATOR: &str = "system:serviceaccount:wopr-system:wopr-operator";
const SESSION_ACCOUNT: &str = "system:serviceaccount:team-a:wopr-research-agent";

/// The messages of the validations `old → new` by `username` fails; empty
/// when the API server would admit it.
fn refusals(old: Value, new: Value, username: &str) -> Vec<String> {
    let object = |status: Value| {
        let mut object = json!({"apiVersion": "wopr.dev/v1alpha1", "kind": "ApprovalRequest",
                                "metadata": {"name": "r", "namespace": "team-a"},
                                "spec": {"type": "forward"}});
        if !status.is_null() {
            object["status"] = status;
        }
        object
    };
    common::admission::refusals(
        &rendered("ValidatingAdmissionPolicy", POLICY),
        &Request {
            operation: "UPDATE",
            namespace: "team-a",
            username,
            roles: &[],
            old: Some(object(old)),
            object: object(new),
        },
    )
}

fn decided(state: &str, by: &str) -> Value {
    json!({"state": state, "decidedBy": by, "decidedAt": "2026-11-29T12:00:00Z", "decisionReason": "why"})
}

#[test]
fn the_policy_fails_closed_covers_status_updates_and_is_bound_to_deny() {
    let policy = rendered("ValidatingAdmissionPolicy", POLICY);
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"],
        json!([{"apiGroups": ["wopr.dev"], "apiVersions": ["v1alpha1"],
                "operations": ["UPDATE"], "resources": ["approvalrequests/status"]}])
    );
    let binding = rendered("ValidatingAdmissionPolicyBinding", POLICY);
    assert_eq!(binding["spec"]["policyName"], POLICY);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    // The operator's identity in the policy is the chart's service account.
    let account = rendered("ServiceAccount", "wopr-operator");
    assert_eq!(account["metadata"]["namespace"], INSTALL_NAMESPACE);
    assert_eq!(
        OPERATOR,
        format!("system:serviceaccount:{INSTALL_NAMESPACE}:wopr-operator")
    );
}

#[test]
fn a_person_decides_in_their_own_name() {
    for state in ["Approved", "Denied"] {
        assert!(refusals(json!({"state": "Pending"}), decided(state, ALICE), ALICE).is_empty());
        assert!(
            refusals(Value::Null, decided(state, ALICE), ALICE).is_empty(),
            "no status yet"
        );
        assert_eq!(
            refusals(
                json!({"state": "Pending"}),
                decided(state, "bob@example.com"),
                ALICE
            ),
            [format!(
                "status.decidedBy must be {ALICE}, the user making this decision"
            )]
        );
        let anonymous = json!({"state": state});
        assert_eq!(
            refusals(json!({"state": "Pending"}), anonymous, ALICE).len(),
            1
        );
    }
}

#[test]
fn no_session_service_account_decides_even_in_its_own_name() {
    let refused = refusals(
        json!({"state": "Pending"}),
        decided("Approved", SESSION_ACCOUNT),
        SESSION_ACCOUNT,
    );
    assert_eq!(
        refused,
        [
            "a session's service account cannot decide an ApprovalRequest: people decide, with their own credentials"
        ]
    );
}

#[test]
fn a_decision_once_made_never_changes() {
    let approved = decided("Approved", ALICE);
    let denied = decided("Denied", ALICE);
    assert_eq!(
        refusals(approved.clone(), denied.clone(), ALICE),
        ["this request was already Approved: a decision, once made, never changes"]
    );
    assert_eq!(
        refusals(denied.clone(), approved.clone(), ALICE),
        ["this request was already Denied: a decision, once made, never changes"]
    );
    let mut reworded = approved.clone();
    reworded["decisionReason"] = json!("another reason");
    assert_eq!(refusals(approved.clone(), reworded, ALICE).len(), 1);
    let mut reattributed = approved.clone();
    reattributed["decidedBy"] = json!("bob@example.com");
    assert_eq!(
        refusals(approved.clone(), reattributed, "bob@example.com").len(),
        1
    );
    let expired = json!({"state": "Expired", "decisionReason": "nobody decided"});
    assert_eq!(
        refusals(expired, decided("Approved", ALICE), ALICE).len(),
        1
    );
    // The same decision again (a retried patch) is fine.
    assert!(refusals(approved.clone(), approved, ALICE).is_empty());
}

#[test]
fn only_the_operator_marks_requests_pending_expired_or_completed() {
    let approved = decided("Approved", ALICE);
    let mut completed = approved.clone();
    completed["state"] = json!("Completed");
    assert!(refusals(approved.clone(), completed.clone(), OPERATOR).is_empty());
    assert_eq!(
        refusals(approved.clone(), completed, ALICE),
        ["only the operator marks a request Completed"]
    );
    let expired = json!({"state": "Expired", "decisionReason": "nobody decided"});
    assert!(refusals(json!({"state": "Pending"}), expired.clone(), OPERATOR).is_empty());
    assert_eq!(
        refusals(json!({"state": "Pending"}), expired, ALICE),
        ["only the operator marks a request Expired"]
    );
    assert!(refusals(Value::Null, json!({"state": "Pending"}), OPERATOR).is_empty());
    // The operator decides nothing either.
    let refused = refusals(
        json!({"state": "Pending"}),
        decided("Approved", "x"),
        OPERATOR,
    );
    assert!(
        refused.contains(&format!(
            "status.decidedBy must be {OPERATOR}, the user making this decision"
        )),
        "{refused:?}"
    );
}

#[test]
fn the_approver_role_reads_requests_and_patches_their_status_only() {
    let role = rendered("ClusterRole", "wopr-approver");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": ["wopr.dev"], "resources": ["approvalrequests"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["wopr.dev"], "resources": ["approvalrequests/status"], "verbs": ["get", "patch", "update"]},
        ])
    );
    let labels = role["metadata"]["labels"].as_object().unwrap();
    assert!(
        labels
            .keys()
            .all(|key| !key.starts_with("rbac.authorization.k8s.io/aggregate-to")),
        "approving is given by name, not aggregated into edit or admin"
    );
}
