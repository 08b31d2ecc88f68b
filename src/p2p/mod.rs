//! WOPR's P2P message format (issue 27): parsing and verifying what a WOPR
//! peer sends, and signing what we send back. Pure: no I/O, no clock of
//! its own (callers pass `now`).
//!
//! A WOPR peer is an Ed25519 key, written as the standard base64 of its
//! SPKI DER ([`key`]). A message is one JSON object, `{v, type, from, ts,
//! nonce, ...type-specific, sig}`, whose `sig` is the sender's signature
//! over `JSON.stringify` of the object before `sig` was appended
//! ([`message`]). Invites (`wop1://`, [`invite`]) and key rotations
//! ([`rotation`]) are signed objects of the same kind.
//!
//! WOPR verifies by re-serializing what it parsed; we verify over the
//! bytes as received, with the `sig` member cut out of the text
//! ([`envelope`]). So what verifies is exactly what was signed: no JSON
//! library's idea of number or string formatting decides, and an object
//! re-ordered or re-serialized on the way no longer verifies (which we
//! want: the signature covers a text, not a meaning).

pub mod envelope;
pub mod invite;
pub mod key;
pub mod message;
pub mod rotation;

pub use envelope::{FormatError, Members, Unsigned, split_signature};
pub use invite::{INVITE_SCHEME, Invite, InviteError};
pub use key::{IngressKey, KeyError, PeerKey, SignatureError, short_id};
pub use message::{Action, Body, Fields, Unverified, Verified, open, within_window};
pub use rotation::{Rotation, RotationReason};

/// The protocol version WOPR speaks, and the oldest it still accepts.
pub const PROTOCOL_VERSION: u64 = 2;
pub const MIN_PROTOCOL_VERSION: u64 = 1;
/// The largest payload, as the raw JSON text of its value.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// The largest message: a payload and room for the rest.
pub const MAX_MESSAGE_BYTES: usize = MAX_PAYLOAD_BYTES + 4096;
/// How far a message's `ts` may be from now, either way: a replayed
/// message is refused once it is older, so the nonces seen need only be
/// kept this long.
pub const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// The public key member `name` of a signed object holds.
fn peer_key(members: &Members, name: &str) -> Result<PeerKey, String> {
    let text: String = members.required(name, "a public key (the base64 of its SPKI DER)")?;
    PeerKey::parse(&text).map_err(|error| format!("{name} is {error}"))
}

/// The protocol version `v` of a signed object, one we speak.
fn version(members: &Members) -> Result<u64, String> {
    let version: u64 = members.required("v", "an integer protocol version")?;
    if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        Ok(version)
    } else {
        Err(format!(
            "unsupported protocol version {version}: this ingress speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
        ))
    }
}
