//! The operator's own CA and the server leaves it issues, with rcgen. Pure
//! functions of the time they are given (tests pass any instant): a CA, a
//! leaf for some DNS names and IPs, and when a certificate is due for
//! rotation (two thirds into its lifetime, so a failed rotation has a third
//! of the lifetime to be retried before anything expires).

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::TlsError;

/// The operator CA's lifetime.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A server leaf's lifetime.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How far back a new certificate's validity starts, for clocks a little
/// behind the issuer's.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// The CA's common name, before its start time.
pub const CA_NAME: &str = "wopr-operator CA";

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// When a certificate is valid: from `not_before` to `not_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// The first instant it is valid.
    pub not_before: Timestamp,
    /// The last.
    pub not_after: Timestamp,
}

impl Validity {
    /// Two thirds into the lifetime: when a new certificate should replace it.
    pub fn rotate_at(&self) -> Timestamp {
        let lifetime = self.not_after.duration_since(self.not_before);
        self.not_before
            .saturating_add(lifetime * 2 / 3)
            .unwrap_or(self.not_after)
    }

    /// Whether at `now` a new certificate should replace it (also when it
    /// has expired, or is not valid yet: a clock jumped).
    pub fn due(&self, now: Timestamp) -> bool {
        now >= self.rotate_at() || now < self.not_before
    }
}

/// A new CA, valid from `now` for `lifetime`.
pub fn issue_ca(now: Timestamp, lifetime: Duration) -> Result<Issued, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    // Named for its start too: a CA made later (a rotation, another
    // installation) is another issuer, not one whose signature fails.
    params.distinguished_name = name(&format!("{CA_NAME} {now}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, now, lifetime)?;
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A server leaf for `names` (DNS names, or IP addresses written as
/// such), signed by `ca`, valid from `now` for `lifetime` (never past the
/// CA's own end).
pub fn issue_leaf(
    ca: &Issued,
    names: &[String],
    now: Timestamp,
    lifetime: Duration,
) -> Result<Issued, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let ca_end = validity(&ca.cert_pem, "the CA certificate")?.not_after;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = name(names.first().map_or("wopr-operator", String::as_str));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let until_ca_end = Duration::try_from(ca_end.duration_since(now)).unwrap_or(Duration::ZERO);
    set_validity(&mut params, now, lifetime.min(until_ca_end))?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The validity of the first certificate in `pem` (`what` names it in errors).
pub fn validity(pem: &str, what: &str) -> Result<Validity, TlsError> {
    let invalid = |why: String| TlsError::Pem {
        what: what.to_owned(),
        why,
    };
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| invalid(format!("no PEM certificate ({error})")))?;
    validity_der(&der, what)
}

/// The validity of the DER certificate `der` (`what` names it in errors).
pub fn validity_der(der: &[u8], what: &str) -> Result<Validity, TlsError> {
    let invalid = |why: String| TlsError::Pem {
        what: what.to_owned(),
        why,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| invalid(format!("not an X.509 certificate ({error})")))?;
    let at = |time: x509_parser::time::ASN1Time| {
        Timestamp::from_second(time.timestamp())
            .map_err(|error| invalid(format!("a validity out of range ({error})")))
    };
    Ok(Validity {
        not_before: at(cert.validity().not_before)?,
        not_after: at(cert.validity().not_after)?,
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from `BACKDATE` before `now` until `lifetime` after it.
fn set_validity(
    params: &mut CertificateParams,
    now: Timestamp,
    lifetime: Duration,
) -> Result<(), TlsError> {
    let at = |instant: Timestamp| {
        time::OffsetDateTime::from_unix_timestamp(instant.as_second()).map_err(|error| {
            TlsError::Pem {
                what: "a validity".into(),
                why: error.to_string(),
            }
        })
    };
    let start = now.saturating_sub(signed(BACKDATE)).unwrap_or(now);
    let end = now.saturating_add(signed(lifetime)).unwrap_or(now);
    params.not_before = at(start)?;
    params.not_after = at(end)?;
    Ok(())
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_leaf_is_valid_for_its_lifetime_from_the_given_time() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = issue_ca(now, CA_LIFETIME).unwrap();
        let leaf = issue_leaf(&ca, &["svc.ns.svc".into()], now, LEAF_LIFETIME).unwrap();
        let validity = validity(&leaf.cert_pem, "leaf").unwrap();
        assert_eq!(validity.not_before, at("2025-12-31T23:55:00Z"));
        assert_eq!(validity.not_after, at("2026-01-31T00:00:00Z"));
    }

    #[test]
    fn a_leaf_never_outlives_its_ca() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = issue_ca(now, Duration::from_secs(3600)).unwrap();
        let leaf = issue_leaf(&ca, &["a".into()], now, LEAF_LIFETIME).unwrap();
        assert_eq!(
            validity(&leaf.cert_pem, "leaf").unwrap().not_after,
            at("2026-01-01T01:00:00Z")
        );
    }

    #[test]
    fn rotation_is_due_two_thirds_into_the_lifetime() {
        let validity = Validity {
            not_before: at("2026-01-01T00:00:00Z"),
            not_after: at("2026-01-31T00:00:00Z"),
        };
        assert_eq!(validity.rotate_at(), at("2026-01-21T00:00:00Z"));
        assert!(!validity.due(at("2026-01-01T00:00:00Z")));
        assert!(!validity.due(at("2026-01-20T23:59:59Z")));
        assert!(validity.due(at("2026-01-21T00:00:00Z")));
        assert!(validity.due(at("2026-02-01T00:00:00Z")), "expired");
        assert!(validity.due(at("2025-12-31T00:00:00Z")), "not valid yet");
    }

    #[test]
    fn a_leaf_names_its_dns_names_and_ips_and_its_issuer() {
        let now = at("2026-01-01T00:00:00Z");
        let ca = issue_ca(now, CA_LIFETIME).unwrap();
        let names = [
            "wopr-operator.wopr-system.svc".to_owned(),
            "10.1.2.3".to_owned(),
        ];
        let leaf = issue_leaf(&ca, &names, now, LEAF_LIFETIME).unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap().value;
        let shown: Vec<String> = sans
            .general_names
            .iter()
            .map(|name| format!("{name}"))
            .collect();
        assert_eq!(
            shown,
            [
                "DNSName(wopr-operator.wopr-system.svc)",
                "IPAddress(0a:01:02:03)"
            ]
        );
        assert_eq!(
            cert.issuer().to_string(),
            format!("CN={CA_NAME} 2026-01-01T00:00:00Z")
        );
        assert!(!cert.is_ca());
    }

    #[test]
    fn unreadable_pem_is_a_precise_error() {
        let error = validity("not pem", "the CA certificate").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("the CA certificate: no PEM certificate"),
            "{error}"
        );
    }
}
