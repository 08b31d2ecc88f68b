//! Benchmark of the peer ingress (issue 27): one peer message from its
//! bytes to the gateway session's inbox — signature verified over the
//! bytes received, replay guard, limits, standing, the session's decision,
//! the inbox and the audit event — against the floor of verifying its
//! signature alone, measured in the same run.
//!
//! Run (one core): `eval "$(bash hack/postgres.sh)" && taskset -c 0 cargo bench --bench peers`
//! (without `WOPR_TEST_POSTGRES_URL` the PostgreSQL rows are left out, and
//! it says so). Rows:
//! - `peer_message/verify`: `p2p::message::open` (JSON, Ed25519 verify).
//! - `peer_message/receive_{sqlite,postgres}`: `Ingress::receive` whole,
//!   on a current-thread runtime. Target: ≤ 100 µs median.
//!   Its throughput (messages a second, one at a time) is what one
//!   replica sustains per core on that store.
//!
//! Peers are accepted by `p2p.autoAccept` (no Grants to scan) and each
//! sends at most ten messages, under WOPR's 10 injects a minute.

use std::cell::Cell;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use wopr_operator::api::{AccessPattern, InboxPolicy, TrustLevel};

#[path = "../tests/common/mod.rs"]
mod common;

use common::NAMESPACE;
use common::peers::{TestIngress, TestPeer};
use common::sidecar::ControlPlane;
use common::store::postgres_url;
use wopr_operator::controlplane::peers::IngressSettings;

const GATEWAY: &str = "p2p-gateway";

/// A control plane whose namespace accepts any peer at untrusted into its
/// gateway session, with inboxes that hold every message sent.
async fn setup() -> ControlPlane {
    let mut control_plane = ControlPlane::start(&[GATEWAY]).await;
    let mut session = common::session(GATEWAY, TrustLevel::SemiTrusted);
    session.spec.access = vec![AccessPattern::SourceType("p2p".into())];
    control_plane.put_session(session);
    control_plane.put_gateway(common::gateway("peers", GATEWAY));
    let mut policy = common::peers::auto_accepting_policy(NAMESPACE);
    policy.spec.inbox = Some(InboxPolicy {
        max_message_bytes: 65_536,
        max_messages: 1_000_000,
        max_bytes: 1 << 34,
    });
    control_plane.put_policy(policy);
    control_plane
}

/// The next message to send: a new peer every ten.
struct Messages {
    peer: TestPeer,
    sent: Cell<u32>,
}

impl Messages {
    fn next(&mut self) -> Vec<u8> {
        if self.sent.get() == 10 {
            self.peer = TestPeer::new();
            self.sent.set(0);
        }
        self.sent.set(self.sent.get() + 1);
        self.peer
            .inject(NAMESPACE, GATEWAY, json!("what editions exist?"))
    }
}

fn bench_peers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let control_plane = runtime.block_on(setup());
    let mut stores = vec![("sqlite", control_plane.store.clone())];
    match std::env::var("WOPR_TEST_POSTGRES_URL") {
        Ok(_) => {
            let url = runtime.block_on(postgres_url());
            let store = runtime
                .block_on(wopr_operator::store::Store::open(&url))
                .unwrap();
            stores.push(("postgres", store));
        }
        Err(_) => eprintln!(
            "peer_message on PostgreSQL: left out (set WOPR_TEST_POSTGRES_URL: eval \"$(bash hack/postgres.sh)\")"
        ),
    }
    let mut messages = Messages {
        peer: TestPeer::new(),
        sent: Cell::new(0),
    };
    let mut group = c.benchmark_group("peer_message");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(10));
    let sample = messages.next();
    group.bench_function("verify", |b| {
        b.iter(|| wopr_operator::p2p::message::open(&sample).unwrap())
    });
    for (name, store) in stores {
        let ingress = runtime.block_on(TestIngress::start_on(
            &control_plane,
            store,
            IngressSettings {
                answer_wait: Duration::ZERO,
                ..IngressSettings::default()
            },
        ));
        group.bench_function(format!("receive_{name}"), |b| {
            b.iter_batched(
                || messages.next(),
                |message| {
                    let reply = runtime.block_on(ingress.ingress.receive(&message));
                    assert_eq!(reply.map(|reply| reply.status), Ok(202));
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_peers);
criterion_main!(benches);
