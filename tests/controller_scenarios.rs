//! Reconcile scenarios against the fake API server: each test
//! asserts exactly which requests the controller sends.

mod common;

use std::time::Duration;

use common::fake_api::Recorded;
use common::harness::*;
use common::*;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use serde_json::{Value, json};
use wopr_operator::api::{Capability, SecurityPolicy, Session, TrustLevel};
use wopr_operator::cluster::lease::Leadership;
use wopr_operator::policy::ToolId;

fn writes(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.method != http::Method::GET)
        .map(Recorded::line)
        .collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

fn semi_trusted(name: &str) -> Session {
    let mut session = session(name, TrustLevel::SemiTrusted);
    session.metadata.generation = Some(1);
    session
}

#[tokio::test]
async fn first_reconcile_applies_children_then_status() {
    let harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    let action = harness.reconcile("research").await;
    let requests = harness.api.take_requests();
    assert_eq!(
        writes(&requests),
        [
            format!("PATCH {}", account_path("research")),
            format!("PATCH {}", network_policy_path("research")),
            format!("PATCH {}", pod_path("research")),
            format!("PATCH {}/status", session_path("research")),
        ]
    );
    for write in requests.iter().filter(|r| r.method == http::Method::PATCH) {
        assert!(
            write.query.contains("fieldManager=wopr-operator"),
            "{}",
            write.query
        );
        assert!(write.query.contains("force=true"), "{}", write.query);
    }
    let body = |path: String| {
        requests
            .iter()
            .find(|r| r.method == http::Method::PATCH && r.path == path)
            .unwrap()
            .body
            .clone()
            .unwrap()
    };
    let account = body(account_path("research"));
    assert_eq!(account["automountServiceAccountToken"], false);
    assert_eq!(
        account["metadata"]["ownerReferences"][0]["name"],
        "research"
    );
    let network_policy = body(network_policy_path("research"));
    assert_eq!(
        network_policy["spec"]["policyTypes"],
        json!(["Ingress", "Egress"])
    );
    let pod = body(pod_path("research"));
    assert!(pod["metadata"]["annotations"]["wopr.dev/pod-template-hash"].is_string());
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    let status = body(format!("{}/status", session_path("research")))["status"].clone();
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["podName"], "wopr-research");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(&status, "PolicyResolved")["status"], "True");
    assert_eq!(condition(&status, "SandboxReady")["reason"], "PodStarting");
    assert_eq!(
        status["effective"]["capabilities"],
        json!(["inject", "inject.tools"])
    );
    assert_eq!(status["effective"]["network"], "restricted");
    assert!(status["policyHash"].as_str().unwrap().len() == 16);
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));
}

#[tokio::test]
async fn an_unchanged_session_makes_no_write() {
    let harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    harness.reconcile("research").await;
    harness.api.take_requests();
    harness.reconcile("research").await;
    let requests = harness.api.take_requests();
    assert_eq!(writes(&requests), Vec::<String>::new());
    assert_eq!(
        requests.len(),
        3,
        "three reads: service account, network policy, pod"
    );
}

#[tokio::test]
async fn a_ready_pod_makes_the_session_ready() {
    let harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    harness.reconcile("research").await;
    harness.api.modify(&pod_path("research"), |pod| {
        pod["status"] =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    });
    harness.api.take_requests();
    harness.reconcile("research").await;
    assert_eq!(
        writes(&harness.api.take_requests()),
        [format!("PATCH {}/status", session_path("research"))]
    );
    let status = harness.status("research");
    assert_eq!(status["phase"], "Ready");
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(
        condition(&status, "PolicyResolved")["lastTransitionTime"],
        "2026-11-24T12:00:00Z",
        "untouched conditions keep their transition time"
    );
}

#[tokio::test]
async fn a_grant_change_patches_status_only() {
    let mut harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    harness.reconcile("research").await;
    let hash_before = harness.status("research")["policyHash"].clone();
    harness.api.take_requests();

    let mut grant = session_grant("fetch", "research", &[Capability::InjectNetwork]);
    grant.spec.expires_at = Some(at(60));
    harness.add_grant(grant);
    let action = harness.reconcile("research").await;
    assert_eq!(
        writes(&harness.api.take_requests()),
        [format!("PATCH {}/status", session_path("research"))]
    );
    let status = harness.status("research");
    assert_eq!(
        status["effective"]["capabilities"],
        json!(["inject", "inject.tools", "inject.network"])
    );
    assert!(
        status["effective"]["tools"]
            .as_array()
            .unwrap()
            .contains(&json!(ToolId::HttpFetch.name()))
    );
    assert_ne!(status["policyHash"], hash_before);
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(61)),
        "reconciled again when the grant expires"
    );
}

#[tokio::test]
async fn a_sandbox_change_replaces_the_pod() {
    let harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    harness.reconcile("research").await;
    harness.api.take_requests();

    harness.edit("research", |spec| {
        spec["sandbox"] = json!({"image": "example.com/agent:2"})
    });
    let action = harness.reconcile("research").await;
    assert_eq!(
        writes(&harness.api.take_requests()),
        [
            format!("DELETE {}", pod_path("research")),
            format!("POST {}", events_path()),
            format!("PATCH {}/status", session_path("research")),
        ]
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    assert_eq!(
        condition(&harness.status("research"), "SandboxReady")["reason"],
        "PodReplacing"
    );

    // The old pod is gone: the new one is created.
    harness.reconcile("research").await;
    assert_eq!(
        writes(&harness.api.take_requests()),
        [
            format!("PATCH {}", pod_path("research")),
            format!("PATCH {}/status", session_path("research"))
        ]
    );
    let pod = harness.api.get(&pod_path("research")).unwrap();
    assert_eq!(pod["spec"]["containers"][0]["image"], "example.com/agent:2");
}

#[tokio::test]
async fn an_invalid_session_is_stopped_with_a_warning() {
    let harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    harness.reconcile("research").await;
    harness.api.take_requests();

    harness.edit("research", |spec| {
        spec["sandbox"] = json!({"enabled": false})
    });
    let action = harness.reconcile("research").await;
    let requests = harness.api.take_requests();
    assert_eq!(
        writes(&requests),
        [
            format!("DELETE {}", pod_path("research")),
            format!("PATCH {}/status", session_path("research")),
            format!("POST {}", events_path()),
        ]
    );
    assert_eq!(action, Action::await_change(), "not retried in a hot loop");
    let status = harness.status("research");
    assert_eq!(status["phase"], "Failed");
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("InvalidSpec"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.sandbox.enabled")
    );
    let event = requests
        .iter()
        .find(|r| r.method == http::Method::POST)
        .unwrap()
        .body
        .clone()
        .unwrap();
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("InvalidSpec"))
    );
    assert_eq!(event["regarding"]["name"], "research");

    // Reconciling it again writes nothing.
    harness.reconcile("research").await;
    assert_eq!(writes(&harness.api.take_requests()), Vec::<String>::new());
}

#[tokio::test]
async fn a_malformed_session_is_reported_not_fatal() {
    let harness = Harness::leader().await;
    let mut malformed = serde_json::to_value(semi_trusted("broken")).unwrap();
    malformed["spec"]["trustLevel"] = json!("superuser");
    harness.api.insert(&session_path("broken"), malformed);
    let action = harness.reconcile("broken").await;
    assert_eq!(action, Action::await_change());
    let status = harness.status("broken");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "InvalidObject");
    assert!(
        ready["message"].as_str().unwrap().contains("superuser"),
        "{ready}"
    );
}

#[tokio::test]
async fn an_unreadable_security_policy_stops_the_namespace() {
    let mut harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    let broken: DeserializeGuard<SecurityPolicy> = serde_json::from_value(json!({
        "apiVersion": "wopr.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": "default", "namespace": NAMESPACE},
        "spec": {"enforcement": "off"}
    }))
    .unwrap();
    assert!(broken.0.is_err());
    harness
        .policies
        .apply_watcher_event(&watcher::Event::Apply(broken));
    harness.reconcile("research").await;
    let writes = writes(&harness.api.take_requests());
    assert!(
        !writes
            .iter()
            .any(|w| w.contains("/pods/") && w.starts_with("PATCH")),
        "{writes:?}"
    );
    assert_eq!(
        condition(&harness.status("research"), "Ready")["reason"],
        "InvalidPolicy"
    );
}

#[tokio::test]
async fn a_deleted_session_is_marked_terminating_and_left_to_the_garbage_collector() {
    let harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    harness.reconcile("research").await;
    harness.api.take_requests();
    harness.api.modify(&session_path("research"), |session| {
        session["metadata"]["deletionTimestamp"] = json!("2026-11-24T12:01:00Z");
    });
    harness.reconcile("research").await;
    assert_eq!(
        writes(&harness.api.take_requests()),
        [format!("PATCH {}/status", session_path("research"))]
    );
    assert_eq!(harness.status("research")["phase"], "Terminating");
    // Every child carries a controller owner reference to the Session, so the
    // garbage collector deletes them with it.
    for path in [
        account_path("research"),
        network_policy_path("research"),
        pod_path("research"),
    ] {
        let owner = &harness.api.get(&path).unwrap()["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["kind"].as_str(),
                owner["name"].as_str(),
                owner["controller"].as_bool()
            ),
            (Some("Session"), Some("research"), Some(true))
        );
        assert_eq!(owner["uid"], "uid-research");
    }
}

#[tokio::test]
async fn only_the_leader_writes() {
    let harness = Harness::new(Leadership::default()).await;
    harness.create(&semi_trusted("research"));
    assert_eq!(harness.reconcile("research").await, Action::await_change());
    assert!(harness.api.take_requests().is_empty());
}

#[tokio::test]
async fn the_sidecars_sandbox_checks_become_session_conditions_and_failures_warn() {
    let harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    harness.reconcile("research").await;
    let status = harness.status("research");
    for type_ in ["NetworkIsolated", "PidsLimited"] {
        let before = condition(&status, type_);
        assert_eq!(
            (before["status"].as_str(), before["reason"].as_str()),
            (Some("Unknown"), Some("NotReported"))
        );
    }

    // The control plane records the sidecar's report on the pod.
    harness.api.modify(&pod_path("research"), |pod| {
        pod["status"] = json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "wopr.dev/NetworkIsolated", "status": "False", "reason": "Reachable",
             "message": "reachable from the sandbox: apiserver 10.96.0.1:443"},
            {"type": "wopr.dev/PidsLimited", "status": "True", "reason": "Limited", "message": "pids.max = 1024"},
        ]});
    });
    harness.api.take_requests();
    harness.reconcile("research").await;
    let requests = harness.api.take_requests();
    let events: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.path == events_path())
        .collect();
    assert_eq!(events.len(), 1, "one warning: {:?}", writes(&requests));
    let event = events[0].body.as_ref().unwrap();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "NetworkNotIsolated");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("apiserver 10.96.0.1:443")
    );
    let status = harness.status("research");
    let network = condition(&status, "NetworkIsolated");
    assert_eq!(
        (network["status"].as_str(), network["reason"].as_str()),
        (Some("False"), Some("Reachable"))
    );
    assert_eq!(condition(&status, "PidsLimited")["status"], "True");

    // Still failing: no second warning, no write.
    harness.reconcile("research").await;
    assert_eq!(writes(&harness.api.take_requests()), Vec::<String>::new());
}

/// The controller's own decisions are audit events of the session's
/// namespace, in the same store and chain as the sidecars': the effective
/// policy set, changed by a grant, and a Session refused as invalid; an
/// unchanged reconcile records nothing.
#[tokio::test]
async fn the_controllers_decisions_are_audit_events() {
    let mut harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    harness.reconcile("research").await;
    harness.reconcile("research").await;
    harness.add_grant(session_grant("g", "research", &[Capability::SessionSpawn]));
    harness.reconcile("research").await;
    let granted_hash = harness.status("research")["policyHash"].clone();
    harness.edit("research", |spec| {
        spec["sandbox"] = json!({"enabled": false})
    });
    harness.reconcile("research").await;
    harness.reconcile("research").await;

    let mut events = common::store::all_events(&harness.store.store).await;
    events.reverse();
    let summary: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            let decision = wopr_operator::api::name_of(&e.decision);
            (e.source.source_type.clone(), decision, e.reason.clone())
        })
        .collect();
    assert_eq!(summary.len(), 3, "{summary:#?}");
    assert!(summary.iter().all(|(source, ..)| source == "controller"));
    assert_eq!(summary[0].1, "allowed");
    assert!(
        summary[0]
            .2
            .starts_with("effective policy set: trust level semi-trusted"),
        "{summary:?}"
    );
    assert!(
        summary[1]
            .2
            .contains("capabilities added [session.spawn], removed []; grants in force: g"),
        "{summary:?}"
    );
    assert_eq!(summary[2].1, "denied");
    assert!(summary[2].2.starts_with("InvalidSpec: "), "{summary:?}");
    assert_eq!(
        events[1].policy_hash.as_deref(),
        granted_hash.as_str(),
        "the event names the policy it recorded"
    );
    assert!(matches!(
        harness.store.store.verify(NAMESPACE).await.unwrap(),
        wopr_operator::store::Verification::Intact { events: 3 }
    ));
}

/// A decision the store cannot take fails the reconcile before the status
/// shows it: the retry records it, nothing is lost.
#[tokio::test]
async fn a_decision_the_store_refuses_holds_the_status_back() {
    let harness = Harness::leader().await;
    harness.create(&semi_trusted("research"));
    harness
        .store
        .tamper("ALTER TABLE audit_events RENAME TO gone")
        .await;
    let failed = harness.try_reconcile("research").await.unwrap_err();
    assert_eq!(failed.reason(), "StoreError");
    assert!(
        harness.status("research").get("policyHash").is_none(),
        "no status before the decision is recorded: {}",
        harness.status("research")
    );
    harness
        .store
        .tamper("ALTER TABLE gone RENAME TO audit_events")
        .await;
    harness.reconcile("research").await;
    assert!(harness.status("research")["policyHash"].is_string());
    let events = common::store::all_events(&harness.store.store).await;
    assert_eq!(events.len(), 1);
    assert!(events[0].reason.starts_with("effective policy set"));
}

fn grant_path(name: &str) -> String {
    format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/grants/{name}")
}

/// The Grant status controller's context over `client`, reading the time
/// from `clock`.
async fn grant_status_context(
    client: kube::Client,
    clock: fn() -> k8s_openapi::jiff::Timestamp,
) -> (
    std::sync::Arc<wopr_operator::controller::status_context::StatusContext>,
    store::TestStore,
) {
    let store = store::sqlite().await;
    let context = wopr_operator::controller::status_context::StatusContext {
        client,
        sessions: kube::runtime::reflector::store().0,
        leadership: Leadership::always(),
        clock,
        backoff: wopr_operator::controller::retry::Backoff::default(),
        store: store.store.clone(),
        escalation_guard: wopr_operator::controller::policy_status::GuardCache::default(),
    };
    (std::sync::Arc::new(context), store)
}

async fn reconcile_grant(
    api: &common::fake_api::FakeApi,
    ctx: &std::sync::Arc<wopr_operator::controller::status_context::StatusContext>,
    name: &str,
) -> Action {
    let stored = api.get(&grant_path(name)).expect("the grant exists");
    let object: DeserializeGuard<wopr_operator::api::Grant> =
        serde_json::from_value(stored).unwrap();
    wopr_operator::controller::grant_status::reconcile_grant(
        std::sync::Arc::new(object),
        ctx.clone(),
    )
    .await
    .expect("reconcile succeeds")
}

#[tokio::test]
async fn the_controller_writes_a_grants_state_and_keeps_its_recorded_use() {
    use wopr_operator::controlplane::writes::{ClusterWriter, KubeWriter};
    fn after_expiry() -> k8s_openapi::jiff::Timestamp {
        at(61).0
    }
    let (client, api) = common::fake_api::FakeApi::start();
    let mut grant = session_grant("fetch", "research", &[Capability::InjectNetwork]);
    grant.spec.expires_at = Some(at(60));
    api.insert(&grant_path("fetch"), serde_json::to_value(&grant).unwrap());
    let (ctx, _store) = grant_status_context(client.clone(), now).await;

    let action = reconcile_grant(&api, &ctx, "fetch").await;
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(60)),
        "back at the expiry"
    );
    assert_eq!(
        writes(&api.take_requests()),
        [format!("PATCH {}/status", grant_path("fetch"))]
    );
    let status = api.get(&grant_path("fetch")).unwrap()["status"].clone();
    assert_eq!(status["state"], "Active");
    assert_eq!(condition(&status, "Ready")["status"], "True");

    // The control plane records a use; the controller's next look writes
    // nothing (only time moved) and leaves the use alone.
    KubeWriter(client.clone())
        .record_grant_use(NAMESPACE, "fetch", at(10).0)
        .await
        .unwrap();
    api.take_requests();
    reconcile_grant(&api, &ctx, "fetch").await;
    assert_eq!(writes(&api.take_requests()), Vec::<String>::new());

    // At the expiry the state turns, by server-side apply, and the
    // recorded use survives it.
    let (later, _later_store) = grant_status_context(client, after_expiry).await;
    let action = reconcile_grant(&api, &later, "fetch").await;
    assert_eq!(action, Action::await_change(), "expired for good");
    assert_eq!(
        writes(&api.take_requests()),
        [format!("PATCH {}/status", grant_path("fetch"))]
    );
    let status = api.get(&grant_path("fetch")).unwrap()["status"].clone();
    assert_eq!(status["state"], "Expired");
    assert_eq!(condition(&status, "Ready")["reason"], "Expired");
    assert_eq!(status["lastUsedAt"], json!(at(10)));
    reconcile_grant(&api, &later, "fetch").await;
    assert_eq!(writes(&api.take_requests()), Vec::<String>::new());
}

#[tokio::test]
async fn the_controller_writes_which_gateway_rules_reach_above_its_level() {
    use wopr_operator::api::Gateway;
    use wopr_operator::controller::status_context::StatusContext;
    let (client, api) = common::fake_api::FakeApi::start();
    let (sessions, mut writer) = kube::runtime::reflector::store::<DeserializeGuard<Session>>();
    for (name, level) in [
        ("gate", TrustLevel::SemiTrusted),
        ("lead", TrustLevel::Owner),
    ] {
        writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(session(
            name, level,
        )))));
    }
    // A semi-trusted Gateway (as edit may write one) forwarding to `*`.
    let mut gw = gateway("gw", "gate");
    gw.spec.forward_rules = vec![serde_json::from_value(json!({"allowForwardTo": ["*"]})).unwrap()];
    let path = format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/gateways/gw");
    api.insert(&path, serde_json::to_value(&gw).unwrap());
    let store = store::sqlite().await;
    let ctx = std::sync::Arc::new(StatusContext {
        client,
        sessions,
        leadership: Leadership::always(),
        clock: now,
        backoff: wopr_operator::controller::retry::Backoff::default(),
        store: store.store.clone(),
        escalation_guard: wopr_operator::controller::policy_status::GuardCache::default(),
    });
    let object: DeserializeGuard<Gateway> =
        serde_json::from_value(api.get(&path).unwrap()).unwrap();
    wopr_operator::controller::gateway_status::reconcile_gateway(std::sync::Arc::new(object), ctx)
        .await
        .expect("reconcile succeeds");
    let status = api.get(&path).unwrap()["status"].clone();
    assert_eq!(condition(&status, "Ready")["reason"], "Serving");
    let guarded = condition(&status, "TargetsWithinLevel");
    assert_eq!(
        (&guarded["status"], &guarded["reason"]),
        (&json!("False"), &json!("TargetAboveLevel"))
    );
    let message = guarded["message"].as_str().unwrap();
    assert!(message.contains("rule 0 lists lead (owner)"), "{message}");
    assert!(!message.contains("gate ("), "{message}");
}

fn set_policy(harness: &mut Harness, spec: Value) {
    harness
        .policies
        .apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(
            security_policy(spec),
        ))));
}

/// A ready pod for `name`, as the kubelet reports it.
fn mark_pod_ready(harness: &Harness, name: &str) {
    harness.api.modify(&pod_path(name), |pod| {
        pod["status"] =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    });
}

#[tokio::test]
async fn a_session_whose_provider_is_not_configured_or_not_allowed_is_not_ready() {
    let mut harness = Harness::leader().await;
    let mut session = semi_trusted("research");
    session.spec.provider =
        Some(serde_json::from_value(json!({"name": "openai", "model": "gpt-4o-mini"})).unwrap());
    harness.create(&session);
    let openai = json!([{"name": "openai", "type": "openai",
        "secretRef": {"name": "model-keys", "key": "openai"}}]);

    // No provider in the namespace: not configured, whatever the pod does.
    harness.reconcile("research").await;
    mark_pod_ready(&harness, "research");
    harness.reconcile("research").await;
    let status = harness.status("research");
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ProviderNotConfigured"))
    );
    assert!(
        ready["message"].as_str().unwrap().contains("\"openai\""),
        "{ready}"
    );
    assert_eq!(condition(&status, "SandboxReady")["status"], "True");
    assert_eq!(condition(&status, "PolicyResolved")["status"], "True");

    // Configured: Ready.
    set_policy(&mut harness, json!({"providers": openai}));
    harness.reconcile("research").await;
    let ready = condition(&harness.status("research"), "Ready").clone();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some("Ready"))
    );

    // A model outside semi-trusted's low-cost patterns: not allowed.
    harness.edit("research", |spec| {
        spec["provider"] = json!({"name": "openai", "model": "gpt-4o"})
    });
    harness.reconcile("research").await;
    mark_pod_ready(&harness, "research");
    harness.reconcile("research").await;
    let ready = condition(&harness.status("research"), "Ready").clone();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ProviderNotAllowed"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("openai:gpt-4o "),
        "{ready}"
    );

    // Warn mode: Ready, and the message says what enforce would refuse.
    set_policy(
        &mut harness,
        json!({"enforcement": "warn", "providers": openai}),
    );
    harness.reconcile("research").await;
    let ready = condition(&harness.status("research"), "Ready").clone();
    assert_eq!(ready["status"], "True");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("warn mode") && message.contains("ProviderNotAllowed"),
        "{message}"
    );

    // Warn mode cannot call a provider that is not configured.
    set_policy(&mut harness, json!({"enforcement": "warn"}));
    harness.reconcile("research").await;
    assert_eq!(
        condition(&harness.status("research"), "Ready")["reason"],
        "ProviderNotConfigured"
    );
}

#[tokio::test]
async fn an_untrusted_session_may_use_a_model_once_granted_a_profile() {
    let mut harness = Harness::leader().await;
    let mut session = session("sandboxed", TrustLevel::Untrusted);
    session.metadata.generation = Some(1);
    session.spec.provider = Some(serde_json::from_value(json!({"name": "openai"})).unwrap());
    harness.create(&session);
    set_policy(
        &mut harness,
        json!({"providers": [{"name": "openai", "type": "openai",
            "secretRef": {"name": "model-keys", "key": "openai"}}]}),
    );
    harness.reconcile("sandboxed").await;
    mark_pod_ready(&harness, "sandboxed");
    harness.reconcile("sandboxed").await;
    let ready = condition(&harness.status("sandboxed"), "Ready").clone();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ProviderNotAllowed")),
        "untrusted: no model unless granted"
    );

    let mut grant = session_grant("models", "sandboxed", &[]);
    grant.spec.profile = Some(TrustLevel::SemiTrusted);
    harness.add_grant(grant);
    harness.reconcile("sandboxed").await;
    assert_eq!(
        condition(&harness.status("sandboxed"), "Ready")["status"],
        "True"
    );
}
