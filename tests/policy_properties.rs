//! Properties of the policy engine over random sessions, grants and policies.

mod common;

use common::*;
use k8s_openapi::jiff::SignedDuration;
use proptest::prelude::*;
use proptest::sample::select;
use wopr_operator::api::{
    AccessPattern, Capability, Enforcement, Grant, NetworkMode, PolicyDefaults, SandboxPolicy,
    SandboxSpec, SecurityPolicy, SecurityPolicySpec, Session, SourceType, ToolRules, TrustLevel,
    TrustLevelProfile, TrustLevelProfiles,
};
use wopr_operator::policy::{
    CapabilitySet, EffectiveContext, GatewayRules, Outcome, Request, Source, TOOLS, ToolId, decide,
    resolve,
};

const SESSION: &str = "subject";

fn trust_level() -> impl Strategy<Value = TrustLevel> {
    select(TrustLevel::ALL.to_vec())
}

fn capability() -> impl Strategy<Value = Capability> {
    select(Capability::ALL.to_vec())
}

fn network() -> impl Strategy<Value = NetworkMode> {
    select(vec![
        NetworkMode::None,
        NetworkMode::Restricted,
        NetworkMode::Full,
    ])
}

/// Tool rule entries: names, prefixes, wildcards, capability names, junk.
fn tool_rules() -> impl Strategy<Value = ToolRules> {
    let entry = prop_oneof![
        select(TOOLS.iter().map(|t| t.name.to_string()).collect::<Vec<_>>()),
        select(vec![
            "*",
            "sessions_*",
            "memory_*",
            "config.write",
            "inject.tools",
            "bogus"
        ])
        .prop_map(String::from),
    ];
    (
        prop::collection::vec(entry.clone(), 0..3),
        prop::collection::vec(entry, 0..3),
    )
        .prop_map(|(allow, deny)| ToolRules {
            allow,
            deny,
            rules: None,
        })
}

fn session_strategy() -> impl Strategy<Value = Session> {
    (
        trust_level(),
        prop::option::of(any::<bool>()),
        prop::option::of(network()),
        prop::option::of(tool_rules()),
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(level, enabled, network, tools, require_verified_isolation)| {
                let mut session = session(SESSION, level);
                session.spec.sandbox = Some(SandboxSpec {
                    enabled,
                    network,
                    require_verified_isolation,
                    ..Default::default()
                });
                session.spec.tools = tools;
                session
            },
        )
}

/// Grants as they might exist, including ones admission would reject.
fn grant_strategy() -> impl Strategy<Value = Grant> {
    (
        select(vec![SESSION, "someone-else"]),
        prop::option::of(trust_level()),
        prop::collection::vec(capability(), 0..3),
        prop::option::of(-3600i64..3600),
        0u32..1000,
    )
        .prop_map(|(subject, profile, capabilities, expires_in, n)| {
            let mut grant = session_grant(&format!("g{n}"), subject, &capabilities);
            grant.spec.profile = profile;
            grant.spec.expires_at = expires_in.map(at);
            grant
        })
}

fn profile_strategy() -> impl Strategy<Value = Option<TrustLevelProfile>> {
    prop::option::of(
        (
            prop::option::of(prop::collection::vec(capability(), 0..4)),
            prop::option::of(any::<bool>()),
            prop::option::of(network()),
            prop::option::of(tool_rules()),
            prop::option::of(any::<bool>()),
        )
            .prop_map(
                |(capabilities, enabled, network, tools, require_verified_isolation)| {
                    TrustLevelProfile {
                        capabilities,
                        sandbox: Some(SandboxPolicy {
                            enabled,
                            network,
                            resources: None,
                            require_verified_isolation,
                        }),
                        tools,
                        providers: None,
                    }
                },
            ),
    )
}

fn policy_strategy() -> impl Strategy<Value = Option<SecurityPolicy>> {
    prop::option::of(
        (
            select(vec![Enforcement::Enforce, Enforcement::Warn]),
            prop::option::of(tool_rules()),
            [
                profile_strategy(),
                profile_strategy(),
                profile_strategy(),
                profile_strategy(),
            ],
        )
            .prop_map(
                |(enforcement, default_tools, [owner, trusted, semi_trusted, untrusted])| {
                    SecurityPolicy {
                        metadata: meta("default"),
                        spec: SecurityPolicySpec {
                            enforcement,
                            defaults: Some(PolicyDefaults {
                                sandbox: None,
                                tools: default_tools,
                            }),
                            trust_levels: Some(TrustLevelProfiles {
                                owner,
                                trusted,
                                semi_trusted,
                                untrusted,
                            }),
                            p2p: None,
                            audit: None,
                            inbox: None,
                            spawn: None,
                            update_policy: None,
                            providers: Vec::new(),
                        },
                        status: None,
                    }
                },
            ),
    )
}

fn request_strategy() -> impl Strategy<Value = RequestSpec> {
    prop_oneof![
        (0..TOOLS.len()).prop_map(|i| RequestSpec::Tool(TOOLS[i].name)),
        trust_level().prop_map(RequestSpec::Spawn),
        capability().prop_map(RequestSpec::Capability),
        (
            trust_level(),
            prop::collection::vec(capability(), 0..3),
            select(vec![
                SourceType::Session,
                SourceType::Peer,
                SourceType::ServiceAccount
            ])
        )
            .prop_map(|(level, caps, kind)| RequestSpec::Inject(level, caps, kind)),
    ]
}

/// An owned description of a request, turned into a [`Request`] on use.
#[derive(Clone, Debug)]
enum RequestSpec {
    Tool(&'static str),
    Spawn(TrustLevel),
    Capability(Capability),
    Inject(TrustLevel, Vec<Capability>, SourceType),
}

fn decide_spec(context: &EffectiveContext, spec: &RequestSpec) -> Outcome {
    match spec {
        RequestSpec::Tool(name) => decide_named(context, name).outcome,
        RequestSpec::Spawn(level) => decide(context, Request::Spawn(*level)).outcome,
        RequestSpec::Capability(c) => decide(context, Request::Capability(*c)).outcome,
        RequestSpec::Inject(level, caps, kind) => {
            let source = Source {
                source_type: *kind,
                identity: "someone",
                trust_level: *level,
                capabilities: caps.iter().collect(),
            };
            decide(context, Request::Inject(&source)).outcome
        }
    }
}

/// The capabilities a grant could at most confer: its list plus its
/// profile's capabilities under the same policy.
fn grant_bound(policy: Option<&SecurityPolicy>, grant: &Grant) -> CapabilitySet {
    let profile = grant.spec.profile.map_or(CapabilitySet::EMPTY, |level| {
        let mut probe = session("probe", level);
        probe.spec.sandbox = None;
        resolve(&probe, policy, &[], &[], now())
            .map(|context| context.capabilities)
            .unwrap_or(CapabilitySet::EMPTY)
    });
    profile.union(grant.spec.capabilities.iter().collect())
}

fn is_active_for_subject(grant: &Grant) -> bool {
    grant.spec.subject.session.as_deref() == Some(SESSION)
        && grant.spec.expires_at.as_ref().is_none_or(|t| now() < t.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn wildcard_only_for_owner(
        session in session_strategy(),
        policy in policy_strategy(),
        grants in prop::collection::vec(grant_strategy(), 0..6),
    ) {
        if let Ok(context) = resolve(&session, policy.as_ref(), &grants, &[], now()) {
            prop_assert!(!context.capabilities.has_wildcard() || context.trust_level == TrustLevel::Owner);
        }
    }

    #[test]
    fn capabilities_never_exceed_profile_and_active_grants(
        session in session_strategy(),
        policy in policy_strategy(),
        grants in prop::collection::vec(grant_strategy(), 0..6),
    ) {
        let Ok(context) = resolve(&session, policy.as_ref(), &grants, &[], now()) else {
            return Ok(());
        };
        let profile = resolve(&session, policy.as_ref(), &[], &[], now()).unwrap().capabilities;
        let bound = grants
            .iter()
            .filter(|grant| is_active_for_subject(grant))
            .fold(profile, |bound, grant| bound.union(grant_bound(policy.as_ref(), grant)));
        prop_assert!(context.capabilities.is_subset_of(bound), "{:?} ⊄ {:?}", context.capabilities, bound);

        // Expired grants and grants for other sessions change nothing at all.
        let counting: Vec<Grant> = grants.iter().filter(|g| is_active_for_subject(g)).cloned().collect();
        let only_counting = resolve(&session, policy.as_ref(), &counting, &[], now()).unwrap();
        prop_assert_eq!(context, only_counting);
    }

    #[test]
    fn a_session_can_ask_for_verified_isolation_but_never_drop_it(
        session in session_strategy(),
        policy in policy_strategy(),
    ) {
        let Ok(context) = resolve(&session, policy.as_ref(), &[], &[], now()) else {
            return Ok(());
        };
        let level = wopr_operator::policy::level_settings(
            policy.as_ref().map(|p| &p.spec),
            session.spec.trust_level,
        );
        let asked = session.spec.sandbox.as_ref().and_then(|s| s.require_verified_isolation);
        prop_assert_eq!(
            context.sandbox.require_verified_isolation,
            level.require_verified_isolation || asked == Some(true)
        );
    }

    #[test]
    fn raising_trust_never_removes_a_capability_under_default_profiles(
        (low, high) in (trust_level(), trust_level()).prop_filter("ordered", |(a, b)| a < b),
        grants in prop::collection::vec(grant_strategy(), 0..6),
    ) {
        let lower = resolve(&session(SESSION, low), None, &grants, &[], now()).unwrap();
        let higher = resolve(&session(SESSION, high), None, &grants, &[], now()).unwrap();
        for capability in lower.capabilities.iter() {
            prop_assert!(higher.capabilities.has(capability), "{low} has {capability}, {high} lacks it");
        }
    }

    #[test]
    fn warn_never_denies_and_would_deny_exactly_where_enforce_denies(
        session in session_strategy(),
        policy in policy_strategy(),
        grants in prop::collection::vec(grant_strategy(), 0..4),
        requests in prop::collection::vec(request_strategy(), 1..16),
    ) {
        let Ok(mut context) = resolve(&session, policy.as_ref(), &grants, &[], now()) else {
            return Ok(());
        };
        context.enforcement = Enforcement::Enforce;
        let enforce = context.clone();
        context.enforcement = Enforcement::Warn;
        let warn = context;
        let is_a_gateway = !warn.gateways.is_empty();
        for request in &requests {
            let enforced = decide_spec(&enforce, request);
            let warned = decide_spec(&warn, request);
            if let RequestSpec::Inject(TrustLevel::Untrusted, ..) = request
                && !is_a_gateway
            {
                // The gateway boundary holds in every mode.
                prop_assert_eq!((enforced, warned), (Outcome::Denied, Outcome::Denied));
                continue;
            }
            prop_assert_ne!(warned, Outcome::Denied, "{:?}", request);
            prop_assert_ne!(enforced, Outcome::WouldDeny);
            prop_assert_eq!(enforced == Outcome::Denied, warned == Outcome::WouldDeny, "{:?}", request);
        }
    }

    /// Untrusted input reaches a session only through a gateway: whatever
    /// the access list, the source's capabilities or the enforcement mode.
    #[test]
    fn untrusted_sources_reach_only_gateway_sessions(
        session in session_strategy(),
        policy in policy_strategy(),
        grants in prop::collection::vec(grant_strategy(), 0..4),
        caps in prop::collection::vec(capability(), 0..4),
        kind in select(vec![SourceType::Session, SourceType::Peer, SourceType::ServiceAccount]),
        warn in any::<bool>(),
    ) {
        let Ok(mut context) = resolve(&session, policy.as_ref(), &grants, &[], now()) else {
            return Ok(());
        };
        context.access = vec![AccessPattern::Anyone];
        context.enforcement = if warn { Enforcement::Warn } else { Enforcement::Enforce };
        let request = RequestSpec::Inject(TrustLevel::Untrusted, caps.clone(), kind);
        prop_assert_eq!(decide_spec(&context, &request), Outcome::Denied);
        // A gateway session is where untrusted input goes, as its access
        // list and the source's capabilities say.
        context.gateways = vec![GatewayRules {
            gateway: "p2p-gateway".into(),
            trust_level: TrustLevel::Owner,
            forward_rules: Vec::new(),
            approval_timeout: "5m".parse().unwrap(),
        }];
        let may_inject = caps.iter().collect::<CapabilitySet>().has(Capability::Inject);
        let into_gateway = decide_spec(&context, &request);
        prop_assert_eq!(into_gateway != Outcome::Denied, may_inject || warn, "{:?}", into_gateway);
    }

    #[test]
    fn unknown_tools_are_always_denied(
        session in session_strategy(),
        policy in policy_strategy(),
        grants in prop::collection::vec(grant_strategy(), 0..4),
        name in "[a-z_*.]{0,24}",
    ) {
        prop_assume!(ToolId::lookup(&name).is_none());
        if let Ok(context) = resolve(&session, policy.as_ref(), &grants, &[], now()) {
            prop_assert_eq!(decide_named(&context, &name).outcome, Outcome::Denied);
        }
    }

    #[test]
    fn resolution_does_not_depend_on_grant_order(
        session in session_strategy(),
        mut grants in prop::collection::vec(grant_strategy(), 0..6),
    ) {
        let forward = resolve(&session, None, &grants, &[], now());
        grants.reverse();
        prop_assert_eq!(forward, resolve(&session, None, &grants, &[], now()));
    }

    #[test]
    fn a_grant_counts_exactly_until_it_expires(offset in -100i64..100) {
        let semi = session(SESSION, TrustLevel::SemiTrusted);
        let mut grant = session_grant("g", SESSION, &[Capability::InjectExec]);
        grant.spec.expires_at = Some(at(0));
        let when = now() + SignedDuration::from_secs(offset);
        let context = resolve(&semi, None, &[grant], &[], when).unwrap();
        prop_assert_eq!(context.capabilities.has(Capability::InjectExec), offset < 0);
    }
}
