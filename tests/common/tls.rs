//! The test PKI: one CA and a server leaf for `localhost` and `127.0.0.1`
//! (every test server listens there), written once per test process to
//! files, so in-process servers, real processes and clients all use TLS
//! the way the product does: the control plane presents the leaf, and
//! sidecars and the CLI verify it against `ca.crt`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use k8s_openapi::jiff::Timestamp;
use tonic::transport::Channel;
use wopr_operator::tls::client::{Bundle, ClientTls, endpoint};
use wopr_operator::tls::issue::{CA_LIFETIME, Issued, LEAF_LIFETIME, issue_ca, issue_leaf};
use wopr_operator::tls::server::{ServerCert, Transport};

/// The CA, the leaf and their files.
pub struct TestPki {
    pub ca: Issued,
    pub leaf: Issued,
    /// `ca.crt`, `tls.crt` and `tls.key` in a directory kept for the process.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The names every test server's leaf carries: loopback, and for the e2e
/// tests whose pods dial this machine, `WOPR_E2E_CONTROL_PLANE`'s host.
pub fn loopback_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if let Ok(address) = std::env::var("WOPR_E2E_CONTROL_PLANE")
        && let Some((host, _port)) = address.rsplit_once(':')
    {
        names.push(host.to_owned());
    }
    names
}

/// The process's test PKI.
pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let now = Timestamp::now();
        let ca = issue_ca(now, CA_LIFETIME).unwrap();
        let leaf = issue_leaf(&ca, &loopback_names(), now, LEAF_LIFETIME).unwrap();
        let dir = tempfile::tempdir().unwrap().keep();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        TestPki {
            ca_file: write("ca.crt", &ca.cert_pem),
            cert_file: write("tls.crt", &leaf.cert_pem),
            key_file: write("tls.key", &leaf.key_pem),
            ca,
            leaf,
        }
    })
}

/// A server certificate of the test leaf, to serve (and swap).
pub fn server_cert() -> Arc<ServerCert> {
    let pki = pki();
    Arc::new(ServerCert::new(&pki.leaf.cert_pem, &pki.leaf.key_pem).unwrap())
}

/// TLS with the test leaf.
pub fn transport() -> Transport {
    Transport::Tls(server_cert())
}

/// How clients verify a test server: against the test CA.
pub fn client_tls() -> ClientTls {
    ClientTls::Verify {
        bundle: Bundle::File(pki().ca_file.clone()),
        server_name: None,
    }
}

/// A channel to the test server at `address` (`IP:PORT`), verified as
/// the product's clients verify it.
pub async fn channel(address: impl std::fmt::Display) -> Channel {
    endpoint(&address.to_string(), &client_tls())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The flags giving a `wopr-operator controller` process the test leaf
/// (as cert-manager's files would be).
pub fn controller_flags() -> Vec<String> {
    let pki = pki();
    vec![
        format!("--tls-cert-file={}", pki.cert_file.display()),
        format!("--tls-key-file={}", pki.key_file.display()),
        format!("--tls-ca-file={}", pki.ca_file.display()),
    ]
}

/// The flag giving a sidecar or CLI process the test CA.
pub fn ca_flag(flag: &str) -> String {
    format!("--{flag}={}", pki().ca_file.display())
}
