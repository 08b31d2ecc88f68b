//! wopr-operator: the WOPR agent-security model (trust levels,
//! capabilities, grants, gateways, hardened sandboxes) as Kubernetes
//! custom resources.
//!
//! - [`api`]: the custom resources of `wopr.dev/v1alpha1` and their CRDs.
//! - [`policy`]: the pure policy engine: resolving a session's effective
//!   security context and deciding tool calls, capability checks and injections.
//! - [`controller`]: reconciles Sessions into hardened sandbox pods.
//! - [`controlplane`]: the gRPC API streaming each sidecar its policy.
//! - [`sidecar`]: the per-session tool server (gRPC on a unix socket, MCP).
//! - [`audit`]: audit events, one per decision.
//! - [`proto`]: the generated `wopr.v1alpha1` protobuf types.
//! - [`logging`]: the binary's log lines.

pub mod api;
pub mod audit;
pub mod cache;
pub mod clock;
pub mod cluster;
pub mod contract;
pub mod controller;
pub mod controlplane;
pub mod logging;
pub mod operator;
pub mod policy;
pub mod proto;
pub mod shutdown;
pub mod sidecar;
pub mod wire;
