//! Spawning in process: an agent's `sessions_spawn` through its sidecar
//! creates a child Session on the API server (owned by the parent, no
//! higher, sandboxed no weaker, within the SecurityPolicy's limits); every
//! refusal is precise and audited.

mod common;

use common::sidecar::{ControlPlane, Sidecar, token_for};
use common::store::all_events;
use common::*;
use serde_json::{Value, json};
use wopr_operator::api::{
    NetworkMode, SandboxSpec, SecurityPolicy, SecurityPolicySpec, Session, SpawnPolicy, TrustLevel,
};
use wopr_operator::audit::EventType;
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1::CallToolRequest;

/// Trusted `lead` (trusted holds `session.spawn`) running `agents/lead:1`
/// with restricted network, at most 2 children, and its sidecar.
async fn lead() -> (ControlPlane, Sidecar) {
    let mut control_plane = ControlPlane::start(&["lead", "worker"]).await;
    let mut policy = SecurityPolicy::new("default", SecurityPolicySpec::default());
    policy.metadata.namespace = Some(NAMESPACE.into());
    policy.spec.spawn = Some(SpawnPolicy {
        max_children: 2,
        images: vec!["agents/helper:2".into()],
    });
    control_plane.put_policy(policy);
    let mut lead = session("lead", TrustLevel::Trusted);
    lead.metadata.uid = Some("uid-lead".into());
    lead.spec.sandbox = Some(SandboxSpec {
        enabled: Some(true),
        image: Some("agents/lead:1".into()),
        network: Some(NetworkMode::Restricted),
        ..SandboxSpec::default()
    });
    control_plane.put_session(lead);
    control_plane.put_session(session("worker", TrustLevel::SemiTrusted));
    let sidecar = Sidecar::start(
        &control_plane.address.to_string(),
        "lead",
        &token_for("lead"),
    )
    .await;
    sidecar.wait_for_policy(|served| served.is_some()).await;
    (control_plane, sidecar)
}

async fn spawn(sidecar: &Sidecar, arguments: Value) -> Result<Value, String> {
    let call = CallToolRequest {
        name: "sessions_spawn".into(),
        arguments_json: arguments.to_string(),
    };
    match sidecar.tools().await.call_tool(call).await {
        Ok(answer) => Ok(serde_json::from_str(&answer.into_inner().result_json).unwrap()),
        Err(status) => Err(status.message().to_owned()),
    }
}

fn created(control_plane: &ControlPlane, name: &str) -> Option<Session> {
    let path = format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/sessions/{name}");
    let object = control_plane.api.get(&path)?;
    Some(serde_json::from_value(object).unwrap())
}

#[tokio::test]
async fn a_child_is_created_owned_by_its_parent_no_higher_and_no_weaker() {
    let (mut control_plane, lead) = lead().await;
    let spawned = spawn(
        &lead,
        json!({"name": "triage", "trustLevel": "semi-trusted", "prompt": "triage the issues"}),
    )
    .await
    .unwrap();
    assert_eq!(spawned["name"], "triage");
    let child = created(&control_plane, "triage").expect("created");
    assert_eq!(child.spec.trust_level, TrustLevel::SemiTrusted);
    assert_eq!(child.spec.prompt.as_deref(), Some("triage the issues"));
    let owner = &child.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.name.as_str(), owner.uid.as_str()),
        ("lead", "uid-lead")
    );
    let labels = child.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["wopr.dev/parent"], "lead");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "wopr-operator");
    let sandbox = child.spec.sandbox.as_ref().unwrap();
    assert_eq!(sandbox.enabled, Some(true));
    assert_eq!(sandbox.image.as_deref(), Some("agents/lead:1"));
    assert_eq!(
        sandbox.network,
        Some(NetworkMode::None),
        "lower than its parent"
    );

    // The limit counts the children the control plane sees.
    control_plane.put_session(child);
    spawn(
        &lead,
        json!({"name": "helper", "trustLevel": "untrusted", "prompt": "x", "image": "agents/helper:2"}),
    )
    .await
    .unwrap();
    let helper = created(&control_plane, "helper").unwrap();
    assert_eq!(
        helper.spec.sandbox.unwrap().image.as_deref(),
        Some("agents/helper:2")
    );
    control_plane.put_session(created(&control_plane, "helper").unwrap());
    assert_eq!(
        spawn(
            &lead,
            json!({"name": "third", "trustLevel": "untrusted", "prompt": "x"})
        )
        .await
        .unwrap_err(),
        "session lead has 2 children, the limit is 2 (SecurityPolicy spec.spawn.maxChildren)"
    );
    let spawned_events = all_events(&control_plane.store)
        .await
        .into_iter()
        .filter(|e| e.tool.as_deref() == Some("sessions_spawn") && e.decision == Outcome::Allowed)
        .filter(|e| e.event_type == EventType::ToolCall && e.reason.starts_with("spawned "))
        .count();
    assert_eq!(spawned_events, 2);
}

/// An agent that fires many spawns at once, before any child reaches the
/// cache, still gets no more children than the limit: the store counts
/// the ones the cache cannot see yet.
#[tokio::test]
async fn concurrent_spawns_stop_at_the_limit() {
    let (control_plane, lead) = lead().await;
    let calls = (0..8).map(|n| {
        spawn(
            &lead,
            json!({"name": format!("worker-{n}"), "trustLevel": "untrusted", "prompt": "x"}),
        )
    });
    let outcomes = futures::future::join_all(calls).await;
    let spawned = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(spawned, 2, "{outcomes:?}");
    for refused in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert!(
            refused.starts_with("session lead has 2 children, the limit is 2"),
            "{refused}"
        );
    }
    let created = (0..8)
        .filter(|n| created(&control_plane, &format!("worker-{n}")).is_some())
        .count();
    assert_eq!(created, 2);
}

#[tokio::test]
async fn refusals_are_precise_and_audited() {
    let (control_plane, lead) = lead().await;
    let cases = [
        (
            json!({"name": "boss", "trustLevel": "owner", "prompt": "x"}),
            "cannot spawn a owner session from a trusted session: a child's trust level must not exceed its parent's",
        ),
        (
            json!({"name": "Bad_Name", "trustLevel": "untrusted", "prompt": "x"}),
            "name \"Bad_Name\" is not a session name: lowercase letters, digits and '-', at most 58 characters",
        ),
        (
            json!({"name": "miner", "trustLevel": "untrusted", "prompt": "x", "image": "evil/miner"}),
            "image evil/miner is neither the parent's nor one the SecurityPolicy allows (spec.spawn.images)",
        ),
        (
            json!({"name": "worker", "trustLevel": "untrusted", "prompt": "x"}),
            "a session named worker already exists",
        ),
    ];
    // worker exists on the API server too.
    control_plane.api.insert(
        &format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/sessions/worker"),
        serde_json::to_value(session("worker", TrustLevel::SemiTrusted)).unwrap(),
    );
    for (arguments, expected) in cases {
        let refused = spawn(&lead, arguments).await.unwrap_err();
        assert!(refused.contains(expected), "{refused} / {expected}");
    }
    assert!(created(&control_plane, "boss").is_none());
    assert!(created(&control_plane, "miner").is_none());
    let refused = all_events(&control_plane.store)
        .await
        .into_iter()
        .filter(|e| e.tool.as_deref() == Some("sessions_spawn") && e.decision == Outcome::Denied)
        .count();
    assert_eq!(refused, 4);

    // A session without session.spawn never sees the tool.
    let worker = Sidecar::start(
        &control_plane.address.to_string(),
        "worker",
        &token_for("worker"),
    )
    .await;
    worker.wait_for_policy(|served| served.is_some()).await;
    assert!(
        !worker
            .engine
            .list()
            .iter()
            .any(|id| id.tool().name == "sessions_spawn")
    );
    assert_eq!(
        spawn(
            &worker,
            json!({"name": "w2", "trustLevel": "untrusted", "prompt": "x"})
        )
        .await
        .unwrap_err(),
        "tool not available: sessions_spawn"
    );
}
