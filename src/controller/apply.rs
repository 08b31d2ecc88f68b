//! Server-side apply that writes only when the live object differs from
//! what the controller wants, so an unchanged resync makes no write.

use std::fmt::Debug;

use kube::api::Patch;
use kube::core::{DeserializeGuard, NamespaceResourceScope};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::Error;
use crate::cluster::apply_params;

/// Applies `desired` unless `live` already contains every field of it.
/// Returns whether it wrote.
pub async fn apply_if_changed<K>(api: &Api<K>, live: Option<&K>, desired: &K) -> Result<bool, Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    if live.is_some_and(|live| contains(&to_json(live), &to_json(desired))) {
        return Ok(false);
    }
    api.patch(&desired.name_any(), &apply_params(), &Patch::Apply(desired))
        .await?;
    Ok(true)
}

/// Applies `desired` as the status of `object` unless `previous` equals it.
/// Works for objects that could not be read (their status is then rewritten).
/// Returns whether it wrote.
pub async fn patch_status_if_changed<K, S>(
    client: &Client,
    object: &DeserializeGuard<K>,
    previous: Option<&S>,
    desired: &S,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
    S: Serialize + PartialEq,
{
    if previous == Some(desired) {
        return Ok(false);
    }
    let api: Api<DeserializeGuard<K>> =
        Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": desired});
    api.patch_status(&object.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;
    Ok(true)
}

fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("Kubernetes objects serialize to JSON")
}

/// Whether `live` holds everything `desired` says: every field of a desired
/// object present and contained, arrays of the same length contained
/// element by element, scalars equal. An empty or null desired value is
/// contained in an absent one (the API server drops empty fields).
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Object(live), Value::Object(desired)) => desired.iter().all(|(key, wanted)| {
            live.get(key)
                .map_or_else(|| is_empty(wanted), |have| contains(have, wanted))
        }),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len()
                && live
                    .iter()
                    .zip(desired)
                    .all(|(have, wanted)| contains(have, wanted))
        }
        (live, desired) => live == desired,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.values().all(is_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::contains;

    #[test]
    fn live_objects_with_defaults_contain_what_was_applied() {
        let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"ingress": [], "ports": [{"port": 1}]}});
        let live = json!({
            "metadata": {"name": "a", "labels": {"x": "1", "extra": "y"}, "uid": "u"},
            "spec": {"ports": [{"port": 1, "protocol": "TCP"}]}
        });
        assert!(contains(&live, &desired));
    }

    #[test]
    fn any_difference_is_found() {
        let desired = json!({"spec": {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}});
        let changed = json!({"spec": {"egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}});
        let extra_rule = json!({"spec": {"egress": [
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}, {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}
        ]}});
        assert!(!contains(&changed, &desired));
        assert!(
            !contains(&extra_rule, &desired),
            "an added rule is a difference"
        );
        assert!(!contains(
            &json!({}),
            &json!({"automountServiceAccountToken": false})
        ));
        assert!(!contains(&json!({"a": "1"}), &json!({"a": 1})));
    }
}
