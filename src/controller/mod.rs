//! The controller: reconciles Sessions into hardened sandbox pods.

pub mod apply;
pub mod build;
pub mod config;
pub mod context;
pub mod error;
pub mod metrics;
pub mod reconcile;
pub mod status;
