//! Each namespace's ingress key: the Ed25519 key its invites are signed
//! with (an invite's `iss`). Kept in a Secret of the operator's own
//! namespace, `wopr-p2p-<namespace>`, which the operator creates the
//! first time a person invites a peer there; the namespace's tenants never
//! read it. Deleting the Secret rotates the key: the next invite makes a
//! new one, and invites signed by the old one can no longer be claimed.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::cluster::{create_once, describe, managed_meta};
use crate::p2p::IngressKey;

/// The key of the Secret's data holding the key (PKCS#8 DER).
pub const KEY_DATA: &str = "ed25519.pkcs8";

/// The Secret holding `namespace`'s ingress key.
pub fn secret_name(namespace: &str) -> String {
    format!("wopr-p2p-{namespace}")
}

/// Where the namespaces' ingress keys are.
#[tonic::async_trait]
pub trait IngressKeys: Send + Sync + 'static {
    /// `namespace`'s key, if it has one.
    async fn existing(&self, namespace: &str) -> Result<Option<IngressKey>, String>;
    /// `namespace`'s key, made when it has none.
    async fn key(&self, namespace: &str) -> Result<IngressKey, String>;
}

/// Keys in Secrets of the operator's namespace.
pub struct KubeIngressKeys {
    client: Client,
    secrets: Api<Secret>,
    operator_namespace: String,
}

impl KubeIngressKeys {
    pub fn new(client: Client, operator_namespace: &str) -> Self {
        KubeIngressKeys {
            secrets: Api::namespaced(client.clone(), operator_namespace),
            client,
            operator_namespace: operator_namespace.to_owned(),
        }
    }
}

#[tonic::async_trait]
impl IngressKeys for KubeIngressKeys {
    async fn existing(&self, namespace: &str) -> Result<Option<IngressKey>, String> {
        let name = secret_name(namespace);
        let secret = self
            .secrets
            .get_opt(&name)
            .await
            .map_err(|error| describe(&error))?;
        let Some(secret) = secret else {
            return Ok(None);
        };
        let der = secret
            .data
            .as_ref()
            .and_then(|data| data.get(KEY_DATA))
            .ok_or_else(|| {
                format!("Secret {name} holds no {KEY_DATA}: delete it to make a new key")
            })?;
        IngressKey::from_pkcs8_der(&der.0).map(Some).map_err(|why| {
            format!("Secret {name} holds no usable key ({why}): delete it to make a new key")
        })
    }

    async fn key(&self, namespace: &str) -> Result<IngressKey, String> {
        if let Some(key) = self.existing(namespace).await? {
            return Ok(key);
        }
        let key = IngressKey::generate();
        let name = secret_name(namespace);
        let labels = [("wopr.dev/p2p-namespace", namespace)];
        let secret = Secret {
            metadata: managed_meta(&name, &self.operator_namespace, &labels),
            data: Some([(KEY_DATA.to_owned(), ByteString(key.to_pkcs8_der()))].into()),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        };
        if create_once(&self.client, &secret)
            .await
            .map_err(|error| describe(&error))?
        {
            return Ok(key);
        }
        // Another replica made one first: that one is the key.
        self.existing(namespace)
            .await?
            .ok_or_else(|| format!("Secret {name} vanished"))
    }
}

/// Keys in memory, for tests.
#[derive(Default)]
pub struct MemoryIngressKeys(Mutex<HashMap<String, Vec<u8>>>);

impl MemoryIngressKeys {
    /// Forgets `namespace`'s key (what deleting its Secret does).
    pub fn rotate(&self, namespace: &str) {
        self.0.lock().expect("never poisoned").remove(namespace);
    }
}

#[tonic::async_trait]
impl IngressKeys for MemoryIngressKeys {
    async fn existing(&self, namespace: &str) -> Result<Option<IngressKey>, String> {
        let keys = self.0.lock().expect("never poisoned");
        keys.get(namespace)
            .map(|der| IngressKey::from_pkcs8_der(der).map_err(|why| why.to_string()))
            .transpose()
    }

    async fn key(&self, namespace: &str) -> Result<IngressKey, String> {
        let mut keys = self.0.lock().expect("never poisoned");
        let der = keys
            .entry(namespace.to_owned())
            .or_insert_with(|| IngressKey::generate().to_pkcs8_der());
        IngressKey::from_pkcs8_der(der).map_err(|why| why.to_string())
    }
}
