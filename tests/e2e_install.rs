//! End to end against a real cluster (`KUBECONFIG`): renders the chart with
//! helm into a temporary namespace that enforces Pod Security "restricted",
//! applies every object with server-side apply (so the API server validates
//! each one), waits for the CRDs to be established, checks the controller's
//! pod template is admitted under "restricted" (a server-side dry run), and
//! uninstalls: every object it applied is gone afterwards, except the CRDs,
//! which stay, as with `helm uninstall`.
//!
//! With `WOPR_E2E_IMAGE` set to an image the cluster can pull, it also waits
//! for the controller Deployment to become available.
//!
//! Needs helm (`HELM`, else `.tools/bin/helm` from hack/install-tools.sh,
//! else `helm` on the PATH) and cluster-admin rights:
//! `KUBECONFIG=~/.kube/config cargo test --test e2e_install -- --ignored --nocapture`

mod common;

use std::panic::AssertUnwindSafe;
use tokio::process::Command;

use common::e2e::{MANAGER, TIMEOUT, create_namespace, eventually};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{self, Scope};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, ResourceExt};

fn helm() -> String {
    common::e2e::required_tool("e2e_install", "helm", Some("HELM"))
}

/// `helm template` of the chart for `namespace`, CRDs included.
async fn render(release: &str, namespace: &str, sets: &[&str]) -> Vec<DynamicObject> {
    let mut command = Command::new(helm());
    command
        .args([
            "template",
            release,
            "charts/wopr-operator",
            "--include-crds",
        ])
        .args(["--namespace", namespace])
        .args(sets.iter().flat_map(|set| ["--set", set]))
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if let Ok(image) = std::env::var("WOPR_E2E_IMAGE") {
        let (repository, tag) = image.rsplit_once(':').expect("WOPR_E2E_IMAGE is repo:tag");
        command.args(["--set", &format!("image.repository={repository}")]);
        command.args(["--set", &format!("image.tag={tag}")]);
    }
    let output = command.output().await.expect("running helm");
    assert!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_saphyr::from_multiple::<serde_json::Value>(&text)
        .expect("helm output parses")
        .into_iter()
        .filter(|document| !document.is_null())
        .map(|document| serde_json::from_value(document).expect("a Kubernetes object"))
        .collect()
}

fn gvk(object: &DynamicObject) -> GroupVersionKind {
    let types = object.types.as_ref().expect("apiVersion and kind");
    let (group, version) = types
        .api_version
        .rsplit_once('/')
        .unwrap_or(("", &types.api_version));
    GroupVersionKind::gvk(group, version, &types.kind)
}

/// The API for `object`'s kind, in `namespace` when the kind is namespaced.
async fn api_for(client: &Client, object: &DynamicObject, namespace: &str) -> Api<DynamicObject> {
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk(object))
        .await
        .unwrap_or_else(|e| panic!("discovering {:?}: {e}", gvk(object)));
    match capabilities.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    }
}

async fn apply_all(client: &Client, objects: &[DynamicObject], namespace: &str) {
    for object in objects {
        let api = api_for(client, object, namespace).await;
        api.patch(
            &object.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {:?} {}: {e}", gvk(object), object.name_any()));
        if gvk(object).kind == "CustomResourceDefinition" {
            let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
            tokio::time::timeout(
                TIMEOUT,
                await_condition(crds, &object.name_any(), conditions::is_crd_established()),
            )
            .await
            .unwrap_or_else(|_| panic!("{} not established in time", object.name_any()))
            .unwrap();
        }
    }
}

/// The controller's pod template is admitted under Pod Security "restricted".
async fn pod_template_is_admitted(client: &Client, namespace: &str, deployment: &str) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let template = deployments
        .get(deployment)
        .await
        .unwrap()
        .spec
        .unwrap()
        .template;
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{deployment}-admission-check")),
            labels: template.metadata.and_then(|m| m.labels),
            ..Default::default()
        },
        spec: template.spec,
        ..Default::default()
    };
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&dry_run, &pod)
        .await
        .unwrap_or_else(|e| panic!("the controller pod is not admitted under restricted: {e}"));
}

async fn uninstall(client: &Client, objects: &[DynamicObject], namespace: &str) {
    for object in objects.iter().rev() {
        if gvk(object).kind == "CustomResourceDefinition" {
            continue; // kept, as helm keeps them: deleting a CRD deletes every object of it
        }
        let api = api_for(client, object, namespace).await;
        match api
            .delete(&object.name_any(), &DeleteParams::foreground())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {} // never applied
            Err(e) => panic!("deleting {}: {e}", object.name_any()),
        }
    }
    for object in objects
        .iter()
        .filter(|o| gvk(o).kind != "CustomResourceDefinition")
    {
        let api = api_for(client, object, namespace).await;
        let name = object.name_any();
        eventually(&format!("{name} to be deleted"), || {
            let api = api.clone();
            let name = name.clone();
            async move { api.get_opt(&name).await.unwrap().is_none().then_some(()) }
        })
        .await;
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster (KUBECONFIG) and helm"]
async fn the_chart_installs_and_uninstalls_cleanly() {
    helm(); // fails here, naming what is missing, before anything is created
    let client = Client::try_default()
        .await
        .expect("a cluster from KUBECONFIG");
    let namespace = create_namespace(&client).await;
    let release = format!("wopr-operator-e2e-{}", std::process::id());
    // The audit store's claim needs a default StorageClass; without one it
    // would stay Pending, and the Deployment with it.
    let classes: Api<StorageClass> = Api::all(client.clone());
    let has_default = classes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|class| {
            class
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|annotations| {
                    annotations
                        .get("storageclass.kubernetes.io/is-default-class")
                        .map(String::as_str)
                        == Some("true")
                })
        });
    let sets: &[&str] = if has_default {
        &[]
    } else {
        println!("no default StorageClass: installing with audit.persistence.enabled=false");
        &["audit.persistence.enabled=false"]
    };
    let objects = render(&release, &namespace, sets).await;
    let kinds: Vec<_> = objects.iter().map(|o| gvk(o).kind).collect();
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ClusterRole",
        "Service",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "the render has no {kind}");
    }

    let installed = AssertUnwindSafe(async {
        apply_all(&client, &objects, &namespace).await;
        pod_template_is_admitted(&client, &namespace, &release).await;
        if std::env::var("WOPR_E2E_IMAGE").is_ok() {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
            tokio::time::timeout(
                TIMEOUT,
                await_condition(deployments, &release, conditions::is_deployment_completed()),
            )
            .await
            .expect("the controller Deployment did not become available")
            .unwrap();
        }
    })
    .catch_unwind()
    .await;

    // Uninstall whether or not the checks passed: no ClusterRole is left behind.
    uninstall(&client, &objects, &namespace).await;
    Api::<Namespace>::all(client.clone())
        .delete(&namespace, &DeleteParams::default())
        .await
        .unwrap();
    if let Err(panic) = installed {
        std::panic::resume_unwind(panic);
    }
}
