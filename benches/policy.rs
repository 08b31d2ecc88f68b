//! Benchmarks of the policy engine's hot paths: `decide` (every tool call)
//! and `resolve` (every reconcile and policy push) with 10, 100 and 1000 grants.
//!
//! Run: `cargo bench --bench policy`. Targets: decide ≤ 100 ns median,
//! resolve with 1000 grants ≤ 100 µs.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use wopr_operator::api::{Capability, Grant, GrantSpec, GrantSubject, SourceType, TrustLevel};
use wopr_operator::policy::{CapabilitySet, Request, Source, decide, decide_tool_call, resolve};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{meta, now, session};

/// `count` grants of a namespace with many sessions: one in ten names the
/// benchmarked session, and a quarter of all grants have expired.
fn grants(count: usize, subject_every: usize) -> Vec<Grant> {
    (0..count)
        .map(|i| {
            let subject = if i % subject_every == 0 {
                "subject".to_string()
            } else {
                format!("session-{i}")
            };
            let expires_in = if i % 4 == 0 { -60 } else { 3600 };
            Grant {
                metadata: meta(&format!("grant-{i}")),
                spec: GrantSpec {
                    subject: GrantSubject::session(&subject),
                    profile: None,
                    capabilities: vec![Capability::ALL[i % 8]],
                    sessions: Vec::new(),
                    not_before: None,
                    expires_at: Some(Time(now() + SignedDuration::from_secs(expires_in))),
                    previous_keys: Vec::new(),
                },
                status: None,
            }
        })
        .collect()
}

fn bench_decide(c: &mut Criterion) {
    let context = resolve(
        &session("subject", TrustLevel::SemiTrusted),
        None,
        &[],
        &[],
        now(),
    )
    .unwrap();
    let mut group = c.benchmark_group("decide");
    group.bench_function("tool_allowed", |b| {
        b.iter(|| decide_tool_call(black_box(&context), black_box("memory_read")))
    });
    group.bench_function("tool_denied", |b| {
        b.iter(|| decide_tool_call(black_box(&context), black_box("exec_command")))
    });
    group.bench_function("tool_unknown", |b| {
        b.iter(|| decide_tool_call(black_box(&context), black_box("launch_missiles")))
    });
    group.bench_function("capability", |b| {
        b.iter(|| {
            decide(
                black_box(&context),
                black_box(Request::Capability(Capability::InjectNetwork)),
            )
        })
    });
    let source = Source {
        source_type: SourceType::Session,
        identity: "caller",
        trust_level: TrustLevel::Trusted,
        capabilities: [Capability::Inject].into_iter().collect::<CapabilitySet>(),
    };
    group.bench_function("inject", |b| {
        b.iter(|| decide(black_box(&context), black_box(Request::Inject(&source))))
    });
    group.finish();
}

fn bench_resolve(c: &mut Criterion) {
    let subject = session("subject", TrustLevel::SemiTrusted);
    let mut group = c.benchmark_group("resolve");
    for count in [10, 100, 1000] {
        let mixed = grants(count, 10);
        group.bench_with_input(
            BenchmarkId::new("mixed_grants", count),
            &mixed,
            |b, grants| {
                b.iter(|| {
                    resolve(black_box(&subject), None, black_box(grants), &[], now()).unwrap()
                })
            },
        );
        let all_for_subject = grants(count, 1);
        group.bench_with_input(
            BenchmarkId::new("all_grants_for_session", count),
            &all_for_subject,
            |b, grants| {
                b.iter(|| {
                    resolve(black_box(&subject), None, black_box(grants), &[], now()).unwrap()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_decide, bench_resolve);
criterion_main!(benches);
