//! Letting the egress service read a namespace's provider keys: the
//! RoleBinding [`PROVIDER_KEYS_ROLE`] (a ClusterRole of `get` on Secrets,
//! no list, no watch) to the egress service's ServiceAccount, in each
//! namespace whose `default` SecurityPolicy configures providers, and in no
//! other. Kubernetes RBAC cannot name Secrets known only at run time, so
//! this per-namespace binding is the tightest it allows (docs/security.md).
//!
//! The leader applies the binding with the one field manager, owned by the
//! policy (deleting the policy deletes it), and deletes it when the policy
//! configures no providers. Checked every [`SYNC_PERIOD`] against the
//! policy cache; what this replica last did per namespace is remembered,
//! so nothing is written while nothing changes.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, ObjectMeta, Patch};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::{DEFAULT_POLICY_NAME, SecurityPolicy};
use crate::cluster::lease::Leadership;
use crate::cluster::{FIELD_MANAGER, MANAGED_BY_LABEL, apply_params, describe};
use crate::contract::PROVIDER_KEYS_ROLE;
use crate::shutdown::Shutdown;

/// How often the policies are compared with the bindings made.
pub const SYNC_PERIOD: Duration = Duration::from_secs(10);

/// The egress service's ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressAccount {
    /// Its name.
    pub name: String,
    /// Its namespace (the operator's).
    pub namespace: String,
}

/// The binding `policy` calls for: `Some` when it is its namespace's
/// `default` policy, parses, and configures providers.
pub fn binding_for(
    policy: &DeserializeGuard<SecurityPolicy>,
    egress: &EgressAccount,
) -> Option<RoleBinding> {
    let policy = policy.0.as_ref().ok()?;
    if policy.name_any() != DEFAULT_POLICY_NAME || policy.spec.providers.is_empty() {
        return None;
    }
    Some(RoleBinding {
        metadata: ObjectMeta {
            name: Some(PROVIDER_KEYS_ROLE.to_owned()),
            namespace: policy.namespace(),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            // No blockOwnerDeletion: it would need update on the policy's
            // finalizers, and nothing waits for the binding to go.
            owner_references: policy.owner_ref(&()).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: PROVIDER_KEYS_ROLE.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: egress.name.clone(),
            namespace: Some(egress.namespace.clone()),
            api_group: None,
        }]),
    })
}

/// Per namespace with a `default` policy, the binding it calls for
/// (`None`: none may exist).
fn desired(
    policies: &Store<DeserializeGuard<SecurityPolicy>>,
    egress: &EgressAccount,
) -> BTreeMap<String, Option<RoleBinding>> {
    policies
        .state()
        .iter()
        .filter(|policy| policy.name_any() == DEFAULT_POLICY_NAME)
        .filter_map(|policy| Some((policy.namespace()?, binding_for(policy, egress))))
        .collect()
}

/// Makes the bindings follow the policies until `shutdown`, on the leader
/// only. A failed write is logged and retried the next period.
pub async fn bind_forever(
    client: Client,
    policies: Store<DeserializeGuard<SecurityPolicy>>,
    egress: EgressAccount,
    leadership: Leadership,
    shutdown: Shutdown,
) {
    let mut done: BTreeMap<String, Option<RoleBinding>> = BTreeMap::new();
    let mut ticks = tokio::time::interval(SYNC_PERIOD);
    loop {
        tokio::select! {
            () = shutdown.clone() => return,
            _ = ticks.tick() => {}
        }
        if !leadership.is_leader() {
            done.clear();
            continue;
        }
        for (namespace, binding) in desired(&policies, &egress) {
            if done.get(&namespace) == Some(&binding) {
                continue;
            }
            let api: Api<RoleBinding> = Api::namespaced(client.clone(), &namespace);
            let written = match &binding {
                Some(binding) => api
                    .patch(PROVIDER_KEYS_ROLE, &apply_params(), &Patch::Apply(binding))
                    .await
                    .map(drop),
                None => match api
                    .delete(PROVIDER_KEYS_ROLE, &DeleteParams::default())
                    .await
                {
                    Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
                    other => other.map(drop),
                },
            };
            match written {
                Ok(()) => {
                    done.insert(namespace, binding);
                }
                Err(error) => tracing::warn!(
                    %namespace,
                    error = %describe(&error),
                    "cannot bind the egress service to the namespace's provider keys"
                ),
            }
        }
    }
}
