//! The providers' API keys, read from the Secrets a namespace's
//! SecurityPolicy names (`spec.providers[].secretRef`): by name only, one
//! `get` (never a list or a watch, so the egress service sees no Secret it
//! was not pointed at), kept for [`CACHE_TTL`] so a rotated key is used
//! within it. A key is a [`SecretString`]: it appears in no log, error or
//! `Debug` output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use secrecy::SecretString;
use tokio::time::Instant;

/// How long a read Secret is used before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(30);

/// Why a provider's key cannot be had: a reason to skip its link.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// No such Secret (or no right to read it).
    #[error("Secret {namespace}/{name} cannot be read: {why}")]
    Secret {
        namespace: String,
        name: String,
        why: String,
    },
    /// The Secret has no such key, or an empty or non-text one.
    #[error("Secret {namespace}/{name} has no usable key {key:?}")]
    Key {
        namespace: String,
        name: String,
        key: String,
    },
}

/// Where keys come from.
pub trait Credentials: Send + Sync + 'static {
    /// The key in `secret_key` of Secret `namespace/secret_name`.
    fn key(
        &self,
        namespace: &str,
        secret_name: &str,
        secret_key: &str,
    ) -> impl Future<Output = Result<SecretString, CredentialError>> + Send;
}

/// A Secret's keys, as read.
type Keys = HashMap<String, SecretString>;
/// Secrets read, by namespace and name, with when.
type Cache = HashMap<(String, String), (Instant, Arc<Keys>)>;

/// Keys from the Kubernetes API, cached per Secret.
pub struct KubeSecrets {
    client: Client,
    cache: Mutex<Cache>,
}

impl KubeSecrets {
    /// Reads Secrets with `client`.
    pub fn new(client: Client) -> Self {
        KubeSecrets {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn keys(&self, namespace: &str, name: &str) -> Result<Arc<Keys>, CredentialError> {
        let id = (namespace.to_owned(), name.to_owned());
        if let Some((read, keys)) = self.lock().get(&id)
            && read.elapsed() < CACHE_TTL
        {
            return Ok(keys.clone());
        }
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|error| CredentialError::Secret {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                why: match &error {
                    kube::Error::Api(status) => status.message.clone(),
                    _ => crate::cluster::root_cause(&error),
                },
            })?;
        let keys: Keys = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, value)| {
                let text = String::from_utf8(value.0).ok()?;
                Some((key, SecretString::from(text.trim().to_owned())))
            })
            .collect();
        let keys = Arc::new(keys);
        let mut cache = self.lock();
        cache.retain(|_, (read, _)| read.elapsed() < CACHE_TTL);
        cache.insert(id, (Instant::now(), keys.clone()));
        Ok(keys)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Credentials for KubeSecrets {
    async fn key(
        &self,
        namespace: &str,
        secret_name: &str,
        secret_key: &str,
    ) -> Result<SecretString, CredentialError> {
        let keys = self.keys(namespace, secret_name).await?;
        keys.get(secret_key)
            .filter(|key| !secrecy::ExposeSecret::expose_secret(*key).is_empty())
            .cloned()
            .ok_or_else(|| CredentialError::Key {
                namespace: namespace.to_owned(),
                name: secret_name.to_owned(),
                key: secret_key.to_owned(),
            })
    }
}
