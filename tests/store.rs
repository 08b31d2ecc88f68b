//! The store's test suite, run twice: on SQLite and on a real PostgreSQL
//! server (`WOPR_TEST_POSTGRES_URL`; hack/test.sh starts one). Each case
//! gets a fresh database.

mod common;

use common::store::{TestStore, event, on_both_backends};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use wopr_operator::api::Capability;
use wopr_operator::audit::{AuditEvent, EventType};
use wopr_operator::policy::Outcome;
use wopr_operator::store::{
    AuditQuery, Cursor, DecisionFilter, Inserted, Prune, Pruned, QueryError, StoreError,
    Verification,
};

on_both_backends!(
    a_batch_shipped_twice_is_stored_once,
    following_reads_in_storage_order_from_a_chain_position,
    queries_filter_and_page_newest_first,
    invalid_queries_are_refused_precisely,
    an_untouched_chain_verifies,
    an_edited_event_breaks_the_chain_there,
    an_edited_column_breaks_the_chain_there,
    a_deleted_event_breaks_the_chain_there,
    a_deleted_newest_event_is_noticed,
    reordered_events_break_the_chain_there,
    retention_keeps_the_chain_verifiable,
    concurrent_writers_keep_one_chain,
    a_reopened_store_keeps_its_events,
);

/// Which events a query should return.
type Matches = Box<dyn Fn(&AuditEvent) -> bool>;

fn time(seconds: i64) -> Timestamp {
    common::now() + SignedDuration::from_secs(seconds)
}

fn ids(events: &[AuditEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// `count` allowed events in `team-a/agent`, one a second.
async fn filled(store: &TestStore, count: i64) -> Vec<AuditEvent> {
    let events: Vec<AuditEvent> = (0..count)
        .map(|n| event("team-a", "agent", Outcome::Allowed, n))
        .collect();
    store.store.insert_events(&events).await.unwrap();
    events
}

async fn a_batch_shipped_twice_is_stored_once(store: TestStore) {
    let batch: Vec<AuditEvent> = (0..10)
        .map(|n| event("team-a", "agent", Outcome::Allowed, n))
        .collect();
    let first = store.store.insert_events(&batch).await.unwrap();
    assert_eq!(
        first,
        Inserted {
            new: 10,
            duplicates: 0
        }
    );
    // The same batch again (its ack was lost), two new events, and one
    // repeated within the batch.
    let mut again = batch.clone();
    again.push(event("team-a", "agent", Outcome::Denied, 20));
    again.push(event("team-b", "other", Outcome::Allowed, 21));
    again.push(again[11].clone());
    let second = store.store.insert_events(&again).await.unwrap();
    assert_eq!(
        second,
        Inserted {
            new: 2,
            duplicates: 11
        }
    );
    let all = AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    };
    let page = store.store.query_events(&all).await.unwrap();
    assert_eq!(page.events.len(), 12);
    let mut unique = ids(&page.events);
    unique.dedup();
    assert_eq!(unique.len(), 12);
    // What is stored is the event, field for field.
    let stored = page.events.iter().find(|e| e.id == batch[3].id).unwrap();
    assert_eq!(stored, &batch[3]);
    assert_eq!(
        store.store.verify("team-a").await.unwrap(),
        Verification::Intact { events: 11 }
    );
}

async fn queries_filter_and_page_newest_first(store: TestStore) {
    let mut events = Vec::new();
    for n in 0..30 {
        let namespace = if n % 3 == 0 { "team-b" } else { "team-a" };
        let session = if n % 2 == 0 { "alpha" } else { "beta" };
        let decision = match n % 5 {
            0 => Outcome::Denied,
            1 => Outcome::WouldDeny,
            _ => Outcome::Allowed,
        };
        let mut e = event(namespace, session, decision, n);
        if n % 4 == 0 {
            e.event_type = EventType::Injection;
            e.source.identity = "peer-key".into();
        } else {
            e.tool = Some(
                if n % 2 == 0 {
                    "memory_read"
                } else {
                    "config_get"
                }
                .into(),
            );
            e.capability = Some(Capability::InjectTools);
        }
        events.push(e);
    }
    // Two events at the same instant: the id orders them.
    let mut twin = event("team-a", "alpha", Outcome::Allowed, 15);
    twin.time = events[15].time;
    events.push(twin);
    store.store.insert_events(&events).await.unwrap();

    let run = |query: AuditQuery| {
        let store = store.store.clone();
        async move { store.query_events(&query).await.unwrap().events }
    };
    let expect = |filter: &dyn Fn(&AuditEvent) -> bool| {
        let mut matching: Vec<&AuditEvent> = events.iter().filter(|e| filter(e)).collect();
        matching.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
        matching
            .into_iter()
            .map(|e| e.id.clone())
            .collect::<Vec<_>>()
    };
    let cases: Vec<(AuditQuery, Matches)> = vec![
        (AuditQuery::default(), Box::new(|_| true)),
        (
            AuditQuery {
                namespace: Some("team-a".into()),
                ..Default::default()
            },
            Box::new(|e| e.namespace == "team-a"),
        ),
        (
            AuditQuery {
                namespace: Some("team-a".into()),
                session: Some("beta".into()),
                ..Default::default()
            },
            Box::new(|e| e.namespace == "team-a" && e.session == "beta"),
        ),
        (
            AuditQuery {
                decision: Some(DecisionFilter::Denied),
                ..Default::default()
            },
            Box::new(|e| e.decision != Outcome::Allowed),
        ),
        (
            AuditQuery {
                decision: Some(DecisionFilter::WouldDeny),
                ..Default::default()
            },
            Box::new(|e| e.decision == Outcome::WouldDeny),
        ),
        (
            AuditQuery {
                decision: Some(DecisionFilter::Allowed),
                ..Default::default()
            },
            Box::new(|e| e.decision == Outcome::Allowed),
        ),
        (
            AuditQuery {
                event_type: Some(EventType::Injection),
                ..Default::default()
            },
            Box::new(|e| e.event_type == EventType::Injection),
        ),
        (
            AuditQuery {
                capability: Some(Capability::InjectTools),
                ..Default::default()
            },
            Box::new(|e| e.capability == Some(Capability::InjectTools)),
        ),
        (
            AuditQuery {
                tool: Some("memory_read".into()),
                ..Default::default()
            },
            Box::new(|e| e.tool.as_deref() == Some("memory_read")),
        ),
        (
            AuditQuery {
                source_identity: Some("peer-key".into()),
                ..Default::default()
            },
            Box::new(|e| e.source.identity == "peer-key"),
        ),
        (
            AuditQuery {
                since: Some(time(10)),
                until: Some(time(20)),
                ..Default::default()
            },
            Box::new(|e| e.time >= time(10) && e.time < time(20)),
        ),
        (
            AuditQuery {
                namespace: Some("team-a".into()),
                decision: Some(DecisionFilter::Denied),
                limit: 3,
                ..Default::default()
            },
            Box::new(|e| e.namespace == "team-a" && e.decision != Outcome::Allowed),
        ),
    ];
    for (query, filter) in cases {
        let mut expected = expect(&*filter);
        expected.truncate(if query.limit == 0 {
            100
        } else {
            query.limit as usize
        });
        assert_eq!(ids(&run(query.clone()).await), expected, "{query:?}");
    }

    // Pages of 4 with the cursor: every event once, newest first.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .store
            .query_events(&AuditQuery {
                limit: 4,
                after: after.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.events.len() <= 4);
        paged.extend(ids(&page.events));
        match page.next {
            // The cursor goes over the wire as text.
            Some(next) => after = Some(Cursor::decode(&next.encode()).unwrap()),
            None => break,
        }
    }
    assert_eq!(paged, expect(&|_| true));
}

async fn invalid_queries_are_refused_precisely(store: TestStore) {
    filled(&store, 3).await;
    let refused = |result: Result<_, StoreError>| match result {
        Err(StoreError::InvalidQuery(error)) => error,
        other => panic!("not refused: {other:?}"),
    };
    let backwards = AuditQuery {
        since: Some(time(10)),
        until: Some(time(5)),
        ..Default::default()
    };
    let error = refused(store.store.query_events(&backwards).await);
    assert_eq!(
        error.to_string(),
        "invalid time range: since (2026-11-24T12:00:10Z) is not before until (2026-11-24T12:00:05Z)"
    );
    let empty = AuditQuery {
        since: Some(time(5)),
        until: Some(time(5)),
        ..Default::default()
    };
    assert!(matches!(
        refused(store.store.query_events(&empty).await),
        QueryError::InvalidTimeRange { .. }
    ));
    let huge = AuditQuery {
        limit: 5_000,
        ..Default::default()
    };
    assert_eq!(
        refused(store.store.query_events(&huge).await),
        QueryError::LimitTooLarge(5_000)
    );
    for cursor in ["", "x", "12:", "abc:01J", &format!("1:{}", "a".repeat(65))] {
        assert_eq!(
            Cursor::decode(cursor),
            Err(QueryError::InvalidCursor),
            "{cursor}"
        );
    }
    // Nothing stored was lost by the refusals.
    let page = store
        .store
        .query_events(&AuditQuery::default())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 3);
}

async fn an_untouched_chain_verifies(store: TestStore) {
    assert_eq!(
        store.store.verify("team-a").await.unwrap(),
        Verification::Intact { events: 0 }
    );
    filled(&store, 50).await;
    filled(&store, 7).await;
    assert_eq!(
        store.store.verify("team-a").await.unwrap(),
        Verification::Intact { events: 57 }
    );
}

/// Verifies `team-a` and returns the broken event's seq and problem.
async fn broken(store: &TestStore) -> (i64, Option<String>, String) {
    match store.store.verify("team-a").await.unwrap() {
        Verification::Broken { seq, id, problem } => (seq, id, problem),
        intact => panic!("tampering went unnoticed: {intact:?}"),
    }
}

async fn an_edited_event_breaks_the_chain_there(store: TestStore) {
    let events = filled(&store, 10).await;
    // A denial rewritten as allowed, in the event itself.
    store.tamper(&format!(
            "UPDATE audit_events SET event = REPLACE(event, 'event at 4 s', 'nothing happened') WHERE id = '{}'",
            events[4].id
        )).await;
    let (seq, id, problem) = broken(&store).await;
    assert_eq!((seq, id.as_deref()), (5, Some(events[4].id.as_str())));
    assert!(problem.contains("edited"), "{problem}");
}

async fn an_edited_column_breaks_the_chain_there(store: TestStore) {
    let mut events = filled(&store, 5).await;
    let denied = event("team-a", "agent", Outcome::Denied, 5);
    store
        .store
        .insert_events(std::slice::from_ref(&denied))
        .await
        .unwrap();
    events.push(denied);
    // The indexed column says allowed, so `--denied` would miss it.
    store
        .tamper(&format!(
            "UPDATE audit_events SET decision = 'allowed', denied = 0 WHERE id = '{}'",
            events[5].id
        ))
        .await;
    let (seq, id, problem) = broken(&store).await;
    assert_eq!((seq, id.as_deref()), (6, Some(events[5].id.as_str())));
    assert!(problem.contains("columns"), "{problem}");
}

async fn a_deleted_event_breaks_the_chain_there(store: TestStore) {
    let events = filled(&store, 10).await;
    store
        .tamper(&format!(
            "DELETE FROM audit_events WHERE id = '{}'",
            events[6].id
        ))
        .await;
    let (seq, _, problem) = broken(&store).await;
    assert_eq!(seq, 7);
    assert!(problem.contains("missing"), "{problem}");
}

async fn a_deleted_newest_event_is_noticed(store: TestStore) {
    let events = filled(&store, 10).await;
    store
        .tamper(&format!(
            "DELETE FROM audit_events WHERE id = '{}'",
            events[9].id
        ))
        .await;
    let (seq, _, problem) = broken(&store).await;
    assert_eq!(seq, 10);
    assert!(problem.contains("missing (deleted)"), "{problem}");
}

async fn reordered_events_break_the_chain_there(store: TestStore) {
    let events = filled(&store, 10).await;
    // Swap the positions of events 3 and 4 (seq 4 and 5).
    for statement in [
        format!(
            "UPDATE audit_events SET seq = -1 WHERE id = '{}'",
            events[3].id
        ),
        format!(
            "UPDATE audit_events SET seq = 4 WHERE id = '{}'",
            events[4].id
        ),
        format!(
            "UPDATE audit_events SET seq = 5 WHERE id = '{}'",
            events[3].id
        ),
    ] {
        store.tamper(&statement).await;
    }
    let (seq, id, problem) = broken(&store).await;
    assert_eq!((seq, id.as_deref()), (4, Some(events[4].id.as_str())));
    assert!(problem.contains("reordered"), "{problem}");
}

/// A retention pass that deletes events older than `older_than` and, per
/// namespace, all but the newest `max` (however young).
fn prune(older_than: Timestamp, max: u64) -> Prune {
    Prune {
        older_than,
        max_per_namespace: max,
        keep_since: Timestamp::MAX,
    }
}

async fn retention_keeps_the_chain_verifiable(store: TestStore) {
    let events = filled(&store, 20).await;
    assert_eq!(
        store.store.pruned("team-a").await.unwrap(),
        Pruned::default()
    );
    // Older than 12 s: events 0..=11 go.
    assert_eq!(
        store
            .store
            .prune_events(prune(time(12), 1_000))
            .await
            .unwrap(),
        12
    );
    assert_eq!(
        store.store.verify("team-a").await.unwrap(),
        Verification::Intact { events: 8 }
    );
    assert_eq!(
        store.store.pruned("team-a").await.unwrap(),
        Pruned {
            events: 12,
            last_time: Some(time(11))
        }
    );
    // At most 5 per namespace: three more go, the newest stay.
    assert_eq!(
        store.store.prune_events(prune(time(0), 5)).await.unwrap(),
        3
    );
    let page = store
        .store
        .query_events(&AuditQuery::default())
        .await
        .unwrap();
    assert_eq!(
        ids(&page.events),
        ids(&events[15..].iter().rev().cloned().collect::<Vec<_>>())
    );
    assert_eq!(
        store.store.pruned("team-a").await.unwrap(),
        Pruned {
            events: 15,
            last_time: Some(time(14))
        }
    );
    // Nothing more to prune; the chain goes on from where it was.
    assert_eq!(
        store.store.prune_events(prune(time(0), 5)).await.unwrap(),
        0
    );
    filled(&store, 2).await;
    assert_eq!(
        store.store.verify("team-a").await.unwrap(),
        Verification::Intact { events: 7 }
    );
}

async fn concurrent_writers_keep_one_chain(store: TestStore) {
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let store = store.store.clone();
            tokio::spawn(async move {
                for batch in 0..10 {
                    let events: Vec<AuditEvent> = (0..20)
                        .map(|n| {
                            event(
                                "team-a",
                                "agent",
                                Outcome::Allowed,
                                writer * 1000 + batch * 20 + n,
                            )
                        })
                        .collect();
                    store.insert_events(&events).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        store.store.verify("team-a").await.unwrap(),
        Verification::Intact { events: 800 }
    );
}

async fn a_reopened_store_keeps_its_events(store: TestStore) {
    let events = filled(&store, 3).await;
    store.store.close().await;
    let reopened = wopr_operator::store::Store::open(&store.url).await.unwrap();
    let page = reopened.query_events(&AuditQuery::default()).await.unwrap();
    assert_eq!(page.events.len(), 3);
    assert_eq!(page.events[0], events[2]);
    assert_eq!(
        reopened.verify("team-a").await.unwrap(),
        Verification::Intact { events: 3 }
    );
}

/// `stored_after` reads a namespace's events in the order they were
/// stored (a late one, older in time, where it arrived), filtered, page by
/// page from the chain position the last page read up to; -1 starts at
/// the head.
async fn following_reads_in_storage_order_from_a_chain_position(test: TestStore) {
    let store = &test.store;
    let follow = |after: i64, limit: u32| AuditQuery {
        namespace: Some("team-a".into()),
        decision: Some(DecisionFilter::Denied),
        stored_after: Some(after),
        limit,
        ..AuditQuery::default()
    };
    let first = vec![event("team-a", "a", Outcome::Denied, 10)];
    store.insert_events(&first).await.unwrap();
    let from_now = store.query_events(&follow(-1, 10)).await.unwrap();
    assert_eq!(from_now.events, vec![]);
    assert_eq!(from_now.last_seq, Some(1));
    let later = vec![
        event("team-a", "a", Outcome::Denied, 20),
        event("team-a", "a", Outcome::Allowed, 21),
        event("team-b", "a", Outcome::Denied, 22),
        event("team-a", "b", Outcome::Denied, -100),
        event("team-a", "a", Outcome::WouldDeny, 23),
    ];
    store.insert_events(&later).await.unwrap();
    let page = store.query_events(&follow(1, 2)).await.unwrap();
    assert_eq!(page.events, vec![later[0].clone(), later[3].clone()]);
    let rest = store
        .query_events(&follow(page.last_seq.unwrap(), 2))
        .await
        .unwrap();
    assert_eq!(rest.events, vec![later[4].clone()]);
    assert_eq!(rest.last_seq, Some(5), "read up to team-a's head");
    let refused = store
        .query_events(&AuditQuery {
            namespace: None,
            ..follow(0, 1)
        })
        .await
        .unwrap_err();
    assert!(matches!(
        refused,
        StoreError::InvalidQuery(QueryError::InvalidFollow)
    ));
}
