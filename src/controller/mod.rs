//! The controller: reconciles Sessions into hardened sandbox pods.

pub mod admin;
pub mod apply;
pub mod build;
pub mod config;
pub mod context;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod policy_status;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod triggers;
