//! The children agents spawn, counted in the store on SQLite and on a real
//! PostgreSQL server: a parent's limit holds under concurrent spawns, a
//! record lapses once every cache has had time to see the child, and a
//! child that was not created gives its place back.

mod common;

use common::store::{TestStore, on_both_backends};
use k8s_openapi::jiff::SignedDuration;
use wopr_operator::store::{Reservation, UNSEEN_FOR};

on_both_backends!(
    a_parents_limit_holds_under_concurrent_spawns,
    records_lapse_and_places_are_given_back,
);

const NS: &str = "team-a";

async fn a_parents_limit_holds_under_concurrent_spawns(store: TestStore) {
    let now = common::now();
    // One child the cache sees; a limit of 4 leaves 3 places.
    let cached = vec!["seen".to_owned()];
    let spawns: Vec<_> = (0..12)
        .map(|n| {
            let (store, cached) = (store.store.clone(), cached.clone());
            tokio::spawn(async move {
                let child = format!("child-{n}");
                store
                    .reserve_child((NS, "lead", &child), &cached, 4, now)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let outcomes: Vec<Reservation> = futures::future::join_all(spawns)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let reserved = outcomes
        .iter()
        .filter(|outcome| **outcome == Reservation::Reserved)
        .count();
    assert_eq!(reserved, 3, "{outcomes:?}");
    assert!(outcomes.contains(&Reservation::Full { children: 4 }));
    // Another parent's children never count against this one.
    let other = store
        .store
        .reserve_child((NS, "other", "child-x"), &[], 1, now)
        .await
        .unwrap();
    assert_eq!(other, Reservation::Reserved);
}

async fn records_lapse_and_places_are_given_back(store: TestStore) {
    let store = &store.store;
    let now = common::now();
    let reserve = |child: &'static str, at| store.reserve_child((NS, "lead", child), &[], 1, at);
    assert_eq!(reserve("a", now).await.unwrap(), Reservation::Reserved);
    assert_eq!(
        reserve("b", now).await.unwrap(),
        Reservation::Full { children: 1 }
    );
    // A child that was not created gives its place back.
    store.release_child(NS, "a").await.unwrap();
    assert_eq!(reserve("b", now).await.unwrap(), Reservation::Reserved);
    // Once every cache has had time to see it, the record lapses: from
    // then on the cache alone counts the child (here: it is gone).
    let later = now + SignedDuration::try_from(UNSEEN_FOR).unwrap() + SignedDuration::from_secs(1);
    assert_eq!(reserve("c", later).await.unwrap(), Reservation::Reserved);
}
