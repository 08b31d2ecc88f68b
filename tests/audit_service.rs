//! The control plane's Audit service with a real tonic client and a real
//! store: a sidecar ships batches (each event stored once), queries its own
//! session, verifies its namespace; every bad request gets a precise error,
//! loses nothing already stored, and leaves an audit event of its refusal.

mod common;

use common::NAMESPACE;
use common::sidecar::{
    AUDITOR, ControlPlane, OUTSIDER, READER, as_sidecar, ingest_message, ship, with_token,
};
use common::store::{all_events, event};
use tonic::Code;
use tonic::transport::Channel;
use wopr_operator::audit::AuditEvent;
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1::audit_client::AuditClient;
use wopr_operator::proto::v1alpha1::{AuditQueryRequest, IngestRequest, VerifyRequest};
use wopr_operator::store::Verification;

async fn client(control_plane: &ControlPlane) -> AuditClient<Channel> {
    AuditClient::new(control_plane.channel().await)
}

/// Verify [`NAMESPACE`]'s chain.
fn verify_namespace() -> VerifyRequest {
    VerifyRequest {
        namespace: NAMESPACE.into(),
    }
}

fn lines(events: &[AuditEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect()
}

fn batch(session: &str, events: &[AuditEvent]) -> IngestRequest {
    ingest_message(session, lines(events))
}

#[tokio::test]
async fn a_batch_shipped_twice_is_stored_once_and_queried_newest_first() {
    let control_plane = ControlPlane::start(&["research"]).await;
    let mut client = client(&control_plane).await;
    let events: Vec<AuditEvent> = (0..5)
        .map(|n| event(NAMESPACE, "research", Outcome::Allowed, n))
        .collect();
    // One batch in two messages.
    let messages = vec![
        batch("research", &events[..2]),
        batch("research", &events[2..]),
    ];
    assert_eq!(
        ship(&mut client, "research", messages).await.unwrap(),
        (5, 0)
    );
    // The ack was lost; the sidecar ships the batch again.
    let again = vec![batch("research", &events)];
    assert_eq!(ship(&mut client, "research", again).await.unwrap(), (0, 5));
    let metrics = &control_plane.audit_metrics;
    assert_eq!((metrics.stored.get(), metrics.duplicates.get()), (5, 5));

    let page = client
        .query(as_sidecar(
            "research",
            AuditQueryRequest {
                namespace: NAMESPACE.into(),
                session: "research".into(),
                limit: 3,
                ..AuditQueryRequest::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let newest: Vec<&str> = events.iter().rev().take(3).map(|e| e.id.as_str()).collect();
    let queried: Vec<AuditEvent> = page
        .events
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        queried.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        newest
    );
    // As shipped, but for what the control plane stamps and vouches for.
    for (queried, shipped) in queried.iter().zip(events.iter().rev()) {
        let mut admitted = shipped.clone();
        admitted.received = queried.received;
        admitted.source.trust_level = queried.source.trust_level;
        admitted.corrections = queried.corrections.clone();
        assert_eq!(*queried, admitted);
        assert!(queried.received.is_some());
    }
    assert!(!page.next_cursor.is_empty());
    let rest = client
        .query(as_sidecar(
            "research",
            AuditQueryRequest {
                namespace: NAMESPACE.into(),
                session: "research".into(),
                cursor: page.next_cursor,
                ..AuditQueryRequest::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.events.len(), 2);
    assert!(rest.next_cursor.is_empty());

    let verified = client
        .verify(as_sidecar("research", verify_namespace()))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact);
    assert_eq!(verified.events, 5);
}

#[tokio::test]
async fn bad_requests_are_refused_precisely_lose_nothing_and_are_audited() {
    let control_plane = ControlPlane::start(&["research", "other"]).await;
    let mut client = client(&control_plane).await;
    let kept: Vec<AuditEvent> = (0..3)
        .map(|n| event(NAMESPACE, "research", Outcome::Allowed, n))
        .collect();
    ship(&mut client, "research", vec![batch("research", &kept)])
        .await
        .unwrap();

    // (An oversized or unreadable event does not refuse its batch: it is
    // stored as a stub; tests/adversarial_audit.rs.)
    let claims_other = event(NAMESPACE, "other", Outcome::Denied, 11);
    let good = event(NAMESPACE, "research", Outcome::Allowed, 12);
    let claim = format!("event {} claims session {NAMESPACE}/other", claims_other.id);
    let cases: Vec<(&str, Vec<IngestRequest>, Code, &str)> = vec![
        (
            "research",
            vec![batch("research", &[good.clone(), claims_other.clone()])],
            Code::PermissionDenied,
            &claim,
        ),
        (
            "research",
            vec![batch("other", std::slice::from_ref(&claims_other))],
            Code::PermissionDenied,
            "may not act for session",
        ),
        (
            "nobody",
            vec![batch("research", std::slice::from_ref(&good))],
            Code::Unauthenticated,
            "unknown token",
        ),
    ];
    for (caller, messages, code, message) in cases {
        let refused = ship(&mut client, caller, messages).await.unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(
            refused.message().contains(message),
            "{message:?} in {refused:?}"
        );
    }

    let query = |session: &str, since: &str, until: &str| AuditQueryRequest {
        namespace: NAMESPACE.into(),
        session: session.into(),
        since: since.into(),
        until: until.into(),
        ..AuditQueryRequest::default()
    };
    let backwards = client
        .query(as_sidecar(
            "research",
            query("research", "2026-11-25T00:00:00Z", "2026-11-24T00:00:00Z"),
        ))
        .await
        .unwrap_err();
    assert_eq!(backwards.code(), Code::InvalidArgument);
    assert!(
        backwards.message().contains("invalid time range"),
        "{backwards:?}"
    );
    let not_a_time = client
        .query(as_sidecar(
            "research",
            query("research", "last tuesday", ""),
        ))
        .await
        .unwrap_err();
    assert_eq!(not_a_time.code(), Code::InvalidArgument);
    assert!(
        not_a_time
            .message()
            .contains("since (RFC 3339) \"last tuesday\""),
        "{not_a_time:?}"
    );
    let someone_else = client
        .query(as_sidecar("research", query("other", "", "")))
        .await
        .unwrap_err();
    assert_eq!(someone_else.code(), Code::PermissionDenied);
    let other_namespace = client
        .verify(as_sidecar(
            "research",
            VerifyRequest {
                namespace: "team-b".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(other_namespace.code(), Code::PermissionDenied);

    // Nothing refused was stored, nothing stored was lost, and each refusal
    // of an authenticated caller is an event of the trail.
    let all = all_events(&control_plane.store).await;
    let shipped: Vec<&AuditEvent> = all
        .iter()
        .filter(|e| e.reason.starts_with("event at"))
        .collect();
    assert_eq!(
        shipped.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        kept.iter().rev().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
    let refusals = all
        .iter()
        .filter(|e| e.reason.starts_with("audit request refused") && e.decision == Outcome::Denied)
        .count();
    assert_eq!(refusals, 6, "{all:#?}");
    assert_eq!(control_plane.audit_metrics.refused.get(), 6);
    assert_eq!(control_plane.audit_metrics.store_errors.get(), 0);
    assert_eq!(
        control_plane.store.verify(NAMESPACE).await.unwrap(),
        Verification::Intact {
            events: all.len() as u64
        }
    );
}

/// People (and workloads other than sidecars) read what their RBAC allows:
/// `list auditevents.wopr.dev` in the namespace, or in every namespace for
/// a query of all; a sidecar reads only its own session, whatever it asks.
#[tokio::test]
async fn people_read_what_rbac_allows_and_sidecars_only_their_own_session() {
    let control_plane = ControlPlane::start(&["research", "other"]).await;
    let mut client = client(&control_plane).await;
    for session in ["research", "other"] {
        let events = [event(NAMESPACE, session, Outcome::Denied, 1)];
        ship(&mut client, session, vec![batch(session, &events)])
            .await
            .unwrap();
    }
    let query = |namespace: &str, session: &str| AuditQueryRequest {
        namespace: namespace.into(),
        session: session.into(),
        ..AuditQueryRequest::default()
    };
    let sessions_read =
        |answer: tonic::Response<wopr_operator::proto::v1alpha1::AuditQueryResponse>| {
            let mut sessions: Vec<String> = answer
                .into_inner()
                .events
                .iter()
                .map(|line| serde_json::from_str::<AuditEvent>(line).unwrap().session)
                .collect();
            sessions.sort();
            sessions
        };

    let namespace_read = client.query(with_token(READER, query(NAMESPACE, ""))).await;
    assert_eq!(
        sessions_read(namespace_read.unwrap()),
        ["other", "research"]
    );
    let everything = client.query(with_token(AUDITOR, query("", ""))).await;
    assert_eq!(sessions_read(everything.unwrap()), ["other", "research"]);
    let verified = client
        .verify(with_token(READER, verify_namespace()))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact);

    let refused: Vec<(&str, tonic::Status)> = vec![
        (
            "alice may not list auditevents.wopr.dev in every namespace: bind the ClusterRole wopr-audit-reader",
            client
                .query(with_token(READER, query("", "")))
                .await
                .unwrap_err(),
        ),
        (
            "mallory may not list auditevents.wopr.dev in namespace team-a: bind the ClusterRole wopr-audit-reader",
            client
                .query(with_token(OUTSIDER, query(NAMESPACE, "research")))
                .await
                .unwrap_err(),
        ),
        (
            "mallory may not list auditevents.wopr.dev in namespace team-a",
            client
                .verify(with_token(OUTSIDER, verify_namespace()))
                .await
                .unwrap_err(),
        ),
        (
            "a sidecar queries only its own session's events",
            client
                .query(as_sidecar("research", query(NAMESPACE, "")))
                .await
                .unwrap_err(),
        ),
    ];
    for (message, status) in &refused {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains(message),
            "{message:?} in {status:?}"
        );
    }
    let unknown = client
        .query(with_token("forged", query(NAMESPACE, "")))
        .await;
    assert_eq!(unknown.unwrap_err().code(), Code::Unauthenticated);

    // Each refusal is in the trail, naming who asked.
    let refusals: Vec<String> = all_events(&control_plane.store)
        .await
        .into_iter()
        .filter(|e| e.reason.starts_with("audit request refused"))
        .map(|e| format!("{} {}", e.source.source_type, e.source.identity))
        .collect();
    assert_eq!(
        refusals,
        [
            "sidecar wopr-research",
            "person mallory",
            "person mallory",
            "person alice"
        ]
    );
}

#[tokio::test]
async fn a_flood_of_denials_is_a_handful_of_session_events() {
    let control_plane = ControlPlane::start(&["research"]).await;
    let mut client = client(&control_plane).await;
    for round in 0..4 {
        let flood: Vec<AuditEvent> = (0..500)
            .map(|n| {
                let mut denied = event(NAMESPACE, "research", Outcome::Denied, round * 500 + n);
                denied.tool = Some("exec_command".into());
                denied
            })
            .collect();
        ship(&mut client, "research", vec![batch("research", &flood)])
            .await
            .unwrap();
    }
    assert_eq!(
        all_events(&control_plane.store).await.len(),
        1000,
        "every denial is stored"
    );
    // Published in the background: every one, once a later denial's
    // Event is.
    let mut marker = event(NAMESPACE, "research", Outcome::Denied, 2000);
    marker.tool = Some("memory_write".into());
    marker.reason = "the marker".into();
    let published = control_plane.events_before(&mut client, &marker).await;
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].reason, "ToolDenied");
    assert_eq!(
        (
            published[0].namespace.as_str(),
            published[0].session.as_str()
        ),
        (NAMESPACE, "research")
    );
    assert!(published[0].note.starts_with("denied tool exec_command"));
}

/// A sidecar's allowed call on a capability that only a Grant gives its
/// session is a use of that Grant, recorded in its status; a call on a
/// capability the trust level has, or a denied one, uses nothing.
#[tokio::test]
async fn a_shipped_call_allowed_by_a_grant_records_its_use() {
    use wopr_operator::api::{Capability, TrustLevel};
    let mut control_plane = ControlPlane::start(&["research"]).await;
    control_plane.put_session(common::session("research", TrustLevel::SemiTrusted));
    for (name, capability) in [
        ("research-net", Capability::InjectNetwork),
        ("research-tools", Capability::InjectTools),
        ("research-exec", Capability::InjectExec),
    ] {
        let grant = common::session_grant(name, "research", &[capability]);
        let path = format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/grants/{name}");
        control_plane
            .api
            .insert(&path, serde_json::to_value(&grant).unwrap());
        control_plane.put_grant(grant);
    }
    let call = |capability, decision, n| {
        let mut call = event(NAMESPACE, "research", decision, n);
        call.capability = Some(capability);
        call
    };
    let mut client = client(&control_plane).await;
    let shipped = [
        call(Capability::InjectTools, Outcome::Allowed, 0),
        call(Capability::InjectExec, Outcome::Denied, 1),
        call(Capability::InjectNetwork, Outcome::Allowed, 2),
    ];
    ship(&mut client, "research", vec![batch("research", &shipped)])
        .await
        .unwrap();
    let used = |name: &str| {
        let path = format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/grants/{name}");
        control_plane.api.get(&path).unwrap()["status"]["lastUsedAt"].clone()
    };
    let eventually_used = |name: &'static str| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while used(name).is_null() {
            assert!(std::time::Instant::now() < deadline, "no use recorded");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    eventually_used("research-net").await;
    // Written in order of their names, research-exec's would be in already.
    assert!(
        used("research-exec").is_null(),
        "a denied call relied on no grant"
    );
    // Uses are written in order (tasks spawned in turn on this runtime,
    // one client queue): once a later batch's use is written, any this
    // batch called for would have been.
    let later = [call(Capability::InjectExec, Outcome::Allowed, 3)];
    ship(&mut client, "research", vec![batch("research", &later)])
        .await
        .unwrap();
    eventually_used("research-exec").await;
    assert!(
        used("research-tools").is_null(),
        "semi-trusted has inject.tools: that grant was not relied on"
    );
}
