//! `resolve`: a Session, its namespace's SecurityPolicy, Grants and Gateways
//! → the session's effective security context. Pure: the clock is a parameter.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::Duration;
use serde::Serialize;

use super::capabilities::CapabilitySet;
use super::gateway_level::within_level;
use super::hash::stable_hash;
use super::models::EffectiveModels;
use super::profiles::{LevelSettings, level_settings};
use super::tools::argument_rules::ArgumentRulesInForce;
use super::tools::{ToolId, ToolSet, policy_layer_verdict, session_keeps};
use super::validity::grant_validity;
use crate::api::{
    AccessPattern, Capability, EffectiveSummary, Enforcement, ForwardRule, Gateway, Grant,
    GrantState, NetworkMode, SecurityPolicy, SecurityPolicySpec, Session, ToolRules, TrustLevel,
};

/// The security context a session runs under: what the sidecar enforces and
/// what the controller builds the sandbox from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveContext {
    /// The session's namespace.
    pub namespace: String,
    /// The session's name.
    pub session: String,
    /// The session's trust level.
    pub trust_level: TrustLevel,
    /// The level's capabilities plus those of the session's active grants.
    /// Contains `*` only for owner.
    pub capabilities: CapabilitySet,
    /// The tools the tool rules permit (each still needs its capability).
    pub tools: ToolSet,
    /// The rules its calls' arguments are held to (`tools.rules`).
    pub rules: ArgumentRulesInForce,
    /// Sandbox settings.
    pub sandbox: EffectiveSandbox,
    /// The network mode.
    pub network: NetworkMode,
    /// enforce or warn.
    pub enforcement: Enforcement,
    /// Who may inject into the session.
    pub access: Vec<AccessPattern>,
    /// The active grants whose subject is this session, by name, sorted.
    pub grants: Vec<String>,
    /// The Gateways this session serves, sorted by name; empty when it is not a gateway.
    pub gateways: Vec<GatewayRules>,
    /// What the session may ask of model providers, and its chain.
    pub models: EffectiveModels,
    /// Hash of everything above: changes exactly when the context does.
    pub policy_hash: String,
    /// When the first of the session's active grants expires, that is when
    /// this context stops being current; `None` when no grant expires.
    /// Derived from `grants`, so left out of the hash and the JSON form.
    #[serde(skip)]
    pub valid_until: Option<Timestamp>,
    /// What each of `grants` gives that the trust level does not, to tell
    /// which grants an allowed call relied on ([`EffectiveContext::grants_behind`]).
    /// Derived from `grants`: left out of the hash and the JSON form, and
    /// empty in a context decoded from the wire.
    #[serde(skip)]
    pub granted: Vec<(String, CapabilitySet)>,
}

impl EffectiveContext {
    /// The grants an allowed use of `capability` relied on: those giving
    /// it, when the trust level alone does not; sorted by name.
    pub fn grants_behind(&self, capability: Capability) -> Vec<String> {
        self.granted
            .iter()
            .filter(|(_, given)| given.has(capability))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// What a Session's status shows of it: level, capabilities, the tools
    /// the agent can call, sandbox and network.
    pub fn summary(&self) -> EffectiveSummary {
        EffectiveSummary {
            trust_level: self.trust_level,
            capabilities: self.capabilities.iter().collect(),
            tools: super::callable_tools(self)
                .iter()
                .map(|id| id.tool().name.to_owned())
                .collect(),
            sandbox: self.sandbox.enabled,
            network: self.network,
            rules: self.rules.as_api(),
        }
    }
}

/// Sandbox settings of an effective context.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveSandbox {
    /// Whether the agent runs sandboxed.
    pub enabled: bool,
    /// Resources from the session, else its policy; the controller's defaults when `None`.
    pub resources: Option<ResourceRequirements>,
    /// The agent waits until the sidecar has verified the sandbox's
    /// isolation: the policy's or the session's wish (either turns it on).
    pub require_verified_isolation: bool,
}

/// The forwarding rules of one Gateway served by the session.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRules {
    /// The Gateway's name.
    pub gateway: String,
    /// The highest level it may forward to (its `trustLevel`).
    pub trust_level: TrustLevel,
    /// Its forward rules.
    pub forward_rules: Vec<ForwardRule>,
    /// How long forwards wait for approval.
    pub approval_timeout: Duration,
}

/// Why a session's effective context cannot be resolved. The session is
/// invalid until it is changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// The session turns its sandbox off where its level requires one.
    #[error(
        "spec.sandbox.enabled: false is not allowed: trust level {level} must run sandboxed under the namespace's SecurityPolicy"
    )]
    SandboxRequired {
        /// The session's trust level.
        level: TrustLevel,
    },
    /// The session asks for more network than its level allows.
    #[error(
        "spec.sandbox.network: {requested} is wider than trust level {level} allows ({allowed}); use {allowed} or less"
    )]
    NetworkTooWide {
        /// The session's trust level.
        level: TrustLevel,
        /// What the session asked for.
        requested: NetworkMode,
        /// What the level allows.
        allowed: NetworkMode,
    },
}

/// The default access list: sources at `trusted` or higher.
pub const DEFAULT_ACCESS: AccessPattern = AccessPattern::Trust(TrustLevel::Trusted);

/// Resolves the effective security context of `session`.
///
/// `policy` is the namespace's `default` SecurityPolicy (built-in profiles
/// when `None`); `grants` and `gateways` may hold objects of any namespace
/// and for any subject: only the active Grants whose subject is this session
/// and the Gateways naming it count, a Gateway only when the session is at
/// or below the trust level it declares (a Gateway that someone allowed to
/// write only semi-trusted ones names a trusted Session: the session does
/// not become a gateway). `now` decides which grants have expired.
pub fn resolve<'a>(
    session: &Session,
    policy: Option<&SecurityPolicy>,
    grants: impl IntoIterator<Item = &'a Grant>,
    gateways: impl IntoIterator<Item = &'a Gateway>,
    now: Timestamp,
) -> Result<EffectiveContext, ResolveError> {
    let policy = policy.map(|policy| &policy.spec);
    let namespace = session.namespace().unwrap_or_default();
    let name = session.name_any();
    let spec = &session.spec;
    let level = spec.trust_level;
    let settings = level_settings(policy, level);
    let requested = spec.sandbox.as_ref();

    let sandbox_required = settings.sandbox || level == TrustLevel::Untrusted;
    let sandbox_requested = requested.and_then(|sandbox| sandbox.enabled);
    if sandbox_required && sandbox_requested == Some(false) {
        return Err(ResolveError::SandboxRequired { level });
    }
    let network = match requested.and_then(|sandbox| sandbox.network) {
        Some(wanted) if wanted > settings.network => {
            return Err(ResolveError::NetworkTooWide {
                level,
                requested: wanted,
                allowed: settings.network,
            });
        }
        Some(wanted) => wanted,
        None => settings.network,
    };

    let in_namespace =
        |object_namespace: Option<&str>| object_namespace.is_none_or(|ns| ns == namespace);
    let level_set = level_capabilities(level, &settings);
    let mut capabilities = level_set;
    let mut grant_names = Vec::new();
    let mut granted: BTreeMap<String, CapabilitySet> = BTreeMap::new();
    let mut valid_until: Option<Timestamp> = None;
    let mut models = settings.models.clone();
    for grant in grants {
        if grant.spec.subject.session.as_deref() != Some(name.as_str())
            || !in_namespace(grant.metadata.namespace.as_deref())
        {
            continue;
        }
        // The context stops being current when one of its grants expires
        // or one not yet valid starts.
        let validity = grant_validity(grant, now);
        if let Some(at) = validity.next_change {
            valid_until = Some(valid_until.map_or(at, |until| until.min(at)));
        }
        if validity.state == GrantState::Active {
            let given = grant_capabilities(policy, grant);
            capabilities = capabilities.union(given);
            grant_names.push(grant.name_any());
            let beyond_level: CapabilitySet = given.iter().filter(|c| !level_set.has(*c)).collect();
            let entry = granted.entry(grant.name_any()).or_default();
            *entry = entry.union(beyond_level);
            if let Some(profile) = granted_profile(grant) {
                models.widen(&level_settings(policy, profile).models);
            }
        }
    }
    grant_names.sort_unstable();
    models.chain = EffectiveModels::chain_of(spec.provider.as_ref());
    models.providers = policy
        .map(|policy| policy.providers.clone())
        .unwrap_or_default();

    let mut gateway_rules: Vec<GatewayRules> = gateways
        .into_iter()
        .filter(|gateway| {
            gateway.spec.session == name
                && in_namespace(gateway.metadata.namespace.as_deref())
                && within_level(gateway.spec.trust_level, level)
        })
        .map(|gateway| GatewayRules {
            gateway: gateway.name_any(),
            trust_level: gateway.spec.trust_level,
            forward_rules: gateway.spec.forward_rules.clone(),
            approval_timeout: gateway.spec.approval_timeout,
        })
        .collect();
    gateway_rules.sort_unstable_by(|a, b| a.gateway.cmp(&b.gateway));

    let tools = permitted_tools(&settings, spec.tools.as_ref());
    let rules = ArgumentRulesInForce::of(&[
        spec.tools.as_ref().and_then(|tools| tools.rules.as_ref()),
        settings.tool_layers[0].rules.as_ref(),
        settings.tool_layers[1].rules.as_ref(),
    ]);
    let access = if spec.access.is_empty() {
        vec![DEFAULT_ACCESS]
    } else {
        spec.access.clone()
    };

    let mut context = EffectiveContext {
        namespace,
        session: name,
        trust_level: level,
        capabilities,
        tools,
        rules,
        sandbox: EffectiveSandbox {
            enabled: sandbox_required || sandbox_requested == Some(true),
            resources: requested
                .and_then(|sandbox| sandbox.resources.as_ref())
                .or(settings.resources)
                .cloned(),
            require_verified_isolation: settings.require_verified_isolation
                || requested.and_then(|sandbox| sandbox.require_verified_isolation) == Some(true),
        },
        network,
        enforcement: policy.map(|policy| policy.enforcement).unwrap_or_default(),
        access,
        grants: grant_names,
        valid_until,
        granted: granted.into_iter().collect(),
        gateways: gateway_rules,
        models,
        policy_hash: String::new(),
    };
    context.policy_hash = stable_hash(&context);
    Ok(context)
}

/// The capabilities a grant confers: its profile's or its explicit list,
/// never `*` and never the owner profile (whatever got past admission).
pub fn grant_capabilities(policy: Option<&SecurityPolicySpec>, grant: &Grant) -> CapabilitySet {
    let from_profile = match granted_profile(grant) {
        None => CapabilitySet::EMPTY,
        Some(level) => level_capabilities(level, &level_settings(policy, level)),
    };
    from_profile
        .union(grant.spec.capabilities.iter().collect())
        .without_wildcard()
}

/// The profile a grant confers, never owner (whatever got past admission).
/// A profile widens the session's capabilities and its models
/// ([`EffectiveModels::widen`]); a grant of capabilities only changes no model.
fn granted_profile(grant: &Grant) -> Option<TrustLevel> {
    grant
        .spec
        .profile
        .filter(|level| *level != TrustLevel::Owner)
}

/// The capabilities of a trust level; `*` kept for owner only.
pub(crate) fn level_capabilities(level: TrustLevel, settings: &LevelSettings<'_>) -> CapabilitySet {
    let set: CapabilitySet = settings.capabilities.iter().collect();
    if level == TrustLevel::Owner {
        set
    } else {
        set.without_wildcard()
    }
}

/// The tools permitted by the level's policy layers and the session's own rules.
fn permitted_tools(settings: &LevelSettings<'_>, session_rules: Option<&ToolRules>) -> ToolSet {
    ToolId::all()
        .filter(|id| {
            let tool = id.tool();
            let policy_permits = settings
                .tool_layers
                .iter()
                .find_map(|layer| policy_layer_verdict(layer, tool))
                .unwrap_or(true);
            policy_permits && session_rules.is_none_or(|rules| session_keeps(rules, tool))
        })
        .collect()
}
