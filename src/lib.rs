//! wopr-operator: the WOPR agent-security model (trust levels,
//! capabilities, grants, gateways, hardened sandboxes) as Kubernetes
//! custom resources.
//!
//! - [`api`]: the custom resources of `wopr.dev/v1alpha1` and their CRDs.
//! - [`policy`]: the pure policy engine: resolving a session's effective
//!   security context and deciding tool calls, capability checks and injections.

pub mod api;
pub mod audit;
pub mod controller;
pub mod controlplane;
pub mod policy;
pub mod proto;
pub mod sidecar;
