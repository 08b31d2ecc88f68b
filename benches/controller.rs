//! Benchmarks of the Session controller against the mock API server:
//! reconciling 1,000 Sessions on create and on an unchanged resync (time,
//! and API writes per Session: targets ≤ 4 and 0), and the pure
//! build+resolve step per Session.
//!
//! Run: `cargo bench --bench controller`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use wopr_operator::api::{Capability, TrustLevel};
use wopr_operator::controller::session::build::{
    build_network_policy, build_pod, build_service_account,
};
use wopr_operator::policy::resolve;

#[path = "../tests/common/mod.rs"]
mod common;

use common::harness::Harness;
use common::{now, sandbox_config, session, session_grant};

const SESSIONS: usize = 1000;

fn harness_with_sessions(runtime: &Runtime) -> Harness {
    let _context = runtime.enter();
    let harness = runtime.block_on(Harness::leader());
    for i in 0..SESSIONS {
        let level = TrustLevel::ALL[i % 4];
        harness.create(&session(&format!("s{i}"), level));
    }
    harness
}

async fn reconcile_all(harness: &Harness) {
    for i in 0..SESSIONS {
        harness.reconcile(&format!("s{i}")).await;
    }
}

/// Non-GET requests since the last call, per Session.
fn writes_per_session(harness: &Harness) -> f64 {
    let writes = harness
        .api
        .take_requests()
        .iter()
        .filter(|request| request.method != http::Method::GET)
        .count();
    writes as f64 / SESSIONS as f64
}

fn bench_reconcile(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();

    // API writes per Session, measured once (they do not vary run to run).
    let harness = harness_with_sessions(&runtime);
    runtime.block_on(reconcile_all(&harness));
    let on_create = writes_per_session(&harness);
    runtime.block_on(reconcile_all(&harness));
    let on_resync = writes_per_session(&harness);
    println!(
        "API writes per Session: create {on_create:.2} (target <= 4), unchanged resync {on_resync:.2} (target 0)"
    );
    assert!(on_create <= 4.0 && on_resync == 0.0);

    let mut group = c.benchmark_group("reconcile_1000_sessions");
    group.sample_size(10);
    group.bench_function("create", |b| {
        b.iter_batched(
            || harness_with_sessions(&runtime),
            |harness| runtime.block_on(reconcile_all(&harness)),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("unchanged_resync", |b| {
        b.iter(|| runtime.block_on(reconcile_all(&harness)))
    });
    group.finish();
}

fn bench_build_and_resolve(c: &mut Criterion) {
    let config = sandbox_config();
    let session = session("research", TrustLevel::SemiTrusted);
    let grants: Vec<_> = (0..10)
        .map(|i| {
            session_grant(
                &format!("g{i}"),
                if i % 2 == 0 { "research" } else { "other" },
                &[Capability::A2aCall],
            )
        })
        .collect();
    c.bench_function("build_and_resolve_per_session", |b| {
        b.iter(|| {
            let context = resolve(black_box(&session), None, &grants, &[], now()).unwrap();
            (
                build_pod(&session, &context, &config),
                build_network_policy(
                    &session,
                    &context,
                    &config.control_plane,
                    config.egress.as_ref(),
                ),
                build_service_account(&session),
            )
        })
    });
}

criterion_group!(benches, bench_build_and_resolve, bench_reconcile);
criterion_main!(benches);
