//! The peer ingress's counts in the store, on SQLite and PostgreSQL, with
//! the time given (an injected clock): a replay is refused however long
//! its nonce is kept, a limit bans, a ban lifts after its hour and not
//! before, a namespace's and a session's per-minute limits count exactly,
//! and an invite is claimed once.

mod common;

use std::time::Duration;

use common::store::{ROOMY, TestStore, postgres, sqlite};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use wopr_operator::api::{SourceRef, TrustLevel};
use wopr_operator::inbox::{InboxMessage, MessageKind};
use wopr_operator::store::{Attempt, Claim, PeerLimit, PeerRefusal, StoreError};

const PEER: &str = "MCowBQYDK2VwAyEAq1Jm4kTXJ6lf9bSVVuH0bWv0Fh3fAfZFNrgR0hA1HOU=";
const INJECT: PeerLimit = PeerLimit {
    per_minute: 10,
    per_hour: 100,
    ban: Duration::from_secs(3600),
};

fn start() -> Timestamp {
    "2026-12-07T12:00:00Z".parse().unwrap()
}

fn attempt<'a>(nonce: &'a str, at: Timestamp) -> Attempt<'a> {
    Attempt {
        peer: PEER,
        nonce,
        action: "inject",
        limit: INJECT,
        namespace: "team-a",
        namespace_per_minute: None,
        at,
    }
}

fn refusal(result: Result<(), StoreError>) -> PeerRefusal {
    match result {
        Err(StoreError::Peer(refusal)) => refusal,
        other => panic!("expected a peer refusal, got {other:?}"),
    }
}

async fn bans_lift_after_their_hour(store: TestStore) {
    let store = store.store;
    let t0 = start();
    for i in 0..10 {
        let at = t0 + SignedDuration::from_secs(i);
        store
            .admit_peer(&attempt(&format!("n{i}"), at))
            .await
            .unwrap();
    }
    // The eleventh in a minute: refused, and banned for an hour.
    let eleventh = refusal(
        store
            .admit_peer(&attempt("n10", t0 + SignedDuration::from_secs(10)))
            .await,
    );
    let PeerRefusal::Limited { until, count, .. } = eleventh else {
        panic!("limited: {eleventh:?}");
    };
    assert_eq!(count, 11);
    assert_eq!(
        until,
        t0 + SignedDuration::from_secs(10) + SignedDuration::from_hours(1)
    );
    // Still banned a minute before it ends, though the minute's count is long gone.
    let before = until - SignedDuration::from_mins(1);
    assert!(matches!(
        refusal(store.admit_peer(&attempt("n11", before)).await),
        PeerRefusal::Banned { .. }
    ));
    // Free once it ended.
    let after = until + SignedDuration::from_secs(1);
    store.admit_peer(&attempt("n12", after)).await.unwrap();
    // A replay is refused, whenever it comes.
    assert!(matches!(
        refusal(
            store
                .admit_peer(&attempt("n12", after + SignedDuration::from_secs(1)))
                .await
        ),
        PeerRefusal::Replayed { .. }
    ));
}

async fn namespace_and_session_limits_count_exactly(store: TestStore) {
    let store = store.store;
    let t0 = start();
    for i in 0..3 {
        let nonce = format!("ns{i}");
        let mut one = attempt(&nonce, t0 + SignedDuration::from_secs(i));
        one.namespace_per_minute = Some(3);
        store.admit_peer(&one).await.unwrap();
    }
    let mut fourth = attempt("ns3", t0 + SignedDuration::from_secs(3));
    fourth.namespace_per_minute = Some(3);
    let PeerRefusal::NamespaceLimited { retry_after, .. } =
        refusal(store.admit_peer(&fourth).await)
    else {
        panic!("namespace-limited");
    };
    assert_eq!(retry_after, Duration::from_secs(57));

    let source = SourceRef {
        source_type: "p2p".into(),
        identity: PEER.into(),
        trust_level: TrustLevel::Untrusted,
    };
    let message = |i: i64| {
        InboxMessage::new(
            t0 + SignedDuration::from_secs(i),
            "team-a",
            "p2p-gateway",
            source.clone(),
            MessageKind::Message,
            json!(format!("m{i}")),
        )
    };
    for i in 0..2 {
        store
            .deliver_peer_message(&message(i), ROOMY, Some(2))
            .await
            .unwrap();
    }
    match store
        .deliver_peer_message(&message(2), ROOMY, Some(2))
        .await
    {
        Err(StoreError::Peer(PeerRefusal::SessionLimited { .. })) => {}
        other => panic!("session-limited: {other:?}"),
    }
    // A minute later it takes messages again.
    store
        .deliver_peer_message(&message(61), ROOMY, Some(2))
        .await
        .unwrap();
}

async fn an_invite_is_claimed_once(store: TestStore) {
    let store = store.store;
    let claim = Claim {
        nonce: "invite-1",
        issuer: "issuer-key",
        namespace: "team-a",
        claimed_by: PEER,
        grant_name: "invite-abc",
        at: start(),
        expires: start() + SignedDuration::from_hours(168),
    };
    store.claim_invite(&claim).await.unwrap();
    match store.claim_invite(&claim).await {
        Err(StoreError::Peer(PeerRefusal::InviteClaimed { at })) => assert_eq!(at, start()),
        other => panic!("claimed before: {other:?}"),
    }
}

#[tokio::test]
async fn sqlite_bans_lift_after_their_hour() {
    bans_lift_after_their_hour(sqlite().await).await;
}

#[tokio::test]
async fn postgres_bans_lift_after_their_hour() {
    bans_lift_after_their_hour(postgres().await).await;
}

#[tokio::test]
async fn sqlite_namespace_and_session_limits_count_exactly() {
    namespace_and_session_limits_count_exactly(sqlite().await).await;
}

#[tokio::test]
async fn postgres_namespace_and_session_limits_count_exactly() {
    namespace_and_session_limits_count_exactly(postgres().await).await;
}

#[tokio::test]
async fn sqlite_an_invite_is_claimed_once() {
    an_invite_is_claimed_once(sqlite().await).await;
}

#[tokio::test]
async fn postgres_an_invite_is_claimed_once() {
    an_invite_is_claimed_once(postgres().await).await;
}
