//! The controller's RoleBindings of the egress service to a namespace's
//! provider keys, against the fake API: applied where the default
//! SecurityPolicy configures providers, owned by it, and deleted when it
//! configures none.

mod common;

use std::time::Duration;

use kube::core::DeserializeGuard;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use wopr_operator::api::SecurityPolicy;
use wopr_operator::cluster::lease::Leadership;
use wopr_operator::controller::provider_keys::{EgressAccount, SYNC_PERIOD, bind_forever};

const BINDING: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings/wopr-egress-provider-keys";

fn policy(name: &str, providers: Value) -> SecurityPolicy {
    serde_json::from_value(json!({
        "apiVersion": "wopr.dev/v1alpha1",
        "kind": "SecurityPolicy",
        "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}")},
        "spec": {"providers": providers}
    }))
    .unwrap()
}

fn openai() -> Value {
    json!([{"name": "openai", "type": "openai", "secretRef": {"name": "openai-key", "key": "apiKey"}}])
}

#[tokio::test(start_paused = true)]
async fn the_binding_follows_the_default_policys_providers() {
    let (client, api) = common::fake_api::FakeApi::start();
    let (policies, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(policy(
        "default",
        openai(),
    )))));
    // Another policy of the namespace is not the one providers are read from.
    writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok({
        let mut other = policy("other", openai());
        other.metadata.namespace = Some("team-b".into());
        other
    }))));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let binding = tokio::spawn(bind_forever(
        client,
        policies,
        EgressAccount {
            name: "wopr-operator-egress".into(),
            namespace: "wopr-system".into(),
        },
        Leadership::always(),
        wopr_operator::shutdown::on(async move {
            let _ = stopped.await;
        }),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let applied = api.get(BINDING).expect("the binding is applied");
    assert_eq!(
        applied["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "wopr-egress-provider-keys"})
    );
    assert_eq!(
        applied["subjects"],
        json!([{"kind": "ServiceAccount", "name": "wopr-operator-egress", "namespace": "wopr-system"}])
    );
    let owner = &applied["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "SecurityPolicy");
    assert_eq!(owner["uid"], "uid-default");
    assert!(
        api.get("/apis/rbac.authorization.k8s.io/v1/namespaces/team-b/rolebindings/wopr-egress-provider-keys")
            .is_none(),
        "only the default policy configures providers"
    );
    let applies = api
        .take_requests()
        .into_iter()
        .filter(|r| r.path == BINDING)
        .count();
    assert_eq!(applies, 1);

    // Unchanged: nothing is written again.
    tokio::time::sleep(SYNC_PERIOD * 2).await;
    assert!(api.take_requests().iter().all(|r| r.path != BINDING));

    // The policy configures no providers any more: the binding goes.
    writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(policy(
        "default",
        json!([]),
    )))));
    tokio::time::sleep(SYNC_PERIOD + Duration::from_millis(100)).await;
    assert!(api.get(BINDING).is_none(), "the binding is deleted");
    assert!(
        api.take_requests()
            .iter()
            .any(|r| r.method == http::Method::DELETE && r.path == BINDING)
    );
    let _ = stop.send(());
    binding.await.unwrap();
}
