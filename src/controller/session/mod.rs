//! The Session controller: reconciles each Session into a hardened
//! sandbox pod, its NetworkPolicy and ServiceAccount.
//!
//! The pipeline of one reconcile ([`reconcile`]): read the caches
//! ([`context`]) → resolve the policy (pure, `crate::policy`) → build the
//! children (pure, [`build`], from the settings in [`config`]) → apply
//! what changed (`super::apply`; pod replacements paced by [`rollout`]) →
//! status (pure, [`status`]) and the controller's own audit events
//! ([`decisions`]). [`triggers`] says which Sessions a change to a Grant,
//! Gateway or SecurityPolicy affects.

pub mod build;
pub mod config;
pub mod context;
pub mod decisions;
pub mod reconcile;
pub mod rollout;
pub mod status;
pub mod triggers;
