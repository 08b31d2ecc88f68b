//! TLS on the control plane, shared by the roles on both ends: the
//! operator's own CA and the leaves it issues ([`issue`]), a server whose
//! certificate is swapped in place without a restart ([`server`]), where
//! that certificate comes from (cert-manager's files or the operator's CA
//! in a Secret: [`source`]), and the one client setup the sidecar and the
//! CLI verify the control plane with ([`client`]).

pub mod ca_secret;
pub mod client;
pub mod issue;
pub mod server;
pub mod source;

/// Why a certificate or key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Issuing a certificate failed.
    #[error("cannot issue a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    /// A PEM file or value holds no usable certificate or key.
    #[error("{what}: {why}")]
    Pem {
        /// What was read (a file, a Secret's key).
        what: String,
        /// What was wrong with it.
        why: String,
    },
    /// The key does not fit the certificate, or rustls refuses it.
    #[error("the certificate and key cannot be served: {0}")]
    Rustls(#[from] rustls::Error),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}
