//! Keys as WOPR writes them: an Ed25519 public key is the standard base64
//! of its SPKI DER (what Node's `generateKeyPairSync('ed25519')` exports),
//! a private key the base64 of its PKCS#8 DER, a signature the standard
//! base64 of its 64 bytes.
//!
//! A peer is known by its key's text, so one key must have one spelling:
//! [`PeerKey::parse`] refuses base64 or DER that does not re-encode to
//! itself, and keys of small order, which would let one signature pass
//! for many messages.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, KeypairBytes};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Ed25519's algorithm, RFC 8410.
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// X25519's: WOPR's `encryptPub`, the key most likely given by mistake.
const X25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");

/// A peer's Ed25519 public key, in the one spelling WOPR gives it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    text: String,
    key: VerifyingKey,
}

impl PeerKey {
    /// The key `base64_spki` spells: the standard base64 of the SPKI DER
    /// of an Ed25519 key, written canonically (re-encoding gives the same
    /// text and the same DER), and not of small order.
    pub fn parse(base64_spki: &str) -> Result<PeerKey, KeyError> {
        let der = STANDARD
            .decode(base64_spki)
            .map_err(|error| KeyError::NotBase64(error.to_string()))?;
        if STANDARD.encode(&der) != base64_spki {
            return Err(KeyError::NonCanonicalBase64);
        }
        let spki = SubjectPublicKeyInfoRef::try_from(der.as_slice())
            .map_err(|error| KeyError::NotSpki(error.to_string()))?;
        match spki.algorithm.oid {
            ED25519 => {}
            X25519 => return Err(KeyError::X25519),
            other => return Err(KeyError::NotEd25519(other.to_string())),
        }
        let key = VerifyingKey::try_from(spki).map_err(|_| KeyError::NotAPoint)?;
        let canonical = key
            .to_public_key_der()
            .expect("an Ed25519 public key always encodes as SPKI");
        if canonical.as_bytes() != der.as_slice() {
            return Err(KeyError::NonCanonicalDer);
        }
        if key.is_weak() {
            return Err(KeyError::Weak);
        }
        Ok(PeerKey {
            text: base64_spki.to_owned(),
            key,
        })
    }

    /// The base64 text, as peers write it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// WOPR's short id of this key (see [`short_id`]).
    pub fn short_id(&self) -> String {
        short_id(&self.text)
    }

    /// Whether `signature_base64` is this key's signature of `message`,
    /// by `verify_strict`: no small-order components, no malleable `s`.
    pub fn verify(&self, message: &[u8], signature_base64: &str) -> Result<(), SignatureError> {
        let bytes = STANDARD
            .decode(signature_base64)
            .map_err(|error| SignatureError::NotBase64(error.to_string()))?;
        let signature = Signature::from_slice(&bytes)
            .map_err(|_| SignatureError::Length { bytes: bytes.len() })?;
        self.key
            .verify_strict(message, &signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// WOPR's short id of a key: the first 8 hex digits of the sha256 of its
/// base64 text (not of the key's bytes). For any text, so that what a
/// peer sent as a key can be named in an audit even when it is none.
pub fn short_id(key_base64: &str) -> String {
    Sha256::digest(key_base64.as_bytes())
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Our own signing key: what signs the invites this ingress issues.
pub struct IngressKey(SigningKey);

impl IngressKey {
    /// A new key from the system's random source.
    pub fn generate() -> IngressKey {
        let mut seed = [0u8; ed25519_dalek::SECRET_KEY_LENGTH];
        SystemRandom::new()
            .fill(&mut seed)
            .expect("the system's random source gives bytes");
        let key = SigningKey::from_bytes(&seed);
        zeroize::Zeroize::zeroize(&mut seed);
        IngressKey(key)
    }

    /// The key a PKCS#8 DER document holds: v1 as Node writes it, or v2
    /// (with the public key, which must then match).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<IngressKey, KeyError> {
        SigningKey::from_pkcs8_der(der)
            .map(IngressKey)
            .map_err(|error| KeyError::NotPkcs8(error.to_string()))
    }

    /// PKCS#8 v1 DER, the form Node and Python write and read.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        let keypair = KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        keypair
            .to_pkcs8_der()
            .expect("an Ed25519 private key always encodes as PKCS#8")
            .as_bytes()
            .to_vec()
    }

    pub fn public_key(&self) -> PeerKey {
        let key = self.0.verifying_key();
        let der = key
            .to_public_key_der()
            .expect("an Ed25519 public key always encodes as SPKI");
        PeerKey {
            text: STANDARD.encode(der.as_bytes()),
            key,
        }
    }

    /// The standard base64 of our signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        STANDARD.encode(self.0.sign(message).to_bytes())
    }

    /// `unsigned`, a JSON object's text, with `"sig"` appended as its last
    /// member: what WOPR's `JSON.stringify({...msg, sig})` writes, the
    /// signature being over `unsigned` exactly as given.
    ///
    /// # Panics
    ///
    /// If `unsigned` does not end with `}`: it is our own text (an invite,
    /// a test's message), never a peer's.
    pub fn sign_json(&self, unsigned: &str) -> String {
        let body = unsigned.trim_end();
        let trailing = &unsigned[body.len()..];
        let members = body
            .strip_suffix('}')
            .expect("sign_json is given a JSON object");
        let comma = if members.trim_end().ends_with('{') {
            ""
        } else {
            ","
        };
        let sig = self.sign(unsigned.as_bytes());
        format!("{members}{comma}\"sig\":\"{sig}\"}}{trailing}")
    }
}

impl std::fmt::Debug for IngressKey {
    /// The public key's short id, never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IngressKey")
            .field(&self.public_key().short_id())
            .finish()
    }
}

/// Why a text is not a key WOPR would write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not base64 ({0}): a key is the standard base64 of its SPKI DER")]
    NotBase64(String),
    #[error(
        "not canonical base64 (padding or trailing bits): write the key as Node's Buffer.toString('base64') does"
    )]
    NonCanonicalBase64,
    #[error("not an SPKI public key ({0}): export the public key as SPKI DER")]
    NotSpki(String),
    #[error(
        "an X25519 key (WOPR's encryptPub?), not an Ed25519 SPKI public key: give the signing key (publicKey)"
    )]
    X25519,
    #[error("not an Ed25519 SPKI public key: its algorithm is {0}, Ed25519's is 1.3.101.112")]
    NotEd25519(String),
    #[error("not an Ed25519 SPKI public key: its 32 bytes are not a point of the curve")]
    NotAPoint,
    #[error("not canonical DER: re-export the key as SPKI DER")]
    NonCanonicalDer,
    #[error("a weak (small-order) Ed25519 key, which cannot be trusted: generate a new key")]
    Weak,
    #[error("not an Ed25519 PKCS#8 private key ({0}): export it as PKCS#8 DER")]
    NotPkcs8(String),
}

/// Why a signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature is not standard base64 ({0})")]
    NotBase64(String),
    #[error("the signature is {bytes} bytes, an Ed25519 signature is 64")]
    Length { bytes: usize },
    #[error(
        "the signature does not verify: signed by another key, or the text was changed after signing (a re-serialized or re-ordered object no longer verifies: send the exact text that was signed)"
    )]
    Mismatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SPKI DER header of an Ed25519 key, before its 32 bytes.
    const HEADER: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];

    fn spki(point: [u8; 32]) -> String {
        STANDARD.encode([HEADER.as_slice(), point.as_slice()].concat())
    }

    #[test]
    fn a_generated_key_round_trips() {
        let ours = IngressKey::generate();
        let public = ours.public_key();
        assert_eq!(PeerKey::parse(public.as_str()), Ok(public.clone()));
        assert_eq!(public.as_str().len(), 60, "44 bytes of DER");
        let again = IngressKey::from_pkcs8_der(&ours.to_pkcs8_der()).unwrap();
        assert_eq!(again.public_key(), public);
        assert_eq!(ours.to_pkcs8_der().len(), 48, "v1, as Node writes it");
        let signature = ours.sign(b"hello");
        assert_eq!(public.verify(b"hello", &signature), Ok(()));
        assert_eq!(
            public.verify(b"hellO", &signature),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            IngressKey::generate()
                .public_key()
                .verify(b"hello", &signature),
            Err(SignatureError::Mismatch)
        );
    }

    /// Node's `generateKeyPairSync('ed25519')` export of one key (RFC 8032's
    /// first test vector), and WOPR's short id of it.
    #[test]
    fn node_s_spelling_of_a_key_is_read() {
        let secret = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let pkcs8 = [
            hex("302e020100300506032b657004220420").as_slice(),
            secret.as_slice(),
        ]
        .concat();
        let key = IngressKey::from_pkcs8_der(&pkcs8).unwrap();
        assert_eq!(key.to_pkcs8_der(), pkcs8);
        let public = key.public_key();
        assert_eq!(
            public.as_str(),
            "MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
        );
        assert_eq!(public.short_id(), short_id(public.as_str()));
        assert_eq!(public.short_id().len(), 8);
        // sha256("abc") = ba7816bf...
        assert_eq!(short_id("abc"), "ba7816bf");
    }

    #[test]
    fn what_is_not_one_spelling_of_an_ed25519_key_is_refused() {
        let good = IngressKey::generate().public_key();
        let text = good.as_str();
        let cases: Vec<(String, KeyError)> = vec![
            ("not base64!".into(), KeyError::NotBase64(String::new())),
            (
                text.trim_end_matches('=').to_owned(),
                KeyError::NotBase64(String::new()),
            ),
            (format!("{text} "), KeyError::NotBase64(String::new())),
            (STANDARD.encode(b"hello"), KeyError::NotSpki(String::new())),
            (
                // X25519's OID, 1.3.101.110
                STANDARD.encode(
                    [
                        hex("302a300506032b656e032100").as_slice(),
                        [9u8; 32].as_slice(),
                    ]
                    .concat(),
                ),
                KeyError::X25519,
            ),
            (
                // Ed448's OID, 1.3.101.113, and 57 bytes
                STANDARD.encode(
                    [
                        hex("3043300506032b6571033a00").as_slice(),
                        [9u8; 57].as_slice(),
                    ]
                    .concat(),
                ),
                KeyError::NotEd25519("1.3.101.113".into()),
            ),
            (
                // 31 bytes of key
                STANDARD.encode(
                    [
                        hex("3029300506032b6570032000").as_slice(),
                        [9u8; 31].as_slice(),
                    ]
                    .concat(),
                ),
                KeyError::NotAPoint,
            ),
            // The identity point: of small order.
            (
                spki({
                    let mut identity = [0u8; 32];
                    identity[0] = 1;
                    identity
                }),
                KeyError::Weak,
            ),
        ];
        for (input, expected) in cases {
            let error = PeerKey::parse(&input).unwrap_err();
            assert_eq!(
                std::mem::discriminant(&error),
                std::mem::discriminant(&expected),
                "{input}: {error}"
            );
            if !matches!(expected, KeyError::NotBase64(_) | KeyError::NotSpki(_)) {
                assert_eq!(error, expected, "{input}");
            }
        }
    }

    #[test]
    fn non_canonical_base64_is_refused() {
        // The last character of a 44-byte key's base64 carries 2 spare
        // bits: setting them spells the same bytes differently, which the
        // decoder itself refuses.
        let text = IngressKey::generate().public_key().as_str().to_owned();
        let (head, last) = text.split_at(text.len() - 2);
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let at = alphabet.find(&last[..1]).unwrap();
        let other = &alphabet[(at ^ 1)..=(at ^ 1)];
        let error = PeerKey::parse(&format!("{head}{other}=")).unwrap_err();
        assert!(
            matches!(error, KeyError::NotBase64(_) | KeyError::NonCanonicalBase64),
            "{error}"
        );
    }

    #[test]
    fn signatures_that_are_not_64_bytes_of_base64_are_refused() {
        let key = IngressKey::generate();
        let public = key.public_key();
        assert!(matches!(
            public.verify(b"m", "%%%"),
            Err(SignatureError::NotBase64(_))
        ));
        assert_eq!(
            public.verify(b"m", &STANDARD.encode([0u8; 63])),
            Err(SignatureError::Length { bytes: 63 })
        );
    }

    #[test]
    fn sign_json_appends_sig_last_and_signs_the_text_as_given() {
        let key = IngressKey::generate();
        for (unsigned, prefix) in [
            (r#"{"a":1}"#, r#"{"a":1,"sig":""#),
            ("{}", r#"{"sig":""#),
            ("{ }", r#"{ "sig":""#),
            (r#"{"a":{}}"#, r#"{"a":{},"sig":""#),
        ] {
            let signed = key.sign_json(unsigned);
            assert!(signed.starts_with(prefix), "{signed}");
            let sig = key.sign(unsigned.as_bytes());
            assert!(signed.ends_with(&format!("{sig}\"}}")), "{signed}");
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let key = IngressKey::generate();
        let shown = format!("{key:?}");
        assert_eq!(
            shown,
            format!("IngressKey({:?})", key.public_key().short_id())
        );
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
            .collect()
    }
}
