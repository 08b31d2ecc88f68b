//! The built-in policy (the WOPR reference configuration of SPEC §1) and
//! how a SecurityPolicy layers over it, field by field.

use std::sync::LazyLock;

use k8s_openapi::api::core::v1::ResourceRequirements;

use super::models::EffectiveModels;
use crate::api::{
    Capability, ModelPolicy, NetworkMode, P2pPolicy, PolicyDefaults, SandboxPolicy,
    SecurityPolicySpec, ToolRules, TrustLevel, TrustLevelProfile, TrustLevelProfiles,
};

/// The policy in force where a namespace has no `default` SecurityPolicy:
///
/// | level | capabilities | sandbox | network | tools |
/// |---|---|---|---|---|
/// | owner | `*` | off | full | all |
/// | trusted | inject, inject.tools, session.spawn, a2a.call | off | full | all but denied |
/// | semi-trusted | inject, inject.tools | on | restricted | all but denied |
/// | untrusted | inject | on | none | deny `*` |
///
/// and, for every level, tools needing `config.write` denied unless a
/// level's own rules allow them. Models, after the seed's strategy table:
///
/// | level | models | tokens per request | per minute | per day |
/// |---|---|---|---|---|
/// | owner | any | no limit | no limit | no limit |
/// | trusted | any | 16384 | 200000 | 5000000 |
/// | semi-trusted | low-cost (`*mini*`, `*haiku*`, `*flash*`, `*nano*`, `*small*`) | 2048 | 20000 | 200000 |
/// | untrusted | none (unless granted) | 2048 | 20000 | 200000 |
pub fn builtin_policy() -> &'static SecurityPolicySpec {
    static BUILTIN: LazyLock<SecurityPolicySpec> = LazyLock::new(|| SecurityPolicySpec {
        enforcement: Default::default(),
        defaults: Some(PolicyDefaults {
            sandbox: None,
            tools: Some(rules(&[], &["config.write"])),
        }),
        trust_levels: Some(TrustLevelProfiles {
            owner: Some(profile(
                &[Capability::All],
                false,
                NetworkMode::Full,
                rules(&["*"], &[]),
                models(&["*"], 0, 0, 0),
            )),
            trusted: Some(profile(
                &[
                    Capability::Inject,
                    Capability::InjectTools,
                    Capability::SessionSpawn,
                    Capability::A2aCall,
                ],
                false,
                NetworkMode::Full,
                rules(&[], &[]),
                models(&["*"], 16_384, 200_000, 5_000_000),
            )),
            semi_trusted: Some(profile(
                &[Capability::Inject, Capability::InjectTools],
                true,
                NetworkMode::Restricted,
                rules(&[], &[]),
                models(&LOW_COST_MODELS, 2_048, 20_000, 200_000),
            )),
            untrusted: Some(profile(
                &[Capability::Inject],
                true,
                NetworkMode::None,
                rules(&[], &["*"]),
                // No model; semi-trusted's limits, so that a Grant's
                // profile widening the models does not lift every limit
                // (0, no limit, would be the larger).
                models(&[], 2_048, 20_000, 200_000),
            )),
        }),
        p2p: Some(P2pPolicy::default()),
        audit: None,
        inbox: None,
        spawn: None,
        update_policy: None,
        providers: Vec::new(),
    });
    &BUILTIN
}

/// The low-cost models a semi-trusted session may use by default.
const LOW_COST_MODELS: [&str; 5] = [
    "*:*mini*",
    "*:*haiku*",
    "*:*flash*",
    "*:*nano*",
    "*:*small*",
];

fn models(
    allow: &[&str],
    max_tokens_per_request: u32,
    tokens_per_minute: u64,
    tokens_per_day: u64,
) -> ModelPolicy {
    ModelPolicy {
        allow: Some(allow.iter().map(|pattern| pattern.to_string()).collect()),
        max_tokens_per_request: Some(max_tokens_per_request),
        tokens_per_minute: Some(tokens_per_minute),
        tokens_per_day: Some(tokens_per_day),
    }
}

fn rules(allow: &[&str], deny: &[&str]) -> ToolRules {
    ToolRules {
        allow: allow.iter().map(|entry| entry.to_string()).collect(),
        deny: deny.iter().map(|entry| entry.to_string()).collect(),
        rules: None,
    }
}

fn profile(
    capabilities: &[Capability],
    sandbox: bool,
    network: NetworkMode,
    tools: ToolRules,
    models: ModelPolicy,
) -> TrustLevelProfile {
    TrustLevelProfile {
        capabilities: Some(capabilities.to_vec()),
        sandbox: Some(SandboxPolicy {
            enabled: Some(sandbox),
            network: Some(network),
            resources: None,
            require_verified_isolation: None,
        }),
        tools: Some(tools),
        providers: Some(models),
    }
}

/// A trust level's settings after layering a SecurityPolicy over the
/// built-in policy: a field set by the policy's level profile wins, then one
/// set by the policy's `defaults`, then the built-in level profile.
pub struct LevelSettings<'a> {
    /// The level's capabilities as configured (before removing `*` from non-owners).
    pub capabilities: &'a [Capability],
    /// Whether the level requires a sandbox.
    pub sandbox: bool,
    /// The widest network the level allows.
    pub network: NetworkMode,
    /// Default resources for the level's sandboxes.
    pub resources: Option<&'a ResourceRequirements>,
    /// Whether the level's agents wait for verified isolation.
    pub require_verified_isolation: bool,
    /// The level's tool rules, then the defaults' tool rules (most specific first).
    pub tool_layers: [&'a ToolRules; 2],
    /// What the level may ask of model providers: each field of
    /// `trustLevels.<level>.providers` that the policy sets, else the
    /// built-in level's (chain and providers left empty: they are the session's).
    pub models: EffectiveModels,
}

/// The settings of `level` under `policy` (the built-in policy when `None`).
pub fn level_settings(policy: Option<&SecurityPolicySpec>, level: TrustLevel) -> LevelSettings<'_> {
    let builtin = builtin_policy();
    let builtin_level =
        level_profile(builtin, level).expect("the built-in policy sets every level");
    let policy_level = policy.and_then(|policy| level_profile(policy, level));
    let policy_defaults = policy.and_then(|policy| policy.defaults.as_ref());

    let sandboxes = [
        policy_level.and_then(|p| p.sandbox.as_ref()),
        policy_defaults.and_then(|d| d.sandbox.as_ref()),
        builtin_level.sandbox.as_ref(),
    ];

    LevelSettings {
        capabilities: policy_level
            .and_then(|p| p.capabilities.as_deref())
            .or(builtin_level.capabilities.as_deref())
            .unwrap_or_default(),
        sandbox: first_set(&sandboxes, |s| s.enabled).unwrap_or(true),
        network: first_set(&sandboxes, |s| s.network).unwrap_or(NetworkMode::None),
        resources: first_set(&sandboxes, |s| s.resources.as_ref()),
        require_verified_isolation: first_set(&sandboxes, |s| s.require_verified_isolation)
            .unwrap_or(false),
        tool_layers: [
            policy_level
                .and_then(|p| p.tools.as_ref())
                .or(builtin_level.tools.as_ref())
                .expect("the built-in policy sets every level's tools"),
            policy_defaults
                .and_then(|d| d.tools.as_ref())
                .or(builtin.defaults.as_ref().and_then(|d| d.tools.as_ref()))
                .expect("the built-in policy sets default tools"),
        ],
        models: EffectiveModels::of_level(&[
            policy_level.and_then(|p| p.providers.as_ref()),
            builtin_level.providers.as_ref(),
        ]),
    }
}

/// The first sandbox layer (most specific first) that sets a field.
fn first_set<'a, T>(
    layers: &[Option<&'a SandboxPolicy>],
    field: impl Fn(&'a SandboxPolicy) -> Option<T>,
) -> Option<T> {
    layers.iter().flatten().find_map(|layer| field(layer))
}

fn level_profile(policy: &SecurityPolicySpec, level: TrustLevel) -> Option<&TrustLevelProfile> {
    policy
        .trust_levels
        .as_ref()
        .and_then(|levels| levels.get(level))
}
