//! The control plane's TLS server side: a certificate that can be swapped
//! while the server runs ([`ServerCert`], a rustls `ResolvesServerCert`),
//! and the TLS connections accepted on a listener with it, handed to tonic
//! as its incoming stream. tonic's own `ServerTlsConfig` takes a fixed
//! certificate, so rotating one would mean a restart that drops every
//! policy watch; here a new certificate serves new handshakes at once and
//! the open connections keep theirs.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::TlsError;

/// How long a client may take over its TLS handshake before its
/// connection is closed (a client that never finishes holds nothing).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// How a server secures its connections.
#[derive(Clone, Debug)]
pub enum Transport {
    /// TLS with this (swappable) certificate.
    Tls(Arc<ServerCert>),
    /// Plaintext h2c: development only (`--insecure-plaintext`), never the
    /// default anywhere.
    InsecurePlaintext,
}

/// The certificate the server presents, swappable in place.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// Serves `cert_pem` (the leaf first, then any intermediates) with `key_pem`.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<ServerCert, TlsError> {
        Ok(ServerCert {
            current: RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?)),
        })
    }

    /// Serves `cert_pem` with `key_pem` from the next handshake on. A pair
    /// that cannot be served changes nothing and is an error.
    pub fn swap(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let key = Arc::new(certified_key(cert_pem, key_pem)?);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = key;
        Ok(())
    }

    /// The certificate chain served now.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().cert.clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The rustls key for `cert_pem` and `key_pem`, checked to belong together.
fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let invalid = |what: &str, why: String| TlsError::Pem {
        what: what.to_owned(),
        why,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid("the server certificate", error.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(
            "the server certificate",
            "no PEM certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|error| invalid("the server key", format!("no PEM private key ({error})")))?;
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

/// The one crypto provider: ring, as tonic's `tls-ring` uses.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The connections `listener` accepts, each after a TLS handshake
/// presenting `cert` (HTTP/2 only, by ALPN). A failed or slow handshake
/// is logged and its connection closed; it never stops the server.
/// Handshakes run in tasks of their own, so one slow client delays no other.
pub fn incoming(
    listener: TcpListener,
    cert: Arc<ServerCert>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    incoming_speaking(listener, cert, &[b"h2"])
}

/// [`incoming`], offering `protocols` by ALPN (the peer ingress speaks
/// HTTP/1.1 to peers whose HTTP clients do not speak HTTP/2).
pub fn incoming_speaking(
    listener: TcpListener,
    cert: Arc<ServerCert>,
    protocols: &[&[u8]],
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = protocols.iter().map(|protocol| protocol.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (accepted, stream) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let (connection, peer) = tokio::select! {
                () = accepted.closed() => return,
                next = listener.accept() => match next {
                    Ok(next) => next,
                    Err(error) => {
                        // Out of file descriptors, say: wait, then go on.
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // No Nagle: HTTP/2 writes a reply's HEADERS and DATA apart,
            // and a peer delaying its ACK would hold the second for 40 ms.
            if let Err(error) = connection.set_nodelay(true) {
                tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(connection)).await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(stream)
}
