//! The controller: reconciles Sessions into hardened sandbox pods.

pub mod build;
pub mod config;
