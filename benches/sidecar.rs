//! Benchmarks of the sidecar. The 2 cores here are shared and noisy, so the
//! targets are ratios to a floor measured in the same run, and CPU time
//! rather than wall time where CPU is what a 100m limit rations.
//!
//! Run: `cargo bench --bench sidecar`. It prints one report, measured in
//! interleaved rounds (floor, gRPC, MCP, floor, ...) so that every ratio
//! compares numbers taken seconds apart:
//! - the floor: a 1-byte ping-pong between two threads over a unix socket,
//!   and the CPU time its echoing thread spends per ping-pong (a wake, a
//!   read, a write: the CPU floor of any server that sleeps between calls);
//! - `security_check` round trip over the unix socket (tonic client) and its
//!   ratio to the floor. Target: ≤ 2.0×;
//! - MCP `tools/call` over loopback HTTP/1.1 and its ratio to the floor;
//! - the sidecar's CPU time (user + sys of its runtime thread and its audit
//!   writer) per call. Target: ≤ 25 µs per `security_check`, that is
//!   ≥ 40,000 calls per CPU-second.
//!
//! The sidecar records audit events as the binary does: to its spool, then
//! to stdout (here /dev/null). Then criterion rows: the tool engine alone,
//! throughput with 16 concurrent clients, what recording one event costs
//! with and without the spool (the spool's added latency per call; target:
//! ≤ 10% of the `security_check` round trip); and grant revocation → first
//! denied call (p50/p99).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::runtime::Runtime;
use wopr_operator::api::{Capability, TrustLevel};
use wopr_operator::audit::{AUDIT_QUEUE_CAPACITY, AuditSink, QueuedLineSink};
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1::CallToolRequest;
use wopr_operator::sidecar::spool::{Spool, SpooledSink};

#[path = "../tests/common/mod.rs"]
mod common;

use common::sidecar::{ControlPlane, Sidecar, SidecarOptions, calls_per_minute, token_for};
use common::{security_policy, session, session_grant};

/// Interleaved rounds in the report, and calls per round of each kind.
const ROUNDS: usize = 15;
const CALLS_PER_ROUND: u32 = 2_000;
/// The report's targets.
const ROUND_TRIP_OVER_FLOOR: f64 = 2.0;
const CPU_PER_CHECK: Duration = Duration::from_micros(25);

const CONCURRENT_CLIENTS: usize = 16;
const CALLS_PER_CLIENT: usize = 250;

/// Where the report runs the agent (this thread), and the sidecar and the
/// floor's far end: on different CPUs, as two containers usually are (and
/// then on one). Left to the scheduler, the pair sometimes shares a CPU and
/// sometimes not, and the floor moves between ~9 and ~45 µs from run to run.
const AGENT_CPU: usize = 0;
const SIDECAR_CPU: usize = 1;

/// The sidecar's threads, by name: its runtime and its audit writer.
const SIDECAR_THREAD: &str = "sidecar";
const AUDIT_THREAD: &str = "audit-writer";

fn check_request() -> CallToolRequest {
    CallToolRequest {
        name: "security_check".into(),
        arguments_json: json!({"capability": "inject.tools"}).to_string(),
    }
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

/// The sidecar under test, set up once for the whole run: a control plane
/// on a thread of its own; the sidecar on another (named [`SIDECAR_THREAD`]),
/// on the `sidecar` binary's runtime, auditing as the binary does (a queue
/// and a writer thread) into /dev/null. The agent is a third thread.
fn sidecar_under_test() -> Arc<Sidecar> {
    static SIDECAR: std::sync::OnceLock<Arc<Sidecar>> = std::sync::OnceLock::new();
    SIDECAR
        .get_or_init(|| {
            install_the_binarys_logger();
            let control_plane = control_plane_on_its_own_thread("bench");
            let (sender, receiver) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(SIDECAR_THREAD.into())
                .spawn(move || {
                    let runtime = wopr_operator::sidecar::run::runtime().unwrap();
                    runtime.block_on(async {
                        // As in the binary: each event to the spool, then to
                        // stdout (here /dev/null) through the queue.
                        let sink = Arc::new(spooled_sink(&spool_dir("sidecar-spool")));
                        let options = SidecarOptions {
                            limits: calls_per_minute(u32::MAX, u32::MAX),
                            sink,
                            audit: Arc::default(),
                            max_policy_age: Duration::from_secs(30),
                            prompt: None,
                            egress: None,
                        };
                        let sidecar = Sidecar::start_with(
                            &control_plane,
                            "bench",
                            &token_for("bench"),
                            options,
                        )
                        .await;
                        sidecar.wait_for_policy(|policy| policy.is_some()).await;
                        sender.send(Arc::new(sidecar)).unwrap();
                        std::future::pending::<()>().await;
                    });
                })
                .unwrap();
            receiver.recv().unwrap()
        })
        .clone()
}

/// A fresh directory for a spool, named `name`.
fn spool_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wopr-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The binary's audit sink: the spool in `dir`, then the stdout queue (to
/// /dev/null).
fn spooled_sink(dir: &std::path::Path) -> SpooledSink {
    SpooledSink::new(Arc::new(Spool::open(dir).unwrap()), null_queue())
}

fn null_queue() -> QueuedLineSink {
    QueuedLineSink::new(
        std::fs::File::create("/dev/null").unwrap(),
        AUDIT_QUEUE_CAPACITY,
    )
}

/// What recording one event costs the calling thread: the stdout queue
/// alone, and the spool's append before it (the spool's added latency per
/// tool call; nothing ships it here, so the spool grows as it would while
/// the control plane is away).
fn bench_audit_record(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit_record");
    let event = common::store::event("team-a", "bench", Outcome::Allowed, 0);
    let queue = null_queue();
    group.bench_function("queue_only", |b| b.iter(|| queue.record(&event)));
    let dir = spool_dir("record-spool");
    let spooled = spooled_sink(&dir);
    group.bench_function("spool_and_queue", |b| b.iter(|| spooled.record(&event)));
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

/// A control plane serving a semi-trusted `session`, on a thread of its
/// own; its address.
fn control_plane_on_its_own_thread(session_name: &'static str) -> String {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        single_threaded_runtime().block_on(async {
            let mut control_plane = ControlPlane::start(&[session_name]).await;
            control_plane.put_session(session(session_name, TrustLevel::SemiTrusted));
            sender.send(control_plane.address.to_string()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    receiver.recv().unwrap()
}

/// Pins the calling thread to `cpu`, or lets it run anywhere (`None`).
fn pin_this_thread_to(cpu: Option<usize>) {
    pin(0, cpu);
}

/// Pins this process's threads named `name` to `cpu`.
fn pin_threads_named(name: &str, cpu: usize) {
    for tid in threads_named(name) {
        pin(tid, Some(cpu));
    }
}

/// Pins thread `tid` (0: the calling thread) to `cpu`, or lets it run
/// anywhere (`None`).
fn pin(tid: libc::pid_t, cpu: Option<usize>) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only
    // write it and set a thread's affinity.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match cpu {
            Some(cpu) => libc::CPU_SET(cpu, &mut set),
            // Every CPU there may be: the kernel keeps those that exist.
            None => (0..libc::CPU_SETSIZE as usize).for_each(|cpu| libc::CPU_SET(cpu, &mut set)),
        }
        libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) == 0
    };
    assert!(
        pinned,
        "cannot run thread {tid} on CPU {cpu:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// The ids of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<libc::pid_t> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|task| task.unwrap())
        .filter(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            comm.trim_end() == name
        })
        .map(|task| task.file_name().to_str().unwrap().parse().unwrap())
        .collect()
}

/// CPU time (user + sys) so far of this process's threads named `name`,
/// read from each thread's CPU clock. The clock id of thread `tid` is the
/// one glibc's `pthread_getcpuclockid` builds (the kernel's
/// `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`); it is built here from the
/// id in /proc because the audit writer's `pthread_t` is not at hand.
fn cpu_time_of(name: &str) -> Duration {
    threads_named(name).into_iter().map(thread_cpu_time).sum()
}

/// CPU time of thread `tid` so far (zero once it has ended).
fn thread_cpu_time(tid: libc::pid_t) -> Duration {
    let clock = ((!tid) << 3) | 6;
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid timespec to write to; a thread that ended
    // meanwhile makes the call fail, and it then counts nothing.
    if unsafe { libc::clock_gettime(clock, &mut time) } == 0 {
        Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
    } else {
        Duration::ZERO
    }
}

/// The sidecar's CPU time so far: its runtime thread and its audit writer.
fn sidecar_cpu_time() -> Duration {
    cpu_time_of(SIDECAR_THREAD) + cpu_time_of(AUDIT_THREAD)
}

/// The 1-byte ping-pong over a unix socket between this thread and another,
/// blocking I/O: what any request/response between two processes costs here.
struct Floor {
    near: std::os::unix::net::UnixStream,
    /// The far end's thread: its CPU time per ping-pong is what echoing one
    /// byte costs a thread that sleeps between requests, as the sidecar does.
    far: libc::pid_t,
}

impl Floor {
    /// Its far end on `cpu`.
    fn start(cpu: usize) -> Floor {
        use std::io::{Read, Write};
        let (near, mut far) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tid_sender, tid) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            pin_this_thread_to(Some(cpu));
            // SAFETY: gettid has no preconditions.
            tid_sender.send(unsafe { libc::gettid() }).unwrap();
            let mut byte = [0u8; 1];
            while far.read_exact(&mut byte).is_ok() && far.write_all(&byte).is_ok() {}
        });
        Floor {
            near,
            far: tid.recv().unwrap(),
        }
    }

    /// The mean time of one ping-pong over `calls`, and the far end's CPU
    /// time per ping-pong.
    fn measure(&mut self, calls: u32) -> (Duration, Duration) {
        use std::io::{Read, Write};
        let mut byte = [0u8; 1];
        let cpu = thread_cpu_time(self.far);
        let start = Instant::now();
        for _ in 0..calls {
            self.near.write_all(&[1]).unwrap();
            self.near.read_exact(&mut byte).unwrap();
        }
        let wall = start.elapsed() / calls;
        (wall, (thread_cpu_time(self.far) - cpu) / calls)
    }
}

/// An agent's MCP client: HTTP/1.1 keep-alive on loopback, requests of the
/// single-exchange revision (2026-07-28: no session, every request alone).
struct McpClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    body: Bytes,
    headers: Vec<(&'static str, String)>,
}

impl McpClient {
    async fn connect(address: std::net::SocketAddr) -> McpClient {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let call = common::mcp::request(
            "tools/call",
            json!({"name": "security_check", "arguments": {"capability": "inject.tools"}}),
        );
        let (body, headers) = common::mcp::stamp(call, &[]);
        McpClient {
            sender,
            body: Bytes::from(body),
            headers,
        }
    }

    async fn call(&mut self) {
        self.sender.ready().await.unwrap();
        let mut request = hyper::Request::post("/mcp")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(self.body.clone())).unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        debug_assert!(!body.windows(7).any(|w| w == b"\"error\""));
    }
}

/// Wall time and sidecar CPU time per call of `calls`, which makes that many.
async fn per_call(count: u32, calls: impl Future<Output = ()>) -> (Duration, Duration) {
    let cpu = sidecar_cpu_time();
    let start = Instant::now();
    calls.await;
    let wall = start.elapsed() / count;
    (wall, (sidecar_cpu_time() - cpu) / count)
}

/// What one round measured.
struct Round {
    floor: Duration,
    floor_cpu: Duration,
    grpc: Duration,
    grpc_cpu: Duration,
    mcp: Duration,
    mcp_cpu: Duration,
}

fn median_of<T: PartialOrd + Copy>(values: impl Iterator<Item = T>) -> T {
    let mut values: Vec<T> = values.collect();
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// The report, for the sidecar on another CPU than the agent (the usual
/// case, which the targets are for) and on the same one.
fn report_ratios_and_cpu(_: &mut Criterion) {
    let sidecar = sidecar_under_test();
    pin_this_thread_to(Some(AGENT_CPU));
    let runtime = single_threaded_runtime();
    let (mut grpc, mut mcp) =
        runtime.block_on(async { (sidecar.tools().await, McpClient::connect(sidecar.mcp).await) });
    for (placement, sidecar_cpu) in [
        ("on another CPU than the agent", SIDECAR_CPU),
        ("on the agent's CPU", AGENT_CPU),
    ] {
        pin_threads_named(SIDECAR_THREAD, sidecar_cpu);
        pin_threads_named(AUDIT_THREAD, sidecar_cpu);
        let mut floor = Floor::start(sidecar_cpu);
        // Warm up: connections, allocator, caches.
        runtime.block_on(async {
            for _ in 0..200 {
                grpc.call_tool(check_request()).await.unwrap();
                mcp.call().await;
            }
        });
        let rounds: Vec<Round> = (0..ROUNDS)
            .map(|_| {
                let (floor, floor_cpu) = floor.measure(CALLS_PER_ROUND);
                let (grpc, grpc_cpu) = runtime.block_on(per_call(CALLS_PER_ROUND, async {
                    for _ in 0..CALLS_PER_ROUND {
                        grpc.call_tool(check_request()).await.unwrap();
                    }
                }));
                let (mcp, mcp_cpu) = runtime.block_on(per_call(CALLS_PER_ROUND, async {
                    for _ in 0..CALLS_PER_ROUND {
                        mcp.call().await;
                    }
                }));
                Round {
                    floor,
                    floor_cpu,
                    grpc,
                    grpc_cpu,
                    mcp,
                    mcp_cpu,
                }
            })
            .collect();
        print_report(placement, &rounds, sidecar_cpu != AGENT_CPU);
    }
    pin_this_thread_to(None);
}

/// Ratios of the round trips to the floor when busy polling was added
/// (2026-11-24, `docs/performance.md`, agent and sidecar on different
/// CPUs): no row may be slower.
const BEFORE_BUSY_POLLING_GRPC: f64 = 2.59;
const BEFORE_BUSY_POLLING_MCP: f64 = 2.29;

/// Prints the medians of `rounds`, and their verdicts; `as_before` compares
/// with the ratios of 2026-11-24, measured with the same placement.
fn print_report(placement: &str, rounds: &[Round], as_before: bool) {
    let median = |f: &dyn Fn(&Round) -> Duration| median_of(rounds.iter().map(f));
    let ratio = |f: &dyn Fn(&Round) -> Duration| {
        median_of(
            rounds
                .iter()
                .map(|r| f(r).as_secs_f64() / r.floor.as_secs_f64()),
        )
    };
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let (grpc_ratio, mcp_ratio) = (ratio(&|r| r.grpc), ratio(&|r| r.mcp));
    let (grpc_cpu, mcp_cpu) = (median(&|r| r.grpc_cpu), median(&|r| r.mcp_cpu));
    let echo_cpu = median(&|r| r.floor_cpu);
    println!(
        "\nsidecar {placement}: medians of {ROUNDS} interleaved rounds of {CALLS_PER_ROUND} calls"
    );
    println!(
        "  unix socket ping-pong floor            {:>9.1?}",
        median(&|r| r.floor)
    );
    println!(
        "  echo thread CPU per ping-pong          {echo_cpu:>9.1?}  (the CPU floor: a wake, a read, a write)"
    );
    let before = |ratio: f64, then: f64| {
        if as_before {
            format!("; before busy polling {then}x: {}", verdict(ratio <= then))
        } else {
            String::new()
        }
    };
    println!(
        "  security_check round trip (tonic)      {:>9.1?}  {grpc_ratio:.2}x floor  target <= {ROUND_TRIP_OVER_FLOOR}x: {}{}",
        median(&|r| r.grpc),
        verdict(grpc_ratio <= ROUND_TRIP_OVER_FLOOR),
        before(grpc_ratio, BEFORE_BUSY_POLLING_GRPC),
    );
    println!(
        "  MCP tools/call (HTTP/1.1, loopback)    {:>9.1?}  {mcp_ratio:.2}x floor{}",
        median(&|r| r.mcp),
        before(mcp_ratio, BEFORE_BUSY_POLLING_MCP),
    );
    println!(
        "  sidecar CPU per security_check         {grpc_cpu:>9.1?}  {:.1}x echo, {:.0} calls per CPU-second  target <= {CPU_PER_CHECK:?}: {}",
        grpc_cpu.as_secs_f64() / echo_cpu.as_secs_f64(),
        1.0 / grpc_cpu.as_secs_f64(),
        verdict(grpc_cpu <= CPU_PER_CHECK),
    );
    println!(
        "  sidecar CPU per MCP tools/call         {mcp_cpu:>9.1?}  {:.1}x echo, {:.0} calls per CPU-second",
        mcp_cpu.as_secs_f64() / echo_cpu.as_secs_f64(),
        1.0 / mcp_cpu.as_secs_f64()
    );
}

fn bench_engine_and_throughput(c: &mut Criterion) {
    let sidecar = sidecar_under_test();
    let runtime = single_threaded_runtime();
    let mut group = c.benchmark_group("security_check");
    // The engine alone (decide, rate limits, audit, the tool): what the
    // sidecar adds over the transport.
    let arguments = json!({"capability": "inject.tools"});
    group.bench_function("engine_only", |b| {
        // Polled once on this thread: the engine does not wait on I/O
        // for this tool.
        b.iter(|| {
            futures::executor::block_on(sidecar.engine.call("security_check", &arguments))
                .result
                .unwrap()
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

/// Grant → allowed; revoke → time until the first denied call. Prints p50/p99.
fn measure_revocation(_: &mut Criterion) {
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
    // Ends the sidecar and the control plane.
    drop(runtime);
    let mut sorted = samples;
    sorted.sort();
    let percentile = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
    println!(
        "grant revocation -> first denied call over {} samples: p50 {:?}, p99 {:?}, max {:?} (target p99 <= 100 ms)",
        sorted.len(),
        percentile(0.50),
        percentile(0.99),
        sorted[sorted.len() - 1]
    );
}

criterion_group!(
    benches,
    report_ratios_and_cpu,
    bench_engine_and_throughput,
    bench_audit_record,
    measure_revocation
);
criterion_main!(benches);
