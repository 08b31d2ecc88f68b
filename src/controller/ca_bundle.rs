//! Publishing the control plane's CA bundle as the ConfigMap
//! `wopr-ca-bundle` in every namespace that has Sessions, which their pods
//! mount (a ConfigMap cannot be mounted from another namespace), and in
//! the operator's own, where the CLI reads it to verify the control plane
//! it reaches through a port-forward. The
//! leader applies it, with the one field manager, when a namespace gains
//! its first Session and whenever the bundle changes (a rotated CA); the
//! ConfigMap stays when the last Session goes (it holds nothing secret).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::api::Session;
use crate::cluster::lease::Leadership;
use crate::cluster::{FIELD_MANAGER, MANAGED_BY_LABEL, apply_params, describe};
use crate::contract::{CA_BUNDLE_CONFIGMAP, CA_BUNDLE_KEY};
use crate::shutdown::Shutdown;

/// How often the namespaces with Sessions are compared with those published.
pub const PUBLISH_PERIOD: Duration = Duration::from_secs(10);

/// The bundle ConfigMap of `namespace`.
pub fn bundle_config_map(namespace: &str, bundle: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CA_BUNDLE_CONFIGMAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            CA_BUNDLE_KEY.to_owned(),
            bundle.to_owned(),
        )])),
        ..ConfigMap::default()
    }
}

/// The bundle to publish, and the operator's namespace, where it is
/// published whether or not Sessions are there.
pub struct Publish {
    /// The bundle, as the certificate source has it now.
    pub bundle: watch::Receiver<String>,
    /// The operator's namespace.
    pub operator_namespace: String,
}

/// The namespaces of the Sessions in `sessions`, and `operator_namespace`.
fn namespaces(
    sessions: &Store<DeserializeGuard<Session>>,
    operator_namespace: &str,
) -> BTreeSet<String> {
    sessions
        .state()
        .iter()
        .filter_map(|session| session.namespace())
        .chain([operator_namespace.to_owned()])
        .collect()
}

/// Publishes the bundle into every namespace with Sessions, and the
/// operator's, until `shutdown`:
/// each period, and at once when the bundle changes, the leader applies it
/// where it has not yet (on this replica) been applied as it is now. A
/// failed apply is logged and retried the next period.
pub async fn publish_forever(
    client: Client,
    sessions: Store<DeserializeGuard<Session>>,
    publish: Publish,
    leadership: Leadership,
    shutdown: Shutdown,
) {
    let Publish {
        mut bundle,
        operator_namespace,
    } = publish;
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    let mut ticks = tokio::time::interval(PUBLISH_PERIOD);
    loop {
        tokio::select! {
            () = shutdown.clone() => return,
            _ = ticks.tick() => {}
            changed = bundle.changed() => if changed.is_err() { return },
        }
        if !leadership.is_leader() {
            // Another replica publishes; on gaining the Lease, apply anew.
            published.clear();
            continue;
        }
        let current = bundle.borrow().clone();
        for namespace in namespaces(&sessions, &operator_namespace) {
            if published.get(&namespace) == Some(&current) {
                continue;
            }
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            let desired = bundle_config_map(&namespace, &current);
            match api
                .patch(
                    CA_BUNDLE_CONFIGMAP,
                    &apply_params(),
                    &Patch::Apply(&desired),
                )
                .await
            {
                Ok(_) => {
                    published.insert(namespace, current.clone());
                }
                Err(error) => {
                    tracing::warn!(%namespace, error = %describe(&error), "cannot publish the CA bundle")
                }
            }
        }
    }
}
