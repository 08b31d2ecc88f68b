//! Reconcile scenarios against a mock API server (tower-test): each test
//! asserts exactly which requests the controller sends.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_api::{FakeApi, Recorded};
use common::*;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use wopr_operator::api::{Capability, Gateway, Grant, SecurityPolicy, Session, TrustLevel};
use wopr_operator::controller::config::{ControlPlane, SandboxConfig};
use wopr_operator::controller::context::{Context, Leadership, Stores};
use wopr_operator::controller::metrics::Metrics;
use wopr_operator::controller::reconcile::reconcile;

fn fixed_now() -> Timestamp {
    now()
}

fn session_path(name: &str) -> String {
    format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/sessions/{name}")
}
fn account_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts/wopr-{name}")
}
fn network_policy_path(name: &str) -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies/wopr-{name}")
}
fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/pods/wopr-{name}")
}
fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events")
}

struct Harness {
    api: FakeApi,
    ctx: Arc<Context>,
    policies: Writer<DeserializeGuard<SecurityPolicy>>,
    grants: Writer<DeserializeGuard<Grant>>,
    _gateways: Writer<DeserializeGuard<Gateway>>,
}

impl Harness {
    fn new(leadership: Leadership) -> Harness {
        let (client, api) = FakeApi::start();
        let (policy_store, policies) = reflector::store();
        let (grant_store, grants) = reflector::store();
        let (gateway_store, gateways) = reflector::store();
        let ctx = Context {
            client: client.clone(),
            config: SandboxConfig {
                sidecar_image: "wopr-operator:test".into(),
                default_agent_image: "agent:test".into(),
                control_plane: ControlPlane::parse(
                    "wopr-operator.wopr-system.svc:9443",
                    "wopr-system",
                )
                .unwrap(),
                default_memory: Quantity("512Mi".into()),
                default_cpu: Quantity("500m".into()),
            },
            stores: Stores {
                policies: policy_store,
                grants: grant_store,
                gateways: gateway_store,
            },
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "wopr-operator".into(),
                    instance: None,
                },
            ),
            metrics: Metrics::new(&mut Registry::default()),
            leadership,
            clock: fixed_now,
        };
        Harness {
            api,
            ctx: Arc::new(ctx),
            policies,
            grants,
            _gateways: gateways,
        }
    }

    fn leader() -> Harness {
        Harness::new(Leadership::always())
    }

    /// Creates a Session in the fake API server.
    fn create(&self, session: &Session) {
        self.api.insert(
            &session_path(&session.metadata.name.clone().unwrap()),
            serde_json::to_value(session).unwrap(),
        );
    }

    /// Changes a Session's spec as `kubectl apply` would (bumping its generation).
    fn edit(&self, name: &str, change: impl FnOnce(&mut Value)) {
        self.api.modify(&session_path(name), |session| {
            change(&mut session["spec"]);
            let generation = session["metadata"]["generation"].as_i64().unwrap_or(1);
            session["metadata"]["generation"] = json!(generation + 1);
        });
    }

    /// Reconciles the Session as the API server has it now.
    async fn reconcile(&self, name: &str) -> Action {
        let stored = self
            .api
            .get(&session_path(name))
            .expect("the session exists");
        let object: DeserializeGuard<Session> = serde_json::from_value(stored).unwrap();
        reconcile(Arc::new(object), self.ctx.clone())
            .await
            .expect("reconcile succeeds")
    }

    fn add_grant(&mut self, grant: Grant) {
        self.grants
            .apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(grant))));
    }

    fn status(&self, name: &str) -> Value {
        self.api.get(&session_path(name)).unwrap()["status"].clone()
    }
}

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
    let harness = Harness::leader();
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
    let harness = Harness::leader();
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
    let harness = Harness::leader();
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
    let mut harness = Harness::leader();
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
            .contains(&json!("http_fetch"))
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
    let harness = Harness::leader();
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
    let harness = Harness::leader();
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
    let harness = Harness::leader();
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
    let mut harness = Harness::leader();
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
    let harness = Harness::leader();
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
    let harness = Harness::new(Leadership::default());
    harness.create(&semi_trusted("research"));
    assert_eq!(harness.reconcile("research").await, Action::await_change());
    assert!(harness.api.take_requests().is_empty());
}
