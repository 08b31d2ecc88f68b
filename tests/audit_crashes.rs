//! Nothing answered is lost: real `wopr-operator` processes (a controller
//! with its real store, a sidecar with its real spool), an agent calling
//! tools as fast as it can, and SIGKILLs at random moments, twice to the
//! sidecar and twice to the control plane. Afterwards every event the agent
//! was answered for is in the store exactly once, and the chain is intact.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::NAMESPACE;
use common::cluster::Cluster;
use common::process::{Process, free_port};
use common::sidecar::socket_channel;
use common::store::{every_event, postgres_url};
use tokio_util::sync::CancellationToken;
use wopr_operator::api::TrustLevel;
use wopr_operator::contract::AUDIT_ID_METADATA;
use wopr_operator::proto::v1alpha1::CallToolRequest;
use wopr_operator::proto::v1alpha1::tools_client::ToolsClient;
use wopr_operator::store::{Store, Verification};

/// How long the agent calls tools.
const LOAD: Duration = Duration::from_secs(22);
/// The rate it must reach, events a second.
const MIN_RATE: f64 = 1000.0;
/// Concurrent callers: the agent's parallel tool calls.
const CALLERS: usize = 8;
/// How long the sidecar may take to ship what is left once the load ends.
const SETTLE: Duration = Duration::from_secs(60);

/// The two runs take turns: each needs the machine's cores to itself to
/// reach [`MIN_RATE`] with a debug build.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The session under load.
const SESSION: &str = "agent";

/// Calls a tool until `stop`; returns the audit ids of every answer, allowed
/// or refused (a call cut off by a killed sidecar has no answer).
async fn caller(socket: PathBuf, stop: CancellationToken) -> Vec<String> {
    let mut tools = ToolsClient::new(socket_channel(socket));
    let mut answered = Vec::new();
    while !stop.is_cancelled() {
        let request = CallToolRequest {
            name: "security_check".into(),
            arguments_json: r#"{"capability": "inject"}"#.into(),
        };
        let metadata = match tools.call_tool(request).await {
            Ok(answer) => answer.metadata().clone(),
            Err(status) => status.metadata().clone(),
        };
        match metadata.get(AUDIT_ID_METADATA) {
            Some(id) => answered.push(id.to_str().unwrap().to_owned()),
            // No sidecar: try again shortly, as an agent would.
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    answered
}

/// Which process a kill hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Victim {
    Sidecar,
    ControlPlane,
}

/// When each kill happens and how long the process stays down: two kills
/// of each, in a random order, one in each fifth of the load at a random
/// moment of it, each down for up to a second (a kubelet's first restarts).
fn kill_schedule() -> Vec<(Duration, Victim, Duration)> {
    use Victim::{ControlPlane as C, Sidecar as S};
    let random = |what: (&str, usize)| RandomState::new().hash_one(what);
    let orders = [
        [S, S, C, C],
        [S, C, S, C],
        [S, C, C, S],
        [C, S, S, C],
        [C, S, C, S],
        [C, C, S, S],
    ];
    let victims = orders[random(("order", 0)) as usize % orders.len()];
    let slot = LOAD / 5;
    victims
        .iter()
        .enumerate()
        .map(|(n, victim)| {
            let fraction = (random(("at", n)) % 800) as f64 / 1000.0;
            let at = slot * (n as u32 + 1) + slot.mul_f64(fraction);
            let down = Duration::from_millis(random(("down", n)) % 1000);
            (at, *victim, down)
        })
        .collect()
}

/// The controller and the sidecar under test, restarted after each kill
/// with the same store, spool, socket and port, as a kubelet restarts a
/// container.
struct Processes<'a> {
    cluster: &'a Cluster,
    port: u16,
    controller: Process,
    sidecar: Process,
}

impl<'a> Processes<'a> {
    async fn start(cluster: &'a Cluster) -> Processes<'a> {
        let port = free_port();
        let controller = cluster.controller(port, &[]);
        let sidecar = Self::sidecar(cluster, port);
        sidecar.logged("sidecar serving", "mcp").await;
        Processes {
            cluster,
            port,
            controller,
            sidecar,
        }
    }

    fn sidecar(cluster: &Cluster, port: u16) -> Process {
        let no_limits = [
            "--session-calls-per-minute=100000000".to_owned(),
            "--tool-calls-per-minute=100000000".to_owned(),
        ];
        cluster.sidecar_with_flags(SESSION, port, "127.0.0.1:0", &no_limits)
    }

    async fn kill(&mut self, victim: Victim, down: Duration) {
        let process = match victim {
            Victim::Sidecar => &mut self.sidecar,
            Victim::ControlPlane => &mut self.controller,
        };
        process.signal(libc::SIGKILL);
        process
            .exited_within(Duration::from_secs(5))
            .await
            .expect("a killed process exits");
        tokio::time::sleep(down).await;
        match victim {
            Victim::Sidecar => self.sidecar = Self::sidecar(self.cluster, self.port),
            Victim::ControlPlane => self.controller = self.cluster.controller(self.port, &[]),
        }
    }
}

/// Every event of the session in the store, by id, with how often each id
/// is there.
async fn stored(store: &Store) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for event in every_event(store).await {
        if event.session == SESSION {
            *counts.entry(event.id).or_default() += 1;
        }
    }
    counts
}

fn last_lines(process: &Process) -> String {
    let stderr = process.stderr();
    stderr[stderr.len().saturating_sub(20)..].join("\n")
}

async fn nothing_answered_is_lost(cluster: Cluster) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let store = Store::open(&cluster.store).await.unwrap();
    let mut processes = Processes::start(&cluster).await;
    let schedule = kill_schedule();
    eprintln!("kills (at, victim, down): {schedule:?}");

    let stop = CancellationToken::new();
    let socket = cluster.dir.path().join(format!("{SESSION}-a2a.sock"));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| tokio::spawn(caller(socket.clone(), stop.clone())))
        .collect();
    let started = Instant::now();
    for (at, victim, down) in &schedule {
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        processes.kill(*victim, *down).await;
    }
    tokio::time::sleep(LOAD.saturating_sub(started.elapsed())).await;
    stop.cancel();
    let mut answered = Vec::new();
    for caller in callers {
        answered.extend(caller.await.unwrap());
    }
    let elapsed = started.elapsed();
    let rate = answered.len() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{} events answered in {elapsed:?}: {rate:.0} a second",
        answered.len()
    );
    assert!(
        rate >= MIN_RATE,
        "the load reached {rate:.0} events a second, under {MIN_RATE}"
    );
    let unique: BTreeSet<&String> = answered.iter().collect();
    assert_eq!(
        unique.len(),
        answered.len(),
        "each answer names its own event"
    );

    let deadline = Instant::now() + SETTLE;
    let missing = loop {
        let stored = stored(&store).await;
        let missing: Vec<&String> = answered
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .collect();
        let twice: Vec<_> = stored.iter().filter(|(_, count)| **count > 1).collect();
        assert!(twice.is_empty(), "stored more than once: {twice:?}");
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        missing,
        0,
        "of {} answered events, {missing} are not in the store after {SETTLE:?}; the sidecar's last words:\n{}",
        answered.len(),
        last_lines(&processes.sidecar)
    );
    match store.verify(NAMESPACE).await.unwrap() {
        Verification::Intact { events } => assert!(events >= answered.len() as u64),
        broken => panic!("the chain broke across the kills: {broken:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_answered_is_lost_through_kills_on_sqlite() {
    let cluster = Cluster::start(&[(SESSION, TrustLevel::Trusted)]).await;
    nothing_answered_is_lost(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_answered_is_lost_through_kills_on_postgresql() {
    let mut cluster = Cluster::start(&[(SESSION, TrustLevel::Trusted)]).await;
    cluster.store = postgres_url().await;
    nothing_answered_is_lost(cluster).await;
}
