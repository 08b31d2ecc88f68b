//! The per-session sidecar: serves the agent only the A2A tools its policy
//! allows, over gRPC on a unix socket and MCP on the pod's loopback, relays
//! its model calls to the egress service (a loopback proxy holding no key),
//! and ships an audit event of every decision to the control plane.

pub mod backoff;
pub mod broker;
pub mod client;
pub mod denials;
pub mod engine;
pub mod grpc;
pub mod inbox;
pub mod isolation;
pub mod mcp;
pub mod mcp_sessions;
pub mod models;
pub mod policy_state;
pub mod ready;
pub mod run;
pub mod shipper;
pub mod spool;
pub mod tools;
pub mod workspace;
