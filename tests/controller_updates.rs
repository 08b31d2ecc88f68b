//! How session pods take changes (fake API server): a Session's own sandbox
//! change replaces its pod at once; an operator-level change (sidecar
//! image, flags) follows the update policy: Immediate, Rolling (a few pods
//! of a namespace at a time) or OnRestart. The Session says so in UpToDate.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::fake_api::{FakeApi, Recorded};
use common::harness::*;
use common::kubelet::kubelet;
use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use wopr_operator::api::{Session, TrustLevel, UpdatePolicy, UpdateType};
use wopr_operator::cluster::lease::Leadership;
use wopr_operator::controller::metrics::Metrics;
use wopr_operator::controller::run::{Setup, Triggers, run};
use wopr_operator::controller::session::config::SandboxConfig;
use wopr_operator::controller::session::rollout::pod_is_ready;

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
    let mut harness = upgraded(&["a", "b", "c"], policy(UpdateType::Rolling, Some(1))).await;
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
    let woken: Vec<String> = (0..2)
        .map(|_| harness.waiting_for_a_slot.as_mut().try_recv().unwrap().name)
        .collect();
    assert_eq!(
        woken,
        ["b", "c"],
        "the slot given back wakes who waits for it"
    );
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

/// The Session controller running in process against `api` until the
/// returned sender is dropped or sent to.
fn run_controller(
    api: &FakeApi,
    config: SandboxConfig,
    store: wopr_operator::store::Store,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let client = api.client();
    let (caches, feeds) = wopr_operator::cache::start(&client, Some(NAMESPACE));
    let setup = Setup {
        client,
        config,
        caches,
        triggers: Triggers {
            policies: feeds.policies,
            grants: feeds.grants,
            gateways: feeds.gateways,
            sessions: feeds.sessions,
        },
        leadership: Leadership::always(),
        identity: "test".into(),
        metrics: Metrics::new(&mut Registry::default()),
        default_update_policy: policy(UpdateType::Rolling, Some(1)),
        namespace: Some(NAMESPACE.into()),
        store,
        ca_bundle: None,
        egress_account: None,
        egress_cert: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = wopr_operator::shutdown::on(async {
        let _ = stopped.await;
    });
    (stop, tokio::spawn(run(setup, shutdown)))
}

/// Whether every Session's pod runs `image`, is Ready, and its Session
/// says Ready and UpToDate.
fn all_current(api: &FakeApi, image: &str) -> bool {
    ["a", "b", "c"].iter().all(|name| {
        let Some(pod) = api.get(&pod_path(name)) else {
            return false;
        };
        let condition = |type_: &str| {
            api.get(&session_path(name)).is_some_and(|session| {
                session["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == type_ && c["status"] == "True")
            })
        };
        pod["spec"]["initContainers"][0]["image"] == image
            && pod["metadata"].get("deletionTimestamp").is_none()
            && pod["status"]["phase"] == "Running"
            && condition("Ready")
            && condition("UpToDate")
    })
}

/// Watches the Session pods: the most Sessions without a ready pod at once.
async fn most_without_a_ready_pod(api: FakeApi, most: Arc<AtomicUsize>) {
    let pods: kube::Api<Pod> = kube::Api::namespaced(api.client(), NAMESPACE);
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    let mut ready = BTreeSet::new();
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                if pod.metadata.deletion_timestamp.is_none() && pod_is_ready(&pod) {
                    ready.insert(pod.name_any());
                } else {
                    ready.remove(&pod.name_any());
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                ready.remove(&pod.name_any());
            }
            Ok(watcher::Event::InitDone) => listed = true,
            _ => continue,
        }
        if listed {
            most.fetch_max(3 - ready.len(), Ordering::SeqCst);
        }
    }
}

/// A whole rollout on a fake cluster, as on a real one: the controller
/// runs with its watches, and the pods turn Ready (and deleted pods go
/// away) as a kubelet reports them, each step a watch event. Under
/// `Rolling` with `maxUnavailable: 1`, the slot a replaced pod gives back
/// when it turns Ready is a change to that pod only, which reconciles its
/// own Session; the Sessions waiting for the slot must be woken by it, not
/// left to a timer (issue 30: on a real cluster the last Session was not
/// replaced in time). The clock is paused for the rollout: it advances only
/// when nothing is left to do, so a rollout that needs a timer to go on
/// takes that timer's time.
#[tokio::test]
async fn a_rolling_update_reaches_every_session_as_the_pods_turn_ready() {
    let api = FakeApi::default();
    api.delete_gracefully(&format!("/api/v1/namespaces/{NAMESPACE}/pods/"));
    tokio::spawn(kubelet(api.clone(), NAMESPACE));
    for name in ["a", "b", "c"] {
        api.insert(
            &session_path(name),
            serde_json::to_value(semi_trusted(name)).unwrap(),
        );
    }
    let store = common::store::sqlite().await;
    let (stop, stopped) = run_controller(&api, sandbox_config(), store.store.clone());
    let first = sandbox_config().sidecar_image;
    while !all_current(&api, &first) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    stopped.await.unwrap();

    // The controller restarts with a new sidecar image: every pod is outdated.
    tokio::time::pause();
    let most = Arc::new(AtomicUsize::new(0));
    tokio::spawn(most_without_a_ready_pod(api.clone(), most.clone()));
    let next = "ghcr.io/wopr-network/wopr-operator:next";
    let config = SandboxConfig {
        sidecar_image: next.into(),
        ..sandbox_config()
    };
    let started = tokio::time::Instant::now();
    let (_stop, _running) = run_controller(&api, config, store.store.clone());
    while !all_current(&api, next) {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the rollout stalled: {:?}",
            ["a", "b", "c"].map(|name| up_to_date_reason(&api, name))
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "each Session is replaced as the slot is given back, without waiting for a timer: took {:?}",
        started.elapsed()
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "maxUnavailable 1: one Session at a time without a ready pod"
    );
}

fn up_to_date_reason(api: &FakeApi, name: &str) -> String {
    api.get(&session_path(name))
        .and_then(|session| {
            session["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "UpToDate")
                .map(|c| format!("{name}: {}", c["reason"]))
        })
        .unwrap_or_else(|| format!("{name}: no status"))
}
