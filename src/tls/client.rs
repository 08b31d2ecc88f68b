//! How the sidecar and the CLI reach the control plane: over TLS, verifying
//! the server's certificate against the operator's CA bundle (read anew
//! from its file at every connect, so a rotated CA is picked up without a
//! restart) and its name against the host dialled (or a name given); no
//! other root is trusted. Plaintext only when asked for by name
//! ([`ClientTls::Plaintext`], a development flag), never by accident: an
//! `http://` address without it is refused.

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// How to secure the connection to the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTls {
    /// TLS, trusting only the CAs of `bundle`, the server's name being
    /// `server_name`, or else the address's host.
    Verify {
        /// The CA bundle.
        bundle: Bundle,
        /// The name the certificate must carry, when not the host dialled.
        server_name: Option<String>,
    },
    /// Plaintext h2c: for development only (`--insecure-plaintext`).
    Plaintext,
}

/// Where the CA bundle (PEM) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bundle {
    /// A file, read anew at each connect: the mounted ConfigMap, or the
    /// CLI's `--control-plane-ca`.
    File(PathBuf),
    /// Read already: the ConfigMap the CLI fetched through the API server
    /// (`from` names it for errors).
    Published {
        /// The PEM text.
        pem: String,
        /// Where it was read, as errors name it.
        from: String,
    },
}

/// Why no connection to the control plane could be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// A plaintext address without the development flag.
    #[error(
        "refusing plaintext to the control plane at {0}: TLS is required (use https:// or host:port; --insecure-plaintext allows plaintext for development only)"
    )]
    PlaintextRefused(String),
    /// An `https://` address with the plaintext flag.
    #[error("the control plane at {0} is https:// but --insecure-plaintext asks for plaintext")]
    Contradiction(String),
    /// Not an address.
    #[error("control-plane address {0:?} is invalid: expected [https://]host:port")]
    Address(String),
    /// The CA bundle cannot be read.
    #[error("cannot read the control plane's CA bundle {path}: {source}")]
    Bundle {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The CA bundle holds something that is not a certificate.
    #[error("the control plane's CA bundle {path} cannot be used: {why}")]
    InvalidBundle {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// The CA bundle holds no certificate.
    #[error("the control plane's CA bundle {0} holds no PEM certificate")]
    EmptyBundle(String),
}

/// The endpoint of the control plane at `address` (`https://host:port`,
/// `host:port`, or with [`ClientTls::Plaintext`] `http://host:port`),
/// secured as `tls` says. Connecting it fails closed on a certificate of
/// another name, an expired one, or one of an unknown CA.
pub fn endpoint(address: &str, tls: &ClientTls) -> Result<Endpoint, ClientTlsError> {
    let (plaintext, host_port) = match address.split_once("://") {
        Some(("http", rest)) => (true, rest),
        Some(("https", rest)) => (false, rest),
        Some(_) => return Err(ClientTlsError::Address(address.to_owned())),
        None => (false, address),
    };
    let invalid = || ClientTlsError::Address(address.to_owned());
    match tls {
        ClientTls::Plaintext if address.starts_with("https://") => {
            Err(ClientTlsError::Contradiction(address.to_owned()))
        }
        ClientTls::Plaintext => {
            Endpoint::from_shared(format!("http://{host_port}")).map_err(|_| invalid())
        }
        ClientTls::Verify { .. } if plaintext => {
            Err(ClientTlsError::PlaintextRefused(address.to_owned()))
        }
        ClientTls::Verify {
            bundle,
            server_name,
        } => {
            let endpoint =
                Endpoint::from_shared(format!("https://{host_port}")).map_err(|_| invalid())?;
            let host = endpoint.uri().host().ok_or_else(invalid)?;
            let name = server_name.clone().unwrap_or_else(|| {
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            });
            let (bundle, from) = match bundle {
                Bundle::File(ca_file) => {
                    let pem = std::fs::read(ca_file).map_err(|source| ClientTlsError::Bundle {
                        path: ca_file.display().to_string(),
                        source,
                    })?;
                    (pem, ca_file.display().to_string())
                }
                Bundle::Published { pem, from } => (pem.clone().into_bytes(), from.clone()),
            };
            if !String::from_utf8_lossy(&bundle).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ClientTlsError::EmptyBundle(from));
            }
            endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(bundle))
                        .domain_name(name),
                )
                .map_err(|error| ClientTlsError::InvalidBundle {
                    path: from,
                    why: crate::cluster::root_cause(&error),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(dir: &tempfile::TempDir) -> ClientTls {
        let ca_file = dir.path().join("ca.crt");
        let ca = crate::tls::issue::issue_ca(
            k8s_openapi::jiff::Timestamp::now(),
            crate::tls::issue::CA_LIFETIME,
        )
        .unwrap();
        std::fs::write(&ca_file, ca.cert_pem).unwrap();
        ClientTls::Verify {
            bundle: Bundle::File(ca_file),
            server_name: None,
        }
    }

    #[test]
    fn plaintext_needs_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let error = endpoint("http://cp:9443", &verify(&dir)).unwrap_err();
        assert!(
            matches!(error, ClientTlsError::PlaintextRefused(_)),
            "{error}"
        );
        assert!(error.to_string().contains("TLS is required"), "{error}");
        let plain = endpoint("http://cp:9443", &ClientTls::Plaintext).unwrap();
        assert_eq!(plain.uri().scheme_str(), Some("http"));
        let bare = endpoint("cp:9443", &ClientTls::Plaintext).unwrap();
        assert_eq!(bare.uri().scheme_str(), Some("http"));
        assert!(matches!(
            endpoint("https://cp:9443", &ClientTls::Plaintext),
            Err(ClientTlsError::Contradiction(_))
        ));
    }

    #[test]
    fn tls_is_the_default_for_a_bare_address() {
        let dir = tempfile::tempdir().unwrap();
        for address in ["cp.ns.svc:9443", "https://cp.ns.svc:9443"] {
            let endpoint = endpoint(address, &verify(&dir)).unwrap();
            assert_eq!(endpoint.uri().scheme_str(), Some("https"), "{address}");
        }
    }

    #[test]
    fn a_missing_or_empty_bundle_is_a_precise_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ClientTls::Verify {
            bundle: Bundle::File(dir.path().join("none")),
            server_name: None,
        };
        let error = endpoint("cp:9443", &missing).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read the control plane's CA bundle")
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        let error = endpoint(
            "cp:9443",
            &ClientTls::Verify {
                bundle: Bundle::File(empty),
                server_name: None,
            },
        )
        .unwrap_err();
        assert!(matches!(error, ClientTlsError::EmptyBundle(_)), "{error}");
        let broken = dir.path().join("broken");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        let error = endpoint(
            "cp:9443",
            &ClientTls::Verify {
                bundle: Bundle::File(broken),
                server_name: None,
            },
        )
        .unwrap_err();
        assert!(
            matches!(error, ClientTlsError::InvalidBundle { .. }),
            "{error}"
        );
        assert!(matches!(
            endpoint("ftp://cp:9443", &verify(&dir)),
            Err(ClientTlsError::Address(_))
        ));
    }
}
