//! The pure policy engine: no Kubernetes client, no clock of its own.
//!
//! - [`resolve`]: a Session with its namespace's policy, grants and gateways
//!   → its [`EffectiveContext`].
//! - [`resolve_peer`]: a remote peer's [`PeerStanding`] in a session;
//!   [`resolve_workload`]: a workload's (service account's) [`Standing`].
//! - [`decide`]: a [`Request`] under an effective context → a [`Decision`].
//! - [`decide_forward`]: a gateway's forward under its Gateways' rules, held
//!   to the trust level each Gateway declares ([`within_level`]).
//! - [`TokenBucket`]: rate limiting with an injected clock.
//!
//! ```
//! use wopr_operator::api::{Session, SessionSpec, TrustLevel};
//! use wopr_operator::policy::{Outcome, Request, ToolId, decide, resolve};
//!
//! let session = Session::new("research", SessionSpec::for_trust_level(TrustLevel::SemiTrusted));
//! let now = "2026-11-24T12:00:00Z".parse().unwrap();
//! // No SecurityPolicy, grants or gateways: the built-in profiles apply.
//! let context = resolve(&session, None, &[], &[], now).unwrap();
//! assert!(context.sandbox.enabled);
//! assert_eq!(decide(&context, Request::Tool(ToolId::MemoryRead)).outcome, Outcome::Allowed);
//! assert_eq!(decide(&context, Request::Tool(ToolId::HttpFetch)).outcome, Outcome::Denied);
//! ```

mod capabilities;
mod decide;
mod forward;
mod gateway_level;
mod glob;
mod hash;
pub mod models;
mod peers;
mod profiles;
mod rate_limit;
mod resolve;
mod spawn;
mod standing;
pub mod tools;
pub(crate) mod validity;
mod workloads;

pub use capabilities::CapabilitySet;
pub use decide::{
    Decision, Outcome, Reason, Request, Source, admits, callable_tools, decide, decide_tool_call,
};
pub use forward::{ForwardDecision, ForwardReason, MatchedRule, decide_forward};
pub use gateway_level::{TargetAboveLevel, targets_above_level, within_level};
pub use hash::stable_hash;
pub use models::{EffectiveModels, ModelLink, ProviderProblem, provider_problem};
pub use peers::{PeerStanding, level_conferred, resolve_peer};
pub use profiles::{LevelSettings, builtin_policy, level_settings};
pub use rate_limit::{TokenBucket, try_acquire_all};
pub use resolve::{
    DEFAULT_ACCESS, EffectiveContext, EffectiveSandbox, GatewayRules, ResolveError, resolve,
};
pub use spawn::{MAX_CHILD_NAME, PARENT_LABEL, SpawnRefusal, SpawnRequest, child_session};
pub use standing::Standing;
pub use tools::{Requirement, TOOLS, Tool, ToolCall, ToolId, ToolSet};
pub use validity::{Validity, grant_is_active, grant_validity};
pub use workloads::resolve_workload;
