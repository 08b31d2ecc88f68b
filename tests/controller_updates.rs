//! How session pods take changes (mock API server): a Session's own sandbox
//! change replaces its pod at once; an operator-level change (sidecar
//! image, flags) follows the update policy: Immediate, Rolling (a few pods
//! of a namespace at a time) or OnRestart. The Session says so in UpToDate.

mod common;

use common::fake_api::Recorded;
use common::harness::*;
use common::*;
use serde_json::{Value, json};
use wopr_operator::api::{Session, TrustLevel, UpdatePolicy, UpdateType};
use wopr_operator::controller::config::SandboxConfig;

fn writes(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.method != http::Method::GET && !r.path.ends_with("/events"))
        .map(Recorded::line)
        .collect()
}

fn up_to_date(harness: &Harness, name: &str) -> Value {
    harness.status(name)["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "UpToDate")
        .cloned()
        .unwrap()
}

fn semi_trusted(name: &str) -> Session {
    let mut session = session(name, TrustLevel::SemiTrusted);
    session.metadata.generation = Some(1);
    session
}

fn policy(type_: UpdateType, max_unavailable: Option<u32>) -> UpdatePolicy {
    UpdatePolicy {
        type_,
        max_unavailable,
    }
}

/// The pod of `name` runs and is ready, as the kubelet would report it.
fn mark_ready(harness: &Harness, name: &str) {
    harness.api.modify(&pod_path(name), |pod| {
        pod["status"] =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    });
}

/// Sessions with ready pods, then a controller restarted with a new
/// sidecar image and `default` update policy.
async fn upgraded(names: &[&str], default: UpdatePolicy) -> Harness {
    let mut harness = Harness::leader().await;
    for name in names {
        harness.create(&semi_trusted(name));
        harness.reconcile(name).await;
        mark_ready(&harness, name);
        harness.reconcile(name).await;
        assert_eq!(up_to_date(&harness, name)["status"], "True");
    }
    let config = SandboxConfig {
        sidecar_image: "ghcr.io/wopr-network/wopr-operator:next".into(),
        ..sandbox_config()
    };
    harness.reconfigure(config, default);
    harness.api.take_requests();
    harness
}

fn uid(harness: &Harness, name: &str) -> Value {
    harness.api.get(&pod_path(name)).unwrap()["metadata"]["uid"].clone()
}

#[tokio::test]
async fn on_restart_keeps_running_pods_and_says_an_update_is_pending() {
    let harness = upgraded(&["research"], policy(UpdateType::OnRestart, None)).await;
    let before = uid(&harness, "research");
    harness.reconcile("research").await;
    assert_eq!(
        writes(&harness.api.take_requests()),
        [format!("PATCH {}/status", session_path("research"))],
        "no pod is deleted"
    );
    assert_eq!(uid(&harness, "research"), before);
    let condition = up_to_date(&harness, "research");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "OnRestart");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains("sidecar image ghcr.io/wopr-network/wopr-operator:test → ghcr.io/wopr-network/wopr-operator:next"),
        "{message}"
    );
    assert_eq!(
        harness.status("research")["phase"],
        "Ready",
        "still serving"
    );

    // Nothing more happens on its own.
    harness.reconcile("research").await;
    assert_eq!(writes(&harness.api.take_requests()), Vec::<String>::new());

    // The pod goes away (evicted, deleted): its replacement is current.
    harness.api.remove(&pod_path("research"));
    harness.reconcile("research").await;
    let pod = harness.api.get(&pod_path("research")).unwrap();
    assert_eq!(
        pod["spec"]["initContainers"][0]["image"],
        "ghcr.io/wopr-network/wopr-operator:next"
    );
    assert_eq!(up_to_date(&harness, "research")["status"], "True");
}

#[tokio::test]
async fn immediate_replaces_every_outdated_pod_at_once() {
    let harness = upgraded(&["a", "b"], policy(UpdateType::Immediate, None)).await;
    for name in ["a", "b"] {
        harness.reconcile(name).await;
        assert_eq!(
            writes(&harness.api.take_requests()),
            [
                format!("DELETE {}", pod_path(name)),
                format!("PATCH {}/status", session_path(name))
            ]
        );
        assert_eq!(up_to_date(&harness, name)["reason"], "Replacing");
    }
}

#[tokio::test]
async fn rolling_replaces_one_pod_of_a_namespace_at_a_time() {
    let harness = upgraded(&["a", "b", "c"], policy(UpdateType::Rolling, Some(1))).await;
    harness.reconcile("a").await;
    assert!(
        harness.api.get(&pod_path("a")).is_none(),
        "a takes the slot"
    );
    for name in ["b", "c"] {
        harness.reconcile(name).await;
        assert!(harness.api.get(&pod_path(name)).is_some(), "{name} waits");
        let condition = up_to_date(&harness, name);
        assert_eq!(condition["reason"], "WaitingForRollout");
        assert!(
            condition["message"]
                .as_str()
                .unwrap()
                .contains("fewer than 1 of this namespace's session pods")
        );
    }

    // a's new pod is created, then becomes ready: it gives the slot back.
    harness.reconcile("a").await;
    harness.reconcile("b").await;
    assert!(
        harness.api.get(&pod_path("b")).is_some(),
        "a is not ready yet"
    );
    mark_ready(&harness, "a");
    harness.reconcile("a").await;
    assert_eq!(up_to_date(&harness, "a")["status"], "True");
    harness.reconcile("b").await;
    assert!(harness.api.get(&pod_path("b")).is_none(), "now b");
    harness.reconcile("c").await;
    assert!(harness.api.get(&pod_path("c")).is_some(), "c still waits");
}

#[tokio::test]
async fn the_namespaces_policy_overrides_the_controller_default() {
    let mut harness = upgraded(&["a", "b"], policy(UpdateType::Immediate, None)).await;
    harness
        .policies
        .apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            kube::core::DeserializeGuard(Ok(security_policy(
                json!({"updatePolicy": {"type": "Rolling", "maxUnavailable": 2}}),
            ))),
        ));
    for name in ["a", "b"] {
        harness.reconcile(name).await;
        assert!(
            harness.api.get(&pod_path(name)).is_none(),
            "{name}: two slots"
        );
    }
    harness
        .policies
        .apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            kube::core::DeserializeGuard(Ok(security_policy(
                json!({"updatePolicy": {"type": "OnRestart"}}),
            ))),
        ));
    harness.reconfigure(
        SandboxConfig {
            isolation_probes: Vec::new(),
            ..harness.ctx.config.clone()
        },
        policy(UpdateType::Immediate, None),
    );
    harness.reconcile("a").await; // recreated, current
    mark_ready(&harness, "a");
    harness.reconfigure(
        SandboxConfig {
            isolation_probes: vec![("metadata".into(), "169.254.169.254:80".parse().unwrap())],
            ..harness.ctx.config.clone()
        },
        policy(UpdateType::Immediate, None),
    );
    harness.reconcile("a").await;
    assert!(
        harness.api.get(&pod_path("a")).is_some(),
        "OnRestart from the policy"
    );
    let message = up_to_date(&harness, "a")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("sidecar WOPR_ISOLATION_PROBES"),
        "{message}"
    );
}

#[tokio::test]
async fn a_sandbox_change_replaces_the_pod_whatever_the_update_policy() {
    let harness = upgraded(&["research"], policy(UpdateType::OnRestart, None)).await;
    harness.edit("research", |spec| {
        spec["sandbox"] = json!({"image": "example.com/agent:2"})
    });
    harness.reconcile("research").await;
    assert!(harness.api.get(&pod_path("research")).is_none());
    harness.reconcile("research").await;
    let pod = harness.api.get(&pod_path("research")).unwrap();
    assert_eq!(pod["spec"]["containers"][0]["image"], "example.com/agent:2");
    assert_eq!(
        pod["spec"]["initContainers"][0]["image"], "ghcr.io/wopr-network/wopr-operator:next",
        "and with the operator's new settings"
    );
}

#[tokio::test]
async fn pods_from_before_update_policies_follow_the_policy() {
    let harness = upgraded(&["research"], policy(UpdateType::OnRestart, None)).await;
    harness.api.modify(&pod_path("research"), |pod| {
        pod["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("wopr.dev/session-hash");
    });
    harness.reconcile("research").await;
    assert!(harness.api.get(&pod_path("research")).is_some());
    assert_eq!(up_to_date(&harness, "research")["reason"], "OnRestart");
}
