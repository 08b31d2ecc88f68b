//! Gateway forwards in the store, on SQLite and on a real PostgreSQL
//! server: each step of a forward sends its message once however often it
//! is retried; steps out of order are refused precisely; a rule's rate
//! limit is exact under concurrent forwards.

mod common;

use common::store::{ROOMY, TestStore, on_both_backends};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use wopr_operator::api::{SourceRef, TrustLevel};
use wopr_operator::inbox::MessageKind;
use wopr_operator::store::{
    Forward, ForwardState, Queued, RequestError, Store, StoreError, new_request_id,
};

on_both_backends!(
    a_forward_is_delivered_answered_and_responded_once_each,
    an_approved_forward_is_delivered_once,
    a_closed_forward_tells_its_gateway_once_and_is_never_delivered,
    steps_of_someone_else_or_out_of_order_are_refused,
    a_rule_allows_exactly_its_rate_under_concurrent_forwards,
    the_queue_shows_what_waits_and_has_not_expired,
    the_summary_counts_a_gateways_forwards_and_its_last_decision,
    retention_deletes_only_old_settled_requests,
    a_result_for_a_source_without_an_inbox_is_kept_once_for_it_alone,
);

const NS: &str = "team-a";

fn session(name: &str, trust_level: TrustLevel) -> SourceRef {
    SourceRef {
        source_type: "session".into(),
        identity: name.into(),
        trust_level,
    }
}

/// A forward by `gate` of a message from untrusted `stranger` to
/// `research`, under rule 0 of Gateway `p2p`.
fn forward(state: ForwardState, created: Timestamp) -> Forward {
    Forward {
        id: new_request_id(),
        namespace: NS.into(),
        gateway: "p2p".into(),
        gateway_session: "gate".into(),
        rule_index: Some(0),
        source: session("stranger", TrustLevel::Untrusted),
        source_message: ulid::Ulid::new().to_string(),
        target: "research".into(),
        action: "query".into(),
        payload: json!({"q": "why"}),
        state,
        created,
        expires: Some(created + SignedDuration::from_mins(5)),
    }
}

async fn pending(store: &Store, session: &str) -> Vec<Queued> {
    store.pending_messages(NS, session, 0, 1000).await.unwrap()
}

async fn state(store: &Store, id: &str) -> ForwardState {
    store.forward(NS, id).await.unwrap().unwrap().state
}

async fn a_forward_is_delivered_answered_and_responded_once_each(store: TestStore) {
    let store = &store.store;
    let request = forward(ForwardState::Delivered, common::now());
    store.open_forward(&request, Some(20), ROOMY).await.unwrap();
    let delivered = pending(store, "research").await;
    assert_eq!(delivered.len(), 1);
    let delivery = &delivered[0].message;
    assert_eq!(delivery.kind, MessageKind::Forward);
    assert_eq!(delivery.source.identity, "stranger");
    assert_eq!(delivery.request_id.as_deref(), Some(request.id.as_str()));
    assert_eq!(delivery.gateway.as_deref(), Some("p2p"));
    assert_eq!(delivery.action.as_deref(), Some("query"));
    assert_eq!(delivery.payload, json!({"q": "why"}));

    let research = session("research", TrustLevel::SemiTrusted);
    let answer = store
        .reply_to_forward(NS, &request.id, &research, json!("because"), ROOMY)
        .await
        .unwrap();
    assert_eq!(answer.session, "gate");
    assert_eq!(answer.kind, MessageKind::Result);
    assert_eq!(state(store, &request.id).await, ForwardState::Answered);
    // Answering again (after a lost answer) sends nothing more.
    let again = store
        .reply_to_forward(NS, &request.id, &research, json!("because"), ROOMY)
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            StoreError::Request(RequestError::WrongState {
                state: "answered",
                ..
            })
        ),
        "{again}"
    );
    assert_eq!(pending(store, "gate").await.len(), 1);

    let gate = session("gate", TrustLevel::SemiTrusted);
    let result = store
        .respond_to_forward(NS, &request.id, &gate, json!({"answer": "because"}), ROOMY)
        .await
        .unwrap();
    assert_eq!(result.session, "stranger");
    let received = pending(store, "stranger").await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].message.payload, json!({"answer": "because"}));
    assert_eq!(received[0].message.source.identity, "gate");
    assert!(
        store
            .respond_to_forward(NS, &request.id, &gate, json!(1), ROOMY)
            .await
            .is_err()
    );
    assert_eq!(pending(store, "stranger").await.len(), 1);
}

async fn an_approved_forward_is_delivered_once(store: TestStore) {
    let store = &store.store;
    let request = forward(ForwardState::AwaitingApproval, common::now());
    store.open_forward(&request, None, ROOMY).await.unwrap();
    assert!(pending(store, "research").await.is_empty());
    assert!(
        store
            .deliver_approved(NS, &request.id, ROOMY)
            .await
            .unwrap()
    );
    assert!(
        !store
            .deliver_approved(NS, &request.id, ROOMY)
            .await
            .unwrap()
    );
    let delivered = pending(store, "research").await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].message.id, request.message_id());
    assert_eq!(state(store, &request.id).await, ForwardState::Delivered);
    // An approval that comes after the forward was closed delivers nothing.
    let expired = forward(ForwardState::AwaitingApproval, common::now());
    store.open_forward(&expired, None, ROOMY).await.unwrap();
    store
        .close_forward(
            NS,
            &expired.id,
            ForwardState::Expired,
            None,
            "timeout",
            ROOMY,
        )
        .await
        .unwrap();
    let late = store
        .deliver_approved(NS, &expired.id, ROOMY)
        .await
        .unwrap_err();
    assert_eq!(
        late.to_string(),
        format!(
            "request {} is expired, so it cannot be delivered",
            expired.id
        )
    );
    assert_eq!(pending(store, "research").await.len(), 1);
}

async fn a_closed_forward_tells_its_gateway_once_and_is_never_delivered(store: TestStore) {
    let store = &store.store;
    let request = forward(ForwardState::AwaitingApproval, common::now());
    store.open_forward(&request, None, ROOMY).await.unwrap();
    for _ in 0..2 {
        store
            .close_forward(
                NS,
                &request.id,
                ForwardState::Denied,
                Some("alice@example.com"),
                "not today",
                ROOMY,
            )
            .await
            .unwrap();
    }
    let told = pending(store, "gate").await;
    assert_eq!(told.len(), 1);
    let notice = &told[0].message;
    assert_eq!(notice.source.source_type, "approval");
    assert_eq!(notice.source.identity, "alice@example.com");
    assert_eq!(
        notice.payload,
        json!({"requestId": request.id, "state": "denied", "reason": "not today"})
    );
    assert!(pending(store, "research").await.is_empty());
    // Denied stays denied: it cannot expire or be delivered afterwards.
    let expire = store
        .close_forward(NS, &request.id, ForwardState::Expired, None, "t", ROOMY)
        .await;
    assert!(expire.is_err());
    assert!(
        store
            .deliver_approved(NS, &request.id, ROOMY)
            .await
            .is_err()
    );
}

async fn steps_of_someone_else_or_out_of_order_are_refused(store: TestStore) {
    let store = &store.store;
    let waiting = forward(ForwardState::AwaitingApproval, common::now());
    store.open_forward(&waiting, None, ROOMY).await.unwrap();
    let research = session("research", TrustLevel::SemiTrusted);
    let early = store
        .reply_to_forward(NS, &waiting.id, &research, json!(1), ROOMY)
        .await
        .unwrap_err();
    assert_eq!(
        early.to_string(),
        format!(
            "request {} is awaiting_approval, so it cannot be answered",
            waiting.id
        )
    );
    let delivered = forward(ForwardState::Delivered, common::now());
    store.open_forward(&delivered, None, ROOMY).await.unwrap();
    // Another session cannot answer it, another gateway cannot respond.
    let intruder = session("other", TrustLevel::Trusted);
    for refused in [
        store
            .reply_to_forward(NS, &delivered.id, &intruder, json!(1), ROOMY)
            .await,
        store
            .respond_to_forward(NS, &delivered.id, &intruder, json!(1), ROOMY)
            .await,
        store
            .respond_to_forward("elsewhere", &delivered.id, &intruder, json!(1), ROOMY)
            .await,
    ] {
        let error = refused.unwrap_err();
        assert!(
            matches!(error, StoreError::Request(RequestError::NotFound { .. })),
            "{error}"
        );
    }
    assert!(pending(store, "other").await.is_empty());
    assert_eq!(pending(store, "gate").await.len(), 0);
}

async fn a_rule_allows_exactly_its_rate_under_concurrent_forwards(store: TestStore) {
    let now = common::now();
    let forwards: Vec<_> = (0..30)
        .map(|_| {
            let store = store.store.clone();
            tokio::spawn(async move {
                let request = forward(ForwardState::Delivered, now);
                store.open_forward(&request, Some(20), ROOMY).await
            })
        })
        .collect();
    let mut limited = 0;
    for outcome in futures::future::join_all(forwards).await {
        match outcome.unwrap() {
            Ok(()) => {}
            Err(StoreError::Request(RequestError::RateLimited {
                per_minute,
                retry_after,
                ..
            })) => {
                assert_eq!(per_minute, 20);
                assert_eq!(retry_after, std::time::Duration::from_secs(60));
                limited += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(limited, 10);
    assert_eq!(pending(&store.store, "research").await.len(), 20);
    // A minute later the rule allows forwards again; another rule never
    // counted against it.
    let later = forward(ForwardState::Delivered, now + SignedDuration::from_secs(61));
    store
        .store
        .open_forward(&later, Some(20), ROOMY)
        .await
        .unwrap();
    let mut other_rule = forward(ForwardState::Delivered, now);
    other_rule.rule_index = Some(1);
    store
        .store
        .open_forward(&other_rule, Some(20), ROOMY)
        .await
        .unwrap();
}

async fn the_queue_shows_what_waits_and_has_not_expired(store: TestStore) {
    let store = &store.store;
    let now = common::now();
    let waiting = forward(ForwardState::AwaitingApproval, now);
    let mut stale = forward(ForwardState::AwaitingApproval, now);
    stale.expires = Some(now - SignedDuration::from_secs(1));
    let delivered = forward(ForwardState::Delivered, now);
    let mut elsewhere = forward(ForwardState::AwaitingApproval, now);
    elsewhere.gateway_session = "other-gate".into();
    for request in [&waiting, &stale, &delivered, &elsewhere] {
        store.open_forward(request, None, ROOMY).await.unwrap();
    }
    let queue = store.awaiting_approval(NS, "gate", now).await.unwrap();
    assert_eq!(queue, vec![waiting]);
}

async fn the_summary_counts_a_gateways_forwards_and_its_last_decision(store: TestStore) {
    let store = &store.store;
    let now = common::now();
    let empty = store.gateway_summary(NS, "p2p", now).await.unwrap();
    assert_eq!(
        (empty.pending, empty.per_rule.len(), empty.last_decision),
        (0, 0, None)
    );
    for _ in 0..3 {
        store
            .open_forward(&forward(ForwardState::Delivered, now), None, ROOMY)
            .await
            .unwrap();
    }
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let mut request = forward(ForwardState::AwaitingApproval, now);
        request.rule_index = Some(1);
        store.open_forward(&request, None, ROOMY).await.unwrap();
        waiting.push(request);
    }
    store
        .deliver_approved(NS, &waiting[0].id, ROOMY)
        .await
        .unwrap();
    store
        .close_forward(
            NS,
            &waiting[1].id,
            ForwardState::Denied,
            Some("alice"),
            "no",
            ROOMY,
        )
        .await
        .unwrap();
    let summary = store.gateway_summary(NS, "p2p", now).await.unwrap();
    assert_eq!(summary.pending, 1);
    assert_eq!(summary.per_rule, [(0, 3), (1, 3)]);
    let (id, state, _) = summary.last_decision.unwrap();
    assert_eq!((id, state), (waiting[1].id.clone(), ForwardState::Denied));
    // Another gateway's forwards are not counted.
    let other = store.gateway_summary(NS, "other", now).await.unwrap();
    assert_eq!(other.per_rule.len(), 0);
}

async fn retention_deletes_only_old_settled_requests(store: TestStore) {
    let store = &store.store;
    let now = Timestamp::now();
    let settled = forward(ForwardState::Delivered, now);
    let waiting = forward(ForwardState::AwaitingApproval, now);
    for request in [&settled, &waiting] {
        store.open_forward(request, None, ROOMY).await.unwrap();
    }
    // Nothing is old yet.
    let an_hour_ago = now - SignedDuration::from_hours(1);
    assert_eq!(store.prune_requests(an_hour_ago).await.unwrap(), 0);
    // Past retention: the settled forward goes; the one waiting stays
    // until its approval has expired too.
    let later = now + SignedDuration::from_secs(1);
    assert_eq!(store.prune_requests(later).await.unwrap(), 1);
    assert!(store.forward(NS, &settled.id).await.unwrap().is_none());
    assert!(store.forward(NS, &waiting.id).await.unwrap().is_some());
    let after_expiry = now + SignedDuration::from_mins(6);
    assert_eq!(store.prune_requests(after_expiry).await.unwrap(), 1);
    assert!(store.forward(NS, &waiting.id).await.unwrap().is_none());
}

/// A person's (or a workload's) message has no inbox to answer into: the
/// result is kept with the forward, once, and read only by that source.
async fn a_result_for_a_source_without_an_inbox_is_kept_once_for_it_alone(store: TestStore) {
    let store = &store.store;
    let mut request = forward(ForwardState::Delivered, common::now());
    request.source = SourceRef {
        source_type: "person".into(),
        identity: "olivia".into(),
        trust_level: TrustLevel::Owner,
    };
    store.open_forward(&request, None, ROOMY).await.unwrap();
    let olivia = ("person", "olivia");
    let read = |source| store.answers(NS, "gate", &request.source_message, source);
    let waiting = read(olivia).await.unwrap().unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].0.state, ForwardState::Delivered);
    assert_eq!(waiting[0].1, None);

    let gate = session("gate", TrustLevel::SemiTrusted);
    let result = store
        .respond_to_forward(NS, &request.id, &gate, json!("done"), ROOMY)
        .await
        .unwrap();
    assert_eq!(result.session, "gate", "names the session it was sent to");
    assert!(pending(store, "gate").await.is_empty(), "no inbox holds it");
    let again = store
        .respond_to_forward(NS, &request.id, &gate, json!("twice"), ROOMY)
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            StoreError::Request(RequestError::WrongState {
                state: "responded",
                ..
            })
        ),
        "{again}"
    );
    let answered = read(olivia).await.unwrap().unwrap();
    assert_eq!(answered[0].0.state, ForwardState::Responded);
    assert_eq!(answered[0].1.as_ref(), Some(&result));
    assert_eq!(read(("person", "alice")).await.unwrap(), None);
    assert_eq!(read(("serviceaccount", "olivia")).await.unwrap(), None);
}
