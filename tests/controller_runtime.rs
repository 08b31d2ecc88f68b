//! The controller's runtime pieces: the CRD check, the admin endpoints, the
//! status of SecurityPolicies and Gateways, and which Sessions a change
//! triggers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::fake_api::FakeApi;
use common::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::DeserializeGuard;
use kube::runtime::reflector;
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use serde_json::json;
use tower::ServiceExt;
use wopr_operator::api::{
    ESCALATION_POLICIES, Gateway, SecurityPolicy, Session, SessionPhase, SessionStatus, TrustLevel,
};
use wopr_operator::cluster::escalation::{Guard, read_escalation_guard};
use wopr_operator::cluster::preflight::{ApiServer, PreflightError};
use wopr_operator::controller::gateway_status::gateway_status;
use wopr_operator::controller::metrics::Metrics;
use wopr_operator::controller::policy_status::{GUARD_FRESH, GuardCache, policy_status};
use wopr_operator::controller::session::triggers::{SubjectIndex, grant_sessions, policy_sessions};
use wopr_operator::operator::admin::{AdminState, router};
use wopr_operator::store::{ForwardState, GatewaySummary};

// Time is paused: the CRD check's 15 s of waiting pass instantly.
#[tokio::test(start_paused = true)]
async fn the_controller_refuses_to_start_without_its_crds() {
    let (client, api) = FakeApi::start();
    let api_server = api_server(client);
    let error = api_server.ensure_crds_installed().await.unwrap_err();
    assert!(matches!(error, PreflightError::CrdsMissing { .. }));
    let message = error.to_string();
    assert!(message.contains("sessions.wopr.dev"), "{message}");
    assert!(message.contains("kubectl apply -f crds/"), "{message}");

    let served = |names: &[&str]| {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "wopr.dev/v1alpha1",
               "resources": names.iter().map(|name| json!({"name": name, "singularName": "", "namespaced": true, "kind": "X", "verbs": []})).collect::<Vec<_>>()})
    };
    api.insert(
        "/apis/wopr.dev/v1alpha1",
        served(&["sessions", "grants", "gateways", "approvalrequests"]),
    );
    let message = api_server
        .ensure_crds_installed()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("missing: securitypolicies.wopr.dev)"),
        "{message}"
    );

    api.insert(
        "/apis/wopr.dev/v1alpha1",
        served(&[
            "securitypolicies",
            "sessions",
            "sessions/status",
            "grants",
            "gateways",
            "approvalrequests",
        ]),
    );
    api_server.ensure_crds_installed().await.unwrap();
}

fn api_server(client: kube::Client) -> ApiServer {
    ApiServer {
        client,
        url: "https://fake".into(),
    }
}

fn session_in_phase(name: &str, phase: Option<SessionPhase>) -> DeserializeGuard<Session> {
    let mut session = session(name, TrustLevel::Trusted);
    session.status = phase.map(|phase| SessionStatus {
        phase: Some(phase),
        ..Default::default()
    });
    DeserializeGuard(Ok(session))
}

async fn get(app: axum::Router, path: &str) -> (StatusCode, String) {
    let response = app
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    metrics.reconciles.inc();
    metrics.error("ApiError");
    let (sessions, mut writer) = reflector::store();
    for (name, phase) in [
        ("a", Some(SessionPhase::Ready)),
        ("b", Some(SessionPhase::Ready)),
        ("c", None),
    ] {
        writer.apply_watcher_event(&watcher::Event::Apply(session_in_phase(name, phase)));
    }
    let ready = Arc::new(AtomicBool::new(false));
    let app = router(Arc::new(AdminState {
        registry,
        metrics,
        sessions,
        ready: ready.clone(),
    }));

    assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        get(app.clone(), "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    ready.store(true, Ordering::Release);
    assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);

    let (status, body) = get(app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "wopr_reconciles_total 1",
        "wopr_reconcile_errors_total{reason=\"ApiError\"} 1",
        "wopr_sessions{phase=\"Ready\"} 2",
        "wopr_sessions{phase=\"Unknown\"} 1",
        "wopr_sessions{phase=\"Failed\"} 0",
        "wopr_reconcile_duration_seconds_count 0",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
}

fn guard<K: serde::de::DeserializeOwned + kube::Resource>(
    value: serde_json::Value,
) -> DeserializeGuard<K> {
    serde_json::from_value(value).unwrap()
}

fn policy_object(name: &str, spec: serde_json::Value) -> DeserializeGuard<SecurityPolicy> {
    guard(
        json!({"apiVersion": "wopr.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE, "generation": 2}, "spec": spec}),
    )
}

/// What a condition says: (type, status, reason).
fn said(condition: &Condition) -> (&str, &str, &str) {
    (
        condition.type_.as_str(),
        condition.status.as_str(),
        condition.reason.as_str(),
    )
}

#[test]
fn security_policy_status_says_whether_it_governs() {
    let now = Time(now());
    let guarded = Guard {
        guarded: true,
        reason: "Guarded",
        message: "guarded".into(),
    };
    let default = policy_status(
        &policy_object("default", json!({})),
        &["a".into(), "b".into()],
        &guarded,
        &now,
    );
    let ready = &default.conditions[0];
    assert_eq!(said(ready), ("Ready", "True", "InForce"));
    assert_eq!(ready.message, "governs 2 session(s): a, b");
    assert_eq!(
        said(&default.conditions[1]),
        ("EscalationGuarded", "True", "Guarded")
    );
    assert_eq!(default.conditions[1].message, "guarded");
    assert_eq!(default.observed_generation, Some(2));

    let other = policy_status(&policy_object("strict", json!({})), &[], &guarded, &now);
    assert_eq!(other.conditions[0].reason, "NotInForce");
    assert_eq!(
        said(&other.conditions[1]),
        ("EscalationGuarded", "True", "Guarded"),
        "every readable policy shows the guard"
    );
    let unguarded = Guard {
        guarded: false,
        reason: "PolicyMissing",
        message: "not installed".into(),
    };
    let broken = policy_status(
        &policy_object("default", json!({"enforcement": "off"})),
        &[],
        &unguarded,
        &now,
    );
    assert_eq!(
        said(&broken.conditions[1]),
        ("EscalationGuarded", "False", "PolicyMissing"),
        "the guard describes the cluster, so an unreadable policy shows it too"
    );
    assert_eq!(
        (
            broken.conditions[0].status.as_str(),
            broken.conditions[0].reason.as_str()
        ),
        ("False", "InvalidObject")
    );
    assert!(broken.conditions[0].message.contains("off"));

    let many: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    let listed = policy_status(&policy_object("default", json!({})), &many, &guarded, &now);
    assert!(
        listed.conditions[0].message.ends_with("and 2 more"),
        "{}",
        listed.conditions[0].message
    );
}

const ADMISSION: &str = "/apis/admissionregistration.k8s.io/v1";

/// Where the API server keeps the escalation policy `name` and its binding.
fn escalation_paths(name: &str) -> [String; 2] {
    [
        format!("{ADMISSION}/validatingadmissionpolicies/{name}"),
        format!("{ADMISSION}/validatingadmissionpolicybindings/{name}"),
    ]
}

/// The controller reads the chart's escalation policies from the API
/// server: absent, installed, or hidden from it by RBAC (a 403 is an
/// answer, not a failure to retry); any other failure is an error, so no
/// status is written.
#[tokio::test]
async fn the_escalation_guard_is_read_from_the_cluster() {
    let (client, api) = FakeApi::start();
    let absent = read_escalation_guard(&client).await.unwrap();
    assert_eq!((absent.guarded, absent.reason), (false, "PolicyMissing"));
    let mut asked: Vec<String> = api.take_requests().iter().map(|r| r.line()).collect();
    asked.sort();
    let mut expected: Vec<String> = ESCALATION_POLICIES
        .iter()
        .flat_map(|name| escalation_paths(name))
        .map(|path| format!("GET {path}"))
        .collect();
    expected.sort();
    assert_eq!(asked, expected);

    for name in ESCALATION_POLICIES {
        let [policy, binding] = escalation_paths(name);
        api.insert(
            &policy,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                   "metadata": {"name": name}, "spec": {"failurePolicy": "Fail"}}),
        );
        api.insert(
            &binding,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
                   "metadata": {"name": name},
                   "spec": {"policyName": name, "validationActions": ["Deny"]}}),
        );
    }
    let installed = read_escalation_guard(&client).await.unwrap();
    assert_eq!((installed.guarded, installed.reason), (true, "Guarded"));

    api.refuse(
        &format!("{ADMISSION}/validatingadmissionpolicybindings"),
        http::StatusCode::FORBIDDEN,
        "validatingadmissionpolicybindings.admissionregistration.k8s.io \"wopr-escalation-grants\" is forbidden: User \"system:serviceaccount:wopr-system:wopr-operator\" cannot get resource",
    );
    let hidden = read_escalation_guard(&client).await.unwrap();
    assert_eq!((hidden.guarded, hidden.reason), (false, "CannotVerify"));
    for part in [
        "403 Forbidden",
        "system:serviceaccount:wopr-system:wopr-operator",
        "get on validatingadmissionpolicies and validatingadmissionpolicybindings (admissionregistration.k8s.io) named wopr-escalation-sessions, wopr-escalation-grants, wopr-escalation-gateways, wopr-escalation-securitypolicies",
    ] {
        assert!(
            hidden.message.contains(part),
            "{part:?} not in {}",
            hidden.message
        );
    }

    let (client, api) = FakeApi::start();
    api.refuse(
        &format!("{ADMISSION}/validatingadmissionpolicies"),
        http::StatusCode::INTERNAL_SERVER_ERROR,
        "etcd is away",
    );
    let error = read_escalation_guard(&client).await.unwrap_err();
    assert!(error.to_string().contains("etcd is away"), "{error}");
}

/// Every SecurityPolicy's reconcile needs the guard; one reading serves
/// them all for `GUARD_FRESH`, then the next reconcile reads it again.
#[tokio::test(start_paused = true)]
async fn one_reading_of_the_guard_serves_every_security_policy_for_a_while() {
    let (client, api) = FakeApi::start();
    let cache = GuardCache::default();
    for _ in 0..5 {
        assert_eq!(cache.read(&client).await.unwrap().reason, "PolicyMissing");
    }
    assert_eq!(api.take_requests().len(), 2 * ESCALATION_POLICIES.len());
    tokio::time::advance(GUARD_FRESH).await;
    cache.read(&client).await.unwrap();
    assert_eq!(api.take_requests().len(), 2 * ESCALATION_POLICIES.len());
}

#[test]
fn gateway_status_says_whether_its_session_exists() {
    let now = Time(now());
    let gateway: DeserializeGuard<Gateway> = DeserializeGuard(Ok(gateway("p2p", "p2p-gateway")));
    let sessions = [("p2p-gateway".to_owned(), TrustLevel::SemiTrusted)];
    let serving = gateway_status(&gateway, &sessions, None, &now);
    assert_eq!(
        (
            serving.conditions[0].status.as_str(),
            serving.conditions[0].reason.as_str()
        ),
        ("True", "Serving")
    );
    let orphan = gateway_status(&gateway, &[], None, &now);
    assert_eq!(orphan.conditions[0].reason, "SessionNotFound");
    assert!(orphan.conditions[0].message.contains("p2p-gateway"));
}

#[test]
fn gateway_status_says_what_is_above_its_trust_level() {
    let now = Time(now());
    let mut spec = gateway("p2p", "p2p-gateway");
    spec.spec.forward_rules = vec![
        serde_json::from_value(json!({"allowForwardTo": ["research"]})).unwrap(),
        serde_json::from_value(json!({"allowForwardTo": ["*"], "allowActions": ["query"]}))
            .unwrap(),
    ];
    let conditions = |gateway: &Gateway, sessions: &[(String, TrustLevel)]| {
        let status = gateway_status(&DeserializeGuard(Ok(gateway.clone())), sessions, None, &now);
        status
            .conditions
            .into_iter()
            .map(|c| (c.type_, c.status, c.reason, c.message))
            .collect::<Vec<_>>()
    };
    let levels = |gate: TrustLevel| {
        vec![
            ("lead".to_owned(), TrustLevel::Owner),
            ("p2p-gateway".to_owned(), gate),
            ("research".to_owned(), TrustLevel::SemiTrusted),
        ]
    };
    // A semi-trusted Gateway: rule 1's `*` reaches the owner Session.
    let semi = conditions(&spec, &levels(TrustLevel::SemiTrusted));
    assert_eq!(
        (semi[0].1.as_str(), semi[0].2.as_str()),
        ("True", "Serving")
    );
    assert_eq!(
        (semi[1].0.as_str(), semi[1].1.as_str(), semi[1].2.as_str()),
        ("TargetsWithinLevel", "False", "TargetAboveLevel")
    );
    assert!(
        semi[1]
            .3
            .contains("above the Gateway's trustLevel semi-trusted: rule 1 lists lead (owner);"),
        "{}",
        semi[1].3
    );
    // Its session above its level: it serves as no gateway.
    let above = conditions(&spec, &levels(TrustLevel::Trusted));
    assert_eq!(
        (above[0].1.as_str(), above[0].2.as_str()),
        ("False", "SessionAboveLevel")
    );
    assert!(
        above[0].3.contains(
            "Session p2p-gateway is trusted, above the Gateway's trustLevel semi-trusted"
        ),
        "{}",
        above[0].3
    );
    // At owner, everything it names is within its level.
    spec.spec.trust_level = TrustLevel::Owner;
    let owner = conditions(&spec, &levels(TrustLevel::Trusted));
    assert_eq!(owner[0].2, "Serving");
    assert_eq!(
        (owner[1].1.as_str(), owner[1].2.as_str()),
        ("True", "WithinLevel")
    );
}

#[test]
fn gateway_status_shows_its_forwards_and_keeps_them_when_the_store_is_away() {
    let now = Time(now());
    let decided: k8s_openapi::jiff::Timestamp = "2026-11-24T11:59:00Z".parse().unwrap();
    let summary = GatewaySummary {
        pending: 2,
        per_rule: vec![(0, 20), (1, 3)],
        last_decision: Some(("01req".into(), ForwardState::Answered, decided)),
    };
    let object: DeserializeGuard<Gateway> = DeserializeGuard(Ok(gateway("p2p", "p2p-gateway")));
    let sessions = [("p2p-gateway".to_owned(), TrustLevel::SemiTrusted)];
    let status = gateway_status(&object, &sessions, Some(&summary), &now);
    assert_eq!(status.pending, Some(2));
    let counts: Vec<(u32, u64)> = status
        .forwards
        .iter()
        .map(|r| (r.rule, r.forwarded))
        .collect();
    assert_eq!(counts, [(0, 20), (1, 3)]);
    let last = status.last_decision.clone().unwrap();
    assert_eq!(
        (last.request_id.as_str(), last.decision.as_str()),
        ("01req", "approved")
    );
    assert_eq!(last.at.0, decided);
    // The store is unavailable: what the status showed stays.
    let mut shown = gateway("p2p", "p2p-gateway");
    shown.status = Some(status.clone());
    let kept = gateway_status(&DeserializeGuard(Ok(shown)), &sessions, None, &now);
    assert_eq!(
        (kept.pending, kept.forwards, kept.last_decision),
        (status.pending, status.forwards, status.last_decision)
    );
}

#[test]
fn grant_changes_trigger_their_sessions_only() {
    let index = SubjectIndex::default();
    let names =
        |refs: Vec<kube::runtime::reflector::ObjectRef<DeserializeGuard<Session>>>| -> Vec<String> {
            refs.into_iter().map(|r| r.name).collect()
        };
    let to_research = DeserializeGuard(Ok(session_grant("g", "research", &[])));
    assert_eq!(names(grant_sessions(&index, &to_research)), ["research"]);
    let to_code = DeserializeGuard(Ok(session_grant("g", "code", &[])));
    assert_eq!(
        names(grant_sessions(&index, &to_code)),
        ["research", "code"]
    );
    let peer = DeserializeGuard(Ok(peer_grant("alice", "KEY", TrustLevel::Trusted)));
    assert!(
        grant_sessions(&index, &peer).is_empty(),
        "peer grants change no session context"
    );
}

#[test]
fn a_default_policy_change_triggers_every_session_of_its_namespace() {
    let (sessions, mut writer) = reflector::store();
    for (name, namespace) in [("a", NAMESPACE), ("b", NAMESPACE), ("c", "elsewhere")] {
        let mut session = session(name, TrustLevel::Trusted);
        session.metadata.namespace = Some(namespace.into());
        writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(session))));
    }
    let mut triggered: Vec<String> =
        policy_sessions(&sessions, &policy_object("default", json!({})))
            .into_iter()
            .map(|r| r.name)
            .collect();
    triggered.sort();
    assert_eq!(triggered, ["a", "b"]);
    assert!(policy_sessions(&sessions, &policy_object("strict", json!({}))).is_empty());
}

#[tokio::test]
async fn token_review_identifies_a_sessions_service_account_and_pod() {
    use wopr_operator::controlplane::auth::{AuthError, Authenticator, Identity, TokenReviewer};
    let (client, api) = FakeApi::start();
    let path = "/apis/authentication.k8s.io/v1/tokenreviews";
    let reviewed = |authenticated: bool, audiences: &[&str]| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": {},
               "status": {"authenticated": authenticated, "audiences": audiences,
                          "user": {"username": "system:serviceaccount:team-a:wopr-research",
                                   "extra": {"authentication.kubernetes.io/pod-name": ["wopr-research"]}}}})
    };
    api.insert(path, reviewed(true, &["wopr.dev"]));
    let reviewer = TokenReviewer::new(client);
    let identity = reviewer.authenticate("the-token").await.unwrap();
    assert_eq!(
        identity,
        Identity {
            namespace: "team-a".into(),
            service_account: "wopr-research".into(),
            pod_name: Some("wopr-research".into())
        }
    );
    let request = api
        .take_requests()
        .into_iter()
        .find(|r| r.method == http::Method::POST)
        .unwrap();
    let spec = &request.body.unwrap()["spec"];
    assert_eq!(spec["token"], "the-token");
    assert_eq!(spec["audiences"], json!(["wopr.dev"]));

    // Other tokens (a review is kept for its token: `controlplane::reviews`).
    api.insert(path, reviewed(false, &["wopr.dev"]));
    assert!(matches!(
        reviewer.authenticate("t").await,
        Err(AuthError::Refused(_))
    ));
    api.insert(path, reviewed(true, &["https://kubernetes.default.svc"]));
    let wrong_audience = reviewer.authenticate("t2").await.unwrap_err();
    assert!(
        wrong_audience.to_string().contains("audience"),
        "{wrong_audience}"
    );
}

/// A TokenReviewer whose API server authenticates every token as `user`
/// and answers SubjectAccessReviews as the flag says (refusals with the
/// reason "no RBAC policy matched").
fn reviewing(
    user: serde_json::Value,
) -> (
    wopr_operator::controlplane::auth::TokenReviewer,
    FakeApi,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (client, api) = FakeApi::start();
    api.insert(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": {},
               "status": {"authenticated": true, "audiences": ["https://kubernetes.default.svc"], "user": user}}),
    );
    let allowed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answer = allowed.clone();
    api.respond_to(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        move |review| {
            let allowed = answer.load(std::sync::atomic::Ordering::SeqCst);
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                   "spec": review["spec"],
                   "status": {"allowed": allowed, "reason": if allowed { "" } else { "no RBAC policy matched" }}})
        },
    );
    (
        wopr_operator::controlplane::auth::TokenReviewer::new(client),
        api,
        allowed,
    )
}

/// A reader's credential is reviewed for the API server's own audience,
/// then a SubjectAccessReview asks, as that user with its groups, uid and
/// extras, for `list auditevents.wopr.dev` in the namespace.
#[tokio::test]
async fn reading_the_audit_trail_takes_a_subject_access_review() {
    use wopr_operator::controlplane::auth::{AuthError, Authenticator};
    let (reviewer, api, allowed) = reviewing(json!({"username": "alice@example.com", "uid": "u-1",
               "groups": ["team-a-admins", "system:authenticated"],
               "extra": {"scopes": ["audit"]}}));
    let reader = reviewer.may_read_audit("alice-token", Some("team-a")).await;
    assert_eq!(reader.unwrap(), "alice@example.com");
    let requests: Vec<_> = api
        .take_requests()
        .into_iter()
        .filter(|r| r.method == http::Method::POST)
        .collect();
    let token_review = requests[0].body.as_ref().unwrap();
    assert_eq!(token_review["spec"]["token"], "alice-token");
    assert!(
        token_review["spec"].get("audiences").is_none(),
        "the API server's own audience: {token_review}"
    );
    let access_review = &requests[1].body.as_ref().unwrap()["spec"];
    assert_eq!(
        *access_review,
        json!({"user": "alice@example.com", "uid": "u-1",
               "groups": ["team-a-admins", "system:authenticated"],
               "extra": {"scopes": ["audit"]},
               "resourceAttributes": {"group": "wopr.dev", "resource": "auditevents",
                                      "verb": "list", "namespace": "team-a"}})
    );

    allowed.store(false, std::sync::atomic::Ordering::SeqCst);
    match reviewer.may_read_audit("alice-token", None).await {
        Err(AuthError::Forbidden { username, reason }) => {
            assert_eq!(username, "alice@example.com");
            assert_eq!(
                reason,
                "alice@example.com may not list auditevents.wopr.dev in every namespace (no RBAC policy matched): bind the ClusterRole wopr-audit-reader (or edit/admin) there"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The POSTs of `api` since the last look, as `(path, body)`.
fn posted(api: &FakeApi) -> Vec<(String, serde_json::Value)> {
    api.take_requests()
        .into_iter()
        .filter(|r| r.method == http::Method::POST)
        .map(|r| (r.path, r.body.unwrap()))
        .collect()
}

/// A person's message to a session takes `create` on that Session's
/// `inject` subresource, then `use` on its trust level, both asked as the
/// reviewed user after one TokenReview.
#[tokio::test]
async fn sending_a_session_a_message_takes_create_on_sessions_inject() {
    use wopr_operator::controlplane::auth::{AuthError, Authenticator};
    let (reviewer, api, allowed) = reviewing(json!({"username": "bob", "groups": ["ops"]}));
    let sender = reviewer
        .may_inject(
            "bob-token",
            "team-a",
            "research-agent",
            Some(TrustLevel::SemiTrusted),
        )
        .await;
    assert_eq!(sender.unwrap(), "bob");
    let requests = posted(&api);
    let paths: Vec<&str> = requests.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        ],
        "one TokenReview serves both SubjectAccessReviews"
    );
    assert_eq!(
        requests[1].1["spec"]["resourceAttributes"],
        json!({"group": "wopr.dev", "resource": "sessions", "subresource": "inject",
               "verb": "create", "namespace": "team-a", "name": "research-agent"})
    );
    assert_eq!(
        requests[2].1["spec"],
        json!({"user": "bob", "groups": ["ops"],
               "resourceAttributes": {"group": "wopr.dev", "resource": "trustlevels",
                                      "verb": "use", "namespace": "team-a", "name": "semi-trusted"}})
    );

    allowed.store(false, std::sync::atomic::Ordering::SeqCst);
    match reviewer
        .may_inject(
            "bob-token",
            "team-a",
            "research-agent",
            Some(TrustLevel::SemiTrusted),
        )
        .await
    {
        Err(AuthError::Forbidden { username, reason }) => {
            assert_eq!(username, "bob");
            assert_eq!(
                reason,
                "bob may not create sessions/inject of wopr.dev/research-agent (no RBAC policy matched): bind the ClusterRole wopr-session-injector (or edit/admin) in namespace team-a"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let paths: Vec<String> = posted(&api).into_iter().map(|(path, _)| path).collect();
    assert_eq!(
        paths,
        ["/apis/authorization.k8s.io/v1/subjectaccessreviews"],
        "the token's review is kept; refused sessions/inject, the level is not asked"
    );
}

/// A person whom RBAC lets create `sessions/inject` but not use the
/// session's trust level is refused, naming the right and the role.
#[tokio::test]
async fn a_persons_message_asks_use_on_the_sessions_trust_level() {
    use wopr_operator::controlplane::auth::{AuthError, Authenticator};
    let (reviewer, api, _) = reviewing(json!({"username": "alice", "groups": ["team-a-editors"]}));
    api.respond_to(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        |review| {
            let attributes = &review["spec"]["resourceAttributes"];
            let allowed = attributes["subresource"] == "inject"
                || (attributes["resource"] == "trustlevels"
                    && attributes["name"] != "trusted"
                    && attributes["name"] != "owner");
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                   "spec": review["spec"],
                   "status": {"allowed": allowed, "reason": if allowed { "" } else { "no RBAC policy matched" }}})
        },
    );
    match reviewer
        .may_inject("alice-token", "team-a", "lead", Some(TrustLevel::Owner))
        .await
    {
        Err(AuthError::CannotOperate { username, reason }) => {
            assert_eq!(username, "alice");
            assert_eq!(
                reason,
                "alice may not operate session team-a/lead (trust level owner; no RBAC policy matched): that needs use on trustlevels.wopr.dev named owner in namespace team-a: bind the ClusterRole wopr-trust-owner there"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        posted(&api).len(),
        3,
        "one TokenReview, two reviews of access"
    );
    let sender = reviewer
        .may_inject(
            "alice-token",
            "team-a",
            "helper",
            Some(TrustLevel::SemiTrusted),
        )
        .await;
    assert_eq!(sender.unwrap(), "alice");

    // No such session: only sessions/inject is asked, so the caller who
    // passes learns of it from the broker's NotFound.
    let _ = posted(&api);
    let sender = reviewer
        .may_inject("alice-token", "team-a", "ghost", None)
        .await;
    assert_eq!(sender.unwrap(), "alice");
    let asked: Vec<serde_json::Value> = posted(&api)
        .into_iter()
        .map(|(_, body)| body["spec"]["resourceAttributes"]["subresource"].clone())
        .collect();
    assert_eq!(asked, [json!("inject")], "the token's review is kept");
}

/// A workload's standing comes from its Grants: its message takes
/// `create` on `sessions/inject` only, whatever the session's level.
#[tokio::test]
async fn a_workloads_message_asks_no_trust_level() {
    use wopr_operator::controlplane::auth::Authenticator;
    let (reviewer, api, _) = reviewing(json!({"username": "system:serviceaccount:ci:task-bot"}));
    let sender = reviewer
        .may_inject("bot-token", "team-a", "lead", Some(TrustLevel::Owner))
        .await;
    assert_eq!(sender.unwrap(), "system:serviceaccount:ci:task-bot");
    let requests = posted(&api);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].1["spec"]["resourceAttributes"]["subresource"],
        "inject"
    );
}

#[tokio::test(start_paused = true)]
async fn the_controller_waits_briefly_for_crds_that_were_just_installed() {
    let (client, api) = FakeApi::start();
    let resources: Vec<_> = ["securitypolicies", "sessions", "grants", "gateways", "approvalrequests"]
        .iter()
        .map(|name| json!({"name": name, "singularName": "", "namespaced": true, "kind": "X", "verbs": []}))
        .collect();
    let served = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "wopr.dev/v1alpha1", "resources": resources});
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        api.insert("/apis/wopr.dev/v1alpha1", served);
    });
    api_server(client).ensure_crds_installed().await.unwrap();
}
