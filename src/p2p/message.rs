//! A message from a WOPR peer: `{v, type, from, ts, nonce, ...type-specific,
//! sig}`, opened in one order: its size, its JSON, its sender, the sender's
//! signature over the text as received, and only then its fields.
//!
//! What fails before the signature verifies could have been sent by
//! anyone ([`Unverified`]): the caller refuses it without holding it
//! against the key it names. What fails after ([`Verified::fields`]) the
//! key holder did send.

use k8s_openapi::jiff::Timestamp;

use super::rotation::{self, Rotation};
use super::{
    FormatError, MAX_MESSAGE_BYTES, MAX_PAYLOAD_BYTES, Members, PeerKey, REPLAY_WINDOW, peer_key,
    version,
};
use crate::api::check_label;

/// What a message asks for: its `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Run a session on a payload (WOPR's `inject`).
    Inject,
    /// Claim an invite: become a peer of the sessions it names.
    Claim,
    /// Replace the sender's key.
    KeyRotation,
    /// Ours, not WOPR's: fetch the answers waiting for the sender.
    Outbox,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Inject,
        Action::Claim,
        Action::KeyRotation,
        Action::Outbox,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Inject => "inject",
            Action::Claim => "claim",
            Action::KeyRotation => "key-rotation",
            Action::Outbox => "outbox",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|action| action.as_str() == s)
    }
}

/// What could not be attributed to the key holder: refused without
/// counting against the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("the message is {bytes} bytes, over the limit of {limit}: send a smaller payload")]
    TooLarge { bytes: usize, limit: usize },
    #[error("the message is not a signed JSON object: {0}")]
    Format(FormatError),
    /// `from` is missing or not a key.
    #[error("the message has no sender: {0}")]
    NoSender(String),
    #[error("the message's signature by its sender (from): {0}")]
    BadSignature(String),
}

/// A message whose signature verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub from: PeerKey,
    /// `ts`, when it is an integer: for the replay window even when
    /// another field is wrong.
    pub ts_ms: Option<i64>,
    /// `nonce`, when it is one.
    pub nonce: Option<String>,
    /// The fields, or what the sender got wrong in them.
    pub fields: Result<Fields, String>,
}

/// The fields of a verified message.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    pub version: u64,
    pub action: Action,
    pub body: Body,
}

/// What each action carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// The wire's `session` is `namespace/name`, both DNS-1123 labels as
    /// namespaces and Sessions are named ([`check_label`]).
    Inject {
        namespace: String,
        /// The Session's name: the part of `session` after the `/`.
        session: String,
        payload: serde_json::Value,
        /// The length of the payload's raw text.
        payload_bytes: usize,
        request_id: Option<String>,
    },
    Claim {
        token: String,
    },
    KeyRotation(Box<Rotation>),
    /// A peer fetching the answers to one of its messages: the one with
    /// `message_id` it sent the (gateway) session `namespace/session`.
    Outbox {
        namespace: String,
        session: String,
        message_id: String,
    },
}

/// The message `raw`, opened: size (at most [`MAX_MESSAGE_BYTES`]), JSON,
/// `from`, `from`'s signature over `raw` without its `sig`, then the
/// fields.
pub fn open(raw: &[u8]) -> Result<Verified, Unverified> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(Unverified::TooLarge {
            bytes: raw.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    let members = Members::parse(raw).map_err(Unverified::Format)?;
    let from = peer_key(&members, "from").map_err(Unverified::NoSender)?;
    let unsigned = members.split_signature().map_err(Unverified::Format)?;
    from.verify(&unsigned.signed, &unsigned.signature)
        .map_err(|error| Unverified::BadSignature(error.to_string()))?;
    let ts = members.required::<i64>("ts", "an integer of milliseconds since the epoch");
    let nonce = members
        .required::<String>("nonce", "a string")
        .and_then(checked_nonce);
    let fields = match (&ts, &nonce) {
        (Err(error), _) | (_, Err(error)) => Err(error.clone()),
        (Ok(_), Ok(_)) => fields(&members, &from),
    };
    Ok(Verified {
        from,
        ts_ms: ts.ok(),
        nonce: nonce.ok(),
        fields,
    })
}

/// Whether `ts_ms` is within [`REPLAY_WINDOW`] of `now`, either way.
pub fn within_window(ts_ms: i64, now: Timestamp) -> Result<(), String> {
    let off = i128::from(now.as_millisecond()) - i128::from(ts_ms);
    let window = REPLAY_WINDOW.as_millis() as i128;
    if off.abs() <= window {
        return Ok(());
    }
    let (seconds, way) = if off > 0 {
        (off / 1000, "in the past")
    } else {
        (-off / 1000, "in the future")
    };
    Err(format!(
        "ts is {seconds}s {way}, outside the window of ±{}s: check the sender's clock, and send a new message rather than an old one again",
        REPLAY_WINDOW.as_secs()
    ))
}

/// The shortest and longest nonce: WOPR sends 32 hex digits.
const NONCE_LENGTH: std::ops::RangeInclusive<usize> = 8..=128;

fn checked_nonce(nonce: String) -> Result<String, String> {
    let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if NONCE_LENGTH.contains(&nonce.len()) && nonce.chars().all(alphabet) {
        Ok(nonce)
    } else {
        Err(format!(
            "nonce must be {} to {} characters of A-Z, a-z, 0-9, _ and -",
            NONCE_LENGTH.start(),
            NONCE_LENGTH.end()
        ))
    }
}

fn fields(members: &Members, from: &PeerKey) -> Result<Fields, String> {
    let version = version(members)?;
    let kind: String = members.required("type", "a string naming the message's type")?;
    let action = Action::parse(&kind).ok_or_else(|| {
        let shown: String = kind.chars().take(64).collect();
        format!("unknown type {shown:?}: this ingress takes inject, claim, key-rotation and outbox")
    })?;
    let body = match action {
        Action::Inject => inject(members)?,
        Action::Claim => Body::Claim {
            token: members.required("token", "the invite being claimed (wop1://...)")?,
        },
        Action::KeyRotation => {
            let raw = members
                .raw("keyRotation")
                .ok_or("keyRotation is missing: a key-rotation message carries one")?;
            Body::KeyRotation(Box::new(rotation::parse(raw, from)?))
        }
        Action::Outbox => {
            let (namespace, session) = session_of(members)?;
            let message_id: String =
                members.required("messageId", "the messageId an inject returned")?;
            if message_id.is_empty() || message_id.len() > 64 {
                return Err("messageId must be the messageId an inject returned".to_owned());
            }
            Body::Outbox {
                namespace,
                session,
                message_id,
            }
        }
    };
    Ok(Fields {
        version,
        action,
        body,
    })
}

/// The `session` member: `namespace/name`, both DNS-1123 labels.
fn session_of(members: &Members) -> Result<(String, String), String> {
    let session: String = members.required("session", "namespace/name")?;
    let (namespace, name) = session
        .split_once('/')
        .ok_or("session must be namespace/name: the Session's namespace and name")?;
    check_label("namespace", namespace).map_err(|error| error.to_string())?;
    check_label("session", name).map_err(|error| error.to_string())?;
    Ok((namespace.to_owned(), name.to_owned()))
}

fn inject(members: &Members) -> Result<Body, String> {
    let (namespace, name) = session_of(members)?;
    let raw = members
        .raw("payload")
        .ok_or("payload is missing: an inject carries the text for the session")?;
    if raw.len() > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "payload is {} bytes, over the limit of {MAX_PAYLOAD_BYTES}: send a smaller one",
            raw.len()
        ));
    }
    let payload = serde_json::from_slice(raw).map_err(|error| format!("payload: {error}"))?;
    Ok(Body::Inject {
        namespace,
        session: name,
        payload,
        payload_bytes: raw.len(),
        request_id: members.decode("requestId", "a string")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::IngressKey;
    use crate::p2p::rotation::tests::signed_rotation;

    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    /// `members` (the text inside the braces after `v`, `type` and
    /// `from`) signed by `key`.
    fn signed(key: &IngressKey, kind: &str, members: &str) -> String {
        key.sign_json(&format!(
            r#"{{"v":2,"type":"{kind}","from":"{}","ts":1700000000000,"nonce":"{NONCE}"{members}}}"#,
            key.public_key().as_str()
        ))
    }

    fn fields_of(raw: &str) -> Result<Fields, String> {
        open(raw.as_bytes()).unwrap().fields
    }

    #[test]
    fn an_inject_is_opened() {
        let key = IngressKey::generate();
        let raw = signed(
            &key,
            "inject",
            r#","session":"team-a/researcher","payload":"hi \"there\"","requestId":"r1""#,
        );
        let verified = open(raw.as_bytes()).unwrap();
        assert_eq!(verified.from, key.public_key());
        assert_eq!(verified.ts_ms, Some(1_700_000_000_000));
        assert_eq!(verified.nonce.as_deref(), Some(NONCE));
        assert_eq!(
            verified.fields,
            Ok(Fields {
                version: 2,
                action: Action::Inject,
                body: Body::Inject {
                    namespace: "team-a".into(),
                    session: "researcher".into(),
                    payload: "hi \"there\"".into(),
                    payload_bytes: 14, // the raw text: quotes and escapes counted
                    request_id: Some("r1".into()),
                },
            })
        );
    }

    #[test]
    fn claims_rotations_and_outboxes_are_opened() {
        let key = IngressKey::generate();
        let claim = signed(&key, "claim", r#","token":"wop1://abc""#);
        assert_eq!(
            fields_of(&claim).map(|fields| fields.body),
            Ok(Body::Claim {
                token: "wop1://abc".into()
            })
        );
        let outbox = signed(
            &key,
            "outbox",
            r#","session":"team-a/p2p-gateway","messageId":"01kc""#,
        );
        assert_eq!(
            fields_of(&outbox).map(|fields| fields.body),
            Ok(Body::Outbox {
                namespace: "team-a".into(),
                session: "p2p-gateway".into(),
                message_id: "01kc".into(),
            })
        );
        let new = IngressKey::generate().public_key();
        let inner = signed_rotation(&key, &new, "upgrade", 1000);
        let rotation = signed(&key, "key-rotation", &format!(r#","keyRotation":{inner}"#));
        let Ok(Fields {
            action: Action::KeyRotation,
            body: Body::KeyRotation(rotation),
            ..
        }) = fields_of(&rotation)
        else {
            panic!("{rotation}")
        };
        assert_eq!(rotation.new, new);
    }

    /// WOPR sends the rotation's own signature as the message's: refused.
    #[test]
    fn a_rotation_whose_message_reuses_the_inner_signature_is_refused() {
        let key = IngressKey::generate();
        let new = IngressKey::generate().public_key();
        let inner = signed_rotation(&key, &new, "scheduled", 0);
        let sig = Members::parse(inner.as_bytes())
            .unwrap()
            .split_signature()
            .unwrap()
            .signature;
        let raw = format!(
            r#"{{"v":2,"type":"key-rotation","from":"{}","keyRotation":{inner},"nonce":"{NONCE}","ts":1,"sig":"{sig}"}}"#,
            key.public_key().as_str()
        );
        assert!(matches!(
            open(raw.as_bytes()),
            Err(Unverified::BadSignature(_))
        ));
    }

    #[test]
    fn what_anyone_could_have_sent_is_unverified() {
        let key = IngressKey::generate();
        let good = signed(&key, "outbox", r#","namespace":"a""#);
        let too_large = format!("{good}{}", " ".repeat(MAX_MESSAGE_BYTES));
        assert_eq!(
            open(too_large.as_bytes()),
            Err(Unverified::TooLarge {
                bytes: too_large.len(),
                limit: MAX_MESSAGE_BYTES
            })
        );
        assert!(matches!(
            open(b"[]"),
            Err(Unverified::Format(FormatError::NotAnObject))
        ));
        let no_from = key.sign_json(r#"{"v":2,"type":"outbox"}"#);
        assert_eq!(
            open(no_from.as_bytes()),
            Err(Unverified::NoSender(
                "from is missing: it must be a public key (the base64 of its SPKI DER)".into()
            ))
        );
        let not_a_key = key.sign_json(r#"{"v":2,"from":"hello"}"#);
        assert!(
            matches!(open(not_a_key.as_bytes()), Err(Unverified::NoSender(e)) if e.starts_with("from is not"))
        );
        let unsigned = format!(r#"{{"from":"{}"}}"#, key.public_key().as_str());
        assert_eq!(
            open(unsigned.as_bytes()),
            Err(Unverified::Format(FormatError::NoSignature))
        );
        let unsigned_good = &good[..good.find(",\"sig\"").unwrap()];
        let by_another = IngressKey::generate().sign_json(&format!("{unsigned_good}}}"));
        assert!(matches!(
            open(by_another.as_bytes()),
            Err(Unverified::BadSignature(_))
        ));
        let tampered = good.replace("\"a\"", "\"b\"");
        assert!(matches!(
            open(tampered.as_bytes()),
            Err(Unverified::BadSignature(_))
        ));
    }

    #[test]
    fn what_the_key_holder_got_wrong_is_a_field_error() {
        let key = IngressKey::generate();
        for (kind, members, expected) in [
            ("foo", "", r#"unknown type "foo""#),
            (
                "inject",
                r#","session":"a","payload":"x""#,
                "session must be namespace/name",
            ),
            (
                "inject",
                r#","session":"A/b","payload":"x""#,
                "namespace \"A\"",
            ),
            (
                "inject",
                r#","session":"a/b_c","payload":"x""#,
                "session \"b_c\"",
            ),
            ("inject", r#","session":"a/b""#, "payload is missing"),
            (
                "inject",
                r#","session":"a/b","payload":1,"requestId":2"#,
                "requestId must be a string",
            ),
            ("claim", "", "token is missing"),
            ("key-rotation", "", "keyRotation is missing"),
            (
                "outbox",
                r#","session":"a/B","messageId":"m""#,
                "session \"B\"",
            ),
            ("outbox", r#","session":"a/b""#, "messageId is missing"),
        ] {
            let error = fields_of(&signed(&key, kind, members)).unwrap_err();
            assert!(error.contains(expected), "{kind} {members}: {error}");
        }
        let big = format!(
            r#","session":"a/b","payload":"{}""#,
            "x".repeat(MAX_PAYLOAD_BYTES - 1)
        );
        let error = fields_of(&signed(&key, "inject", &big)).unwrap_err();
        assert!(
            error.starts_with(&format!("payload is {} bytes", MAX_PAYLOAD_BYTES + 1)),
            "{error}"
        );
    }

    #[test]
    fn version_ts_and_nonce_are_checked_but_ts_and_nonce_kept_when_valid() {
        let key = IngressKey::generate();
        let from = key.public_key();
        let message = |v: &str, ts: &str, nonce: &str| {
            key.sign_json(&format!(
                r#"{{"v":{v},"type":"outbox","from":"{}","ts":{ts},"nonce":{nonce},"session":"a/b","messageId":"m"}}"#,
                from.as_str()
            ))
        };
        let quoted = format!("\"{NONCE}\"");
        assert!(
            open(message("1", "5", &quoted).as_bytes())
                .unwrap()
                .fields
                .is_ok()
        );
        for (v, ts, nonce, expected) in [
            ("3", "5", quoted.as_str(), "unsupported protocol version 3"),
            ("0", "5", &quoted, "unsupported protocol version 0"),
            ("\"2\"", "5", &quoted, "v must be an integer"),
            ("2", "5.5", &quoted, "ts must be an integer"),
            ("2", "\"5\"", &quoted, "ts must be an integer"),
            ("2", "5", "\"short\"", "nonce must be 8 to 128"),
            ("2", "5", "\"has space in it\"", "nonce must be"),
            ("2", "5", "7", "nonce must be a string"),
        ] {
            let verified = open(message(v, ts, nonce).as_bytes()).unwrap();
            let error = verified.fields.unwrap_err();
            assert!(error.contains(expected), "{v} {ts} {nonce}: {error}");
            assert_eq!(verified.ts_ms.is_some(), ts == "5");
            assert_eq!(verified.nonce.is_some(), nonce == quoted);
        }
        let long = format!("\"{}\"", "n".repeat(129));
        assert!(
            open(message("2", "5", &long).as_bytes())
                .unwrap()
                .fields
                .is_err()
        );
        let longest = format!("\"{}\"", "n".repeat(128));
        assert!(
            open(message("2", "5", &longest).as_bytes())
                .unwrap()
                .fields
                .is_ok()
        );
    }

    #[test]
    fn the_window_is_five_minutes_either_way() {
        let now = Timestamp::from_millisecond(1_700_000_000_000).unwrap();
        let at = |off: i64| within_window(1_700_000_000_000 + off, now);
        assert_eq!(at(0), Ok(()));
        assert_eq!(at(300_000), Ok(()));
        assert_eq!(at(-300_000), Ok(()));
        assert!(
            at(-301_000)
                .unwrap_err()
                .starts_with("ts is 301s in the past")
        );
        assert!(
            at(400_000)
                .unwrap_err()
                .starts_with("ts is 400s in the future")
        );
        assert!(within_window(i64::MIN, now).is_err());
        assert!(within_window(i64::MAX, now).is_err());
    }

    #[test]
    fn actions_are_named_as_wopr_names_them() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Action::parse("hello"), None);
    }
}
