//! TLS on the control plane, with real tonic servers and the sidecar's
//! real client code on 127.0.0.1: a sidecar gets its policy only from a
//! control plane whose certificate it can verify (its name, its validity,
//! its CA); the certificate is rotated under open watches without a call
//! going unverified; plaintext only where both ends are told to use it; the
//! certificate sources follow their files and rotate before expiry.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::sidecar::{ControlPlane, Sidecar, token_for};
use common::tls::{client_tls, loopback_names, pki};
use common::{NAMESPACE, session};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::sync::watch;
use wopr_operator::api::TrustLevel;
use wopr_operator::clock::Clock;
use wopr_operator::controlplane::Settings;
use wopr_operator::sidecar::client::{WatchError, WatchTarget, watch_once};
use wopr_operator::sidecar::policy_state::{NoPolicy, PolicyState};
use wopr_operator::tls::TlsError;
use wopr_operator::tls::client::{ClientTls, ClientTlsError};
use wopr_operator::tls::issue::{CA_LIFETIME, Issued, LEAF_LIFETIME, issue_ca, issue_leaf};
use wopr_operator::tls::server::{ServerCert, Transport};
use wopr_operator::tls::source::{CaState, CaStore, CertFiles, follow_files, issue_forever};

/// A control plane for the session `agent` (trusted), serving `transport`.
async fn control_plane(transport: Transport) -> ControlPlane {
    let mut control_plane =
        ControlPlane::start_serving(&["agent"], Settings::default(), transport).await;
    control_plane.put_session(session("agent", TrustLevel::Trusted));
    control_plane
}

/// `cert` served by a control plane of the session `agent`.
async fn serving(cert: &Issued) -> ControlPlane {
    let cert = ServerCert::new(&cert.cert_pem, &cert.key_pem).unwrap();
    control_plane(Transport::Tls(Arc::new(cert))).await
}

/// The sidecar's watch of `agent`'s policy at `address`, secured as `tls`
/// says, with its own token; the directory holds the token.
fn target(address: String, tls: ClientTls) -> (WatchTarget, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, token_for("agent")).unwrap();
    let target = WatchTarget {
        address,
        tls,
        namespace: NAMESPACE.into(),
        session: "agent".into(),
        token_path,
    };
    (target, dir)
}

/// One watch by the sidecar's real client of the control plane at
/// `address`, as `tls` says: its error, and the policy state after it.
async fn refused_watch(address: String, tls: ClientTls) -> (WatchError, PolicyState) {
    let (target, _dir) = target(address, tls);
    let state = PolicyState::new(Duration::from_secs(30));
    let outcome = tokio::time::timeout(Duration::from_secs(10), watch_once(&target, &state))
        .await
        .expect("the watch fails at once, it does not hang");
    let error = outcome.expect_err("the watch is refused");
    (error, state)
}

/// Asserts that `state` never got a policy.
fn no_policy_served(state: &PolicyState) {
    assert_eq!(
        state.current().map(|_| "a policy in force"),
        Err(NoPolicy::NotYet),
        "no policy may be served over an unverified connection"
    );
}

/// A leaf of the test CA for `names`, issued at `at` for `lifetime`.
fn leaf_of_the_test_ca(names: &[String], at: Timestamp, lifetime: Duration) -> Issued {
    issue_leaf(&pki().ca, names, at, lifetime).unwrap()
}

#[tokio::test]
async fn a_sidecar_gets_its_policy_over_tls() {
    let control_plane = control_plane(common::tls::transport()).await;
    let sidecar = Sidecar::start(
        &control_plane.address.to_string(),
        "agent",
        &token_for("agent"),
    )
    .await;
    sidecar
        .wait_for_policy(|served| {
            served.is_some_and(|served| served.context.trust_level == TrustLevel::Trusted)
        })
        .await;
}

#[tokio::test]
async fn a_sidecar_refuses_a_certificate_of_another_name() {
    let other = leaf_of_the_test_ca(&["other.example".into()], Timestamp::now(), LEAF_LIFETIME);
    let control_plane = serving(&other).await;
    let (error, state) = refused_watch(control_plane.address.to_string(), client_tls()).await;
    let message = error.to_string();
    assert!(matches!(error, WatchError::Connect(_)), "{message}");
    assert!(
        message.starts_with("cannot connect to the control plane: ")
            && message.contains("not valid for name")
            && message.contains("127.0.0.1"),
        "{message}"
    );
    no_policy_served(&state);
}

#[tokio::test]
async fn a_sidecar_refuses_an_expired_certificate() {
    let long_ago = Timestamp::now()
        .checked_sub(SignedDuration::from_hours(48))
        .unwrap();
    let expired = leaf_of_the_test_ca(&loopback_names(), long_ago, Duration::from_secs(3600));
    let control_plane = serving(&expired).await;
    let (error, state) = refused_watch(control_plane.address.to_string(), client_tls()).await;
    let message = error.to_string();
    assert!(matches!(error, WatchError::Connect(_)), "{message}");
    assert!(message.contains("certificate expired"), "{message}");
    no_policy_served(&state);
}

#[tokio::test]
async fn a_sidecar_refuses_a_self_signed_certificate() {
    let signed_by_itself = rcgen::generate_simple_self_signed(loopback_names()).unwrap();
    let control_plane = serving(&Issued {
        cert_pem: signed_by_itself.cert.pem(),
        key_pem: signed_by_itself.signing_key.serialize_pem(),
    })
    .await;
    let (error, state) = refused_watch(control_plane.address.to_string(), client_tls()).await;
    let message = error.to_string();
    assert!(matches!(error, WatchError::Connect(_)), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    no_policy_served(&state);
}

#[tokio::test]
async fn a_sidecar_refuses_a_certificate_of_another_ca() {
    let now = Timestamp::now();
    let stranger = issue_ca(now, CA_LIFETIME).unwrap();
    let leaf = issue_leaf(&stranger, &loopback_names(), now, LEAF_LIFETIME).unwrap();
    let control_plane = serving(&leaf).await;
    let (error, state) = refused_watch(control_plane.address.to_string(), client_tls()).await;
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    no_policy_served(&state);
}

/// The certificate a new TLS connection to `address` is shown (verified
/// against the test CA).
async fn presented(address: std::net::SocketAddr) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki().ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        wopr_operator::tls::server::provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// The certificate is swapped while a sidecar watches: its stream goes on
/// (a policy change arrives on it, the policy never lapses), new
/// connections are shown the new certificate, and a certificate the
/// sidecars cannot verify, swapped in, serves no new sidecar.
#[tokio::test]
async fn rotating_the_certificate_keeps_open_watches_and_serves_no_call_unverified() {
    let first = leaf_of_the_test_ca(&loopback_names(), Timestamp::now(), LEAF_LIFETIME);
    let cert = Arc::new(ServerCert::new(&first.cert_pem, &first.key_pem).unwrap());
    let mut control_plane = control_plane(Transport::Tls(cert.clone())).await;
    let address = control_plane.address;
    let sidecar = Sidecar::start(&address.to_string(), "agent", &token_for("agent")).await;
    sidecar.wait_for_policy(|served| served.is_some()).await;
    assert_eq!(presented(address).await, der_of(&first.cert_pem));

    let second = leaf_of_the_test_ca(&loopback_names(), Timestamp::now(), LEAF_LIFETIME);
    cert.swap(&second.cert_pem, &second.key_pem).unwrap();
    assert_eq!(presented(address).await, der_of(&second.cert_pem));
    control_plane.put_session(session("agent", TrustLevel::SemiTrusted));
    sidecar
        .wait_for_policy(|served| {
            served.is_some_and(|served| served.context.trust_level == TrustLevel::SemiTrusted)
        })
        .await;
    assert!(sidecar.state.current().is_ok(), "the policy never lapsed");

    // A newly started sidecar verifies the new certificate.
    let (target, _dir) = target(address.to_string(), client_tls());
    let fresh = Arc::new(PolicyState::new(Duration::from_secs(30)));
    let watching = tokio::spawn({
        let fresh = fresh.clone();
        async move { watch_once(&target, &fresh).await }
    });
    for _ in 0..500 {
        if fresh.current().is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fresh.current().is_ok(), "{:?}", fresh.current());
    watching.abort();

    // Swapped to one no sidecar can verify: no new watch is served.
    let rogue = rcgen::generate_simple_self_signed(loopback_names()).unwrap();
    cert.swap(&rogue.cert.pem(), &rogue.signing_key.serialize_pem())
        .unwrap();
    let (error, state) = refused_watch(address.to_string(), client_tls()).await;
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    no_policy_served(&state);
}

/// A pair that cannot be served (a key of another certificate) is refused
/// and the certificate in force stays.
#[tokio::test]
async fn a_mismatched_key_is_not_swapped_in() {
    let first = leaf_of_the_test_ca(&loopback_names(), Timestamp::now(), LEAF_LIFETIME);
    let other = leaf_of_the_test_ca(&loopback_names(), Timestamp::now(), LEAF_LIFETIME);
    let cert = ServerCert::new(&first.cert_pem, &first.key_pem).unwrap();
    let error = cert.swap(&other.cert_pem, &first.key_pem).unwrap_err();
    assert!(matches!(error, TlsError::Rustls(_)), "{error}");
    assert_eq!(cert.chain(), vec![der_of(&first.cert_pem)]);
}

#[tokio::test]
async fn a_sidecar_refuses_plaintext_unless_told_to_use_it() {
    let control_plane = control_plane(Transport::InsecurePlaintext).await;
    let plaintext = format!("http://{}", control_plane.address);
    let (error, state) = refused_watch(plaintext.clone(), client_tls()).await;
    assert!(
        matches!(error, WatchError::Tls(ClientTlsError::PlaintextRefused(_))),
        "{error}"
    );
    assert!(error.to_string().contains("TLS is required"), "{error}");
    no_policy_served(&state);
    // A bare address is TLS, which a plaintext server cannot answer.
    let (error, state) = refused_watch(control_plane.address.to_string(), client_tls()).await;
    assert!(matches!(error, WatchError::Connect(_)), "{error}");
    no_policy_served(&state);

    // Told to (the development flag), it gets its policy.
    let (target, _dir) = target(plaintext, ClientTls::Plaintext);
    let state = Arc::new(PolicyState::new(Duration::from_secs(30)));
    let watching = tokio::spawn({
        let state = state.clone();
        async move { watch_once(&target, &state).await }
    });
    for _ in 0..500 {
        if state.current().is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(state.current().is_ok(), "{:?}", state.current());
    watching.abort();
}

#[tokio::test]
async fn a_tls_control_plane_refuses_plaintext_clients() {
    let control_plane = control_plane(common::tls::transport()).await;
    let plaintext = format!("http://{}", control_plane.address);
    let (error, state) = refused_watch(plaintext, ClientTls::Plaintext).await;
    assert!(
        matches!(error, WatchError::Connect(_) | WatchError::Status(_)),
        "{error}"
    );
    no_policy_served(&state);
}

/// cert-manager's files change: the control plane serves the new
/// certificate and publishes the new bundle, without a restart; a
/// half-written pair keeps the one in force.
#[tokio::test]
async fn the_certificate_files_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        ca: dir.path().join("ca.crt"),
    };
    let write = |leaf: &Issued, ca: &str| {
        std::fs::write(&files.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&files.key, &leaf.key_pem).unwrap();
        std::fs::write(&files.ca, ca).unwrap();
    };
    let first = leaf_of_the_test_ca(&loopback_names(), Timestamp::now(), LEAF_LIFETIME);
    write(&first, &pki().ca.cert_pem);
    let loaded = files.load().await.unwrap();
    let cert = Arc::new(ServerCert::new(&first.cert_pem, &first.key_pem).unwrap());
    let (bundle, published) = watch::channel(loaded.bundle.clone());
    let following = tokio::spawn(follow_files(
        files.clone(),
        loaded,
        cert.clone(),
        bundle,
        Duration::from_millis(20),
    ));

    let now = Timestamp::now();
    let new_ca = issue_ca(now, CA_LIFETIME).unwrap();
    let second = issue_leaf(&new_ca, &loopback_names(), now, LEAF_LIFETIME).unwrap();
    let both = format!("{}{}", new_ca.cert_pem, pki().ca.cert_pem);
    // Half-written first: the new certificate with the old key.
    std::fs::write(&files.cert, &second.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cert.chain(), vec![der_of(&first.cert_pem)]);
    write(&second, &both);
    for _ in 0..500 {
        if cert.chain() == vec![der_of(&second.cert_pem)] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cert.chain(), vec![der_of(&second.cert_pem)]);
    assert_eq!(*published.borrow(), both);
    following.abort();
}

/// A CA kept in memory, as the Secret would keep it (another replica may
/// rotate it).
#[derive(Clone)]
struct FixedCa(Arc<std::sync::Mutex<CaState>>);

impl FixedCa {
    fn new(state: CaState) -> FixedCa {
        FixedCa(Arc::new(std::sync::Mutex::new(state)))
    }
}

impl CaStore for FixedCa {
    async fn current(&self, _now: Timestamp) -> Result<CaState, TlsError> {
        Ok(self.0.lock().unwrap().clone())
    }
}

/// The self-issued leaf is re-issued two thirds into its life (20 of its
/// 30 days), not before, by the clock it is given.
#[tokio::test(start_paused = true)]
async fn the_self_issued_leaf_is_rotated_two_thirds_into_its_life() {
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let ca = issue_ca(start, CA_LIFETIME).unwrap();
    let state = CaState {
        bundle: ca.cert_pem.clone(),
        ca: ca.clone(),
    };
    let names = loopback_names();
    let first = issue_leaf(&ca, &names, start, LEAF_LIFETIME).unwrap();
    let cert = Arc::new(ServerCert::new(&first.cert_pem, &first.key_pem).unwrap());
    let (bundle, _published) = watch::channel(state.bundle.clone());
    let rotating = tokio::spawn(issue_forever(
        FixedCa::new(state.clone()),
        names,
        state,
        cert.clone(),
        bundle,
        Clock::starting_at(start),
        Duration::from_secs(3600),
    ));
    let day = Duration::from_secs(24 * 3600);
    tokio::time::sleep(19 * day).await;
    assert_eq!(cert.chain(), vec![der_of(&first.cert_pem)], "day 19");
    tokio::time::sleep(day + Duration::from_secs(2 * 3600)).await;
    let chain = cert.chain();
    assert_ne!(chain, vec![der_of(&first.cert_pem)], "day 20");
    let validity = wopr_operator::tls::issue::validity_der(&chain[0], "rotated").unwrap();
    assert!(
        validity.not_before >= "2026-01-20T23:00:00Z".parse().unwrap(),
        "{validity:?}"
    );
    rotating.abort();
}

/// Two replicas starting at once against an API server with no CA: one
/// creates it, the other (its create refused 409) reads that one; both
/// sign with the same CA, and a third start reads it again.
#[tokio::test]
async fn the_operators_ca_is_made_once_and_shared_by_the_replicas() {
    use wopr_operator::tls::ca_secret::CaSecret;
    let (client, api) = common::fake_api::FakeApi::start();
    let first = CaSecret::new(client.clone(), "wopr-system", "wopr-operator-ca");
    let second = CaSecret::new(client.clone(), "wopr-system", "wopr-operator-ca");
    let now = Timestamp::now();
    let (a, b) = tokio::join!(first.current(now), second.current(now));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "one CA for both replicas");
    let stored = api
        .get("/api/v1/namespaces/wopr-system/secrets/wopr-operator-ca")
        .expect("the CA Secret");
    assert_eq!(stored["type"], "kubernetes.io/tls");
    let third = CaSecret::new(client, "wopr-system", "wopr-operator-ca");
    assert_eq!(third.current(now).await.unwrap(), a);
    let creates = api
        .take_requests()
        .into_iter()
        .filter(|request| request.method == http::Method::POST)
        .count();
    assert_eq!(creates, 2, "both tried to create; no third create");
}

/// The leader publishes the bundle where Sessions are and in the operator's
/// namespace (for the CLI), and again when it changes; another namespace
/// without Sessions gets none.
#[tokio::test]
async fn the_bundle_is_published_where_sessions_are() {
    use kube::core::DeserializeGuard;
    use kube::runtime::{reflector, watcher};
    use wopr_operator::cluster::lease::Leadership;
    use wopr_operator::controller::ca_bundle::{Publish, publish_forever};
    let (client, api) = common::fake_api::FakeApi::start();
    let (sessions, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok({
        let mut agent = session("agent", TrustLevel::Trusted);
        agent.metadata.namespace = Some(NAMESPACE.into());
        agent
    }))));
    let (bundle, published) = watch::channel(pki().ca.cert_pem.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let publishing = tokio::spawn(publish_forever(
        client,
        sessions,
        Publish {
            bundle: published,
            operator_namespace: "wopr-system".into(),
        },
        Leadership::always(),
        wopr_operator::shutdown::on(async move {
            let _ = stopped.await;
        }),
    ));
    let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps/wopr-ca-bundle");
    let bundle_at = |expected: String| {
        let api = api.clone();
        let path = path.clone();
        async move {
            for _ in 0..500 {
                if api
                    .get(&path)
                    .is_some_and(|map| map["data"]["ca.crt"] == expected)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no bundle {expected:?} at {path}: {:?}", api.get(&path));
        }
    };
    bundle_at(pki().ca.cert_pem.clone()).await;
    let rotated = format!(
        "{}{}",
        issue_ca(Timestamp::now(), CA_LIFETIME).unwrap().cert_pem,
        pki().ca.cert_pem
    );
    bundle.send_replace(rotated.clone());
    bundle_at(rotated.clone()).await;
    assert_eq!(
        api.get("/api/v1/namespaces/wopr-system/configmaps/wopr-ca-bundle")
            .map(|map| map["data"]["ca.crt"].clone()),
        Some(serde_json::Value::String(rotated)),
        "the operator's namespace has the bundle the CLI verifies with"
    );
    assert!(
        api.get("/api/v1/namespaces/elsewhere/configmaps/wopr-ca-bundle")
            .is_none()
    );
    let _ = stop.send(());
    publishing.await.unwrap();
}

/// Another replica rotated the CA: the next check re-issues the leaf from
/// the new CA (long before the old leaf is due) and publishes the new
/// bundle, which still holds the old CA.
#[tokio::test(start_paused = true)]
async fn a_ca_rotated_by_another_replica_re_issues_the_leaf() {
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let old = issue_ca(start, CA_LIFETIME).unwrap();
    let state = CaState {
        bundle: old.cert_pem.clone(),
        ca: old.clone(),
    };
    let first = issue_leaf(&old, &loopback_names(), start, LEAF_LIFETIME).unwrap();
    let cert = Arc::new(ServerCert::new(&first.cert_pem, &first.key_pem).unwrap());
    let store = FixedCa::new(state.clone());
    let (bundle, published) = watch::channel(state.bundle.clone());
    let rotating = tokio::spawn(issue_forever(
        store.clone(),
        loopback_names(),
        state,
        cert.clone(),
        bundle,
        Clock::starting_at(start),
        Duration::from_secs(60),
    ));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        cert.chain(),
        vec![der_of(&first.cert_pem)],
        "nothing due yet"
    );

    let later = start.checked_add(SignedDuration::from_secs(1)).unwrap();
    let new = issue_ca(later, CA_LIFETIME).unwrap();
    let rotated = CaState {
        bundle: format!("{}{}", new.cert_pem, old.cert_pem),
        ca: new.clone(),
    };
    *store.0.lock().unwrap() = rotated.clone();
    tokio::time::sleep(Duration::from_secs(61)).await;
    let chain = cert.chain();
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let new_der = der_of(&new.cert_pem);
    let (_, new_ca) = x509_parser::parse_x509_certificate(&new_der).unwrap();
    assert_eq!(leaf.issuer(), new_ca.subject(), "signed by the new CA");
    assert_eq!(*published.borrow(), rotated.bundle);
    rotating.abort();
}

/// The kept CA is due: two replicas checking at once both find it so; one
/// replace wins, the other is refused 409 (it read an older version) and
/// reads the winner's. The new CA's bundle keeps the old CA, which has
/// years left.
#[tokio::test]
async fn a_due_ca_is_rotated_once_by_racing_replicas() {
    use wopr_operator::tls::ca_secret::CaSecret;
    let (client, api) = common::fake_api::FakeApi::start();
    let long_ago = Timestamp::now()
        .checked_sub(SignedDuration::from_hours(24 * 365 * 7))
        .unwrap();
    let first = CaSecret::new(client.clone(), "wopr-system", "wopr-operator-ca");
    let old = first.current(long_ago).await.unwrap();
    let second = CaSecret::new(client, "wopr-system", "wopr-operator-ca");
    let now = Timestamp::now();
    let (a, b) = tokio::join!(first.current(now), second.current(now));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "one new CA for both replicas");
    assert_ne!(a.ca, old.ca, "seven years into ten: rotated");
    assert!(a.bundle.starts_with(&a.ca.cert_pem));
    assert!(
        a.bundle.ends_with(&old.ca.cert_pem),
        "the old CA stays trusted"
    );
    let updates = api
        .take_requests()
        .into_iter()
        .filter(|request| request.method == http::Method::PUT)
        .count();
    assert_eq!(updates, 2, "both tried; one was refused");
}
