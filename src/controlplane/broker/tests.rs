//! The prologue every sidecar call of the broker goes through, on the
//! service itself (no network, a SQLite store): what it refuses, before
//! what, and in which trail the refusal is audited.

use k8s_openapi::jiff::Timestamp;
use tonic::{Code, Request};

use super::*;
use crate::api::{ApprovalRequest, Session, SessionSpec, TrustLevel};
use crate::clock::Clock;
use crate::contract::child_name;
use crate::controlplane::auth::StaticTokens;
use crate::controlplane::denials::{SessionEvent, SessionEvents};
use crate::controlplane::discover::KnownContexts;
use crate::controlplane::refusals::{Reason as Refusal, RefusalMetrics};
use crate::controlplane::writes::WriteError;
use crate::policy::resolve;
use crate::store::AuditQuery;

const NS: &str = "team-a";

/// Trusted `alice` and `bob` (neither holds `cross.inject`), untrusted
/// `carol`, each resolved from its Session alone.
fn contexts() -> KnownContexts {
    let levels = [
        ("alice", TrustLevel::Trusted),
        ("bob", TrustLevel::Trusted),
        ("carol", TrustLevel::Untrusted),
    ];
    KnownContexts::of(levels.into_iter().map(|(name, level)| {
        let mut session = Session::new(name, SessionSpec::for_trust_level(level));
        session.metadata.namespace = Some(NS.into());
        resolve(&session, None, &[], &[], Timestamp::now()).unwrap()
    }))
}

/// Writes nothing: no call here gets that far.
struct NoWrites;

#[tonic::async_trait]
impl ClusterWriter for NoWrites {
    async fn file(&self, _: &ApprovalRequest) -> Result<(), WriteError> {
        unreachable!("refused calls file nothing")
    }
    async fn create_session(&self, _: &Session) -> Result<(), WriteError> {
        unreachable!("refused calls create nothing")
    }
    async fn record_grant_use(&self, _: &str, _: &str, _: Timestamp) -> Result<(), WriteError> {
        Ok(())
    }
}

struct NoEvents;

impl SessionEvents for NoEvents {
    async fn warn(&self, _: SessionEvent) -> Result<(), kube::Error> {
        Ok(())
    }
}

/// A broker whose sidecar tokens are `<session>-token`, its store, and
/// the refusals' metrics.
struct Fixture {
    broker: BrokerService<KnownContexts, StaticTokens>,
    store: Store,
    metrics: RefusalMetrics,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/wopr.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    let contexts = Arc::new(contexts());
    let mut tokens = StaticTokens::default();
    for name in ["alice", "bob", "carol"] {
        let identity = Identity {
            namespace: NS.into(),
            service_account: child_name(name),
            pod_name: None,
        };
        tokens.sidecars.insert(format!("{name}-token"), identity);
    }
    let metrics = RefusalMetrics::default();
    let writer: Arc<dyn ClusterWriter> = Arc::new(NoWrites);
    let recording = Recording {
        store: store.clone(),
        metrics: AuditMetrics::default(),
        denials: DenialEvents::new(Arc::new(NoEvents)),
        uses: Arc::new(GrantUses::new(
            contexts.clone(),
            writer.clone(),
            Clock::System,
        )),
        refusals: Arc::new(Refusals::new(
            store.clone(),
            "wopr-system".into(),
            metrics.clone(),
        )),
    };
    let shutdown = crate::shutdown::on(std::future::pending());
    let broker = BrokerService::new(contexts, Arc::new(tokens), recording, writer, 3, shutdown);
    Fixture {
        broker,
        store,
        metrics,
        _dir: dir,
    }
}

/// `message` as sent with `token`.
fn with_token<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// Every event of `namespace`'s trail, newest first.
async fn trail(store: &Store, namespace: &str) -> Vec<AuditEvent> {
    let query = AuditQuery {
        namespace: Some(namespace.into()),
        ..AuditQuery::default()
    };
    store.query_events(&query).await.unwrap().events
}

fn send(from: &str, to: &str) -> SendRequest {
    SendRequest {
        namespace: NS.into(),
        session: from.into(),
        target: to.into(),
        payload_json: "{}".into(),
        ..SendRequest::default()
    }
}

#[tokio::test]
async fn a_target_that_is_not_a_label_is_refused_before_anything_is_written() {
    let fixture = fixture().await;
    for token in ["alice-token", "no-such-token"] {
        let refused = fixture
            .broker
            .send(with_token(token, send("alice", "Bob_")))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("target"), "{refused:?}");
    }
    let history = HistoryRequest {
        namespace: NS.into(),
        session: "alice".into(),
        target: "../bob".into(),
        limit: 0,
    };
    let refused = fixture
        .broker
        .history(with_token("alice-token", history))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(fixture.metrics.count(Refusal::InvalidName), 3);
    assert_eq!(fixture.metrics.count(Refusal::Unauthenticated), 0);
    assert!(trail(&fixture.store, NS).await.is_empty());
    assert!(trail(&fixture.store, "wopr-system").await.is_empty());
}

#[tokio::test]
async fn a_tool_refused_for_a_message_is_audited_in_the_recipients_trail() {
    let fixture = fixture().await;
    let refused = fixture
        .broker
        .send(with_token("alice-token", send("alice", "bob")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("sessions_send"), "{refused:?}");
    let events = trail(&fixture.store, NS).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.session, "bob");
    assert_eq!(event.source.identity, "alice");
    assert_eq!(event.event_type, EventType::Injection);
    assert_eq!(event.tool.as_deref(), Some("sessions_send"));
    assert_eq!(event.capability, Some(Capability::CrossInject));
    assert_eq!(event.decision, Outcome::Denied);
}

#[tokio::test]
async fn a_tool_refused_otherwise_is_a_tool_call_in_the_callers_trail() {
    let fixture = fixture().await;
    let list = ListRequest {
        namespace: NS.into(),
        session: "carol".into(),
    };
    let history = HistoryRequest {
        namespace: NS.into(),
        session: "carol".into(),
        target: "bob".into(),
        limit: 0,
    };
    let refusals = [
        fixture.broker.list(with_token("carol-token", list)).await,
        fixture
            .broker
            .history(with_token("carol-token", history))
            .await
            .map(|_| Response::new(ListResponse::default())),
    ];
    for refused in refusals {
        let refused = refused.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    let events = trail(&fixture.store, NS).await;
    let tools: Vec<_> = events.iter().map(|event| event.tool.as_deref()).collect();
    assert_eq!(tools, [Some("sessions_history"), Some("sessions_list")]);
    for event in &events {
        assert_eq!(event.session, "carol", "not bob's: {event:?}");
        assert_eq!(event.event_type, EventType::ToolCall);
        assert_eq!(event.decision, Outcome::Denied);
    }
}

#[tokio::test]
async fn a_later_refusal_is_audited_as_the_calls_own_event_type() {
    let fixture = fixture().await;
    let elevate = ElevateRequest {
        namespace: NS.into(),
        session: "alice".into(),
        capabilities: vec!["no.such.capability".into()],
        reason: "to test".into(),
        duration_seconds: 60,
    };
    let refused = fixture
        .broker
        .elevate(with_token("alice-token", elevate))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let events = trail(&fixture.store, NS).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].session, "alice");
    assert_eq!(events[0].event_type, EventType::Approval);
    assert_eq!(events[0].tool.as_deref(), Some("security_request"));
    assert_eq!(events[0].decision, Outcome::Denied);
}

#[tokio::test]
async fn a_sidecar_acting_for_another_session_is_refused_in_its_namespaces_trail() {
    let fixture = fixture().await;
    let list = ListRequest {
        namespace: NS.into(),
        session: "alice".into(),
    };
    let refused = fixture
        .broker
        .list(with_token("bob-token", list))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(fixture.metrics.count(Refusal::Refused), 1);
    let events = trail(&fixture.store, NS).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].session, "alice");
    assert_eq!(events[0].event_type, EventType::Policy);
    assert_eq!(events[0].decision, Outcome::Denied);
    assert!(trail(&fixture.store, "wopr-system").await.is_empty());
}
