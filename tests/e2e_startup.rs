//! Session start-up against a bare pod, on a real cluster (`KUBECONFIG`),
//! in one run: ten Sessions one after another, each timed from its
//! creation to `Ready`, then ten bare pods with the same hardened agent
//! container (no sidecar) timed from creation to `Ready`. Prints both
//! medians and their ratio, and holds the ratio to the target: a Session is
//! Ready within 1.3 times a bare pod's start-up.
//!
//! Run: `KUBECONFIG=~/.kube/config cargo test --test e2e_startup -- --ignored --nocapture`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::watcher;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Api, Client};
use wopr_operator::api::{Session, SessionPhase, TrustLevel};
use wopr_operator::controller::session::rollout::pod_is_ready;

mod common;

use common::e2e::*;
use common::startup::{milestones, phases};

const RUNS: usize = 10;
/// The target: Session Ready p50 ≤ 1.3 × a bare pod's on the same cluster.
const TARGET_RATIO: f64 = 1.3;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn session_ready() -> impl Condition<Session> {
    |session: Option<&Session>| {
        session
            .and_then(|s| s.status.as_ref())
            .is_some_and(|status| status.phase == Some(SessionPhase::Ready))
    }
}

fn pod_ready() -> impl Condition<Pod> {
    |pod: Option<&Pod>| pod.is_some_and(pod_is_ready)
}

/// A bare pod: the Session pod's agent container alone, as hardened.
fn bare_pod(name: &str, namespace: &str) -> Pod {
    let mut pod = common::pod_of(&common::session("bare", TrustLevel::SemiTrusted));
    let spec = pod.spec.as_mut().unwrap();
    spec.init_containers = None;
    spec.service_account_name = None;
    spec.host_aliases = None;
    spec.containers[0].image = Some(controller_args(namespace, "127.0.0.1:0").default_agent_image);
    pod.metadata = kube::api::ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    };
    pod
}

/// The native-sidecar order held: the `a2a` container started no later
/// than the agent (the API reports start times to the second).
async fn assert_sidecar_started_first(client: &Client, namespace: &str, pod: &str) {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(pod)
        .await
        .unwrap();
    let status = pod.status.unwrap();
    let started = |statuses: Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        statuses.unwrap()[0]
            .state
            .as_ref()
            .and_then(|state| state.running.as_ref())
            .and_then(|running| running.started_at.clone())
            .expect("running")
    };
    let sidecar = started(status.init_container_statuses);
    let agent = started(status.container_statuses);
    assert!(sidecar.0 <= agent.0, "sidecar {sidecar:?}, agent {agent:?}");
}

/// When each milestone of `pod` (common::startup) was first seen, after
/// `started`, until `stop`.
async fn watch_milestones(
    pods: Api<Pod>,
    pod: String,
    started: Instant,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> BTreeMap<&'static str, Duration> {
    let mut seen = BTreeMap::new();
    let config = watcher::Config::default().fields(&format!("metadata.name={pod}"));
    let mut events = watcher(pods, config).boxed();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            Some(Ok(event)) = events.next() => {
                if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) = event {
                    for milestone in milestones(&pod) {
                        seen.entry(milestone).or_insert_with(|| started.elapsed());
                    }
                }
            }
            _ = &mut stop => return seen,
        }
    }
}

/// Times `RUNS` Sessions named `{prefix}-{run}`, one after another, and
/// prints where the time went.
async fn time_sessions(client: &Client, namespace: &str, prefix: &str) -> Vec<Duration> {
    let sessions: Api<Session> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut samples = Vec::new();
    let mut runs = Vec::new();
    for run in 0..RUNS {
        let name = format!("{prefix}-{run}");
        let mut session = common::session(&name, TrustLevel::SemiTrusted);
        session.metadata.namespace = Some(namespace.to_owned());
        session.metadata.uid = None;
        let started = Instant::now();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn(watch_milestones(
            pods.clone(),
            format!("wopr-{name}"),
            started,
            stopped,
        ));
        sessions
            .create(&PostParams::default(), &session)
            .await
            .unwrap();
        tokio::time::timeout(
            TIMEOUT,
            await_condition(sessions.clone(), &name, session_ready()),
        )
        .await
        .unwrap_or_else(|_| panic!("Session {name} not Ready in time"))
        .unwrap();
        let ready = started.elapsed();
        samples.push(ready);
        let _ = stop.send(());
        runs.push((watch.await.unwrap(), ready));
        assert_sidecar_started_first(client, namespace, &format!("wopr-{name}")).await;
        sessions
            .delete(&name, &DeleteParams::background())
            .await
            .unwrap();
    }
    println!("{prefix}: where a Session's start-up goes (medians)");
    for (phase, p50, count) in phases(&runs) {
        println!("  {phase}: {p50:?} ({count} runs)");
    }
    samples
}

async fn time_bare_pods(client: &Client, namespace: &str) -> Vec<Duration> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut samples = Vec::new();
    for run in 0..RUNS {
        let name = format!("bare-{run}");
        let started = Instant::now();
        pods.create(&PostParams::default(), &bare_pod(&name, namespace))
            .await
            .unwrap();
        tokio::time::timeout(TIMEOUT, await_condition(pods.clone(), &name, pod_ready()))
            .await
            .unwrap_or_else(|_| panic!("pod {name} not Ready in time"))
            .unwrap();
        samples.push(started.elapsed());
        pods.delete(&name, &DeleteParams::background())
            .await
            .unwrap();
    }
    samples
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG"]
async fn sessions_are_ready_within_1_3_times_a_bare_pod() {
    with_controller("127.0.0.1:0", |client, namespace| async move {
        // Warm up: the images are on the node before anything is timed.
        time_sessions(&client, &namespace, "warm-up").await;
        let sessions = median(time_sessions(&client, &namespace, "startup").await);
        let bare = median(time_bare_pods(&client, &namespace).await);
        let ratio = sessions.as_secs_f64() / bare.as_secs_f64();
        println!(
            "Session Ready p50 {sessions:?}, bare pod Ready p50 {bare:?}: ratio {ratio:.2} (target ≤ {TARGET_RATIO})"
        );
        assert!(
            ratio <= TARGET_RATIO,
            "Session Ready p50 {sessions:?} is {ratio:.2}× a bare pod's {bare:?}"
        );
    })
    .await;
}
