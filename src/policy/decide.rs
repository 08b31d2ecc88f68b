//! `decide`: may this happen under this effective context? Pure and
//! allocation-free; warn mode turns every policy violation into `WouldDeny`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::capabilities::CapabilitySet;
use super::peers::PeerStanding;
use super::resolve::EffectiveContext;
use super::tools::{Requirement, ToolId, ToolSet};
use crate::api::{AccessPattern, Capability, Enforcement, SourceType, TrustLevel};

/// Something a session, or a source acting on it, wants to do.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// The session calls this tool (a name is looked up at the edge, by
    /// [`decide_tool_call`]).
    Tool(ToolId),
    /// The session calls `sessions_spawn` for a child at this trust level.
    Spawn(TrustLevel),
    /// The session asks whether it holds a capability (`security_check`).
    Capability(Capability),
    /// A source injects a message into the session.
    Inject(&'a Source<'a>),
}

/// Who injects: the type, the identity and the standing of a source.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// A session, a peer or a workload.
    pub source_type: SourceType,
    /// A session name or a peer's current public key.
    pub identity: &'a str,
    /// The source's trust level.
    pub trust_level: TrustLevel,
    /// The source's capabilities; injecting needs `inject`.
    pub capabilities: CapabilitySet,
}

impl<'a> Source<'a> {
    /// A session injecting into another one.
    pub fn session(context: &'a EffectiveContext) -> Source<'a> {
        Source {
            source_type: SourceType::Session,
            identity: &context.session,
            trust_level: context.trust_level,
            capabilities: context.capabilities,
        }
    }

    /// A remote peer with a standing in the target session.
    pub fn peer(standing: &'a PeerStanding) -> Source<'a> {
        Source {
            source_type: SourceType::Peer,
            identity: &standing.public_key,
            trust_level: standing.trust_level,
            capabilities: standing.capabilities,
        }
    }
}

/// The outcome of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It may happen.
    Allowed,
    /// It may not (enforce mode).
    Denied,
    /// It violates the policy but warn mode lets it happen; audit it.
    WouldDeny,
}

/// Why a decision came out as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Everything needed is held.
    Permitted,
    /// The `security_*` tools are available to every session.
    AlwaysAvailable,
    /// No such tool exists.
    UnknownTool,
    /// The tool rules of the policy or the session exclude the tool.
    ToolNotPermitted,
    /// The capability is not held.
    MissingCapability(Capability),
    /// Gateway tools are for gateway sessions only.
    NotAGateway,
    /// A session may not spawn a child above its own trust level.
    SpawnAboveOwnLevel {
        /// The child's level.
        child: TrustLevel,
        /// The caller's level.
        own: TrustLevel,
    },
    /// The source lacks the `inject` capability.
    SourceCannotInject,
    /// No entry of the target's access list admits the source.
    AccessNotGranted,
    /// An untrusted source may inject only into a gateway session.
    UntrustedNeedsGateway,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Permitted => f.write_str("permitted by policy"),
            Reason::AlwaysAvailable => f.write_str("security tools are always available"),
            Reason::UnknownTool | Reason::ToolNotPermitted => {
                f.write_str("tool not available to this session")
            }
            Reason::MissingCapability(capability) => {
                write!(f, "capability {capability} not granted")
            }
            Reason::NotAGateway => f.write_str("only gateway sessions may use gateway tools"),
            Reason::SpawnAboveOwnLevel { child, own } => write!(
                f,
                "cannot spawn a {child} session from a {own} session: a child's trust level must not exceed its parent's"
            ),
            Reason::SourceCannotInject => f.write_str("source lacks the inject capability"),
            Reason::AccessNotGranted => {
                f.write_str("source not admitted by the session's access list")
            }
            Reason::UntrustedNeedsGateway => f.write_str(
                "untrusted sources reach only gateway sessions: send through the namespace's gateway",
            ),
        }
    }
}

/// A decision: its outcome, the capability it turned on (if any), and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allowed, denied or would-deny.
    pub outcome: Outcome,
    /// The capability the request needed, when one did.
    pub capability: Option<Capability>,
    /// Why; its `Display` is the human-readable reason.
    pub reason: Reason,
}

impl Decision {
    /// Whether the request may go ahead (allowed, or would-deny in warn mode).
    pub fn proceeds(&self) -> bool {
        self.outcome != Outcome::Denied
    }
}

/// Decides a call of the tool an agent called `name`: the one lookup of a
/// name an agent chose, at the edge where it arrives. An unknown tool is
/// denied in every mode (there is nothing to run, so warn mode has nothing
/// to let through); a known one is decided as [`Request::Tool`], and its
/// id comes back with the decision.
pub fn decide_tool_call(
    context: &EffectiveContext,
    name: &str,
) -> Result<(ToolId, Decision), Decision> {
    match ToolId::lookup(name) {
        Some(id) => Ok((id, decide(context, Request::Tool(id)))),
        None => Err(Decision {
            outcome: Outcome::Denied,
            capability: None,
            reason: Reason::UnknownTool,
        }),
    }
}

/// Decides `request` under `context`.
///
/// An untrusted source injecting into a session that is not a gateway is
/// denied in every mode: that boundary is the model's, not a policy's to
/// relax. Every other violation is `Denied` under `enforce` and
/// `WouldDeny` under `warn`.
pub fn decide(context: &EffectiveContext, request: Request<'_>) -> Decision {
    if let Request::Inject(source) = request
        && source.trust_level == TrustLevel::Untrusted
        && context.gateways.is_empty()
    {
        return Decision {
            outcome: Outcome::Denied,
            capability: Some(Capability::Inject),
            reason: Reason::UntrustedNeedsGateway,
        };
    }
    let verdict = match request {
        Request::Tool(id) => check_tool(context, id),
        Request::Spawn(child) => check_spawn(context, child),
        Request::Capability(capability) => check_capability(context.capabilities, capability),
        Request::Inject(source) => check_inject(context, source),
    };
    let outcome = match (verdict.allowed, context.enforcement) {
        (true, _) => Outcome::Allowed,
        (false, Enforcement::Enforce) => Outcome::Denied,
        (false, Enforcement::Warn) => Outcome::WouldDeny,
    };
    Decision {
        outcome,
        capability: verdict.capability,
        reason: verdict.reason,
    }
}

/// The tools the session can call right now: permitted by the tool rules,
/// with what each needs held. Gateway tools only for gateway sessions.
pub fn callable_tools(context: &EffectiveContext) -> ToolSet {
    ToolId::all()
        .filter(|id| check_tool(context, *id).allowed)
        .collect()
}

/// A decision before the enforcement mode is applied.
struct Verdict {
    allowed: bool,
    capability: Option<Capability>,
    reason: Reason,
}

impl Verdict {
    fn allow(capability: Option<Capability>) -> Verdict {
        Verdict {
            allowed: true,
            capability,
            reason: Reason::Permitted,
        }
    }

    fn deny(capability: Option<Capability>, reason: Reason) -> Verdict {
        Verdict {
            allowed: false,
            capability,
            reason,
        }
    }
}

fn check_tool(context: &EffectiveContext, id: ToolId) -> Verdict {
    let requires = id.tool().requires;
    let capability = match requires {
        Requirement::Capability(capability) => Some(capability),
        Requirement::Nothing | Requirement::Gateway => None,
    };
    match requires {
        Requirement::Nothing => Verdict {
            allowed: true,
            capability: None,
            reason: Reason::AlwaysAvailable,
        },
        _ if !context.tools.contains(id) => Verdict::deny(capability, Reason::ToolNotPermitted),
        Requirement::Capability(needed) if !context.capabilities.has(needed) => {
            Verdict::deny(capability, Reason::MissingCapability(needed))
        }
        Requirement::Gateway if context.gateways.is_empty() => {
            Verdict::deny(None, Reason::NotAGateway)
        }
        _ => Verdict::allow(capability),
    }
}

fn check_spawn(context: &EffectiveContext, child: TrustLevel) -> Verdict {
    let spawn = check_tool(
        context,
        ToolId::lookup("sessions_spawn").expect("sessions_spawn is a known tool"),
    );
    if spawn.allowed && child > context.trust_level {
        return Verdict::deny(
            spawn.capability,
            Reason::SpawnAboveOwnLevel {
                child,
                own: context.trust_level,
            },
        );
    }
    spawn
}

fn check_capability(held: CapabilitySet, capability: Capability) -> Verdict {
    if held.has(capability) {
        Verdict::allow(Some(capability))
    } else {
        Verdict::deny(Some(capability), Reason::MissingCapability(capability))
    }
}

fn check_inject(context: &EffectiveContext, source: &Source<'_>) -> Verdict {
    let inject = Some(Capability::Inject);
    if !source.capabilities.has(Capability::Inject) {
        return Verdict::deny(inject, Reason::SourceCannotInject);
    }
    if context.access.iter().any(|pattern| admits(pattern, source)) {
        Verdict::allow(inject)
    } else {
        Verdict::deny(inject, Reason::AccessNotGranted)
    }
}

/// Whether one access entry admits `source`.
pub fn admits(pattern: &AccessPattern, source: &Source<'_>) -> bool {
    match pattern {
        AccessPattern::Anyone => true,
        AccessPattern::Trust(level) => source.trust_level >= *level,
        AccessPattern::Session(name) => {
            source.source_type == SourceType::Session && source.identity == name
        }
        AccessPattern::Peer(key) => {
            source.source_type == SourceType::Peer && source.identity == key
        }
        AccessPattern::SourceType(kind) => source.source_type.is(kind),
    }
}
