//! Issue 31, the control plane's audit ingest and store, tried as an
//! attacker would: a sidecar token's holder (a compromised agent, or a
//! thief of its token) ships what it likes to `Audit.Ingest`, and one
//! session floods its namespace's trail. Each test reproduces an attack of
//! the issue against a real in-process control plane with a real tonic
//! client, or against the store on both backends.

mod common;

use common::NAMESPACE;
use common::sidecar::{ControlPlane, as_sidecar, ingest_message, ship};
use common::store::{TestStore, all_events, event, every_event, on_both_backends};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::time::Duration;
use tonic::transport::Channel;
use wopr_operator::api::{SourceRef, TrustLevel};
use wopr_operator::audit::{AuditEvent, EventType};
use wopr_operator::policy::Outcome;

use wopr_operator::proto::v1alpha1::VerifyRequest;
use wopr_operator::proto::v1alpha1::audit_client::AuditClient;
use wopr_operator::store::{Retention, Verification};

on_both_backends!(a_flood_of_one_session_does_not_evict_another_sessions_recent_events);

async fn client(control_plane: &ControlPlane) -> AuditClient<Channel> {
    AuditClient::new(control_plane.channel().await)
}

/// Ships `lines` as one batch, in one message, of `session`'s sidecar.
async fn ship_lines(
    client: &mut AuditClient<Channel>,
    session: &str,
    lines: Vec<String>,
) -> Result<(u32, u32), tonic::Status> {
    ship(client, session, vec![ingest_message(session, lines)]).await
}

fn line(event: &AuditEvent) -> String {
    serde_json::to_string(event).unwrap()
}

/// A tool call of `session`'s agent, as its sidecar records one, at `time`.
fn tool_call(session: &str, decision: Outcome, tool: &str, time: Timestamp) -> AuditEvent {
    let mut call = event(NAMESPACE, session, decision, 0);
    call.time = time;
    call.source = SourceRef {
        source_type: "agent".into(),
        identity: session.into(),
        trust_level: TrustLevel::Untrusted,
    };
    call.tool = Some(tool.into());
    call
}

/// `wopr_audit_events_invalid_total` as `/metrics` shows it.
fn invalid_events(control_plane: &ControlPlane) -> Option<u64> {
    let mut registry = prometheus_client::registry::Registry::default();
    control_plane.audit_metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("wopr_audit_events_invalid_total "))
        .map(|value| value.parse().unwrap())
}

fn ago(seconds: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_secs(seconds)
}

/// Issue 31 item 1 (the control plane's half): an allowed call, then a call
/// of a tool whose name is 17,000 characters, in one batch. The event line
/// of the second is over the 16 KiB limit; it must not take the allowed
/// call with it: that one is stored, the other is a counted stub (a metric
/// and a Warning Event on the Session).
#[tokio::test]
async fn an_oversized_event_does_not_keep_its_batch_out_of_the_trail() {
    let control_plane = ControlPlane::start(&["research"]).await;
    let mut client = client(&control_plane).await;
    let allowed = tool_call("research", Outcome::Allowed, "config_get", ago(2));
    let oversized = tool_call("research", Outcome::Denied, &"x".repeat(17_000), ago(1));
    let oversized_line = line(&oversized);
    assert!(oversized_line.len() > 17_000);
    let answer = ship_lines(
        &mut client,
        "research",
        vec![line(&allowed), oversized_line.clone()],
    )
    .await;
    assert_eq!(answer.unwrap(), (2, 0), "the call and a stub of the other");
    assert_eq!(invalid_events(&control_plane), Some(1));

    let stored = all_events(&control_plane.store).await;
    assert_eq!(stored.len(), 2, "{stored:#?}");
    let call = stored
        .iter()
        .find(|e| e.id == allowed.id)
        .expect("the allowed call is stored");
    assert_eq!(call.tool.as_deref(), Some("config_get"));
    assert_eq!(call.decision, Outcome::Allowed);
    let stub = stored.iter().find(|e| e.id != allowed.id).unwrap();
    assert_eq!(stub.id, oversized.id, "the stub keeps the id it could read");
    assert_eq!(
        (stub.namespace.as_str(), stub.session.as_str()),
        (NAMESPACE, "research")
    );
    assert_eq!(stub.event_type, EventType::Policy);
    assert_eq!(stub.decision, Outcome::Denied);
    assert_eq!(stub.tool, None, "nothing the agent controls is kept");
    assert!(
        stub.reason.starts_with(&format!(
            "invalid event: {} bytes, over the limit of 16384",
            oversized_line.len()
        )),
        "{}",
        stub.reason
    );
    assert!(stub.reason.len() < 512, "{}", stub.reason.len());

    // Shipped again (its ack lost): the stub is not stored twice.
    let again = ship_lines(
        &mut client,
        "research",
        vec![line(&allowed), oversized_line],
    )
    .await;
    assert_eq!(again.unwrap(), (0, 2));

    assert_eq!(
        invalid_events(&control_plane),
        Some(2),
        "counted as often as it is shipped"
    );

    // Published in the background: every one, once a later denial's
    // Event is.
    let mut marker = tool_call("research", Outcome::Denied, "memory_write", ago(0));
    marker.reason = "the marker".into();
    let published = control_plane.events_before(&mut client, &marker).await;
    assert_eq!(
        published.len(),
        1,
        "aggregated as denials are: {published:?}"
    );
    assert_eq!(published[0].reason, "AuditEventInvalid");
    assert_eq!(
        (
            published[0].namespace.as_str(),
            published[0].session.as_str()
        ),
        (NAMESPACE, "research")
    );
    assert!(
        published[0].note.contains("bytes, over the limit"),
        "{}",
        published[0].note
    );
}

/// Lines that are no audit event at all (not JSON, no ULID, a wrong
/// type) are stubs too, each counted; an event that claims another session
/// still refuses the whole batch: that is not bad data but a sidecar
/// speaking for someone else.
#[tokio::test]
async fn unreadable_events_are_stubs_and_another_sessions_event_refuses_the_batch() {
    let control_plane = ControlPlane::start(&["research", "other"]).await;
    let mut client = client(&control_plane).await;
    let good = tool_call("research", Outcome::Allowed, "config_get", ago(3));
    let mut not_a_ulid = tool_call("research", Outcome::Allowed, "config_get", ago(2));
    not_a_ulid.id = "event-1".into();
    let lines = vec![
        line(&good),
        "{\"id\":".into(),
        line(&not_a_ulid),
        "{\"id\":\"01JD0000000000000000000000\",\"type\":\"not-a-type\"}".into(),
    ];
    assert_eq!(
        ship_lines(&mut client, "research", lines).await.unwrap(),
        (4, 0)
    );
    let stored = all_events(&control_plane.store).await;
    let mut reasons: Vec<&str> = stored
        .iter()
        .filter(|e| e.id != good.id)
        .map(|e| e.reason.as_str())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{stored:#?}");
    assert!(
        reasons.iter().all(|r| r.starts_with("invalid event: ")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not a ULID")),
        "{reasons:?}"
    );
    assert!(
        stored.iter().any(|e| e.id == "01JD0000000000000000000000"),
        "a readable ULID is the stub's id"
    );
    assert_eq!(invalid_events(&control_plane), Some(3));

    let mut elsewhere = tool_call("other", Outcome::Allowed, "config_get", ago(1));
    let claims_other = line(&elsewhere);
    elsewhere.tool = Some("x".repeat(17_000));
    let oversized_other = line(&elsewhere);
    for claim in [claims_other, oversized_other] {
        let refused = ship_lines(&mut client, "research", vec![line(&good), claim])
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("claims session team-a/other"),
            "{refused:?}"
        );
    }
}

/// Issue 31 items 6 and 7: a sidecar's token lets its holder ship any
/// event. An event claiming a time far in the future would never be old
/// enough for age-based retention, and retention deletes a prefix of the
/// chain: every event after it would be kept forever. The control plane
/// stamps when it received each event and clamps a claimed time past its
/// clock (plus a small skew) to that.
#[tokio::test]
async fn a_far_future_event_time_is_clamped_and_age_retention_still_works() {
    let control_plane = ControlPlane::start(&["research"]).await;
    let mut client = client(&control_plane).await;
    let before = Timestamp::now();
    let far_future: Timestamp = "2999-01-01T00:00:00Z".parse().unwrap();
    let old = tool_call("research", Outcome::Allowed, "config_get", ago(3 * 86_400));
    let mut forged = tool_call("research", Outcome::Allowed, "config_get", far_future);
    // What only the control plane may say, forged too.
    forged.received = Some(far_future);
    forged.corrections = vec!["none".into()];
    let skewed = tool_call(
        "research",
        Outcome::Allowed,
        "config_get",
        before + SignedDuration::from_secs(30),
    );
    let later = tool_call("research", Outcome::Allowed, "config_get", ago(2 * 86_400));
    let shipped = [&old, &forged, &skewed, &later].map(line).to_vec();
    ship_lines(&mut client, "research", shipped).await.unwrap();
    let after = Timestamp::now();

    let stored = all_events(&control_plane.store).await;
    let find = |id: &str| stored.iter().find(|e| e.id == id).unwrap().clone();
    let clamped = find(&forged.id);
    assert!(
        before <= clamped.time && clamped.time <= after,
        "{}",
        clamped.time
    );
    assert_eq!(
        find(&skewed.id).time,
        skewed.time,
        "within the skew: as claimed"
    );
    assert_eq!(find(&old.id).time, old.time, "a late event keeps its time");

    // A retention pass a day later, keeping 12 hours: every event is older.
    let day_later = after + SignedDuration::from_hours(24);
    let retention = Retention {
        max_age: Duration::from_secs(12 * 3600),
        max_per_namespace: 1_000_000,
        min_age: Duration::from_secs(24 * 3600),
    };
    let deleted = control_plane
        .store
        .prune_events(retention.at(day_later))
        .await;
    assert_eq!(
        deleted.unwrap(),
        4,
        "{:#?}",
        every_event(&control_plane.store).await
    );
    assert!(all_events(&control_plane.store).await.is_empty());

    // Verify says what retention deleted.
    let verify = VerifyRequest {
        namespace: NAMESPACE.into(),
    };
    let verified = client.verify(as_sidecar("research", verify)).await;
    let verified = verified.unwrap().into_inner();
    assert!(verified.intact);
    assert_eq!((verified.events, verified.pruned_events), (0, 4));
    let last: Timestamp = verified.last_pruned_time.parse().unwrap();
    assert_eq!(last.as_microsecond(), later.time.as_microsecond());
}

/// Issue 31 item 6: a sidecar speaks for its own session only, so the
/// trust level of its agent is the session's as the control plane knows it,
/// whatever the event claims; a source it cannot vouch for (anyone else's)
/// is untrusted; a session it does not know is untrusted.
#[tokio::test]
async fn a_sidecar_cannot_raise_a_sources_trust_level() {
    let mut control_plane = ControlPlane::start(&["research", "helper", "ghost"]).await;
    control_plane.put_session(common::session("research", TrustLevel::Untrusted));
    control_plane.put_session(common::session("helper", TrustLevel::Trusted));
    let mut client = client(&control_plane).await;
    let claiming = |session: &str, source_type: &str, identity: &str, level| {
        let mut call = tool_call(session, Outcome::Allowed, "config_get", ago(1));
        call.source = SourceRef {
            source_type: source_type.into(),
            identity: identity.into(),
            trust_level: level,
        };
        call
    };
    let own_as_owner = claiming("research", "agent", "research", TrustLevel::Owner);
    let someone_as_owner = claiming("research", "session", "admin-bot", TrustLevel::Owner);
    let other_agent = claiming("research", "agent", "helper", TrustLevel::Trusted);
    let understated = claiming("helper", "agent", "helper", TrustLevel::Untrusted);
    let unknown = claiming("ghost", "agent", "ghost", TrustLevel::Owner);
    ship_lines(
        &mut client,
        "research",
        [&own_as_owner, &someone_as_owner, &other_agent]
            .map(line)
            .to_vec(),
    )
    .await
    .unwrap();
    ship_lines(&mut client, "helper", vec![line(&understated)])
        .await
        .unwrap();
    ship_lines(&mut client, "ghost", vec![line(&unknown)])
        .await
        .unwrap();

    let stored = all_events(&control_plane.store).await;
    let level = |event: &AuditEvent| {
        let stored = stored.iter().find(|e| e.id == event.id).unwrap();
        (stored.source.identity.clone(), stored.source.trust_level)
    };
    assert_eq!(
        level(&own_as_owner),
        ("research".into(), TrustLevel::Untrusted)
    );
    assert_eq!(
        level(&someone_as_owner),
        ("admin-bot".into(), TrustLevel::Untrusted)
    );
    assert_eq!(
        level(&other_agent),
        ("helper".into(), TrustLevel::Untrusted)
    );
    assert_eq!(level(&understated), ("helper".into(), TrustLevel::Trusted));
    assert_eq!(level(&unknown), ("ghost".into(), TrustLevel::Untrusted));
    assert!(
        stored
            .iter()
            .all(|e| e.source.trust_level != TrustLevel::Owner),
        "{stored:#?}"
    );
}

/// Issue 31 item 4 (the store's half): 5,000 events of one session, with
/// the cap at 3,000 events per namespace, evicted every event of the
/// others. The count cap never takes an event younger than the minimum age;
/// what retention took, the chain's verification reports.
async fn a_flood_of_one_session_does_not_evict_another_sessions_recent_events(store: TestStore) {
    let now = Timestamp::now();
    let at = |session: &str, time: Timestamp| {
        let mut one = event(NAMESPACE, session, Outcome::Denied, 0);
        one.time = time;
        one
    };
    // Two days ago, 2,000 events of the agent; ten minutes ago, three of
    // another session; now, the agent's flood of 5,000 denials.
    let old: Vec<AuditEvent> = (0..2_000)
        .map(|n| {
            at(
                "agent",
                now - SignedDuration::from_hours(48) + SignedDuration::from_secs(n),
            )
        })
        .collect();
    let other: Vec<AuditEvent> = (0..3)
        .map(|n| {
            at(
                "victim",
                now - SignedDuration::from_mins(10) + SignedDuration::from_secs(n),
            )
        })
        .collect();
    let flood: Vec<AuditEvent> = (0..5_000).map(|_| at("agent", now)).collect();
    for events in [&old, &other] {
        store.store.insert_events(events).await.unwrap();
    }
    for chunk in flood.chunks(500) {
        store.store.insert_events(chunk).await.unwrap();
    }

    // Keep 30 days, at most 3,000 per namespace, none younger than a day
    // by count.
    let retention = Retention {
        max_age: Duration::from_secs(720 * 3600),
        max_per_namespace: 3_000,
        min_age: Duration::from_secs(24 * 3600),
    };
    let deleted = store.store.prune_events(retention.at(now)).await.unwrap();
    let kept = every_event(&store.store).await;
    let victims = kept.iter().filter(|e| e.session == "victim").count();
    assert_eq!(victims, 3, "the other session's recent events are kept");
    assert_eq!(deleted, 2_000, "only the events older than the minimum age");
    assert_eq!(kept.len(), 5_003);
    assert_eq!(
        store.store.verify(NAMESPACE).await.unwrap(),
        Verification::Intact { events: 5_003 }
    );
    let pruned = store.store.pruned(NAMESPACE).await.unwrap();
    assert_eq!(pruned.events, 2_000);
    assert_eq!(
        pruned.last_time.map(|t| t.as_microsecond()),
        Some(old[1_999].time.as_microsecond())
    );

    // A day later the flood is old: the cap takes it, oldest first, and
    // nothing younger than a day.
    let tomorrow = now + SignedDuration::from_hours(25);
    let deleted = store
        .store
        .prune_events(retention.at(tomorrow))
        .await
        .unwrap();
    assert_eq!(deleted, 2_003);
    assert_eq!(every_event(&store.store).await.len(), 3_000);
}
