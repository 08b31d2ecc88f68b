//! Attacks on access to the control plane (issue 31, items 3, 5 and 7),
//! each against an in-process control plane with real tonic clients:
//! a principal with a valid Kubernetes credential and no WOPR rights
//! writing into any namespace's trail; an agent flooding
//! `security_request`; TokenReviews per call; a flood of calls on one
//! connection; reflection served to anyone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::fake_api::FakeApi;
use common::sidecar::{ControlPlane, OUTSIDER, READER, as_sidecar, with_token};
use common::sidecar::{MemoryEvents, MemoryRecorder};
use common::store::{TestStore, all_events, on_both_backends};
use common::*;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::reflector;
use sqlx::Row;
use tonic::Code;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use wopr_operator::api::Capability;
use wopr_operator::api::TrustLevel;
use wopr_operator::audit::EventType;
use wopr_operator::cache::Stores;
use wopr_operator::clock::Clock;
use wopr_operator::controlplane::Settings;
use wopr_operator::controlplane::audit::{AuditMetrics, AuditSetup};
use wopr_operator::controlplane::auth::{AuthError, Authenticator, Identity, TokenReviewer};
use wopr_operator::controlplane::index::ContextIndex;
use wopr_operator::controlplane::refusals::{BUDGET, Reason};
use wopr_operator::controlplane::writes::KubeWriter;
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1::IsolationReport;
use wopr_operator::proto::v1alpha1::WatchRequest;
use wopr_operator::proto::v1alpha1::audit_client::AuditClient;
use wopr_operator::proto::v1alpha1::broker_client::BrokerClient;
use wopr_operator::proto::v1alpha1::policy_client::PolicyClient;
use wopr_operator::proto::v1alpha1::policy_update::Update;
use wopr_operator::proto::v1alpha1::{AuditQueryRequest, ElevateRequest, InjectRequest};
use wopr_operator::store::{Elevation, ElevationState, Opened, Verification, new_request_id};

/// The operator's namespace, whose chain is the trail of refusals of
/// callers with no right where they asked.
const OPERATOR_NAMESPACE: &str = "wopr-system";

/// The namespaces that have an audit chain.
async fn chains(control_plane: &ControlPlane) -> Vec<String> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&control_plane.store_url)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT namespace FROM audit_chains ORDER BY namespace")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter().map(|row| row.get(0)).collect()
}

async fn clients(control_plane: &ControlPlane) -> (AuditClient<Channel>, BrokerClient<Channel>) {
    (
        AuditClient::new(control_plane.channel().await),
        BrokerClient::new(control_plane.channel().await),
    )
}

/// Item 3: a workload whose credential is valid but which has no right in
/// `team-a` (nor in a namespace it makes up) names them with session
/// names far over a label's 63 characters: each call is refused as
/// invalid before anything is written, so no chain appears.
#[tokio::test]
async fn names_over_a_label_are_refused_before_anything_is_written() {
    let mut control_plane = ControlPlane::start(&["alice"]).await;
    control_plane.put_session(session("alice", TrustLevel::Trusted));
    let (mut audit, mut broker) = clients(&control_plane).await;
    let long = "s".repeat(200_000);
    for namespace in [NAMESPACE, "made-up"] {
        let query = AuditQueryRequest {
            namespace: namespace.into(),
            session: long.clone(),
            ..AuditQueryRequest::default()
        };
        let refused = audit.query(with_token(OUTSIDER, query)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("session") && refused.message().contains("63"),
            "{refused:?}"
        );
        let inject = InjectRequest {
            namespace: namespace.into(),
            session: long.clone(),
            payload_json: "{}".into(),
        };
        let refused = broker
            .inject(with_token(OUTSIDER, inject))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let bad_namespace = AuditQueryRequest {
        namespace: "Not_A_Namespace".into(),
        ..AuditQueryRequest::default()
    };
    let refused = audit
        .query(with_token(OUTSIDER, bad_namespace))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("namespace"), "{refused:?}");
    assert!(chains(&control_plane).await.is_empty(), "nothing written");
    let metrics = &control_plane.refusal_metrics;
    assert_eq!(metrics.count(Reason::InvalidName), 5);
    assert_eq!(
        metrics.count(Reason::NoRight),
        0,
        "refused before any review"
    );
}

/// Item 3: the attack of the issue with names that are valid: the
/// refusals of a caller with no right in a namespace are not written into
/// that namespace's chain, no chain is made for a namespace nobody has,
/// and the operator's own trail keeps a bounded number of them.
#[tokio::test]
async fn refusals_of_callers_with_no_right_stay_out_of_the_namespaces_trail() {
    let mut control_plane = ControlPlane::start(&["alice"]).await;
    control_plane.put_session(session("alice", TrustLevel::Trusted));
    let (mut audit, mut broker) = clients(&control_plane).await;
    let calls: u64 = 50;
    for n in 0..calls {
        let namespace = if n.is_multiple_of(2) {
            NAMESPACE
        } else {
            "made-up"
        };
        let session = format!("victim-{n}");
        let query = AuditQueryRequest {
            namespace: namespace.into(),
            session: session.clone(),
            ..AuditQueryRequest::default()
        };
        let refused = audit.query(with_token(OUTSIDER, query)).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        let inject = InjectRequest {
            namespace: namespace.into(),
            session,
            payload_json: "{}".into(),
        };
        let refused = broker
            .inject(with_token(OUTSIDER, inject))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    let events = all_events(&control_plane.store).await;
    assert!(
        events.iter().all(|event| event.namespace != NAMESPACE),
        "nothing in team-a's trail: {events:?}"
    );
    assert_eq!(
        chains(&control_plane).await,
        [OPERATOR_NAMESPACE],
        "no chain for a made-up namespace, nor for team-a"
    );
    // The operator's trail holds mallory's budget and one event saying
    // that it ran out; the metrics count every refusal.
    assert_eq!(events.len(), BUDGET as usize + 1, "{events:#?}");
    let exhausted = &events[0];
    assert!(
        exhausted
            .reason
            .starts_with("mallory was refused more than 20 times"),
        "{exhausted:?}"
    );
    let first = events.last().unwrap();
    assert_eq!(first.source.identity, "mallory");
    assert!(
        first.reason.contains("(asked of namespace \"team-a\")"),
        "{first:?}"
    );
    let metrics = &control_plane.refusal_metrics;
    assert_eq!(metrics.count(Reason::NoRight), 2 * calls);
    assert_eq!(metrics.unrecorded.get(), 2 * calls - u64::from(BUDGET));
    assert_eq!(
        control_plane
            .store
            .verify(OPERATOR_NAMESPACE)
            .await
            .unwrap(),
        Verification::Intact {
            events: events.len() as u64
        }
    );
}

/// Item 3: a caller with a right in the namespace (alice may send its
/// sessions messages, but not operate an owner session) is refused in the
/// namespace's own trail, as before.
#[tokio::test]
async fn refusals_of_callers_with_a_right_there_stay_in_its_trail() {
    let mut control_plane = ControlPlane::start(&["alice"]).await;
    control_plane.put_session(session("lead", TrustLevel::Owner));
    let (_, mut broker) = clients(&control_plane).await;
    let inject = InjectRequest {
        namespace: NAMESPACE.into(),
        session: "lead".into(),
        payload_json: "{}".into(),
    };
    let refused = broker.inject(with_token(READER, inject)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let events = all_events(&control_plane.store).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].namespace.as_str(), events[0].session.as_str()),
        (NAMESPACE, "lead")
    );
    assert_eq!(control_plane.refusal_metrics.count(Reason::Refused), 1);
}

/// Item 5: an agent floods `security_request` with distinct requests, all
/// at once: at most three are open (three ApprovalRequests); the rest are
/// refused as exhausted, saying how many are open.
#[tokio::test]
async fn an_elevation_flood_opens_at_most_three_requests() {
    let mut control_plane = ControlPlane::start(&["alice"]).await;
    control_plane.put_session(session("alice", TrustLevel::Trusted));
    let (_, broker) = clients(&control_plane).await;
    control_plane.api.take_requests();
    let calls = (0..300).map(|n| {
        let mut broker = broker.clone();
        async move {
            let request = ElevateRequest {
                namespace: NAMESPACE.into(),
                session: "alice".into(),
                capabilities: vec!["cross.inject".into()],
                reason: format!("reason number {n}"),
                duration_seconds: 1800,
            };
            broker.elevate(as_sidecar("alice", request)).await
        }
    });
    let answers = futures::future::join_all(calls).await;
    let opened = answers.iter().filter(|answer| answer.is_ok()).count();
    let filed = approval_requests_filed(&control_plane);
    assert!(filed <= 3, "{filed} ApprovalRequests filed");
    assert_eq!(opened, filed);
    for refused in answers.iter().filter_map(|answer| answer.as_ref().err()) {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("3 open"), "{refused:?}");
    }
    let audited = all_events(&control_plane.store).await;
    let refusals = audited
        .iter()
        .filter(|e| e.event_type == EventType::Approval && e.decision == Outcome::Denied)
        .count();
    assert_eq!(refusals, 300 - opened, "each refusal is audited");
}

/// Item 5: asking again for what an open request asks returns that
/// request, and files nothing new.
#[tokio::test]
async fn an_identical_elevation_request_is_answered_with_the_open_one() {
    let mut control_plane = ControlPlane::start(&["alice"]).await;
    control_plane.put_session(session("alice", TrustLevel::Trusted));
    let (_, mut broker) = clients(&control_plane).await;
    control_plane.api.take_requests();
    let request = ElevateRequest {
        namespace: NAMESPACE.into(),
        session: "alice".into(),
        capabilities: vec!["cross.inject".into()],
        reason: "tell bob the build broke".into(),
        duration_seconds: 1800,
    };
    let first = broker
        .elevate(as_sidecar("alice", request.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = broker
        .elevate(as_sidecar("alice", request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.request_id, first.request_id);
    assert_eq!(approval_requests_filed(&control_plane), 1);
}

on_both_backends!(concurrent_elevation_requests_never_exceed_the_cap);

/// Item 5, in the store on SQLite and PostgreSQL: requests of one session
/// made at once, distinct and identical, open at most the cap, and each
/// identical one is answered with the open request.
async fn concurrent_elevation_requests_never_exceed_the_cap(store: TestStore) {
    let now = Timestamp::now();
    let request = |n: usize| Elevation {
        id: new_request_id(),
        namespace: NAMESPACE.into(),
        session: "alice".into(),
        capabilities: vec![Capability::CrossInject],
        duration: Duration::from_secs(1800),
        // Half the requests ask the same.
        reason: if n.is_multiple_of(2) {
            "the same".into()
        } else {
            format!("reason {n}")
        },
        state: ElevationState::AwaitingApproval,
        created: now,
        expires: now + SignedDuration::from_secs(3600),
        granted: None,
    };
    let opening = (0..40).map(|n| {
        let store = store.store.clone();
        let elevation = request(n);
        tokio::spawn(async move { store.open_elevation(&elevation, 3).await.unwrap() })
    });
    let opened: Vec<Opened> = futures::future::join_all(opening)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let new = opened.iter().filter(|o| **o == Opened::New).count();
    assert_eq!(new, 3, "{opened:?}");
    for outcome in &opened {
        match outcome {
            Opened::New => {}
            Opened::Full { open } => assert_eq!(*open, 3),
            Opened::Existing(existing) => assert_eq!(existing.reason, "the same"),
        }
    }
    // Expired requests are not open: the session may ask again.
    let later = Elevation {
        created: now + SignedDuration::from_secs(3600),
        expires: now + SignedDuration::from_secs(7200),
        ..request(1)
    };
    assert_eq!(
        store.store.open_elevation(&later, 3).await.unwrap(),
        Opened::New
    );
}

/// How many ApprovalRequests the control plane created since the last look.
fn approval_requests_filed(control_plane: &ControlPlane) -> usize {
    control_plane
        .api
        .take_requests()
        .iter()
        .filter(|r| r.method == http::Method::POST && r.path.ends_with("/approvalrequests"))
        .count()
}

/// Item 7: a sidecar's calls with one token make one TokenReview, not one
/// (or two) per call.
#[tokio::test]
async fn calls_with_one_token_make_one_token_review() {
    let (client, api) = FakeApi::start();
    let tokens = [(
        "sidecar-token".to_owned(),
        (
            "system:serviceaccount:team-a:wopr-alice".to_owned(),
            Some("wopr-alice".to_owned()),
        ),
    )];
    api.review_tokens(tokens.into_iter().collect());
    let reviewer = TokenReviewer::new(client);
    for _ in 0..10 {
        let identity = reviewer.authenticate("sidecar-token").await.unwrap();
        assert_eq!(identity.service_account, "wopr-alice");
    }
    assert_eq!(token_reviews(&api), 1, "one review serves every call");
}

/// Item 7: a review is never kept past the token's expiry: a token whose
/// `exp` has passed (here one the fake API server still accepts) is
/// reviewed on every call.
#[tokio::test]
async fn a_token_past_its_expiry_is_reviewed_every_time() {
    let (client, api) = FakeApi::start();
    let encode = |json: serde_json::Value| URL_SAFE_NO_PAD.encode(json.to_string());
    let expired = format!(
        "{}.{}.signature",
        encode(serde_json::json!({"alg": "RS256"})),
        encode(serde_json::json!({"exp": 1_000_000_000, "sub": "a"}))
    );
    let tokens = [(
        expired.clone(),
        ("system:serviceaccount:team-a:wopr-alice".to_owned(), None),
    )];
    api.review_tokens(tokens.into_iter().collect());
    let reviewer = TokenReviewer::new(client);
    for _ in 0..3 {
        reviewer.authenticate(&expired).await.unwrap();
    }
    assert_eq!(token_reviews(&api), 3);
}

/// The TokenReviews `api` was asked for since the last look.
fn token_reviews(api: &FakeApi) -> usize {
    api.take_requests()
        .iter()
        .filter(|r| r.path == "/apis/authentication.k8s.io/v1/tokenreviews")
        .count()
}

/// An authenticator that takes `delay` to refuse every token, counting
/// the calls it is in at once.
struct Slow {
    delay: Duration,
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

impl Slow {
    fn new(delay: Duration) -> Arc<Slow> {
        Arc::new(Slow {
            delay,
            in_flight: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        })
    }
}

impl Authenticator for Slow {
    async fn authenticate(&self, _token: &str) -> Result<Identity, AuthError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Err(AuthError::Refused("slowly".into()))
    }

    async fn may_read_audit(&self, _: &str, _: Option<&str>) -> Result<String, AuthError> {
        Err(AuthError::Refused("no".into()))
    }

    async fn may_inject(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: Option<TrustLevel>,
    ) -> Result<String, AuthError> {
        Err(AuthError::Refused("no".into()))
    }

    async fn may_grant(&self, _: &str, _: &str, _: TrustLevel) -> Result<String, AuthError> {
        Err(AuthError::Refused("no".into()))
    }
}

/// A control plane checking tokens with `authenticator`, with no
/// sessions, set up as [`limited`] and `reflection` say.
async fn serve_with<A: Authenticator>(authenticator: Arc<A>, reflection: bool) -> String {
    let stores = Stores {
        policies: reflector::store().0,
        grants: reflector::store().0,
        gateways: reflector::store().0,
    };
    let index = Arc::new(ContextIndex::new(
        reflector::store().0,
        stores,
        Clock::System,
    ));
    let store = common::store::sqlite().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let _store = store.store.clone();
        wopr_operator::controlplane::serve(
            listener,
            common::tls::transport(),
            index,
            authenticator,
            Arc::new(MemoryRecorder::default()),
            AuditSetup {
                store: store.store.clone(),
                events: Arc::new(MemoryEvents::default()),
                metrics: AuditMetrics::default(),
            },
            Arc::new(KubeWriter(FakeApi::start().0)),
            Settings {
                reflection,
                ..limited()
            },
            wopr_operator::shutdown::on(std::future::pending()),
        )
        .await
    });
    address
}

/// Settings with a few calls a connection at once, and a short timeout.
fn limited() -> Settings {
    Settings {
        concurrency_per_connection: CONCURRENCY,
        timeout: TIMEOUT,
        ..Settings::default()
    }
}

/// The timeout of calls in these tests.
const TIMEOUT: Duration = Duration::from_secs(1);

fn report() -> IsolationReport {
    IsolationReport {
        namespace: NAMESPACE.into(),
        session: "alice".into(),
        checks: Vec::new(),
    }
}

/// Item 7: a flood of calls on one connection is served a bounded number
/// at a time, not all at once: a few times that many may wait their turn
/// (open streams), the others are refused as UNAVAILABLE (the stream
/// refused: the client may retry).
#[tokio::test]
async fn a_flood_of_calls_on_one_connection_is_served_a_few_at_a_time() {
    let slow = Slow::new(Duration::from_millis(100));
    let address = serve_with(slow.clone(), false).await;
    let channel = common::tls::channel(&address).await;
    let calls = (0..64).map(|_| {
        let mut policy = PolicyClient::new(channel.clone());
        async move { policy.report_isolation(with_token("t", report())).await }
    });
    let answers = futures::future::join_all(calls).await;
    let codes: Vec<Code> = answers
        .iter()
        .map(|answer| answer.as_ref().unwrap_err().code())
        .collect();
    let served = codes
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    let refused = codes.iter().filter(|c| **c == Code::Unavailable).count();
    assert_eq!(served + refused, codes.len(), "{codes:?}");
    assert!(served >= CONCURRENCY, "{codes:?}");
    let most = slow.most.load(Ordering::SeqCst);
    assert!(most <= CONCURRENCY, "{most} calls served at once");
    assert_eq!(slow.in_flight.load(Ordering::SeqCst), 0, "all were served");
}

/// The calls one connection is served at once in these tests.
const CONCURRENCY: usize = 8;

/// Item 7: a call stuck in the control plane (a TokenReview that never
/// answers) is ended by the server's timeout.
#[tokio::test]
async fn a_stuck_call_is_timed_out() {
    let address = serve_with(Slow::new(Duration::from_secs(3600)), false).await;
    let mut policy = PolicyClient::new(common::tls::channel(&address).await);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        policy.report_isolation(with_token("t", report())),
    )
    .await
    .expect("the server ends the call");
    let status = answer.unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
}

/// Item 7: the timeout ends a call that has not answered, not a stream
/// that has: a policy Watch outlives it, with its heartbeats.
#[tokio::test]
async fn a_watch_stream_outlives_the_timeout() {
    let mut control_plane = ControlPlane::start_with(&["alice"], limited()).await;
    control_plane.put_session(session("alice", TrustLevel::Trusted));
    let mut policy = PolicyClient::new(control_plane.channel().await);
    let watch = WatchRequest {
        namespace: NAMESPACE.into(),
        session: "alice".into(),
        heartbeat_seconds: 1,
    };
    let mut stream = policy
        .watch(as_sidecar("alice", watch))
        .await
        .unwrap()
        .into_inner();
    let started = tokio::time::Instant::now();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(first.update, Some(Update::Context(_))),
        "{first:?}"
    );
    let mut heartbeats = 0;
    while started.elapsed() < 3 * TIMEOUT {
        let update = stream.message().await.expect("the stream goes on");
        assert!(matches!(update.unwrap().update, Some(Update::Heartbeat(_))));
        heartbeats += 1;
    }
    assert!(heartbeats >= 2, "{heartbeats}");
}

/// Item 7: server reflection is not served unless asked for.
#[tokio::test]
async fn reflection_is_off_by_default() {
    let address = serve_with(Slow::new(Duration::ZERO), false).await;
    let status = list_services(address).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

/// Item 7: asked for, reflection lists the services.
#[tokio::test]
async fn reflection_is_served_when_asked() {
    let address = serve_with(Slow::new(Duration::ZERO), true).await;
    let services = list_services(address).await.unwrap();
    assert!(
        services.contains(&"wopr.v1alpha1.Broker".to_owned()),
        "{services:?}"
    );
}

/// The services reflection at `address` lists.
async fn list_services(address: String) -> Result<Vec<String>, tonic::Status> {
    let channel = common::tls::channel(&address).await;
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([ask]))
        .await?
        .into_inner();
    let answer = answers.message().await?.expect("one answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => Ok(list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect()),
        other => panic!("not a list of services: {other:?}"),
    }
}
