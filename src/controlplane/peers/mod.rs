//! The peer ingress (issue 27): where WOPR peers outside the cluster reach
//! the control plane, one signed message per request, in WOPR's P2P message
//! format. Each message will be checked in order: its size before the body
//! is read whole, then its JSON, its Ed25519 signature over the bytes
//! received, the replay guard, the peer's ban and per-action limits, its
//! standing (`policy::resolve_peer`), and only then handed to the broker.
//! Invites, claims and key rotation will live here too.
