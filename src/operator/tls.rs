//! Setting up the control plane's TLS from the flags: plaintext only when
//! asked for; a certificate from files (cert-manager) followed for changes;
//! else a leaf the operator issues itself from its CA Secret, for the
//! Service's names, the host sidecars dial and any names given, rotated
//! before it is due. Both publish the CA bundle for session pods.

use std::sync::Arc;

use kube::Client;
use tokio::sync::watch;

use super::args::{ControllerArgs, TlsArgs};
use crate::clock::Clock;
use crate::tls::TlsError;
use crate::tls::ca_secret::CaSecret;
use crate::tls::server::{ServerCert, Transport};
use crate::tls::source::{
    CaStore, CertFiles, FILE_POLL, ROTATION_CHECK, follow_files, issue_forever, leaf_for,
};

/// How the control plane serves, and the CA bundle to publish (`None` for
/// plaintext).
pub struct Tls {
    /// Its transport.
    pub transport: Transport,
    /// The bundle, kept current.
    pub bundle: Option<watch::Receiver<String>>,
    /// The operator's CA, when it keeps its own (for the egress service's
    /// certificate).
    pub ca: Option<CaSecret>,
}

/// The Services the certificate is dialled behind: the control plane's
/// (`--tls-service-name`) and, with the peer ingress on, the peer
/// ingress's (the chart's `<release>-p2p`), which serves the same
/// certificate and which peers in the cluster dial.
pub fn served_services(args: &ControllerArgs) -> Vec<String> {
    let service = &args.tls.tls_service_name;
    let mut services = vec![service.clone()];
    if args.p2p_listen.is_some() {
        services.push(format!("{service}-p2p"));
    }
    services
}

/// The names the self-issued certificate carries: each of the Services
/// `services` of `namespace` by each name a pod may dial it by, the host
/// of the address sidecars are given, and `extra`; each once.
pub fn leaf_names(
    services: &[String],
    namespace: &str,
    dialled: &str,
    extra: &[String],
) -> Vec<String> {
    let mut names = Vec::new();
    for service in services {
        names.extend([
            service.to_owned(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ]);
    }
    names.push(dialled.to_owned());
    names.extend(extra.iter().filter(|name| !name.is_empty()).cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|name| seen.insert(name.clone()));
    names
}

/// The control plane's TLS as `args` say, its certificate kept current by
/// a task of its own.
pub async fn start(args: &ControllerArgs, host: &str, client: &Client) -> Result<Tls, TlsError> {
    let TlsArgs {
        insecure_plaintext,
        tls_cert_file,
        tls_key_file,
        tls_ca_file,
        tls_ca_secret,
        tls_service_name: _,
        tls_server_name,
    } = &args.tls;
    if *insecure_plaintext {
        return Ok(Tls {
            transport: Transport::InsecurePlaintext,
            bundle: None,
            ca: None,
        });
    }
    if let (Some(cert), Some(key), Some(ca)) = (tls_cert_file, tls_key_file, tls_ca_file) {
        let files = CertFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        };
        let loaded = files.load().await?;
        let served = Arc::new(ServerCert::new(
            &loaded.served.cert_pem,
            &loaded.served.key_pem,
        )?);
        let (bundle, published) = watch::channel(loaded.bundle.clone());
        tokio::spawn(follow_files(
            files,
            loaded,
            served.clone(),
            bundle,
            FILE_POLL,
        ));
        return Ok(Tls {
            transport: Transport::Tls(served),
            bundle: Some(published),
            ca: None,
        });
    }
    let store = CaSecret::new(client.clone(), &args.operator_namespace, tls_ca_secret);
    let clock = Clock::System;
    let ca = store.current(clock.now()).await?;
    let names = leaf_names(
        &served_services(args),
        &args.operator_namespace,
        host,
        tls_server_name,
    );
    let leaf = leaf_for(&ca, &names, clock.now())?;
    let served = Arc::new(ServerCert::new(&leaf.cert_pem, &leaf.key_pem)?);
    let (bundle, published) = watch::channel(ca.bundle.clone());
    tracing::info!(?names, secret = %tls_ca_secret, "the control plane serves a certificate of the operator's CA");
    tokio::spawn(issue_forever(
        store.clone(),
        names,
        ca,
        served.clone(),
        bundle,
        clock,
        ROTATION_CHECK,
    ));
    Ok(Tls {
        transport: Transport::Tls(served),
        bundle: Some(published),
        ca: Some(store),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaf_names_the_service_the_dialled_host_and_the_extras_once() {
        assert_eq!(
            leaf_names(
                &["wopr-operator".into()],
                "wopr-system",
                "wopr-operator.wopr-system.svc",
                &["172.18.0.1".into(), String::new()]
            ),
            [
                "wopr-operator",
                "wopr-operator.wopr-system",
                "wopr-operator.wopr-system.svc",
                "wopr-operator.wopr-system.svc.cluster.local",
                "172.18.0.1",
            ]
        );
    }

    #[test]
    fn with_the_peer_ingress_the_leaf_names_its_service_too() {
        let names = leaf_names(
            &["wopr-operator".into(), "wopr-operator-p2p".into()],
            "wopr-system",
            "wopr-operator.wopr-system.svc",
            &[],
        );
        assert!(names.contains(&"wopr-operator-p2p.wopr-system.svc".to_owned()));
        assert!(names.contains(&"wopr-operator-p2p.wopr-system.svc.cluster.local".to_owned()));
        assert_eq!(names.len(), 8, "{names:?}");
    }
}
