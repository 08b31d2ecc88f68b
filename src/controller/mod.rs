//! The controller role: the controllers that turn wopr.dev objects into
//! pods and status, one module each, and what they share.
//!
//! - [`session`]: the Session controller, reconciling each Session into a
//!   hardened sandbox pod (read the caches → resolve the policy → build
//!   the children → apply what changed → status).
//! - [`approvals`]: the ApprovalRequest controller, carrying out what
//!   people decide.
//! - [`policy_status`], [`gateway_status`], [`grant_status`]: the status
//!   controllers of SecurityPolicies, Gateways and Grants (valid, in
//!   force, which Sessions each governs), sharing [`status_context`].
//! - Shared plumbing: [`run`] (wires every controller to the caches and
//!   leadership), [`apply`] (writes only what changed), [`conditions`],
//!   [`error`], [`metrics`], [`retry`].
//!
//! Starting the process (flags, admin server, leader election, the
//! control plane) is the operator's (`crate::operator`); the Lease is
//! `crate::cluster::lease`. A new controller gets a module here and a
//! line in [`run`].

pub mod apply;
pub mod approvals;
pub mod ca_bundle;
pub mod conditions;
pub mod egress_cert;
pub mod error;
pub mod gateway_status;
pub mod grant_status;
pub mod leader_only;
pub mod metrics;
pub mod policy_status;
pub mod provider_keys;
pub mod retry;
pub mod run;
pub mod session;
pub mod status_context;
