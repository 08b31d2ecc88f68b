//! A kubelet for the fake API server: it watches the pods of a namespace
//! and moves each one a step for each change it sees, as a kubelet reports
//! them: a new pod Pending, then Running and Ready; a pod marked for
//! deletion (with [`FakeApi::delete_gracefully`]) not Ready and Succeeded,
//! then gone. Every step is a watch event for the controller.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::fake_api::FakeApi;

/// Runs the kubelet for the pods of `namespace` until the test ends.
pub async fn kubelet(api: FakeApi, namespace: &str) {
    let pods: Api<Pod> = Api::namespaced(api.client(), namespace);
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let (Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod))) = event else {
            continue;
        };
        let path = format!("/api/v1/namespaces/{namespace}/pods/{}", pod.name_any());
        // Only the pod as it is now moves: an older event's step was taken.
        let current = api.get(&path).is_some_and(|stored| {
            stored["metadata"]["resourceVersion"] == json!(pod.resource_version())
        });
        if !current {
            continue;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|status| status.phase.as_deref());
        match (pod.metadata.deletion_timestamp.is_some(), phase) {
            (true, Some("Succeeded")) => api.remove(&path),
            (true, _) => api.modify(&path, |pod| pod["status"] = status("Succeeded", false)),
            (false, None) => api.modify(&path, |pod| pod["status"] = status("Pending", false)),
            (false, Some("Pending")) => {
                api.modify(&path, |pod| pod["status"] = status("Running", true))
            }
            (false, _) => {}
        }
    }
}

fn status(phase: &str, ready: bool) -> Value {
    let ready = if ready { "True" } else { "False" };
    json!({"phase": phase, "conditions": [{"type": "Ready", "status": ready}]})
}
