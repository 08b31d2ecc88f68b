//! Invites: `wop1://` and the base64url of a signed JSON object `{v, iss,
//! sub, ses, cap, exp, nonce, sig}`, by which the issuer `iss` lets the
//! subject `sub` claim capabilities `cap` on sessions `ses` until `exp`
//! (WOPR's `createInviteToken`).

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use k8s_openapi::jiff::Timestamp;

use super::{FormatError, IngressKey, Members, PeerKey, SignatureError, peer_key, version};

/// What every invite starts with.
pub const INVITE_SCHEME: &str = "wop1://";

/// Node writes base64url without padding; padded is read too.
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A verified invite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    pub version: u64,
    pub issuer: PeerKey,
    pub subject: PeerKey,
    pub sessions: Vec<String>,
    pub capabilities: Vec<String>,
    /// When it expires, in milliseconds since the epoch.
    pub expires_ms: i64,
    pub nonce: String,
}

impl Invite {
    /// Whether it has expired at `now` (WOPR: `Date.now() > exp`).
    pub fn expired(&self, now: Timestamp) -> bool {
        now.as_millisecond() > self.expires_ms
    }
}

/// An invite by `key` for `subject`, written as WOPR writes one: `v` 1,
/// then `iss, sub, ses, cap, exp, nonce` and `sig` last.
pub fn issue(
    key: &IngressKey,
    subject: &PeerKey,
    sessions: &[String],
    capabilities: &[String],
    expires_ms: i64,
    nonce: &str,
) -> String {
    let unsigned = format!(
        r#"{{"v":1,"iss":{},"sub":{},"ses":{},"cap":{},"exp":{expires_ms},"nonce":{}}}"#,
        json(key.public_key().as_str()),
        json(subject.as_str()),
        json(sessions),
        json(capabilities),
        json(nonce),
    );
    format!(
        "{INVITE_SCHEME}{}",
        URL_SAFE_NO_PAD.encode(key.sign_json(&unsigned))
    )
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("strings and lists of strings always serialize")
}

/// The invite `token`, its issuer's signature verified; whether it has
/// expired is the caller's to ask ([`Invite::expired`]).
pub fn parse(token: &str) -> Result<Invite, InviteError> {
    let encoded = token
        .strip_prefix(INVITE_SCHEME)
        .ok_or(InviteError::NotAnInvite)?;
    let raw = URL_SAFE_ANY_PADDING
        .decode(encoded)
        .map_err(|error| InviteError::NotBase64Url(error.to_string()))?;
    let members = Members::parse(&raw).map_err(InviteError::Format)?;
    let issuer = peer_key(&members, "iss").map_err(InviteError::Issuer)?;
    let unsigned = members.split_signature().map_err(InviteError::Format)?;
    issuer
        .verify(&unsigned.signed, &unsigned.signature)
        .map_err(InviteError::Signature)?;
    let field = InviteError::Field;
    Ok(Invite {
        version: version(&members).map_err(field)?,
        issuer,
        subject: peer_key(&members, "sub").map_err(field)?,
        sessions: members
            .required("ses", "a list of session names")
            .map_err(field)?,
        capabilities: members
            .required("cap", "a list of capabilities")
            .map_err(field)?,
        expires_ms: members
            .required("exp", "an integer of milliseconds since the epoch")
            .map_err(field)?,
        nonce: members.required("nonce", "a string").map_err(field)?,
    })
}

/// Why a token is not an invite we can honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("not an invite: an invite starts with {INVITE_SCHEME}")]
    NotAnInvite,
    #[error("the invite is not base64url after {INVITE_SCHEME} ({0}): send the token whole")]
    NotBase64Url(String),
    #[error("the invite is not a signed JSON object: {0}")]
    Format(FormatError),
    #[error("the invite's issuer: {0}")]
    Issuer(String),
    #[error("the invite's signature by its issuer (iss): {0}")]
    Signature(SignatureError),
    #[error("the invite's {0}")]
    Field(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE as PADDED;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    #[test]
    fn an_issued_invite_is_read_back() {
        let ours = IngressKey::generate();
        let peer = IngressKey::generate().public_key();
        let token = issue(
            &ours,
            &peer,
            &strings(&["team-a/researcher"]),
            &strings(&["inject"]),
            1_700_000_000_000,
            "00112233445566778899aabbccddeeff",
        );
        assert!(token.starts_with(INVITE_SCHEME) && !token.ends_with('='));
        let invite = parse(&token).unwrap();
        assert_eq!(
            invite,
            Invite {
                version: 1,
                issuer: ours.public_key(),
                subject: peer,
                sessions: strings(&["team-a/researcher"]),
                capabilities: strings(&["inject"]),
                expires_ms: 1_700_000_000_000,
                nonce: "00112233445566778899aabbccddeeff".into(),
            }
        );
        let at = |ms| Timestamp::from_millisecond(ms).unwrap();
        assert!(!invite.expired(at(1_700_000_000_000)));
        assert!(invite.expired(at(1_700_000_000_001)));
        let text = URL_SAFE_NO_PAD
            .decode(&token[INVITE_SCHEME.len()..])
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with(r#"{"v":1,"iss":""#), "{text}");
        assert!(text.contains(r#"],"exp":1700000000000,"nonce":"#), "{text}");
        let padded = format!("{INVITE_SCHEME}{}", PADDED.encode(&text));
        assert_eq!(parse(&padded), Ok(invite));
    }

    #[test]
    fn what_its_issuer_did_not_sign_is_refused() {
        let ours = IngressKey::generate();
        let peer = IngressKey::generate().public_key();
        let token = issue(&ours, &peer, &[], &strings(&["inject"]), 5, "nonce123");
        let text = String::from_utf8(
            URL_SAFE_NO_PAD
                .decode(&token[INVITE_SCHEME.len()..])
                .unwrap(),
        )
        .unwrap();
        let encode = |text: &str| format!("{INVITE_SCHEME}{}", URL_SAFE_NO_PAD.encode(text));
        let widened = text.replace(r#""ses":[]"#, r#""ses":["*"]"#);
        assert!(matches!(
            parse(&encode(&widened)),
            Err(InviteError::Signature(SignatureError::Mismatch))
        ));
        let other = IngressKey::generate().public_key();
        let reissued = text.replace(ours.public_key().as_str(), other.as_str());
        assert!(matches!(
            parse(&encode(&reissued)),
            Err(InviteError::Signature(_))
        ));
        assert_eq!(parse("wop2://x"), Err(InviteError::NotAnInvite));
        assert!(matches!(
            parse("wop1://***"),
            Err(InviteError::NotBase64Url(_))
        ));
        assert!(matches!(
            parse(&encode("[]")),
            Err(InviteError::Format(FormatError::NotAnObject))
        ));
        assert!(matches!(
            parse(&encode(r#"{"iss":"x"}"#)),
            Err(InviteError::Issuer(_))
        ));
        let no_sub = ours.sign_json(&format!(
            r#"{{"v":1,"iss":"{}"}}"#,
            ours.public_key().as_str()
        ));
        assert_eq!(
            parse(&encode(&no_sub)),
            Err(InviteError::Field(
                "sub is missing: it must be a public key (the base64 of its SPKI DER)".into()
            ))
        );
    }
}
