//! Benchmarks of the sidecar: `security_check` over the unix socket
//! (latency and throughput with concurrent clients), MCP `tools/call` over
//! loopback HTTP, and grant revocation → first denied call through the
//! policy watch stream (p50/p99 printed).
//!
//! Run: `cargo bench --bench sidecar`. Targets: security_check ≤ 50 µs
//! median and ≥ 30,000 calls/s; MCP tools/call ≤ 150 µs median; revocation
//! ≤ 100 ms p99.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::Arc;
use tokio::runtime::Runtime;

use tonic::transport::Channel;
use wopr_operator::api::{Capability, TrustLevel};
use wopr_operator::audit::{AuditEvent, AuditSink};
use wopr_operator::proto::v1alpha1::CallToolRequest;
use wopr_operator::proto::v1alpha1::tools_client::ToolsClient;

#[path = "../tests/common/mod.rs"]
mod common;

use common::sidecar::{ControlPlane, Sidecar, SidecarOptions, calls_per_minute, token_for};
use common::{security_policy, session, session_grant};

const CONCURRENT_CLIENTS: usize = 16;
const CALLS_PER_CLIENT: usize = 250;

fn check_request() -> CallToolRequest {
    CallToolRequest {
        name: "security_check".into(),
        arguments_json: json!({"capability": "inject.tools"}).to_string(),
    }
}

/// Serializes each event as the stdout sink does, without the write: the
/// audit cost stays in the measurement, the terminal stays readable.
struct SerializingSink;

impl AuditSink for SerializingSink {
    fn record(&self, event: &AuditEvent) {
        std::hint::black_box(serde_json::to_vec(event).unwrap());
    }
}

async fn started(session_name: &str) -> (ControlPlane, Sidecar) {
    let mut control_plane = ControlPlane::start(&[session_name]).await;
    control_plane.put_session(session(session_name, TrustLevel::SemiTrusted));
    let sidecar = Sidecar::start_with(
        &control_plane.address.to_string(),
        session_name,
        &token_for(session_name),
        SidecarOptions {
            limits: calls_per_minute(u32::MAX, u32::MAX),
            sink: Arc::new(SerializingSink),
            audit: Arc::default(),
            max_policy_age: Duration::from_secs(30),
        },
    )
    .await;
    sidecar.wait_for_policy(|policy| policy.is_some()).await;
    (control_plane, sidecar)
}

/// A single-threaded runtime, as an agent's client may run.
fn single_threaded_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Installs the binary's logger (once): with none installed, every span of
/// h2 would be forwarded to the `log` crate, a cost the binary does not pay.
fn install_the_binarys_logger() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| wopr_operator::logging::init(wopr_operator::logging::LogFormat::Plain));
}

/// A control plane and a sidecar on their own thread and on the `sidecar`
/// binary's runtime (the agent is another process).
fn sidecar_on_its_own_thread(session_name: &'static str) -> Arc<Sidecar> {
    install_the_binarys_logger();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = wopr_operator::sidecar::run::runtime().unwrap();
        runtime.block_on(async {
            let (_control_plane, sidecar) = started(session_name).await;
            sender.send(Arc::new(sidecar)).unwrap();
            std::future::pending::<()>().await;
        });
    });
    receiver.recv().unwrap()
}

fn bench_unix_socket(c: &mut Criterion) {
    let sidecar = sidecar_on_its_own_thread("bench");
    let runtime = single_threaded_runtime();
    let mut client = runtime.block_on(sidecar.tools());
    let mut group = c.benchmark_group("security_check_unix_socket");
    // The engine alone (decide, rate limits, audit, the tool): what the
    // sidecar adds over the transport.
    let arguments = json!({"capability": "inject.tools"});
    group.bench_function("engine_only", |b| {
        b.iter(|| sidecar.engine.call("security_check", &arguments).unwrap())
    });
    // Sequential calls inside the runtime: the per-call latency an agent sees.
    group.bench_function("round_trip", |b| {
        b.iter_custom(|iterations| runtime.block_on(sequential_calls(&mut client, iterations)))
    });
    // The same call from a client that writes each request in one write
    // (HEADERS and DATA together), as grpc-go and grpcio do; tonic's client
    // writes HEADERS and DATA separately, waking the sidecar twice.
    let mut h2_client = runtime.block_on(single_write_client(&sidecar.socket));
    let request_body = grpc_frame(&check_request());
    group.bench_function("round_trip_single_write_client", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    call_once(&mut h2_client, request_body.clone()).await;
                }
                start.elapsed()
            })
        })
    });
    group.throughput(Throughput::Elements(
        (CONCURRENT_CLIENTS * CALLS_PER_CLIENT) as u64,
    ));
    group.sample_size(10);
    let clients: Vec<_> = (0..CONCURRENT_CLIENTS)
        .map(|_| runtime.block_on(sidecar.tools()))
        .collect();
    group.bench_function(format!("{CONCURRENT_CLIENTS}_concurrent_clients"), |b| {
        b.iter(|| {
            runtime.block_on(async {
                let tasks: Vec<_> = clients
                    .iter()
                    .cloned()
                    .map(|mut client| {
                        tokio::spawn(async move {
                            for _ in 0..CALLS_PER_CLIENT {
                                client.call_tool(check_request()).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
            })
        })
    });
    group.finish();
}

/// `iterations` `security_check` calls one after the other; their total time.
async fn sequential_calls(client: &mut ToolsClient<Channel>, iterations: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        client.call_tool(check_request()).await.unwrap();
    }
    start.elapsed()
}

/// An HTTP/2 client on the sidecar's socket, driven by hand.
async fn single_write_client(socket: &std::path::Path) -> h2::client::SendRequest<Bytes> {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A gRPC message frame: no compression, length, the encoded message.
fn grpc_frame(message: &CallToolRequest) -> Bytes {
    use prost::Message;
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    Bytes::from(frame)
}

/// One unary `Tools/CallTool`: HEADERS and DATA queued before the connection
/// writes, so they leave in one write; then the response and its trailers.
async fn call_once(client: &mut h2::client::SendRequest<Bytes>, body: Bytes) {
    let mut ready = client.clone().ready().await.unwrap();
    let request = http::Request::post("http://localhost/wopr.v1alpha1.Tools/CallTool")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = ready.send_request(request, false).unwrap();
    send.send_data(body, true).unwrap();
    let mut response = response.await.unwrap().into_body();
    while let Some(chunk) = response.data().await {
        let chunk = chunk.unwrap();
        response
            .flow_control()
            .release_capacity(chunk.len())
            .unwrap();
    }
    let trailers = response.trailers().await.unwrap().expect("gRPC trailers");
    assert_eq!(trailers["grpc-status"], "0");
    *client = ready;
}

fn bench_mcp(c: &mut Criterion) {
    let sidecar = sidecar_on_its_own_thread("bench-mcp");
    let runtime = single_threaded_runtime();
    let mut sender = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(sidecar.mcp).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    });
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "security_check", "arguments": {"capability": "inject.tools"}}})
    .to_string();
    c.bench_function("mcp_tools_call_loopback", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    sender.ready().await.unwrap();
                    let request = hyper::Request::post("/mcp")
                        .header("host", "127.0.0.1")
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .body(Full::new(Bytes::from(body.clone())))
                        .unwrap();
                    let response = sender.send_request(request).await.unwrap();
                    assert!(response.status().is_success());
                    response.into_body().collect().await.unwrap();
                }
                start.elapsed()
            })
        })
    });
}

/// Grant → allowed; revoke → time until the first denied call. Prints p50/p99.
fn measure_revocation(c: &mut Criterion) {
    install_the_binarys_logger();
    let runtime = Runtime::new().unwrap();
    let samples = runtime.block_on(async {
        let mut control_plane = ControlPlane::start(&["revoked"]).await;
        control_plane.put_policy(security_policy(
            json!({"trustLevels": {"semi-trusted": {"capabilities": ["inject"]}}}),
        ));
        control_plane.put_session(session("revoked", TrustLevel::SemiTrusted));
        let sidecar = Sidecar::start(
            &control_plane.address.to_string(),
            "revoked",
            &token_for("revoked"),
        )
        .await;
        sidecar.wait_for_policy(|policy| policy.is_some()).await;
        let mut client = sidecar.tools().await;
        let config_get = || CallToolRequest {
            name: "config_get".into(),
            arguments_json: "{}".into(),
        };
        let mut samples = Vec::new();
        for i in 0..200 {
            let grant = session_grant(&format!("g{i}"), "revoked", &[Capability::InjectTools]);
            control_plane.put_grant(grant.clone());
            while client.call_tool(config_get()).await.is_err() {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let revoked_at = Instant::now();
            control_plane.delete_grant(grant);
            while client.call_tool(config_get()).await.is_ok() {}
            samples.push(revoked_at.elapsed());
        }
        samples
    });
    let mut sorted = samples.clone();
    sorted.sort();
    let percentile = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
    println!(
        "grant revocation -> first denied call over {} samples: p50 {:?}, p99 {:?}, max {:?} (target p99 <= 100 ms)",
        sorted.len(),
        percentile(0.50),
        percentile(0.99),
        sorted[sorted.len() - 1]
    );
    c.bench_function("revocation_to_first_denied_call_mean", |b| {
        b.iter_custom(|iterations| samples.iter().cycle().take(iterations as usize).sum())
    });
}

/// The floor under any request/response over a unix socket between two
/// threads on this machine: one byte there and back, blocking I/O.
fn bench_socket_floor(c: &mut Criterion) {
    use std::io::{Read, Write};
    let (mut near, mut far) = std::os::unix::net::UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while far.read_exact(&mut byte).is_ok() && far.write_all(&byte).is_ok() {}
    });
    let mut byte = [0u8; 1];
    c.bench_function("unix_socket_ping_pong_floor", |b| {
        b.iter(|| {
            near.write_all(&[1]).unwrap();
            near.read_exact(&mut byte).unwrap();
        })
    });
}

/// The same ping-pong between two single-threaded tokio runtimes (epoll,
/// non-blocking sockets): the floor under any tokio server and client.
fn bench_tokio_socket_floor(c: &mut Criterion) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (near, far) = std::os::unix::net::UnixStream::pair().unwrap();
    near.set_nonblocking(true).unwrap();
    far.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = single_threaded_runtime();
        runtime.block_on(async {
            let mut far = tokio::net::UnixStream::from_std(far).unwrap();
            let mut byte = [0u8; 1];
            while far.read_exact(&mut byte).await.is_ok() && far.write_all(&byte).await.is_ok() {}
        });
    });
    let runtime = single_threaded_runtime();
    let mut near = runtime.block_on(async { tokio::net::UnixStream::from_std(near).unwrap() });
    let mut byte = [0u8; 1];
    c.bench_function("unix_socket_ping_pong_floor_tokio", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    near.write_all(&[1]).await.unwrap();
                    near.read_exact(&mut byte).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
}

criterion_group!(
    benches,
    bench_socket_floor,
    bench_tokio_socket_floor,
    bench_unix_socket,
    bench_mcp,
    measure_revocation
);
criterion_main!(benches);
