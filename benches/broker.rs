//! Benchmarks of the broker, over the in-process stack: a control plane
//! with its SQLite store, a real sidecar, tonic clients.
//!
//! Run: `cargo bench --bench broker`. It prints:
//! - `sessions_send` from one agent to another's inbox: the agent's tool
//!   call on its sidecar's socket, through the control plane's checks, the
//!   inbox append and the audit event, answered. p50 and p99 over 2,000
//!   sends. Targets: p50 ≤ 2 ms, p99 ≤ 10 ms.
//! - sustained deliveries a second with 100 sessions, each sending to the
//!   next as fast as it is answered while every recipient reads and
//!   acknowledges its inbox.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::sidecar::{ControlPlane, Sidecar, as_sidecar, token_for};
use common::{session, session_grant};
use serde_json::json;
use wopr_operator::api::{Capability, TrustLevel};
use wopr_operator::proto::v1alpha1::broker_client::BrokerClient;
use wopr_operator::proto::v1alpha1::{AckRequest, CallToolRequest, InboxRequest, SendRequest};

const NAMESPACE: &str = common::NAMESPACE;
const SENDS: usize = 2_000;
const SESSIONS: usize = 100;
const SUSTAINED: Duration = Duration::from_secs(10);

/// Reads `session`'s inbox and acknowledges every message, in batches,
/// until its control plane goes (so the sender never meets a full inbox);
/// counts them.
async fn acknowledge_forever(address: String, session: String, counted: Arc<AtomicU64>) {
    let mut client = BrokerClient::new(common::tls::channel(&address).await);
    let request = InboxRequest {
        namespace: NAMESPACE.into(),
        session: session.clone(),
        after: 0,
    };
    let mut stream = client
        .inbox(as_sidecar(&session, request))
        .await
        .unwrap()
        .into_inner();
    let mut batch = Vec::new();
    while let Ok(Some(delivery)) = stream.message().await {
        let message: serde_json::Value = serde_json::from_str(&delivery.message_json).unwrap();
        batch.push(message["id"].as_str().unwrap().to_owned());
        counted.fetch_add(1, Ordering::Relaxed);
        if batch.len() >= 50 {
            let ack = AckRequest {
                namespace: NAMESPACE.into(),
                session: session.clone(),
                message_ids: std::mem::take(&mut batch),
            };
            if client.ack(as_sidecar(&session, ack)).await.is_err() {
                return; // its control plane is gone: the run is over
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn sessions_send_latency() {
    let mut control_plane = ControlPlane::start(&["alice", "bob"]).await;
    for name in ["alice", "bob"] {
        control_plane.put_session(session(name, TrustLevel::Trusted));
    }
    control_plane.put_grant(session_grant("send", "alice", &[Capability::CrossInject]));
    let address = control_plane.address.to_string();
    tokio::spawn(acknowledge_forever(address, "bob".into(), Arc::default()));
    let alice = Sidecar::start(
        &control_plane.address.to_string(),
        "alice",
        &token_for("alice"),
    )
    .await;
    alice.wait_for_policy(|served| served.is_some()).await;
    let mut tools = alice.tools().await;
    let call = || CallToolRequest {
        name: "sessions_send".into(),
        arguments_json: json!({"target": "bob", "message": {"text": "status?"}}).to_string(),
    };
    for _ in 0..100 {
        tools.call_tool(call()).await.unwrap();
    }
    let mut took = Vec::with_capacity(SENDS);
    for _ in 0..SENDS {
        let started = Instant::now();
        tools.call_tool(call()).await.unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    println!(
        "sessions_send over the in-process stack ({SENDS} sends): p50 {:?} (target ≤ 2 ms), p99 {:?} (target ≤ 10 ms)",
        percentile(&took, 0.5),
        percentile(&took, 0.99)
    );
}

async fn sustained_deliveries() {
    let names: Vec<String> = (0..SESSIONS).map(|n| format!("s{n}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut control_plane = ControlPlane::start(&refs).await;
    for name in &names {
        control_plane.put_session(session(name, TrustLevel::Owner));
    }
    let address = control_plane.address.to_string();
    let delivered = Arc::new(AtomicU64::new(0));
    for name in &names {
        tokio::spawn(acknowledge_forever(
            address.clone(),
            name.clone(),
            delivered.clone(),
        ));
    }
    let channel = common::tls::channel(&address).await;
    let started = Instant::now();
    let senders: Vec<_> = (0..SESSIONS)
        .map(|n| {
            let mut client = BrokerClient::new(channel.clone());
            let (from, to) = (names[n].clone(), names[(n + 1) % SESSIONS].clone());
            tokio::spawn(async move {
                while started.elapsed() < SUSTAINED {
                    let send = SendRequest {
                        namespace: NAMESPACE.into(),
                        session: from.clone(),
                        target: to.clone(),
                        payload_json: r#"{"text": "status?"}"#.into(),
                        message_id: String::new(),
                    };
                    client.send(as_sidecar(&from, send)).await.unwrap();
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "sustained: {} messages delivered and acknowledged in {elapsed:?} with {SESSIONS} sessions: {:.0} a second",
        delivered.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(sessions_send_latency());
    runtime.block_on(sustained_deliveries());
}
