//! wopr-operator: the WOPR agent-security model (trust levels,
//! capabilities, grants, gateways, hardened sandboxes) as Kubernetes
//! custom resources.
//!
//! The modules depend only downward (`tests/layers.rs` checks it):
//!
//! - [`api`], [`proto`]: the custom resources of `wopr.dev/v1alpha1` and
//!   their CRDs; the generated `wopr.v1alpha1` protobuf types.
//! - [`policy`]: the pure policy engine: resolving a session's effective
//!   security context, deciding tool calls, capability checks and
//!   injections, and the one tool registry.
//! - The shared edges: [`cache`] (the watched objects and the resolve-a-
//!   Session step), [`cluster`] (the field manager, preflight, one-line API
//!   errors, the leader Lease), [`contract`] (what the pod builder and the sidecar's flags
//!   agree on), [`wire`] (proto ↔ policy types), [`store`] (the
//!   operator's database: the audit trail, the inboxes), [`audit`],
//!   [`inbox`] (what a session's inbox holds), [`approval`] (the
//!   ApprovalRequests of forwards and the step each needs), [`bounded`]
//!   (a map an adversary cannot grow), [`clock`],
//!   [`shutdown`], [`logging`], [`openmetrics`], [`tls`] (the control plane's certificates,
//!   its reloading TLS server and the one client setup that verifies it).
//! - The roles, which never import each other: [`controller`] (Sessions
//!   into hardened sandbox pods), [`controlplane`] (the gRPC API streaming
//!   each sidecar its policy, brokering messages, storing the audit
//!   trail), [`sidecar`] (the per-session tool server: gRPC on a unix
//!   socket, MCP), [`demo_agent`] (a small agent that shows its
//!   sidecar's policy at work), and [`egress`] (to come: the one
//!   component with internet egress, holding the model providers' keys).
//! - [`operator`]: composes the controller and the control plane into one
//!   process (its flags, the admin server, start-up and shutdown).

pub mod api;
pub mod approval;
pub mod audit;
pub mod bounded;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod contract;
pub mod controller;
pub mod controlplane;
pub mod demo_agent;
pub mod egress;
pub mod export;
pub mod inbox;
pub mod logging;
pub mod openmetrics;
pub mod operator;
pub mod p2p;
pub mod policy;
pub mod proto;
pub mod shutdown;
pub mod sidecar;
pub mod store;
pub mod tls;
pub mod wire;
