//! Where the control plane's certificate comes from, kept current while
//! the server runs: cert-manager's files, polled and swapped in when they
//! change ([`follow_files`]); or a leaf the operator issues itself from
//! its CA, re-issued before it is due and whenever the CA changes
//! ([`issue_forever`]). Either way the CA bundle clients must trust is
//! published on a watch channel for whoever hands it to session pods.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;

use super::TlsError;
use super::issue::{Issued, LEAF_LIFETIME, Validity, issue_leaf, validity_der};
use super::server::ServerCert;
use crate::clock::Clock;

/// How often cert-manager's files are read for a change.
pub const FILE_POLL: Duration = Duration::from_secs(10);
/// How often the self-issued leaf and the CA are checked for rotation.
pub const ROTATION_CHECK: Duration = Duration::from_secs(60);

/// The files of a cert-manager Secret mounted in the operator's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The server certificate chain (`tls.crt`).
    pub cert: PathBuf,
    /// Its key (`tls.key`).
    pub key: PathBuf,
    /// The CA bundle clients are to trust (`ca.crt`).
    pub ca: PathBuf,
}

/// What the files hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The certificate and key.
    pub served: Issued,
    /// The CA bundle.
    pub bundle: String,
}

impl CertFiles {
    /// Reads the three files.
    pub async fn load(&self) -> Result<Loaded, TlsError> {
        let read = |path: PathBuf| async move {
            tokio::fs::read_to_string(&path)
                .await
                .map_err(|source| TlsError::Read {
                    path: path.display().to_string(),
                    source,
                })
        };
        Ok(Loaded {
            served: Issued {
                cert_pem: read(self.cert.clone()).await?,
                key_pem: read(self.key.clone()).await?,
            },
            bundle: read(self.ca.clone()).await?,
        })
    }
}

/// Keeps `cert` and `bundle` as `files` say, reading them every `poll`:
/// a change is swapped in at once; a pair that cannot be served (a Secret
/// half-written, say) is logged and the certificate in force kept.
pub async fn follow_files(
    files: CertFiles,
    mut last: Loaded,
    cert: Arc<ServerCert>,
    bundle: watch::Sender<String>,
    poll: Duration,
) {
    loop {
        tokio::time::sleep(poll).await;
        let loaded = match files.load().await {
            Ok(loaded) if loaded == last => continue,
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "cannot read the TLS files; keeping the certificate in force");
                continue;
            }
        };
        match cert.swap(&loaded.served.cert_pem, &loaded.served.key_pem) {
            Ok(()) => {
                tracing::info!("the control plane's certificate changed; serving the new one");
                bundle.send_replace(loaded.bundle.clone());
                last = loaded;
            }
            Err(error) => {
                tracing::warn!(%error, "the new TLS files cannot be served; keeping the certificate in force")
            }
        }
    }
}

/// The operator's CA as kept (in a Secret): the CA that signs, and the
/// bundle clients trust (that CA and any earlier one not yet expired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaState {
    /// The CA certificate and key.
    pub ca: Issued,
    /// The CA bundle, PEM.
    pub bundle: String,
}

/// Reads the CA (making or rotating it when due) wherever it is kept.
pub trait CaStore: Send + Sync {
    /// The CA in force at `now`.
    fn current(
        &self,
        now: Timestamp,
    ) -> impl std::future::Future<Output = Result<CaState, TlsError>> + Send;
}

/// A leaf for `names` from `ca`, valid from `now` for [`LEAF_LIFETIME`].
pub fn leaf_for(ca: &CaState, names: &[String], now: Timestamp) -> Result<Issued, TlsError> {
    issue_leaf(&ca.ca, names, now, LEAF_LIFETIME)
}

/// Keeps `cert` a leaf for `names` from the CA `store` keeps: checked every
/// `check`, re-issued when two thirds of its life have passed or the CA
/// changed (another replica rotated it), the bundle published each time.
/// A failure is logged and retried at the next check; the leaf in force
/// stays until it is replaced (it has a third of its life left).
pub async fn issue_forever(
    store: impl CaStore,
    names: Vec<String>,
    mut ca: CaState,
    cert: Arc<ServerCert>,
    bundle: watch::Sender<String>,
    clock: Clock,
    check: Duration,
) {
    let mut served = leaf_validity(&cert);
    loop {
        tokio::time::sleep(check).await;
        let now = clock.now();
        let current = match store.current(now).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, "cannot read the operator's CA; keeping the certificate in force");
                continue;
            }
        };
        let due = served.is_none_or(|validity| validity.due(now));
        if current == ca && !due {
            continue;
        }
        let swapped = leaf_for(&current, &names, now)
            .and_then(|leaf| cert.swap(&leaf.cert_pem, &leaf.key_pem));
        match swapped {
            Ok(()) => {
                tracing::info!(
                    ca_changed = current != ca,
                    "the control plane's certificate was re-issued"
                );
                bundle.send_replace(current.bundle.clone());
                ca = current;
                served = leaf_validity(&cert);
            }
            Err(error) => tracing::warn!(%error, "cannot re-issue the control plane's certificate"),
        }
    }
}

/// The validity of the leaf `cert` serves.
fn leaf_validity(cert: &ServerCert) -> Option<Validity> {
    let leaf = cert.chain().into_iter().next()?;
    validity_der(&leaf, "the served certificate").ok()
}
