//! Session inboxes in the store, on SQLite and on a real PostgreSQL server:
//! messages in order, stored once, kept until acknowledged, read again
//! after a restart, within their limits, exactly, under concurrent senders.

mod common;

use common::store::{ROOMY, TestStore, on_both_backends};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use wopr_operator::api::{SourceRef, TrustLevel};
use wopr_operator::inbox::{InboxMessage, MessageKind};
use wopr_operator::store::{Enqueued, InboxError, InboxLimits, Queued, Store, StoreError};

on_both_backends!(
    messages_come_in_order_and_once,
    acknowledged_messages_are_not_delivered_again,
    pending_messages_survive_a_restart,
    limits_refuse_precisely_and_free_up_on_ack,
    concurrent_senders_fill_an_inbox_exactly_to_its_limit,
    a_message_id_belongs_to_one_inbox,
    retention_deletes_only_old_acknowledged_messages,
    an_acknowledgement_frees_room_once,
    the_pending_totals_of_older_inboxes_are_backfilled,
);

const NS: &str = "team-a";

fn from(sender: &str) -> SourceRef {
    SourceRef {
        source_type: "session".into(),
        identity: sender.into(),
        trust_level: TrustLevel::Trusted,
    }
}

/// A message for `session` from `sender`.
fn message(session: &str, sender: &str, text: &str) -> InboxMessage {
    InboxMessage::new(
        common::now(),
        NS,
        session,
        from(sender),
        MessageKind::Message,
        json!({"text": text}),
    )
}

fn texts(queued: &[Queued]) -> Vec<String> {
    queued
        .iter()
        .map(|q| q.message.payload["text"].as_str().unwrap().to_owned())
        .collect()
}

async fn pending(store: &Store, session: &str) -> Vec<Queued> {
    store.pending_messages(NS, session, 0, 1000).await.unwrap()
}

async fn messages_come_in_order_and_once(store: TestStore) {
    let store = &store.store;
    let sent: Vec<InboxMessage> = ["one", "two", "three"]
        .iter()
        .enumerate()
        .map(|(n, text)| message("gateway", if n == 1 { "b" } else { "a" }, text))
        .collect();
    for (n, message) in sent.iter().enumerate() {
        let queued = store.enqueue(message, ROOMY).await.unwrap();
        assert_eq!(queued, Enqueued::New(n as i64 + 1));
    }
    // Sent again (the sender's answer was lost): stored once.
    assert_eq!(
        store.enqueue(&sent[1], ROOMY).await.unwrap(),
        Enqueued::AlreadyQueued(2)
    );
    let queued = pending(store, "gateway").await;
    assert_eq!(texts(&queued), ["one", "two", "three"]);
    assert_eq!(queued[1].message, sent[1], "the message as sent");
    let after_first = store.pending_messages(NS, "gateway", 1, 1).await.unwrap();
    assert_eq!(texts(&after_first), ["two"], "from a position, a page");
    assert!(
        pending(store, "other").await.is_empty(),
        "inboxes are apart"
    );
}

async fn acknowledged_messages_are_not_delivered_again(store: TestStore) {
    let store = &store.store;
    let sent: Vec<InboxMessage> = (0..4)
        .map(|n| message("agent", "a", &n.to_string()))
        .collect();
    for message in &sent {
        store.enqueue(message, ROOMY).await.unwrap();
    }
    let ids =
        |picked: &[usize]| -> Vec<String> { picked.iter().map(|n| sent[*n].id.clone()).collect() };
    let now = common::now();
    assert_eq!(
        store
            .ack_messages(NS, "agent", &ids(&[0, 2]), now)
            .await
            .unwrap(),
        2
    );
    assert_eq!(texts(&pending(store, "agent").await), ["1", "3"]);
    // Acknowledged twice, or by another inbox: nothing changes.
    assert_eq!(
        store
            .ack_messages(NS, "agent", &ids(&[0]), now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .ack_messages(NS, "other", &ids(&[1]), now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .ack_messages("team-b", "agent", &ids(&[1]), now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(texts(&pending(store, "agent").await), ["1", "3"]);
}

async fn pending_messages_survive_a_restart(store: TestStore) {
    for n in 0..3 {
        let sent = message("agent", "a", &n.to_string());
        store.store.enqueue(&sent, ROOMY).await.unwrap();
    }
    let first = pending(&store.store, "agent").await[0].message.id.clone();
    store
        .store
        .ack_messages(NS, "agent", &[first], common::now())
        .await
        .unwrap();
    store.store.close().await;
    let reopened = Store::open(&store.url).await.unwrap();
    assert_eq!(texts(&pending(&reopened, "agent").await), ["1", "2"]);
    let next = message("agent", "a", "3");
    assert_eq!(
        reopened.enqueue(&next, ROOMY).await.unwrap(),
        Enqueued::New(4),
        "positions go on"
    );
}

async fn limits_refuse_precisely_and_free_up_on_ack(store: TestStore) {
    let store = &store.store;
    let one = message("agent", "a", "x");
    let size = one.payload.to_string().len() as u64;
    let tight = InboxLimits {
        max_message_bytes: size + 100,
        max_messages: 2,
        max_bytes: 3 * size,
    };
    let large = message("agent", "a", &"x".repeat(200));
    match store.enqueue(&large, tight).await {
        Err(StoreError::Inbox(InboxError::TooLarge { limit, .. })) => assert_eq!(limit, size + 100),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    store.enqueue(&one, tight).await.unwrap();
    store
        .enqueue(&message("agent", "a", "y"), tight)
        .await
        .unwrap();
    let refused = store
        .enqueue(&message("agent", "a", "z"), tight)
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "the inbox of team-a/agent is full: 2 messages wait, the limit is 2; it takes more once its agent acknowledges some"
    );
    let by_bytes = InboxLimits {
        max_messages: 10,
        max_bytes: 2 * size + 10,
        ..tight
    };
    let refused = store
        .enqueue(&message("agent", "a", "z"), by_bytes)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Inbox(InboxError::TooManyBytes { pending, .. }) if pending == 2 * size),
        "{refused}"
    );
    store
        .ack_messages(NS, "agent", std::slice::from_ref(&one.id), common::now())
        .await
        .unwrap();
    store
        .enqueue(&message("agent", "a", "z"), tight)
        .await
        .unwrap();
    assert_eq!(texts(&pending(store, "agent").await), ["y", "z"]);
}

async fn concurrent_senders_fill_an_inbox_exactly_to_its_limit(store: TestStore) {
    let limits = InboxLimits {
        max_messages: 25,
        ..ROOMY
    };
    let senders: Vec<_> = (0..8)
        .map(|sender| {
            let store = store.store.clone();
            tokio::spawn(async move {
                let mut queued = Vec::new();
                for n in 0..10 {
                    let sent = message("agent", &format!("s{sender}"), &n.to_string());
                    match store.enqueue(&sent, limits).await {
                        Ok(Enqueued::New(seq)) => queued.push(seq),
                        Err(StoreError::Inbox(InboxError::TooManyMessages { .. })) => {}
                        other => panic!("{other:?}"),
                    }
                }
                queued
            })
        })
        .collect();
    let mut positions = Vec::new();
    for sender in senders {
        positions.extend(sender.await.unwrap());
    }
    positions.sort();
    assert_eq!(
        positions,
        (1..=25).collect::<Vec<i64>>(),
        "25 taken, each position once"
    );
    let queued = pending(&store.store, "agent").await;
    assert_eq!(queued.len(), 25);
    // Each sender's messages in the order it sent them.
    for sender in 0..8 {
        let mine: Vec<u32> = queued
            .iter()
            .filter(|q| q.message.source.identity == format!("s{sender}"))
            .map(|q| q.message.payload["text"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(
            mine.windows(2).all(|pair| pair[0] < pair[1]),
            "s{sender}: {mine:?}"
        );
    }
}

async fn a_message_id_belongs_to_one_inbox(store: TestStore) {
    let store = &store.store;
    let sent = message("agent", "a", "x");
    store.enqueue(&sent, ROOMY).await.unwrap();
    let mut replayed = sent.clone();
    replayed.session = "other".into();
    let refused = store.enqueue(&replayed, ROOMY).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!(
            "message id {} is already taken by a message for team-a/agent",
            sent.id
        )
    );
    assert!(pending(store, "other").await.is_empty());
    // The same id to the same inbox from another sender is no resend: it
    // is refused, not reported as delivered.
    let mut forged = sent.clone();
    forged.source = from("b");
    let refused = store.enqueue(&forged, ROOMY).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!(
            "message id {} is already taken by a message for team-a/agent",
            sent.id
        )
    );
    assert_eq!(
        store.enqueue(&sent, ROOMY).await.unwrap(),
        Enqueued::AlreadyQueued(1),
        "its own sender may still send it again"
    );
    // Looked up by id, a message is found only in its own inbox.
    let found = store.inbox_message(NS, "agent", &sent.id).await.unwrap();
    assert_eq!(found, Some(sent.clone()));
    assert_eq!(
        store.inbox_message(NS, "other", &sent.id).await.unwrap(),
        None
    );
}

async fn retention_deletes_only_old_acknowledged_messages(store: TestStore) {
    let store = &store.store;
    let sent: Vec<InboxMessage> = (0..3)
        .map(|n| message("agent", "a", &n.to_string()))
        .collect();
    for message in &sent {
        store.enqueue(message, ROOMY).await.unwrap();
    }
    let then = common::now();
    store
        .ack_messages(NS, "agent", &[sent[0].id.clone()], then)
        .await
        .unwrap();
    let later = then + SignedDuration::from_hours(2);
    store
        .ack_messages(NS, "agent", &[sent[1].id.clone()], later)
        .await
        .unwrap();
    let cut_off: Timestamp = then + SignedDuration::from_hours(1);
    assert_eq!(store.prune_acked_messages(cut_off).await.unwrap(), 1);
    assert_eq!(
        texts(&pending(store, "agent").await),
        ["2"],
        "pending ones stay"
    );
    // The position of the pruned message is not reused.
    let next = message("agent", "a", "3");
    assert_eq!(store.enqueue(&next, ROOMY).await.unwrap(), Enqueued::New(4));
}

/// The limits of `max_messages` messages (of any size) for "agent".
fn at_most(max_messages: u64) -> InboxLimits {
    InboxLimits {
        max_messages,
        ..ROOMY
    }
}

/// How many messages wait in "agent", as its full inbox's refusal says.
async fn pending_by_refusal(store: &Store, limit: u64) -> u64 {
    match store
        .enqueue(&message("agent", "a", "probe"), at_most(limit))
        .await
    {
        Err(StoreError::Inbox(InboxError::TooManyMessages { pending, .. })) => pending,
        other => panic!("expected a full inbox, got {other:?}"),
    }
}

/// The inbox's pending totals are kept on its head: a message acknowledged
/// twice, or an id of another inbox, frees nothing more.
async fn an_acknowledgement_frees_room_once(store: TestStore) {
    let store = &store.store;
    let sent: Vec<InboxMessage> = (0..3)
        .map(|n| message("agent", "a", &n.to_string()))
        .collect();
    for one in &sent {
        store.enqueue(one, ROOMY).await.unwrap();
    }
    let other = message("other", "a", "elsewhere");
    store.enqueue(&other, ROOMY).await.unwrap();
    let first = std::slice::from_ref(&sent[0].id);
    assert_eq!(
        store
            .ack_messages(NS, "agent", first, common::now())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .ack_messages(NS, "agent", first, common::now())
            .await
            .unwrap(),
        0
    );
    let elsewhere = std::slice::from_ref(&other.id);
    assert_eq!(
        store
            .ack_messages(NS, "agent", elsewhere, common::now())
            .await
            .unwrap(),
        0
    );
    assert_eq!(pending_by_refusal(store, 2).await, 2);
    assert_eq!(pending(store, "other").await.len(), 1);
}

/// Inboxes from before their heads kept totals: the migration that added
/// them counts what is pending in each.
async fn the_pending_totals_of_older_inboxes_are_backfilled(test: TestStore) {
    let store = &test.store;
    let sent: Vec<InboxMessage> = (0..3)
        .map(|n| message("agent", "a", &n.to_string()))
        .collect();
    for one in &sent {
        store.enqueue(one, ROOMY).await.unwrap();
    }
    store
        .ack_messages(
            NS,
            "agent",
            std::slice::from_ref(&sent[1].id),
            common::now(),
        )
        .await
        .unwrap();
    // As before the migration: no totals.
    test.tamper("UPDATE inbox_heads SET pending_messages = 0, pending_bytes = 0")
        .await;
    let migration = include_str!("../migrations/20261208000002_inbox_pending_totals.sql");
    let backfill = &migration[migration.find("UPDATE").expect("the backfill")..];
    test.tamper(backfill).await;
    assert_eq!(pending_by_refusal(store, 2).await, 2);
    let bytes: u64 = [&sent[0], &sent[2]]
        .iter()
        .map(|one| one.payload.to_string().len() as u64)
        .sum();
    let by_bytes = InboxLimits {
        max_bytes: bytes,
        ..ROOMY
    };
    match store.enqueue(&message("agent", "a", "z"), by_bytes).await {
        Err(StoreError::Inbox(InboxError::TooManyBytes { pending, .. })) => {
            assert_eq!(pending, bytes)
        }
        other => panic!("expected TooManyBytes, got {other:?}"),
    }
}
