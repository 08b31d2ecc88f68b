//! Benchmarks of the store: ingest throughput (batches of 500 events of one
//! session, as the control plane commits what a sidecar ships) on SQLite
//! and PostgreSQL, and
//! `--denied --last 100` over 1,000,000 stored events on SQLite.
//!
//! Run: `eval "$(bash hack/postgres.sh)" && cargo bench --bench store`
//! (without `WOPR_TEST_POSTGRES_URL` the PostgreSQL rows are left out, and
//! it says so). Targets: ingest ≥ 20,000 events/s on SQLite; the query
//! ≤ 20 ms on SQLite.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use wopr_operator::audit::AuditEvent;
use wopr_operator::policy::Outcome;
use wopr_operator::store::{AuditQuery, DecisionFilter, Store};

#[path = "../tests/common/mod.rs"]
mod common;

use common::store::{event, postgres_url};

const BATCH: usize = 500;
const STORED: usize = 1_000_000;
const NAMESPACES: usize = 10;

/// A batch of new events of one namespace, as one sidecar ships them (the
/// namespace turns with every batch): one in ten denied.
fn batch(start: usize, size: usize) -> Vec<AuditEvent> {
    let namespace = format!("team-{}", (start / size) % NAMESPACES);
    (start..start + size)
        .map(|n| {
            let decision = if n % 10 == 0 {
                Outcome::Denied
            } else {
                Outcome::Allowed
            };
            event(
                &namespace,
                &format!("agent-{}", n % 50),
                decision,
                n as i64 / 100,
            )
        })
        .collect()
}

fn bench_ingest(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut backends = vec![(
        "sqlite",
        format!("sqlite://{}/ingest.db", dir.path().display()),
    )];
    match std::env::var("WOPR_TEST_POSTGRES_URL") {
        Ok(_) => backends.push(("postgres", runtime.block_on(postgres_url()))),
        Err(_) => eprintln!(
            "store ingest on PostgreSQL: left out (set WOPR_TEST_POSTGRES_URL: eval \"$(bash hack/postgres.sh)\")"
        ),
    }
    let mut group = c.benchmark_group("store_ingest");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for (name, url) in backends {
        let store = runtime.block_on(Store::open(&url)).unwrap();
        let mut next = 0;
        group.bench_function(format!("{name}_batch_of_{BATCH}"), |b| {
            b.iter_batched(
                || {
                    next += BATCH;
                    batch(next, BATCH)
                },
                |events| runtime.block_on(store.insert_events(&events)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_query(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/query.db", dir.path().display());
    let store = runtime.block_on(Store::open(&url)).unwrap();
    runtime.block_on(async {
        for start in (0..STORED).step_by(5_000) {
            store.insert_events(&batch(start, 5_000)).await.unwrap();
        }
    });
    let mut group = c.benchmark_group("store_query_1m_events");
    for (name, namespace) in [
        (
            "sqlite_denied_last_100_in_a_namespace",
            Some("team-3".to_owned()),
        ),
        ("sqlite_denied_last_100_everywhere", None),
    ] {
        let query = AuditQuery {
            namespace,
            decision: Some(DecisionFilter::Denied),
            limit: 100,
            ..AuditQuery::default()
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let page = runtime.block_on(store.query_events(&query)).unwrap();
                assert_eq!(page.events.len(), 100);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_ingest, bench_query);
criterion_main!(benches);
