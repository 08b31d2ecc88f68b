//! Reading our objects in the command's namespace, with one mapping of a
//! missing object to exit code 2, and applying the fields a person set.

use kube::api::{ListParams, Patch};
use kube::core::NamespaceResourceScope;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{CliError, Context};

/// A kind of this API group's namespaced objects, as the functions here
/// read and write them.
pub trait Namespaced:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + DeserializeOwned
{
}

impl<K> Namespaced for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
{
}

/// The kind's lower-case name, for messages (`session "x" not found`).
fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).to_lowercase()
}

/// The object `name` of this namespace; not found is exit 2.
pub async fn get<K>(context: &Context, name: &str) -> Result<K, CliError>
where
    K: Namespaced,
{
    Api::<K>::namespaced(context.client.clone(), &context.namespace)
        .get(name)
        .await
        .map_err(|e| CliError::from_kube(&format!("{} {name:?}", kind_of::<K>()), e))
}

/// The object `name` of this namespace, if it exists.
pub async fn get_opt<K>(context: &Context, name: &str) -> Result<Option<K>, CliError>
where
    K: Namespaced,
{
    match get::<K>(context, name).await {
        Ok(object) => Ok(Some(object)),
        Err(CliError::NotFound(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Every object of the kind in this namespace, by name.
pub async fn list<K>(context: &Context) -> Result<Vec<K>, CliError>
where
    K: Namespaced,
{
    let mut items = Api::<K>::namespaced(context.client.clone(), &context.namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| CliError::from_kube(&format!("{}s", kind_of::<K>()), e))?
        .items;
    items.sort_by_key(ResourceExt::name_any);
    Ok(items)
}

/// Server-side applies `spec`, only the fields a person set, to the object
/// `name` of this namespace as `kubectl-wopr` (creating it if missing);
/// `force` takes over fields another manager owns.
pub async fn apply_spec<K>(
    context: &Context,
    name: &str,
    spec: Value,
    force: bool,
) -> Result<K, CliError>
where
    K: Namespaced,
{
    let patch = json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "metadata": {"name": name},
        "spec": spec,
    });
    Api::<K>::namespaced(context.client.clone(), &context.namespace)
        .patch(name, &context.apply_params(force), &Patch::Apply(&patch))
        .await
        .map_err(|e| CliError::from_kube(&format!("{} {name:?}", kind_of::<K>()), e))
}

/// [`apply_spec`] to an object that must exist: an apply would create a
/// missing one, so a missing one is not found (exit 2) instead.
pub async fn update_spec<K>(
    context: &Context,
    name: &str,
    spec: Value,
    force: bool,
) -> Result<K, CliError>
where
    K: Namespaced,
{
    get::<K>(context, name).await?;
    apply_spec(context, name, spec, force).await
}

/// Whether `value` can name an object: a DNS-1123 subdomain (lower-case
/// letters, digits, `-` and `.`, starting and ending with a letter or
/// digit, at most 253 characters), as the API server requires.
pub fn is_object_name(value: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    value.len() <= 253
        && value.starts_with(alphanumeric)
        && value.ends_with(alphanumeric)
        && value
            .chars()
            .all(|c| alphanumeric(c) || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_dns_subdomains() {
        for name in ["a", "research-agent", "p2p-gateway", "a.b", "0x"] {
            assert!(is_object_name(name), "{name}");
        }
        let long = "a".repeat(254);
        for bad in [
            "", "-a", "a-", "A", "a_b", "a b", "a/b", "a=", "\"a\"", &long,
        ] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }
}
