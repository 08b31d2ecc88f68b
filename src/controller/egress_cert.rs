//! The egress service's certificate, when the operator keeps its own CA
//! (without cert-manager): the leader issues a leaf for the egress
//! Service's names from that CA into the `kubernetes.io/tls` Secret the
//! egress pods mount (`tls.crt`, `tls.key`, and `ca.crt`, the bundle), and
//! issues it again two thirds into its life and whenever the CA changes,
//! as the control plane's own leaf is (`tls::source::issue_forever`).
//! The Secret is read, created and replaced with the rights the controller
//! already holds on Secrets of its namespace for its CA.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::clock::Clock;
use crate::cluster::lease::Leadership;
use crate::cluster::{FIELD_MANAGER, MANAGED_BY_LABEL, describe};
use crate::shutdown::Shutdown;
use crate::tls::ca_secret::{BUNDLE_KEY, CA_CERT_KEY, CA_KEY_KEY};
use crate::tls::issue::validity;
use crate::tls::source::{CaState, CaStore, leaf_for};

/// The egress service's certificate to keep.
pub struct EgressCert<S> {
    /// The operator's CA.
    pub ca: S,
    /// The Secret, in `namespace`.
    pub secret: String,
    /// The operator's namespace.
    pub namespace: String,
    /// The names the leaf carries.
    pub names: Vec<String>,
}

/// The names of the Service `service` of `namespace` a pod may dial.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Whether `secret` holds a leaf that is not due at `now`, with the
/// bundle of `ca`.
fn current(secret: &Secret, ca: &CaState, now: Timestamp) -> bool {
    let Some(data) = secret.data.as_ref() else {
        return false;
    };
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let fresh = text(CA_CERT_KEY)
        .and_then(|cert| validity(&cert, "the egress certificate").ok())
        .is_some_and(|validity| !validity.due(now));
    fresh && text(BUNDLE_KEY).as_deref() == Some(ca.bundle.as_str())
}

/// Keeps the Secret a current leaf, checked every `check` on the leader
/// until `shutdown`. A failure is logged and retried at the next check.
pub async fn issue_forever<S: CaStore>(
    client: Client,
    cert: EgressCert<S>,
    leadership: Leadership,
    clock: Clock,
    check: Duration,
    shutdown: Shutdown,
) {
    let api: Api<Secret> = Api::namespaced(client, &cert.namespace);
    let mut ticks = tokio::time::interval(check);
    loop {
        tokio::select! {
            () = shutdown.clone() => return,
            _ = ticks.tick() => {}
        }
        if !leadership.is_leader() {
            continue;
        }
        if let Err(error) = issue_once(&api, &cert, clock.now()).await {
            tracing::warn!(%error, secret = %cert.secret, "cannot issue the egress service's certificate");
        }
    }
}

/// One check: the Secret is left alone while current, else (re)written.
async fn issue_once<S: CaStore>(
    api: &Api<Secret>,
    cert: &EgressCert<S>,
    now: Timestamp,
) -> Result<(), String> {
    let ca = cert.ca.current(now).await.map_err(|e| e.to_string())?;
    let found = api.get_opt(&cert.secret).await.map_err(|e| describe(&e))?;
    if found
        .as_ref()
        .is_some_and(|secret| current(secret, &ca, now))
    {
        return Ok(());
    }
    let leaf = leaf_for(&ca, &cert.names, now).map_err(|e| e.to_string())?;
    let data = [
        (CA_CERT_KEY, leaf.cert_pem),
        (CA_KEY_KEY, leaf.key_pem),
        (BUNDLE_KEY, ca.bundle.clone()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), ByteString(value.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(cert.secret.clone()),
            namespace: Some(cert.namespace.clone()),
            labels: Some([(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned())].into()),
            resource_version: found.and_then(|s| s.metadata.resource_version),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let written = if secret.metadata.resource_version.is_some() {
        api.replace(&cert.secret, &params, &secret).await
    } else {
        api.create(&params, &secret).await
    };
    written.map_err(|e| describe(&e))?;
    tracing::info!(secret = %cert.secret, "the egress service's certificate was issued");
    Ok(())
}
