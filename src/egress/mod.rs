//! The egress service (`wopr-operator egress`, SPEC §3; issue 25): the only
//! WOPR component with internet egress. It will hold the model providers'
//! credentials, read from the Secrets a namespace's SecurityPolicy names,
//! and make the outbound calls (model APIs, `http_fetch`) that sessions'
//! sidecars relay to it, so no credential ever enters a session pod.
//! Sidecars will reach it over gRPC, authenticated as they reach the
//! control plane, and it will decide, budget and audit every call against
//! the Session's effective policy (from the control plane's Policy watch).
//!
//! A role: it imports the layers below it and never another role
//! (`tests/layers.rs` checks it).

pub mod redact;
pub mod translate;
