//! A key rotation: a peer announcing, with the key it retires, the key
//! that replaces it (WOPR's `rotateIdentity`).
//!
//! It arrives as the `keyRotation` member of a `key-rotation` message:
//! `{v, type:"key-rotation", oldSignPub, newSignPub, newEncryptPub,
//! reason, effectiveAt, gracePeriodMs, sig}`, its `sig` by the old key
//! over the inner object's text without `sig`. The message around it must
//! be signed by the same old key (its `from`) like any message.
//!
//! WOPR itself sends the inner `sig` again as the outer message's `sig`.
//! We refuse that: the inner signature covers only the inner object, so
//! reused outside it would leave the message's `ts` and `nonce` unsigned
//! and the rotation replayable for ever. A WOPR peer must sign the message
//! it sends as it signs every other.

use super::{Members, PeerKey, peer_key, version};

/// Why a key is retired, as WOPR names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationReason {
    Scheduled,
    Compromise,
    Upgrade,
}

impl RotationReason {
    pub const ALL: [RotationReason; 3] = [
        RotationReason::Scheduled,
        RotationReason::Compromise,
        RotationReason::Upgrade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RotationReason::Scheduled => "scheduled",
            RotationReason::Compromise => "compromise",
            RotationReason::Upgrade => "upgrade",
        }
    }

    pub fn parse(name: &str) -> Option<RotationReason> {
        RotationReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == name)
    }
}

/// A verified rotation from `old` to `new`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub old: PeerKey,
    pub new: PeerKey,
    pub reason: RotationReason,
    pub effective_at_ms: i64,
    /// How long after `effective_at_ms` the old key may still be used.
    pub grace_period_ms: i64,
}

/// The rotation `raw_member`, the `keyRotation` member's raw text, of a
/// message signed by `from`: signed by its `oldSignPub`, which must be
/// `from`, to a `newSignPub` that is another valid key.
pub fn parse(raw_member: &[u8], from: &PeerKey) -> Result<Rotation, String> {
    let members = Members::parse(raw_member).map_err(|error| format!("keyRotation: {error}"))?;
    let inner = |error: String| format!("keyRotation.{error}");
    let old = peer_key(&members, "oldSignPub").map_err(inner)?;
    if old != *from {
        return Err(
            "keyRotation.oldSignPub is not the sender's key: a rotation is sent (from) and signed by the key it retires"
                .into(),
        );
    }
    let unsigned = members
        .split_signature()
        .map_err(|error| format!("keyRotation: {error}"))?;
    old.verify(&unsigned.signed, &unsigned.signature)
        .map_err(|error| format!("keyRotation (signed by oldSignPub): {error}"))?;
    let kind: String = members
        .required("type", "\"key-rotation\"")
        .map_err(inner)?;
    if kind != "key-rotation" {
        return Err("keyRotation.type must be \"key-rotation\"".into());
    }
    version(&members).map_err(inner)?;
    let new = peer_key(&members, "newSignPub").map_err(inner)?;
    if new == old {
        return Err("keyRotation.newSignPub is the old key: a rotation names a new key".into());
    }
    let reason: String = members
        .required("reason", "scheduled, compromise or upgrade")
        .map_err(inner)?;
    let reason = RotationReason::parse(&reason)
        .ok_or_else(|| "keyRotation.reason must be scheduled, compromise or upgrade".to_owned())?;
    let effective_at_ms = members
        .required("effectiveAt", "an integer of milliseconds since the epoch")
        .map_err(inner)?;
    let grace_period_ms: i64 = members
        .required("gracePeriodMs", "a non-negative integer of milliseconds")
        .map_err(inner)?;
    if grace_period_ms < 0 {
        return Err(
            "keyRotation.gracePeriodMs must be a non-negative integer of milliseconds".into(),
        );
    }
    Ok(Rotation {
        old,
        new,
        reason,
        effective_at_ms,
        grace_period_ms,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::p2p::IngressKey;

    /// The inner object WOPR's `rotateIdentity` writes, signed by `old`.
    pub(crate) fn signed_rotation(
        old: &IngressKey,
        new: &PeerKey,
        reason: &str,
        grace: i64,
    ) -> String {
        old.sign_json(&format!(
            r#"{{"v":1,"type":"key-rotation","oldSignPub":"{}","newSignPub":"{}","newEncryptPub":"MCowBQYDK2VuAyEA","reason":"{reason}","effectiveAt":1700000000000,"gracePeriodMs":{grace}}}"#,
            old.public_key().as_str(),
            new.as_str()
        ))
    }

    #[test]
    fn a_rotation_signed_by_the_old_key_is_read() {
        let old = IngressKey::generate();
        let new = IngressKey::generate().public_key();
        let raw = signed_rotation(&old, &new, "compromise", 86_400_000);
        assert_eq!(
            parse(raw.as_bytes(), &old.public_key()),
            Ok(Rotation {
                old: old.public_key(),
                new,
                reason: RotationReason::Compromise,
                effective_at_ms: 1_700_000_000_000,
                grace_period_ms: 86_400_000,
            })
        );
    }

    #[test]
    fn a_rotation_not_by_its_sender_or_to_no_new_key_is_refused() {
        let old = IngressKey::generate();
        let new = IngressKey::generate().public_key();
        let raw = signed_rotation(&old, &new, "scheduled", 0);
        let other = IngressKey::generate().public_key();
        assert!(
            parse(raw.as_bytes(), &other)
                .unwrap_err()
                .contains("not the sender's key")
        );
        let to_itself = signed_rotation(&old, &old.public_key(), "scheduled", 0);
        assert!(
            parse(to_itself.as_bytes(), &old.public_key())
                .unwrap_err()
                .contains("is the old key")
        );
        let tampered = raw.replace("scheduled", "compromise");
        assert!(
            parse(tampered.as_bytes(), &old.public_key())
                .unwrap_err()
                .contains("does not verify")
        );
        for (reason, grace, expected) in [
            ("later", 0, "reason must be"),
            ("scheduled", -1, "gracePeriodMs must be"),
        ] {
            let raw = signed_rotation(&old, &new, reason, grace);
            let error = parse(raw.as_bytes(), &old.public_key()).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        assert!(
            parse(b"\"key-rotation\"", &old.public_key())
                .unwrap_err()
                .starts_with("keyRotation: not a JSON object")
        );
    }

    #[test]
    fn reasons_are_named_as_wopr_names_them() {
        for reason in RotationReason::ALL {
            assert_eq!(RotationReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(RotationReason::parse("Scheduled"), None);
    }
}
