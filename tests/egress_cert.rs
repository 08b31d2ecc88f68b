//! The egress service's certificate from the operator's CA, against the
//! fake API: issued into a `kubernetes.io/tls` Secret that verifies
//! against the CA bundle for the egress Service's names, left alone while
//! current, issued again two thirds into its life and when the CA rotates.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use wopr_operator::clock::Clock;
use wopr_operator::cluster::lease::Leadership;
use wopr_operator::controller::egress_cert::{EgressCert, issue_forever, service_names};
use wopr_operator::tls::TlsError;
use wopr_operator::tls::issue::{CA_LIFETIME, issue_ca};
use wopr_operator::tls::source::{CaState, CaStore};

const SECRET: &str = "/api/v1/namespaces/wopr-system/secrets/wopr-operator-egress-tls";
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Clone)]
struct FixedCa(Arc<Mutex<CaState>>);

impl CaStore for FixedCa {
    async fn current(&self, _now: Timestamp) -> Result<CaState, TlsError> {
        Ok(self.0.lock().unwrap().clone())
    }
}

/// A key of the Secret, decoded.
fn key(secret: &Value, name: &str) -> String {
    use base64::Engine;
    let encoded = secret["data"][name].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Whether the Secret's leaf verifies for `name` at `at` against `bundle`.
fn verifies(secret: &Value, bundle: &str, name: &str, at: Timestamp) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let now = UnixTime::since_unix_epoch(Duration::from_secs(at.as_second() as u64));
    verifier
        .verify_server_cert(
            &der(&key(secret, "tls.crt")),
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            now,
        )
        .is_ok()
}

#[tokio::test(start_paused = true)]
async fn the_egress_certificate_is_issued_verified_and_rotated() {
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let old = issue_ca(start, CA_LIFETIME).unwrap();
    let store = FixedCa(Arc::new(Mutex::new(CaState {
        bundle: old.cert_pem.clone(),
        ca: old.clone(),
    })));
    let (client, api) = common::fake_api::FakeApi::start();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let issuing = tokio::spawn(issue_forever(
        client,
        EgressCert {
            ca: store.clone(),
            secret: "wopr-operator-egress-tls".into(),
            namespace: "wopr-system".into(),
            names: service_names("wopr-operator-egress", "wopr-system"),
        },
        Leadership::always(),
        Clock::starting_at(start),
        HOUR,
        wopr_operator::shutdown::on(async move {
            let _ = stopped.await;
        }),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = api.get(SECRET).expect("the Secret is issued");
    assert_eq!(first["type"], "kubernetes.io/tls");
    assert_eq!(key(&first, "ca.crt"), old.cert_pem);
    let soon = start.checked_add(SignedDuration::from_hours(1)).unwrap();
    for name in [
        "wopr-operator-egress",
        "wopr-operator-egress.wopr-system.svc",
        "wopr-operator-egress.wopr-system.svc.cluster.local",
    ] {
        assert!(verifies(&first, &old.cert_pem, name, soon), "{name}");
    }
    assert!(!verifies(
        &first,
        &old.cert_pem,
        "wopr-operator.wopr-system.svc",
        soon
    ));

    // Not due: left alone for days.
    tokio::time::sleep(HOUR * 24 * 10).await;
    assert_eq!(
        key(&api.get(SECRET).unwrap(), "tls.crt"),
        key(&first, "tls.crt")
    );

    // Two thirds into its 30 days: issued again.
    tokio::time::sleep(HOUR * 24 * 11).await;
    let renewed = api.get(SECRET).unwrap();
    assert_ne!(key(&renewed, "tls.crt"), key(&first, "tls.crt"));
    let day_21 = start
        .checked_add(SignedDuration::from_hours(24 * 21))
        .unwrap();
    assert!(verifies(
        &renewed,
        &old.cert_pem,
        "wopr-operator-egress.wopr-system.svc",
        day_21
    ));

    // The CA rotates: issued from the new one at the next check.
    let new = issue_ca(day_21, CA_LIFETIME).unwrap();
    let bundle = format!("{}{}", new.cert_pem, old.cert_pem);
    *store.0.lock().unwrap() = CaState {
        bundle: bundle.clone(),
        ca: new.clone(),
    };
    tokio::time::sleep(HOUR + Duration::from_secs(1)).await;
    let rotated = api.get(SECRET).unwrap();
    let later = day_21.checked_add(SignedDuration::from_hours(3)).unwrap();
    assert_eq!(key(&rotated, "ca.crt"), bundle);
    assert!(verifies(
        &rotated,
        &new.cert_pem,
        "wopr-operator-egress.wopr-system.svc",
        later
    ));
    assert!(!verifies(
        &rotated,
        &old.cert_pem,
        "wopr-operator-egress.wopr-system.svc",
        later
    ));
    let _ = stop.send(());
    issuing.await.unwrap();
}
