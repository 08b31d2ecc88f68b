//! The reference behaviour of the WOPR model (SPEC §1), table-driven, plus
//! resolver edge cases: expiry, scope, key rotation, invalid sessions, hashing.

mod common;

use common::*;
use wopr_operator::api::{
    AccessPattern, Capability, Enforcement, NetworkMode, SecurityPolicy, Session, SourceType,
    ToolRules, TrustLevel,
};
use wopr_operator::policy::{
    self, Outcome, Reason, Request, ResolveError, Source, TOOLS, callable_tools, decide, resolve,
    resolve_peer,
};

/// The context of `session` under `policy`, with no grants or gateways.
fn context_of(session: &Session, policy: Option<&SecurityPolicy>) -> policy::EffectiveContext {
    resolve(session, policy, &[], &[], now()).unwrap()
}

/// The tools every session has: the security tools and its inbox.
const ALWAYS_AVAILABLE: [&str; 6] = [
    "security_whoami",
    "security_check",
    "security_request",
    "inbox_read",
    "inbox_ack",
    "inbox_reply",
];
const GATEWAY_TOOLS: [&str; 3] = ["gateway_forward", "gateway_respond", "gateway_queue"];

fn outcome(session: &wopr_operator::api::Session, tool: &str) -> Outcome {
    let context = context_of(session, None);
    decide_named(&context, tool).outcome
}

#[test]
fn reference_tool_decisions() {
    use Outcome::{Allowed, Denied};
    use TrustLevel::*;
    let semi_sandboxed = sandboxed(session("research", SemiTrusted));
    let table = [
        (&semi_sandboxed, "memory_read", Allowed),
        (&semi_sandboxed, "security_whoami", Allowed),
        (&semi_sandboxed, "sessions_send", Denied),
        (&semi_sandboxed, "http_fetch", Denied),
        (&semi_sandboxed, "config_set", Denied),
        (&semi_sandboxed, "exec_command", Denied),
    ];
    for (session, tool, expected) in table {
        assert_eq!(outcome(session, tool), expected, "{tool}");
    }
}

#[test]
fn untrusted_gets_only_the_always_available_tools() {
    let context = context_of(&session("api", TrustLevel::Untrusted), None);
    let callable: Vec<&str> = callable_tools(&context)
        .iter()
        .map(|id| id.tool().name)
        .collect();
    assert_eq!(callable, ALWAYS_AVAILABLE);
    for tool in TOOLS.iter().filter(|t| !ALWAYS_AVAILABLE.contains(&t.name)) {
        assert_eq!(
            decide_named(&context, tool.name).outcome,
            Outcome::Denied,
            "{}",
            tool.name
        );
    }
}

#[test]
fn owner_gets_everything() {
    let owner = session("admin", TrustLevel::Owner);
    let context = context_of(&owner, None);
    assert!(context.capabilities.has_wildcard());
    for tool in TOOLS.iter().filter(|t| !GATEWAY_TOOLS.contains(&t.name)) {
        assert_eq!(
            outcome(&owner, tool.name),
            Outcome::Allowed,
            "{}",
            tool.name
        );
    }
    // Gateway tools act on a gateway's queue: an owner session that serves a
    // Gateway (declaring owner: one below it serves no owner session) has
    // every tool.
    let mut at_owner = gateway("gw", "admin");
    at_owner.spec.trust_level = TrustLevel::Owner;
    let serving = resolve(&owner, None, &[], &[at_owner], now()).unwrap();
    assert_eq!(callable_tools(&serving).iter().count(), TOOLS.len());
    let below = resolve(&owner, None, &[], &[gateway("gw", "admin")], now()).unwrap();
    assert_eq!(
        decide_named(&below, "gateway_forward").reason,
        Reason::NotAGateway
    );
    assert_eq!(
        decide_named(&context, "gateway_forward").reason,
        Reason::NotAGateway
    );
}

#[test]
fn builtin_profiles_match_the_spec_table() {
    use Capability::*;
    let expected: [(TrustLevel, &[Capability], bool, NetworkMode); 4] = [
        (TrustLevel::Owner, &[All], false, NetworkMode::Full),
        (
            TrustLevel::Trusted,
            &[Inject, InjectTools, SessionSpawn, A2aCall],
            false,
            NetworkMode::Full,
        ),
        (
            TrustLevel::SemiTrusted,
            &[Inject, InjectTools],
            true,
            NetworkMode::Restricted,
        ),
        (TrustLevel::Untrusted, &[Inject], true, NetworkMode::None),
    ];
    for (level, capabilities, sandbox, network) in expected {
        let context = context_of(&session("s", level), None);
        assert_eq!(
            context.capabilities.iter().collect::<Vec<_>>(),
            capabilities,
            "{level}"
        );
        assert_eq!(context.sandbox.enabled, sandbox, "{level}");
        assert_eq!(context.network, network, "{level}");
        assert_eq!(context.enforcement, Enforcement::Enforce);
        assert_eq!(context.access, [AccessPattern::Trust(TrustLevel::Trusted)]);
    }
}

#[test]
fn capability_checks_and_spawning() {
    let trusted = context_of(&session("t", TrustLevel::Trusted), None);
    assert_eq!(
        decide(&trusted, Request::Capability(Capability::A2aCall)).outcome,
        Outcome::Allowed
    );
    let denied = decide(&trusted, Request::Capability(Capability::InjectNetwork));
    assert_eq!(denied.outcome, Outcome::Denied);
    assert_eq!(
        denied.reason.to_string(),
        "capability inject.network not granted"
    );

    assert_eq!(
        decide(&trusted, Request::Spawn(TrustLevel::SemiTrusted)).outcome,
        Outcome::Allowed
    );
    assert_eq!(
        decide(&trusted, Request::Spawn(TrustLevel::Trusted)).outcome,
        Outcome::Allowed
    );
    let above = decide(&trusted, Request::Spawn(TrustLevel::Owner));
    assert_eq!(above.outcome, Outcome::Denied);
    assert!(above.reason.to_string().contains("must not exceed"));
    let semi = context_of(&session("s", TrustLevel::SemiTrusted), None);
    assert_eq!(
        decide(&semi, Request::Spawn(TrustLevel::Untrusted)).reason,
        Reason::MissingCapability(Capability::SessionSpawn)
    );
}

#[test]
fn unknown_and_forbidden_tools_give_the_same_message() {
    let context = context_of(&session("u", TrustLevel::Untrusted), None);
    let unknown = decide_named(&context, "launch_missiles");
    let forbidden = decide_named(&context, "memory_read");
    assert_eq!(unknown.outcome, Outcome::Denied);
    assert_eq!(forbidden.outcome, Outcome::Denied);
    assert_eq!(unknown.reason.to_string(), forbidden.reason.to_string());
}

#[test]
fn session_grants_add_capabilities_until_they_expire() {
    let semi = session("research", TrustLevel::SemiTrusted);
    let mut grant = session_grant("net", "research", &[Capability::InjectNetwork]);
    grant.spec.expires_at = Some(at(60));
    let active = resolve(&semi, None, std::slice::from_ref(&grant), &[], now()).unwrap();
    assert_eq!(
        decide_named(&active, "http_fetch").outcome,
        Outcome::Allowed
    );
    assert_eq!(active.grants, ["net"]);
    assert_eq!(
        active.valid_until,
        Some(at(60).0),
        "current until the grant expires"
    );

    let later = now() + k8s_openapi::jiff::SignedDuration::from_secs(60);
    let expired = resolve(&semi, None, std::slice::from_ref(&grant), &[], later).unwrap();
    assert_eq!(
        decide_named(&expired, "http_fetch").outcome,
        Outcome::Denied
    );
    assert!(expired.grants.is_empty());
    assert_eq!(expired.valid_until, None);
    assert_ne!(active.policy_hash, expired.policy_hash);
}

#[test]
fn grants_for_other_sessions_or_namespaces_never_count() {
    let semi = session("research", TrustLevel::SemiTrusted);
    let other_session = session_grant("a", "code", &[Capability::InjectNetwork]);
    let mut other_namespace = session_grant("b", "research", &[Capability::InjectNetwork]);
    other_namespace.metadata.namespace = Some("team-b".into());
    let context = resolve(&semi, None, &[other_session, other_namespace], &[], now()).unwrap();
    assert!(!context.capabilities.has(Capability::InjectNetwork));
}

#[test]
fn grants_never_confer_owner_or_the_wildcard_even_past_admission() {
    let semi = session("research", TrustLevel::SemiTrusted);
    let mut owner_profile = session_grant("a", "research", &[]);
    owner_profile.spec.profile = Some(TrustLevel::Owner);
    let wildcard = session_grant("b", "research", &[Capability::All]);
    let context = resolve(&semi, None, &[owner_profile, wildcard], &[], now()).unwrap();
    assert_eq!(
        context.capabilities.iter().collect::<Vec<_>>(),
        [Capability::Inject, Capability::InjectTools]
    );
}

#[test]
fn a_policy_cannot_give_non_owners_the_wildcard() {
    let policy = security_policy(serde_json::json!({
        "trustLevels": {"trusted": {"capabilities": ["*", "inject"]}}
    }));
    let context = context_of(&session("t", TrustLevel::Trusted), Some(&policy));
    assert_eq!(
        context.capabilities.iter().collect::<Vec<_>>(),
        [Capability::Inject]
    );
}

#[test]
fn policy_tool_rules_layer_level_over_defaults_and_sessions_only_narrow() {
    let policy = security_policy(serde_json::json!({
        "enforcement": "enforce",
        "defaults": {"tools": {"deny": ["*"]}},
        "trustLevels": {"trusted": {"tools": {"allow": ["memory_*", "security_*"]}}}
    }));
    let mut trusted = session("t", TrustLevel::Trusted);
    let context = context_of(&trusted, Some(&policy));
    let names = |context: &policy::EffectiveContext| -> Vec<&str> {
        callable_tools(context)
            .iter()
            .map(|id| id.tool().name)
            .collect()
    };
    assert_eq!(
        names(&context),
        [
            "security_whoami",
            "security_check",
            "security_request",
            "memory_read",
            "memory_write",
            "inbox_read",
            "inbox_ack",
            "inbox_reply"
        ]
    );
    // A session's own allow list cannot bring back what the policy denies.
    trusted.spec.tools = Some(ToolRules {
        allow: vec!["*".into()],
        deny: vec!["memory_write".into()],
        rules: None,
    });
    let narrowed = context_of(&trusted, Some(&policy));
    assert_eq!(
        names(&narrowed),
        [
            "security_whoami",
            "security_check",
            "security_request",
            "memory_read",
            "inbox_read",
            "inbox_ack",
            "inbox_reply"
        ]
    );
}

#[test]
fn sessions_cannot_loosen_their_sandbox() {
    let mut semi = session("s", TrustLevel::SemiTrusted);
    semi.spec.sandbox = Some(wopr_operator::api::SandboxSpec {
        enabled: Some(false),
        ..Default::default()
    });
    let error = resolve(&semi, None, &[], &[], now()).unwrap_err();
    assert_eq!(
        error,
        ResolveError::SandboxRequired {
            level: TrustLevel::SemiTrusted
        }
    );
    assert!(error.to_string().starts_with("spec.sandbox.enabled"));

    semi.spec.sandbox = Some(wopr_operator::api::SandboxSpec {
        network: Some(NetworkMode::Full),
        ..Default::default()
    });
    let error = resolve(&semi, None, &[], &[], now()).unwrap_err();
    assert!(matches!(
        error,
        ResolveError::NetworkTooWide {
            allowed: NetworkMode::Restricted,
            ..
        }
    ));
    assert!(error.to_string().starts_with("spec.sandbox.network"));

    // Narrowing is fine, and a trusted session may turn a sandbox on.
    semi.spec.sandbox = Some(wopr_operator::api::SandboxSpec {
        network: Some(NetworkMode::None),
        ..Default::default()
    });
    assert_eq!(context_of(&semi, None).network, NetworkMode::None);
    let trusted = sandboxed(session("t", TrustLevel::Trusted));
    assert!(context_of(&trusted, None).sandbox.enabled);
}

#[test]
fn untrusted_is_sandboxed_whatever_the_policy_says() {
    let policy = security_policy(serde_json::json!({
        "defaults": {"sandbox": {"enabled": false}},
        "trustLevels": {"untrusted": {"sandbox": {"enabled": false}}}
    }));
    let context = context_of(&session("u", TrustLevel::Untrusted), Some(&policy));
    assert!(context.sandbox.enabled);
}

#[test]
fn injections_follow_the_access_list() {
    let mut target = session("code", TrustLevel::Trusted);
    let default_access = context_of(&target, None);
    let owner = context_of(&session("admin", TrustLevel::Owner), None);
    let semi = context_of(&session("helper", TrustLevel::SemiTrusted), None);
    let inject = |target, source: &Source<'_>| decide(target, Request::Inject(source)).outcome;
    assert_eq!(
        inject(&default_access, &Source::session(&owner)),
        Outcome::Allowed
    );
    assert_eq!(
        inject(&default_access, &Source::session(&semi)),
        Outcome::Denied
    );

    target.spec.access = vec!["session:helper".parse().unwrap()];
    let by_name = context_of(&target, None);
    assert_eq!(inject(&by_name, &Source::session(&semi)), Outcome::Allowed);
    assert_eq!(inject(&by_name, &Source::session(&owner)), Outcome::Denied);

    target.spec.access = vec![
        "type:serviceaccount".parse().unwrap(),
        "peer:KEY".parse().unwrap(),
    ];
    let typed = context_of(&target, None);
    let inject_only: policy::CapabilitySet = [Capability::Inject].into_iter().collect();
    let api = Source {
        source_type: SourceType::ServiceAccount,
        identity: "team-a/client-1",
        trust_level: TrustLevel::SemiTrusted,
        capabilities: inject_only,
    };
    assert_eq!(inject(&typed, &api), Outcome::Allowed);
    // An untrusted one, whatever the access list says, only into a gateway.
    let untrusted_api = Source {
        trust_level: TrustLevel::Untrusted,
        ..api
    };
    let decision = decide(&typed, Request::Inject(&untrusted_api));
    assert_eq!(decision.reason, Reason::UntrustedNeedsGateway);
    let no_inject = Source {
        capabilities: policy::CapabilitySet::EMPTY,
        ..api
    };
    let decision = decide(&typed, Request::Inject(&no_inject));
    assert_eq!(decision.reason, Reason::SourceCannotInject);
}

#[test]
fn peers_need_an_active_grant_in_scope() {
    let mut grant = peer_grant("alice", "KEY-ALICE", TrustLevel::SemiTrusted);
    grant.spec.sessions = vec!["p2p-gateway".into()];
    let grants = [grant];
    let standing =
        resolve_peer("KEY-ALICE", "p2p-gateway", NAMESPACE, None, &grants, now()).unwrap();
    assert_eq!(standing.trust_level, TrustLevel::SemiTrusted);
    assert!(standing.capabilities.has(Capability::InjectTools));
    assert_eq!(standing.grants, ["alice"]);
    assert_eq!(
        resolve_peer("KEY-ALICE", "research", NAMESPACE, None, &grants, now()),
        None
    );
    assert_eq!(
        resolve_peer(
            "KEY-MALLORY",
            "p2p-gateway",
            NAMESPACE,
            None,
            &grants,
            now()
        ),
        None
    );
    assert_eq!(
        resolve_peer("KEY-ALICE", "p2p-gateway", "team-b", None, &grants, now()),
        None
    );

    let mut gateway = session("p2p-gateway", TrustLevel::SemiTrusted);
    gateway.spec.access = vec!["peer:KEY-ALICE".parse().unwrap()];
    let context = context_of(&gateway, None);
    assert_eq!(
        decide(&context, Request::Inject(&Source::peer(&standing))).outcome,
        Outcome::Allowed
    );
}

#[test]
fn rotated_keys_count_only_within_the_grace_period() {
    // Built-in grace period: 24h.
    let rotated_at = at(-23 * 3600);
    let grant = rotated_from(
        peer_grant("bob", "KEY-NEW", TrustLevel::Trusted),
        "KEY-OLD",
        rotated_at,
    );
    let grants = [grant];
    let standing = resolve_peer("KEY-OLD", "any", NAMESPACE, None, &grants, now()).unwrap();
    assert_eq!(
        standing.public_key, "KEY-NEW",
        "the old key stands for the current one"
    );
    let past_grace = now() + k8s_openapi::jiff::SignedDuration::from_secs(3600);
    assert_eq!(
        resolve_peer("KEY-OLD", "any", NAMESPACE, None, &grants, past_grace),
        None
    );
    assert!(resolve_peer("KEY-NEW", "any", NAMESPACE, None, &grants, past_grace).is_some());
}

#[test]
fn auto_accept_gives_unknown_peers_the_discovery_trust_only() {
    let policy = security_policy(serde_json::json!({
        "p2p": {"autoAccept": true, "discoveryTrust": "owner"}
    }));
    let standing = resolve_peer("KEY-X", "s", NAMESPACE, Some(&policy), &[], now()).unwrap();
    assert_eq!(
        standing.trust_level,
        TrustLevel::Trusted,
        "discovery never reaches owner"
    );
    assert!(!standing.capabilities.has_wildcard());
    let default_policy = security_policy(serde_json::json!({}));
    assert_eq!(
        resolve_peer("KEY-X", "s", NAMESPACE, Some(&default_policy), &[], now()),
        None
    );
}

#[test]
fn policy_hash_is_stable_and_tracks_every_change() {
    let semi = session("research", TrustLevel::SemiTrusted);
    let a = session_grant("a", "research", &[Capability::A2aCall]);
    let b = session_grant("b", "research", &[Capability::InjectNetwork]);
    let forward = resolve(&semi, None, &[a.clone(), b.clone()], &[], now()).unwrap();
    let backward = resolve(&semi, None, &[b, a.clone()], &[], now()).unwrap();
    assert_eq!(forward, backward);
    assert_eq!(forward.policy_hash.len(), 16);
    let fewer = resolve(&semi, None, &[a], &[], now()).unwrap();
    assert_ne!(forward.policy_hash, fewer.policy_hash);
    let mut open_access = semi.clone();
    open_access.spec.access = vec!["*".parse().unwrap()];
    assert_ne!(
        context_of(&open_access, None).policy_hash,
        context_of(&semi, None).policy_hash
    );
}

#[test]
fn warn_mode_lets_violations_through_as_would_deny() {
    let policy = security_policy(serde_json::json!({"enforcement": "warn"}));
    let context = context_of(&session("u", TrustLevel::Untrusted), Some(&policy));
    let decision = decide_named(&context, "exec_command");
    assert_eq!(decision.outcome, Outcome::WouldDeny);
    assert!(decision.proceeds());
    assert_eq!(decision.reason, Reason::ToolNotPermitted);
    assert_eq!(
        decide_named(&context, "no_such_tool").outcome,
        Outcome::Denied,
        "warn mode cannot run a tool that does not exist"
    );
}
