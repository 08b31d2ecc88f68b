//! The operator's CA, kept in a Secret of its namespace so that every
//! replica signs with the same one: created when missing (two replicas
//! starting at once: one create wins, the other reads what it made),
//! rotated two thirds into its life by a replace conditional on the
//! version read (a lost race reads the winner's). The bundle clients trust
//! keeps the previous CA until it expires, so sidecars that have not yet
//! read the new bundle still accept leaves of either.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::TlsError;
use super::issue::{CA_LIFETIME, Issued, issue_ca, validity, validity_der};
use super::source::{CaState, CaStore};
use crate::cluster::{FIELD_MANAGER, MANAGED_BY_LABEL, create_once, describe};

/// The Secret's key of the CA certificate.
pub const CA_CERT_KEY: &str = "tls.crt";
/// The Secret's key of the CA's private key.
pub const CA_KEY_KEY: &str = "tls.key";
/// The Secret's key (and the published ConfigMap's) of the bundle.
pub const BUNDLE_KEY: &str = "ca.crt";

/// What the CA should be at `now`, given what is kept: a new CA when there
/// is none or the one kept is due (its bundle then also holding the
/// earlier CAs not yet expired); `None` when the one kept stays.
pub fn next_ca(kept: Option<&CaState>, now: Timestamp) -> Result<Option<CaState>, TlsError> {
    if let Some(kept) = kept
        && !validity(&kept.ca.cert_pem, "the operator's CA")?.due(now)
    {
        return Ok(None);
    }
    let ca = issue_ca(now, CA_LIFETIME)?;
    let mut bundle = ca.cert_pem.clone();
    for earlier in kept
        .map(|kept| kept.bundle.as_str())
        .into_iter()
        .flat_map(certificates)
    {
        let unexpired = validity_der(&earlier, "a bundled CA").is_ok_and(|v| v.not_after > now);
        if unexpired {
            bundle.push_str(&pem(&earlier));
        }
    }
    Ok(Some(CaState { ca, bundle }))
}

/// The certificates of a PEM bundle (unreadable sections skipped).
fn certificates(bundle: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(bundle.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// `der` as a PEM certificate (64-column base64, as RFC 7468 writes it).
fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: String = body
        .as_bytes()
        .chunks(64)
        .map(|line| format!("{}\n", String::from_utf8_lossy(line)))
        .collect();
    format!("-----BEGIN CERTIFICATE-----\n{lines}-----END CERTIFICATE-----\n")
}

/// The CA in the Secret `name` of `namespace`.
#[derive(Clone)]
pub struct CaSecret {
    client: Client,
    api: Api<Secret>,
    name: String,
    namespace: String,
}

impl CaSecret {
    /// The Secret `name` in `namespace`.
    pub fn new(client: Client, namespace: &str, name: &str) -> CaSecret {
        CaSecret {
            api: Api::namespaced(client.clone(), namespace),
            client,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    fn secret(&self, state: &CaState, resource_version: Option<String>) -> Secret {
        let data = [
            (CA_CERT_KEY, &state.ca.cert_pem),
            (CA_KEY_KEY, &state.ca.key_pem),
            (BUNDLE_KEY, &state.bundle),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), ByteString(value.clone().into_bytes())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some([(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned())].into()),
                resource_version,
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    fn error(&self, error: &kube::Error) -> TlsError {
        TlsError::Pem {
            what: format!("the CA Secret {}/{}", self.namespace, self.name),
            why: describe(error),
        }
    }
}

/// What a CA Secret holds, when it holds a CA.
fn kept(secret: &Secret) -> Option<CaState> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|value| String::from_utf8(value.0.clone()).ok())
    };
    let ca = Issued {
        cert_pem: text(CA_CERT_KEY)?,
        key_pem: text(CA_KEY_KEY)?,
    };
    let bundle = text(BUNDLE_KEY).unwrap_or_else(|| ca.cert_pem.clone());
    Some(CaState { ca, bundle })
}

impl CaStore for CaSecret {
    async fn current(&self, now: Timestamp) -> Result<CaState, TlsError> {
        // Two rounds: a lost race (create or replace) is settled by reading
        // the winner's CA in the second.
        for _ in 0..2 {
            let found = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| self.error(&e))?;
            let state = found.as_ref().and_then(kept);
            let Some(next) = next_ca(state.as_ref(), now)? else {
                return Ok(state.expect("next_ca keeps only a kept CA"));
            };
            let written = match found {
                None => create_once(&self.client, &self.secret(&next, None))
                    .await
                    .map_err(|e| self.error(&e))?,
                Some(found) => {
                    let secret = self.secret(&next, found.metadata.resource_version.clone());
                    let params = PostParams {
                        field_manager: Some(FIELD_MANAGER.to_owned()),
                        ..PostParams::default()
                    };
                    match self.api.replace(&self.name, &params, &secret).await {
                        Ok(_) => true,
                        Err(kube::Error::Api(status)) if status.is_conflict() => false,
                        Err(error) => return Err(self.error(&error)),
                    }
                }
            };
            if written {
                tracing::info!(secret = %self.name, "the operator's CA was created or rotated");
                return Ok(next);
            }
        }
        Err(TlsError::Pem {
            what: format!("the CA Secret {}/{}", self.namespace, self.name),
            why: "it kept changing while being read".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_ca_is_made_when_none_is_kept_and_kept_until_due() {
        let start = at("2026-01-01T00:00:00Z");
        let made = next_ca(None, start).unwrap().unwrap();
        assert_eq!(certificates(&made.bundle).len(), 1);
        let later = start
            .saturating_add(k8s_openapi::jiff::SignedDuration::from_hours(24 * 365 * 6))
            .unwrap();
        assert_eq!(next_ca(Some(&made), later).unwrap(), None, "6 of 10 years");
    }

    #[test]
    fn a_due_ca_is_replaced_and_stays_in_the_bundle_until_it_expires() {
        let start = at("2026-01-01T00:00:00Z");
        let first = next_ca(None, start).unwrap().unwrap();
        let due = at("2033-01-01T00:00:00Z");
        let second = next_ca(Some(&first), due).unwrap().unwrap();
        assert_ne!(second.ca, first.ca);
        let bundled = certificates(&second.bundle);
        assert_eq!(bundled.len(), 2, "the new CA and the old one");
        assert!(second.bundle.starts_with(&second.ca.cert_pem));
        assert!(
            second.bundle.ends_with(&first.ca.cert_pem),
            "{}",
            second.bundle
        );
        let first_end = validity(&first.ca.cert_pem, "first").unwrap().not_after;
        assert!(first_end > due);
        let third = next_ca(Some(&second), at("2040-01-01T00:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(
            certificates(&third.bundle).len(),
            2,
            "the first has expired"
        );
        assert!(!third.bundle.contains(&first.ca.cert_pem));
    }
}
