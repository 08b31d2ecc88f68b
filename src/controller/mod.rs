//! The controller: reconciles Sessions into hardened sandbox pods.
//!
//! The pipeline of one reconcile ([`reconcile`]): read the caches
//! ([`context`]) → resolve the policy (pure, [`crate::policy`]) → build the
//! children (pure, [`build`]) → apply what changed ([`apply`]) → status
//! (pure, [`status`]). [`run`] wires the watches and [`triggers`], leader
//! election ([`leader`]), the admin server ([`admin`], [`metrics`]), the
//! status of SecurityPolicies and Gateways ([`object_status`]), the
//! ApprovalRequests people decide ([`approvals`]) and the control plane.

pub mod admin;
pub mod apply;
pub mod approvals;
pub mod build;
pub mod config;
pub mod context;
pub mod decisions;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod object_status;
pub mod reconcile;
pub mod retry;
pub mod rollout;
pub mod run;
pub mod status;
pub mod triggers;
