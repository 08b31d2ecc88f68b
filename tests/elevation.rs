//! Elevation in process: an agent asks for a capability with its sidecar's
//! `security_request`; the control plane files an ApprovalRequest of type
//! elevation; a person approves it; the controller's ApprovalRequest
//! reconciler makes the Grant (once) from what the store recorded, and the
//! new tool reaches the agent's tool list with the policy push. Denials and
//! expiries are told to the session; a request nobody filed makes nothing.
//! (A Grant's expiry taking its tools away is the policy index's, tested
//! in `controlplane::index`.)

mod common;

use common::approvals::{an_hour_later, approval_path, decide, reconcile, state_of};
use common::sidecar::{ControlPlane, Sidecar, token_for};
use common::store::all_events;
use common::*;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use wopr_operator::api::{ApprovalState, Capability, Grant, TrustLevel};
use wopr_operator::audit::EventType;
use wopr_operator::inbox::InboxMessage;
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1::CallToolRequest;

/// A control plane with trusted `alice` (no `cross.inject`) and `bob`,
/// and alice's sidecar, with its first policy.
async fn alice() -> (ControlPlane, Sidecar) {
    let mut control_plane = ControlPlane::start(&["alice", "bob"]).await;
    control_plane.put_session(session("alice", TrustLevel::Trusted));
    control_plane.put_session(session("bob", TrustLevel::Trusted));
    let sidecar = Sidecar::start(
        &control_plane.address.to_string(),
        "alice",
        &token_for("alice"),
    )
    .await;
    sidecar.wait_for_policy(|served| served.is_some()).await;
    (control_plane, sidecar)
}

/// The agent's `security_request` call: its answer, or the error's message.
async fn ask(sidecar: &Sidecar, arguments: Value) -> Result<Value, String> {
    let call = CallToolRequest {
        name: "security_request".into(),
        arguments_json: arguments.to_string(),
    };
    match sidecar.tools().await.call_tool(call).await {
        Ok(answer) => Ok(serde_json::from_str(&answer.into_inner().result_json).unwrap()),
        Err(status) => Err(status.message().to_owned()),
    }
}

fn lists(sidecar: &Sidecar, tool: &str) -> bool {
    sidecar
        .engine
        .list()
        .iter()
        .any(|id| id.tool().name == tool)
}

fn grant_path(name: &str) -> String {
    format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/grants/{name}")
}

async fn inbox_of(control_plane: &ControlPlane, session: &str) -> Vec<InboxMessage> {
    let pending = control_plane
        .store
        .pending_messages(NAMESPACE, session, 0, 100);
    pending
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.message)
        .collect()
}

#[tokio::test]
async fn an_approved_request_becomes_a_grant_once_and_the_tool_appears() {
    let (mut control_plane, alice) = alice().await;
    assert!(lists(&alice, "security_request"), "always available");
    assert!(!lists(&alice, "sessions_send"));

    let asked = ask(
        &alice,
        json!({"capabilities": ["cross.inject"], "reason": "tell bob the build broke", "duration": "30m"}),
    )
    .await
    .unwrap();
    assert_eq!(asked["state"], "awaiting_approval");
    let id = asked["requestId"].as_str().unwrap().to_owned();
    let filed = control_plane.api.get(&approval_path(&id)).expect("filed");
    assert_eq!(filed["spec"]["type"], "elevation");
    assert_eq!(filed["spec"]["target"], "alice");
    assert_eq!(filed["spec"]["source"]["identity"], "alice");
    assert_eq!(
        filed["spec"]["requestedCapabilities"],
        json!(["cross.inject"])
    );
    assert_eq!(filed["spec"]["duration"], "1800s");
    assert_eq!(filed["spec"]["reason"], "tell bob the build broke");

    reconcile(&control_plane, &id, Timestamp::now).await;
    assert_eq!(state_of(&control_plane, &id).as_deref(), Some("Pending"));
    assert!(
        control_plane
            .api
            .get(&grant_path(&format!("elevation-{id}")))
            .is_none()
    );

    decide(&control_plane, &id, ApprovalState::Approved, "ok for today");
    let approved_at = Timestamp::now();
    reconcile(&control_plane, &id, Timestamp::now).await;
    assert_eq!(state_of(&control_plane, &id).as_deref(), Some("Completed"));
    let made = control_plane
        .api
        .get(&grant_path(&format!("elevation-{id}")))
        .expect("the Grant");
    let grant: Grant = serde_json::from_value(made).unwrap();
    assert_eq!(grant.spec.subject.session.as_deref(), Some("alice"));
    assert_eq!(grant.spec.capabilities, [Capability::CrossInject]);
    let until = grant.spec.expires_at.as_ref().unwrap().0;
    let length = until.duration_since(approved_at);
    assert!(
        length <= SignedDuration::from_mins(30) && length > SignedDuration::from_mins(29),
        "{length}"
    );
    // Seen again (a retry), nothing more is made or recorded.
    decide(&control_plane, &id, ApprovalState::Approved, "ok for today");
    reconcile(&control_plane, &id, Timestamp::now).await;
    let grants: Vec<_> = all_events(&control_plane.store)
        .await
        .into_iter()
        .filter(|event| event.event_type == EventType::Grant)
        .collect();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].session, "alice");
    assert_eq!(grants[0].source.identity, "alice@example.com");
    assert_eq!(grants[0].decision, Outcome::Allowed);

    let told = inbox_of(&control_plane, "alice").await;
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].payload["state"], "granted");
    assert_eq!(told[0].payload["grantedUntil"], until.to_string());

    // The Grant reaches the policy (as the cache would see it): the tool
    // appears in alice's list.
    control_plane.put_grant(grant);
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !lists(&alice, "sessions_send") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("sessions_send listed after the grant");
}

#[tokio::test]
async fn a_denied_or_expired_request_makes_no_grant_and_the_session_is_told() {
    let (control_plane, alice) = alice().await;
    let mut ids = Vec::new();
    // Two requests asking different things (one asking what an open one
    // asks is answered with it: tests/adversarial_access.rs).
    for reason in ["coordinate", "coordinate again"] {
        let asked = ask(
            &alice,
            json!({"capabilities": ["a2a.call", "cross.inject"], "reason": reason}),
        )
        .await
        .unwrap();
        ids.push(asked["requestId"].as_str().unwrap().to_owned());
    }
    let (denied, expiring) = (&ids[0], &ids[1]);
    let filed = control_plane.api.get(&approval_path(denied)).unwrap();
    assert_eq!(filed["spec"]["duration"], "3600s", "the default");
    decide(&control_plane, denied, ApprovalState::Denied, "not needed");
    reconcile(&control_plane, denied, Timestamp::now).await;
    reconcile(&control_plane, expiring, an_hour_later).await;
    assert_eq!(
        state_of(&control_plane, expiring).as_deref(),
        Some("Expired")
    );
    for id in [denied, expiring] {
        assert!(
            control_plane
                .api
                .get(&grant_path(&format!("elevation-{id}")))
                .is_none()
        );
    }
    let states: Vec<Value> = inbox_of(&control_plane, "alice")
        .await
        .iter()
        .map(|message| message.payload["state"].clone())
        .collect();
    assert_eq!(states, [json!("denied"), json!("expired")]);
}

#[tokio::test]
async fn requests_that_would_never_be_carried_out_are_refused_precisely() {
    let (control_plane, alice) = alice().await;
    let cases = [
        (
            json!({"capabilities": ["*"], "reason": "everything"}),
            "cannot ask for that: `*` is the owner's alone: name the capabilities you need",
        ),
        (
            json!({"capabilities": [], "reason": "nothing"}),
            "cannot ask for that: name at least one capability",
        ),
        (
            json!({"capabilities": ["inject.exec"], "reason": "  "}),
            "cannot ask for that: give a reason (at most 4096 bytes): a person reads it",
        ),
        (
            json!({"capabilities": ["inject.exec"], "reason": "long", "duration": "48h"}),
            "cannot ask for that: the duration must be between 60 and 86400 seconds",
        ),
    ];
    for (arguments, expected) in cases {
        assert_eq!(ask(&alice, arguments).await.unwrap_err(), expected);
    }
    let unknown = ask(&alice, json!({"capabilities": ["root"], "reason": "x"}))
        .await
        .unwrap_err();
    assert!(unknown.starts_with("invalid arguments: "), "{unknown}");
    let forever = ask(
        &alice,
        json!({"capabilities": ["inject.exec"], "reason": "x", "duration": "forever"}),
    )
    .await
    .unwrap_err();
    assert!(
        forever.starts_with("invalid arguments: duration \"forever\" is not a duration"),
        "{forever}"
    );
    // Nothing was filed, and each refusal by the control plane is audited.
    let requests = control_plane.api.take_requests();
    assert!(
        !requests
            .iter()
            .any(|request| request.path.contains("approvalrequests")),
        "nothing filed"
    );
    let refused = all_events(&control_plane.store)
        .await
        .into_iter()
        .filter(|event| {
            event.event_type == EventType::Approval && event.decision == Outcome::Denied
        })
        .count();
    assert_eq!(refused, 4);
}

#[tokio::test]
async fn an_approval_request_nobody_filed_makes_no_grant() {
    let (control_plane, _alice) = alice().await;
    let forged = json!({
        "apiVersion": "wopr.dev/v1alpha1", "kind": "ApprovalRequest",
        "metadata": {"name": "forged", "namespace": NAMESPACE},
        "spec": {"type": "elevation", "target": "alice",
                 "source": {"type": "session", "identity": "alice", "trustLevel": "trusted"},
                 "requestedCapabilities": ["config.write"], "duration": "24h",
                 "reason": "trust me", "expiresAt": "2099-01-01T00:00:00Z"}
    });
    control_plane.api.insert(&approval_path("forged"), forged);
    decide(&control_plane, "forged", ApprovalState::Approved, "sure");
    reconcile(&control_plane, "forged", Timestamp::now).await;
    assert!(
        control_plane
            .api
            .get(&grant_path("elevation-forged"))
            .is_none()
    );
    assert_eq!(
        state_of(&control_plane, "forged").as_deref(),
        Some("Approved")
    );
}
