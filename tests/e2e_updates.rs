//! Operator-level changes on a real cluster (`KUBECONFIG`): a controller
//! restarted with other settings leaves running session pods alone under
//! `OnRestart` (the Sessions say `UpToDate=False`) and a deleted pod comes
//! back current; under `Rolling` with `maxUnavailable: 1` the pods are
//! replaced one at a time, never two Sessions without a ready pod at once.
//!
//! Run: `KUBECONFIG=~/.kube/config cargo test --test e2e_updates -- --ignored --nocapture`

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use wopr_operator::api::{Session, TrustLevel, UpdateType};
use wopr_operator::controller::session::rollout::pod_is_ready;
use wopr_operator::operator::args::ControllerArgs;

mod common;

use common::e2e::*;

const SESSIONS: [&str; 3] = ["update-a", "update-b", "update-c"];

/// Controller flags; `generation` varies an operator-level setting (an
/// extra isolation probe) so that each restart changes every session pod.
fn args(namespace: &str, policy: UpdateType, generation: u8) -> ControllerArgs {
    ControllerArgs {
        update_policy: policy,
        update_max_unavailable: 1,
        isolation_probe: vec![format!("e2e=192.0.2.{generation}:80")],
        ..controller_args(namespace, "127.0.0.1:0")
    }
}

/// The condition `type_` of a Session, as (status, reason).
async fn condition(sessions: &Api<Session>, name: &str, type_: &str) -> Option<(String, String)> {
    let session = sessions.get(name).await.ok()?;
    session
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason))
}

/// Waits until every Session is Ready and up to date on a pod other than
/// the one it had in `before`; their pods' uids. (A Session's status from
/// before a restart may still say up to date: only its new pod says the
/// new controller's settings reached it.)
async fn all_current(
    client: &Client,
    namespace: &str,
    before: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let sessions: Api<Session> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut uids = BTreeMap::new();
    for name in SESSIONS {
        let uid = eventually(&format!("{name} ready and up to date"), || async {
            let ready = condition(&sessions, name, "Ready").await?;
            let current = condition(&sessions, name, "UpToDate").await?;
            let pod = pods.get_opt(&format!("wopr-{name}")).await.ok()??;
            let uid = pod.uid()?;
            (ready.0 == "True" && current.0 == "True" && before.get(name) != Some(&uid))
                .then_some(uid)
        })
        .await;
        uids.insert(name.to_owned(), uid);
    }
    uids
}

async fn uids(pods: &Api<Pod>) -> BTreeMap<String, String> {
    let mut uids = BTreeMap::new();
    for name in SESSIONS {
        if let Some(pod) = pods.get_opt(&format!("wopr-{name}")).await.unwrap() {
            uids.insert(name.to_owned(), pod.uid().unwrap());
        }
    }
    uids
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && pod_is_ready(pod)
}

/// Watches the Session pods until `stop`: the most Sessions that were
/// without a ready pod at the same time.
async fn most_sessions_without_a_ready_pod(
    pods: Api<Pod>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> usize {
    let session_pods: BTreeSet<String> = SESSIONS.iter().map(|s| format!("wopr-{s}")).collect();
    let mut ready = BTreeSet::new();
    let mut listed = false;
    let mut most = 0;
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            Some(Ok(event)) = events.next() => {
                match event {
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                        if is_ready(&pod) { ready.insert(pod.name_any()) } else { ready.remove(&pod.name_any()) };
                    }
                    watcher::Event::Delete(pod) => { ready.remove(&pod.name_any()); }
                    watcher::Event::InitDone => listed = true,
                    watcher::Event::Init => {}
                }
                if listed {
                    most = most.max(session_pods.difference(&ready).count());
                }
            }
            _ = &mut stop => return most,
        }
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG"]
async fn operator_changes_follow_the_update_policy() {
    with_namespace(|client, namespace| async move {
        let sessions: Api<Session> = Api::namespaced(client.clone(), &namespace);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let controller = Controller::start(args(&namespace, UpdateType::Rolling, 1));
        for name in SESSIONS {
            let mut session = common::session(name, TrustLevel::SemiTrusted);
            session.metadata.namespace = Some(namespace.clone());
            session.metadata.uid = None;
            sessions
                .create(&PostParams::default(), &session)
                .await
                .unwrap();
        }
        let first = all_current(&client, &namespace, &BTreeMap::new()).await;
        controller.stop().await;

        // OnRestart: nothing is replaced; every Session says an update waits.
        let controller = Controller::start(args(&namespace, UpdateType::OnRestart, 2));
        for name in SESSIONS {
            eventually(&format!("{name} pending"), || async {
                let (status, reason) = condition(&sessions, name, "UpToDate").await?;
                (status == "False" && reason == "OnRestart").then_some(())
            })
            .await;
        }
        assert_eq!(uids(&pods).await, first, "no running pod was replaced");
        // A pod that goes away comes back with the new settings.
        pods.delete("wopr-update-a", &DeleteParams::default())
            .await
            .unwrap();
        eventually("update-a current again", || async {
            let (status, _) = condition(&sessions, "update-a", "UpToDate").await?;
            let pod = pods.get_opt("wopr-update-a").await.ok()??;
            (status == "True" && pod.uid() != first.get("update-a").cloned() && is_ready(&pod))
                .then_some(())
        })
        .await;
        controller.stop().await;

        // Rolling, one at a time: watch the pods while it rolls.
        let (stop_watching, stopped) = tokio::sync::oneshot::channel::<()>();
        let watch = tokio::spawn(most_sessions_without_a_ready_pod(pods.clone(), stopped));
        let before = uids(&pods).await;
        let controller = Controller::start(args(&namespace, UpdateType::Rolling, 3));
        let after = all_current(&client, &namespace, &before).await;
        stop_watching.send(()).unwrap();
        let most = watch.await.unwrap();
        for name in SESSIONS {
            assert_ne!(before.get(name), after.get(name), "{name} was replaced");
        }
        assert_eq!(
            most, 1,
            "maxUnavailable 1: one Session at a time without a ready pod"
        );
        controller.stop().await;
    })
    .await;
}
