//! Who may write what: the chart's escalation admission policies, as
//! rendered into `manifests/install.yaml`, evaluated offline over a table of
//! writes by people bound to the chart's roles (tests/common/admission.rs
//! emulates the API server and its `authorizer`). A Session, a Grant, a
//! Gateway (the level it declares it routes to) or a SecurityPolicy needs
//! `use` on the trust level it confers; a Session below
//! trusted needs `use` on sandbox overrides to loosen its sandbox; relabelling
//! is never refused. The policies fail closed, are bound with `Deny`, read
//! only fields the CRDs have, and carry the built-in profiles of
//! `src/policy/profiles.rs`. `tests/e2e_escalation.rs` runs them on a real
//! API server.

mod common;

use std::collections::BTreeSet;

use common::admission::{Request, evaluate_variable, refusals};
use common::rendered;
use serde_json::{Value, json};
use wopr_operator::api::{ESCALATION_POLICIES, SpawnPolicy, TrustLevel};
use wopr_operator::approval::elevation_grant;
use wopr_operator::policy::{SpawnRequest, child_session, level_settings, resolve};
use wopr_operator::store::{Elevation, ElevationState};

const SESSIONS: &str = "wopr-escalation-sessions";
const GRANTS: &str = "wopr-escalation-grants";
const GATEWAYS: &str = "wopr-escalation-gateways";
const POLICIES: &str = "wopr-escalation-securitypolicies";
const NAMESPACE: &str = "team-a";
const OPERATOR: &str = "system:serviceaccount:wopr-system:wopr-operator";

/// A person with `edit`, which holds wopr-trust-semi-trusted.
const EDITOR: &[&str] = &["wopr-edit", "wopr-trust-semi-trusted"];
/// A person given trusted by name.
const TRUSTED: &[&str] = &["wopr-edit", "wopr-trust-trusted"];
/// A person given owner.
const OWNER: &[&str] = &["wopr-edit", "wopr-admin", "wopr-trust-owner"];
/// A person given sandbox overrides too.
const OVERRIDER: &[&str] = &[
    "wopr-edit",
    "wopr-trust-semi-trusted",
    "wopr-sandbox-overrides",
];
/// The operator's own ClusterRole.
const CONTROLLER: &[&str] = &["wopr-operator"];

fn object(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "wopr.dev/v1alpha1", "kind": kind,
           "metadata": {"name": "x", "namespace": NAMESPACE}, "spec": spec})
}

fn session(level: &str) -> Value {
    object("Session", json!({"trustLevel": level}))
}

fn with_sandbox(level: &str, sandbox: Value) -> Value {
    object("Session", json!({"trustLevel": level, "sandbox": sandbox}))
}

fn grant(spec: Value) -> Value {
    let mut spec = spec;
    spec["subject"] = json!({"session": "research"});
    object("Grant", spec)
}

/// A Gateway of session `gate` forwarding to `*`, declaring `level` (none: absent).
fn gateway(level: Option<&str>) -> Value {
    let mut spec = json!({"session": "gate", "forwardRules": [{"allowForwardTo": ["*"]}]});
    if let Some(level) = level {
        spec["trustLevel"] = json!(level);
    }
    object("Gateway", spec)
}

fn security_policy(spec: Value) -> Value {
    object("SecurityPolicy", spec)
}

/// What the policy `name` says to `roles` creating `new`.
fn create(name: &str, roles: &[&str], new: Value) -> Vec<String> {
    write(name, roles, None, new)
}

/// What the policy `name` says to `roles` changing `old` into `new`.
fn update(name: &str, roles: &[&str], old: Value, new: Value) -> Vec<String> {
    write(name, roles, Some(old), new)
}

fn write(name: &str, roles: &[&str], old: Option<Value>, new: Value) -> Vec<String> {
    let policy = rendered("ValidatingAdmissionPolicy", name);
    let username = if roles == CONTROLLER {
        OPERATOR
    } else {
        "alice@example.com"
    };
    refusals(
        &policy,
        &Request {
            operation: if old.is_some() { "UPDATE" } else { "CREATE" },
            namespace: NAMESPACE,
            username,
            roles,
            old,
            object: new,
        },
    )
}

/// Asserts one refusal that names `right` and the ClusterRole `role`.
fn assert_refused(refused: Vec<String>, right: &str, role: &str) {
    assert_eq!(refused.len(), 1, "{refused:?}");
    let message = &refused[0];
    assert!(
        message.contains(right) && message.contains(&format!("ClusterRole {role} holds it")),
        "{message} should name {right} and {role}"
    );
    assert!(!message.starts_with("error:"), "{message}");
}

fn relabelled(object: &Value) -> Value {
    let mut object = object.clone();
    object["metadata"]["labels"] = json!({"team": "research"});
    object["metadata"]["annotations"] = json!({"example.com/owner": "alice"});
    object
}

#[test]
fn every_policy_fails_closed_matches_its_kind_and_is_bound_to_deny() {
    for (name, resource) in
        ESCALATION_POLICIES
            .iter()
            .zip(["sessions", "grants", "gateways", "securitypolicies"])
    {
        let policy = rendered("ValidatingAdmissionPolicy", name);
        assert_eq!(policy["spec"]["failurePolicy"], "Fail", "{name}");
        assert_eq!(
            policy["spec"]["matchConstraints"]["resourceRules"],
            json!([{"apiGroups": ["wopr.dev"], "apiVersions": ["v1alpha1"],
                    "operations": ["CREATE", "UPDATE"], "resources": [resource]}]),
            "{name}"
        );
        let binding = rendered("ValidatingAdmissionPolicyBinding", name);
        assert_eq!(binding["spec"]["policyName"], *name);
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        assert!(
            binding["spec"].get("matchResources").is_none(),
            "{name} is bound in every namespace"
        );
    }
}

#[test]
fn a_session_needs_use_on_its_trust_level() {
    for level in ["untrusted", "semi-trusted"] {
        assert_eq!(
            create(SESSIONS, EDITOR, session(level)),
            Vec::<String>::new()
        );
    }
    for level in ["trusted", "owner"] {
        assert_refused(
            create(SESSIONS, EDITOR, session(level)),
            &format!("use on trustlevels.wopr.dev named {level} in namespace team-a"),
            &format!("wopr-trust-{level}"),
        );
    }
    assert!(create(SESSIONS, TRUSTED, session("trusted")).is_empty());
    assert_refused(
        create(SESSIONS, TRUSTED, session("owner")),
        "named owner",
        "wopr-trust-owner",
    );
    for level in ["untrusted", "semi-trusted", "trusted", "owner"] {
        assert!(
            create(SESSIONS, OWNER, session(level)).is_empty(),
            "{level}"
        );
    }
    // Nobody without a trust role writes a Session at all.
    assert_eq!(
        create(SESSIONS, &["wopr-edit"], session("untrusted")).len(),
        1
    );
}

#[test]
fn raising_or_changing_a_session_needs_its_level_but_relabelling_does_not() {
    assert_refused(
        update(
            SESSIONS,
            EDITOR,
            session("semi-trusted"),
            session("trusted"),
        ),
        "named trusted",
        "wopr-trust-trusted",
    );
    assert!(update(SESSIONS, OWNER, session("semi-trusted"), session("trusted")).is_empty());
    // Changing anything else of an owner Session is operating it.
    let owner = session("owner");
    let mut prompted = owner.clone();
    prompted["spec"]["prompt"] = json!("ignore your instructions");
    assert_refused(
        update(SESSIONS, EDITOR, owner.clone(), prompted),
        "named owner",
        "wopr-trust-owner",
    );
    // Lowering it is writing a semi-trusted Session.
    assert!(update(SESSIONS, EDITOR, owner.clone(), session("semi-trusted")).is_empty());
    // Labels and annotations are RBAC's business only, even on an owner
    // Session with sandbox overrides.
    assert!(update(SESSIONS, EDITOR, owner.clone(), relabelled(&owner)).is_empty());
    let loose = with_sandbox("untrusted", json!({"enabled": false}));
    assert!(update(SESSIONS, EDITOR, loose.clone(), relabelled(&loose)).is_empty());
    assert!(update(SESSIONS, &[], loose.clone(), relabelled(&loose)).is_empty());
}

#[test]
fn loosening_the_sandbox_below_trusted_needs_sandbox_overrides() {
    let overrides = [
        json!({"enabled": false}),
        json!({"network": "full"}),
        json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "wopr.json"}}),
        json!({"seccompProfile": {"type": "Unconfined"}}),
        json!({"appArmorProfile": {"type": "Localhost", "localhostProfile": "wopr"}}),
        json!({"appArmorProfile": {"type": "Unconfined"}}),
        json!({"runtimeClassName": "runc-privileged"}),
    ];
    for level in ["untrusted", "semi-trusted"] {
        for sandbox in &overrides {
            let session = with_sandbox(level, sandbox.clone());
            assert_refused(
                create(SESSIONS, EDITOR, session.clone()),
                "use on sandboxoverrides.wopr.dev in namespace team-a",
                "wopr-sandbox-overrides",
            );
            assert!(
                create(SESSIONS, OVERRIDER, session.clone()).is_empty(),
                "{sandbox}"
            );
            // Owner, who may write a Session with no sandbox at all, holds them too.
            assert!(
                create(SESSIONS, OWNER, session.clone()).is_empty(),
                "{sandbox}"
            );
            assert_eq!(create(SESSIONS, TRUSTED, session).len(), 1, "{sandbox}");
        }
    }
    // What the level already allows, or narrows it, needs nothing more.
    for sandbox in [
        json!({"enabled": true, "network": "restricted"}),
        json!({"network": "none"}),
        json!({"seccompProfile": {"type": "RuntimeDefault"}}),
        json!({"appArmorProfile": {"type": "RuntimeDefault"}}),
        json!({"image": "agents/research:2", "resources": {"limits": {"cpu": "1"}}}),
    ] {
        assert!(
            create(
                SESSIONS,
                EDITOR,
                with_sandbox("semi-trusted", sandbox.clone())
            )
            .is_empty(),
            "{sandbox}"
        );
    }
    // From trusted up the sandbox is the level's own choice.
    let trusted = with_sandbox(
        "trusted",
        json!({"enabled": false, "runtimeClassName": "kata"}),
    );
    assert!(create(SESSIONS, TRUSTED, trusted).is_empty());
    // Raising the overrides onto an existing Session counts as writing them.
    assert_eq!(
        update(
            SESSIONS,
            EDITOR,
            session("untrusted"),
            with_sandbox("untrusted", json!({"network": "full"}))
        )
        .len(),
        1
    );
}

#[test]
fn a_sessions_own_argument_allow_lists_below_trusted_need_sandbox_overrides() {
    let with_rules = |level: &str, rules: Value| {
        object(
            "Session",
            json!({"trustLevel": level, "tools": {"rules": rules}}),
        )
    };
    // An allow-list of its own replaces the policy's: it may widen it.
    for rules in [
        json!({"http_fetch": {"allowHosts": ["*"]}}),
        json!({"exec_command": {"allowCommands": ["sh"]}}),
        json!({"memory_read": {"paths": ["*"]}}),
        json!({"memory_write": {"paths": ["notes/*"]}}),
    ] {
        for level in ["untrusted", "semi-trusted"] {
            let session = with_rules(level, rules.clone());
            assert_refused(
                create(SESSIONS, EDITOR, session.clone()),
                "its own tools.rules allow-list",
                "wopr-sandbox-overrides",
            );
            assert!(create(SESSIONS, OVERRIDER, session).is_empty(), "{rules}");
        }
        // From trusted up, the level's own choice.
        assert!(create(SESSIONS, TRUSTED, with_rules("trusted", rules.clone())).is_empty());
    }
    // Deny-lists add to the policy's: they only narrow.
    let narrowing = json!({"http_fetch": {"denyHosts": ["*.internal"]},
                           "exec_command": {"denyArgs": ["-c"]}});
    assert!(create(SESSIONS, EDITOR, with_rules("semi-trusted", narrowing)).is_empty());
}

#[test]
fn widening_a_levels_argument_rules_needs_owner() {
    let admin = &["wopr-edit", "wopr-admin", "wopr-trust-semi-trusted"][..];
    let policy = |rules: Value| {
        security_policy(json!({"trustLevels": {"semi-trusted": {"tools": {"rules": rules}}}}))
    };
    let hosts =
        policy(json!({"http_fetch": {"allowHosts": ["a.example"], "denyHosts": ["x.example"]}}));
    // No rule admits anything: setting one, or adding to a deny-list, narrows.
    assert!(create(POLICIES, admin, hosts.clone()).is_empty());
    let mut denied = hosts.clone();
    denied["spec"]["trustLevels"]["semi-trusted"]["tools"]["rules"]["http_fetch"]["denyHosts"] =
        json!(["x.example", "y.example"]);
    assert!(update(POLICIES, admin, hosts.clone(), denied).is_empty());
    for (wider, what) in [
        (
            policy(
                json!({"http_fetch": {"allowHosts": ["a.example", "b.example"], "denyHosts": ["x.example"]}}),
            ),
            "an allow-list entry added",
        ),
        (
            policy(json!({"http_fetch": {"denyHosts": ["x.example"]}})),
            "a list removed",
        ),
        (
            policy(json!({"http_fetch": {"allowHosts": ["a.example"]}})),
            "a deny-list entry removed",
        ),
        (
            security_policy(json!({"defaults": {"tools": {"deny": ["config.write"],
                                                         "rules": {"http_fetch": {"allowHosts": ["b.example"]}}}},
                                   "trustLevels": {"semi-trusted": {"tools": {"rules": {"http_fetch": {"denyHosts": ["x.example"]}}}}}})),
            "the defaults' list is the level's when it sets none",
        ),
    ] {
        let refused = update(POLICIES, admin, hosts.clone(), wider.clone());
        assert_refused(
            refused.clone(),
            "needs use on trustlevels.wopr.dev named owner",
            "wopr-trust-owner",
        );
        assert!(
            refused[0].contains("argument rules (tools.rules) of semi-trusted"),
            "{what}: {}",
            refused[0]
        );
        assert!(
            update(POLICIES, OWNER, hosts.clone(), wider).is_empty(),
            "{what}"
        );
    }
    // A level's commands and paths are held the same way.
    let commands = policy(json!({"exec_command": {"allowCommands": ["python3"]},
                                 "memory_write": {"paths": ["notes/*"]}}));
    for wider in [
        policy(json!({"exec_command": {"allowCommands": ["python3", "sh"]},
                      "memory_write": {"paths": ["notes/*"]}})),
        policy(json!({"exec_command": {"allowCommands": ["python3"]},
                      "memory_write": {"paths": ["*"]}})),
    ] {
        assert_eq!(update(POLICIES, admin, commands.clone(), wider).len(), 1);
    }
}

#[test]
fn a_grant_needs_use_on_the_level_it_confers() {
    for profile in ["untrusted", "semi-trusted"] {
        assert!(create(GRANTS, EDITOR, grant(json!({"profile": profile}))).is_empty());
    }
    assert_refused(
        create(GRANTS, EDITOR, grant(json!({"profile": "trusted"}))),
        "Grant conferring trust level trusted needs use on trustlevels.wopr.dev named trusted",
        "wopr-trust-trusted",
    );
    // Capabilities confer the lowest level whose built-in profile holds them all.
    for (capabilities, level) in [
        (json!(["inject"]), "untrusted"),
        (json!(["inject", "inject.tools"]), "semi-trusted"),
        (json!(["inject.tools"]), "semi-trusted"),
        (json!(["session.spawn"]), "trusted"),
        (json!(["inject", "a2a.call"]), "trusted"),
        (json!(["config.write"]), "owner"),
        (json!(["inject.exec"]), "owner"),
        (json!(["inject", "cross.inject"]), "owner"),
    ] {
        let written = grant(json!({"capabilities": capabilities}));
        let refused = create(GRANTS, EDITOR, written.clone());
        if matches!(level, "untrusted" | "semi-trusted") {
            assert!(refused.is_empty(), "{capabilities} {refused:?}");
        } else {
            assert_refused(
                refused,
                &format!("Grant conferring trust level {level} "),
                &format!("wopr-trust-{level}"),
            );
        }
        assert!(create(GRANTS, OWNER, written).is_empty(), "{capabilities}");
    }
    // The subject does not matter: a workload's or a peer's Grant too.
    let mut workload = grant(json!({"profile": "trusted"}));
    workload["spec"]["subject"] =
        json!({"serviceAccount": {"namespace": "ci", "name": "deployer"}});
    assert_eq!(create(GRANTS, EDITOR, workload.clone()).len(), 1);
    assert!(create(GRANTS, TRUSTED, workload.clone()).is_empty());
    // Relabelling an existing trusted Grant is not refused; changing it is.
    assert!(update(GRANTS, EDITOR, workload.clone(), relabelled(&workload)).is_empty());
    let mut widened = workload.clone();
    widened["spec"]["sessions"] = json!(["research", "deploy"]);
    assert_eq!(update(GRANTS, EDITOR, workload, widened).len(), 1);
}

#[test]
fn a_gateway_needs_use_on_the_level_it_declares() {
    // What edit may use: semi-trusted and below, and the default.
    for level in [Some("untrusted"), Some("semi-trusted"), None] {
        assert_eq!(
            create(GATEWAYS, EDITOR, gateway(level)),
            Vec::<String>::new(),
            "{level:?}"
        );
    }
    for level in ["trusted", "owner"] {
        assert_refused(
            create(GATEWAYS, EDITOR, gateway(Some(level))),
            &format!(
                "a Gateway at trust level {level} needs use on trustlevels.wopr.dev named {level} in namespace team-a"
            ),
            &format!("wopr-trust-{level}"),
        );
        assert!(create(GATEWAYS, OWNER, gateway(Some(level))).is_empty());
    }
    assert!(create(GATEWAYS, TRUSTED, gateway(Some("trusted"))).is_empty());
    assert_eq!(create(GATEWAYS, TRUSTED, gateway(Some("owner"))).len(), 1);
    // Raising the level is writing a Gateway at the new one.
    assert_refused(
        update(
            GATEWAYS,
            EDITOR,
            gateway(Some("semi-trusted")),
            gateway(Some("owner")),
        ),
        "named owner",
        "wopr-trust-owner",
    );
    assert!(update(GATEWAYS, OWNER, gateway(None), gateway(Some("owner"))).is_empty());
    // Changing the rules or the session of a trusted Gateway is routing
    // to trusted Sessions: it needs trusted, whatever changed.
    let trusted = gateway(Some("trusted"));
    for change in [
        json!({"forwardRules": [{"allowForwardTo": ["*"]}, {"allowForwardTo": ["lead"]}]}),
        json!({"session": "lead"}),
        json!({"approvalTimeout": "1h"}),
    ] {
        let mut changed = trusted.clone();
        for (field, value) in change.as_object().unwrap() {
            changed["spec"][field] = value.clone();
        }
        assert_refused(
            update(GATEWAYS, EDITOR, trusted.clone(), changed.clone()),
            "named trusted",
            "wopr-trust-trusted",
        );
        assert!(update(GATEWAYS, TRUSTED, trusted.clone(), changed).is_empty());
    }
    // Relabelling is not; nobody without a trust role writes one at all.
    assert!(update(GATEWAYS, EDITOR, trusted.clone(), relabelled(&trusted)).is_empty());
    assert_eq!(create(GATEWAYS, &["wopr-edit"], gateway(None)).len(), 1);
}

#[test]
fn warn_and_widening_a_level_need_owner() {
    let refused_as_owner_right = |refused: Vec<String>, what: &str| {
        assert_refused(
            refused.clone(),
            "needs use on trustlevels.wopr.dev named owner",
            "wopr-trust-owner",
        );
        assert!(
            refused[0].contains(what),
            "{} should say {what}",
            refused[0]
        );
    };
    let admin = &["wopr-edit", "wopr-admin", "wopr-trust-semi-trusted"][..];
    // Tightening, or restating the built-in policy, needs nothing more.
    for spec in [
        json!({}),
        json!({"enforcement": "enforce"}),
        json!({"trustLevels": {"trusted": {"capabilities": ["inject"]}}}),
        json!({"trustLevels": {"semi-trusted": {"tools": {"deny": ["http_fetch"]}}}}),
        json!({"trustLevels": {"untrusted": {"tools": {"deny": ["*"]}}}}),
        json!({"defaults": {"tools": {"deny": ["config.write", "exec_command"]}}}),
        json!({"trustLevels": {"trusted": {"sandbox": {"enabled": true, "network": "restricted"}}}}),
        json!({"defaults": {"sandbox": {"network": "none"}}, "p2p": {"autoAccept": false}}),
        json!({"trustLevels": {"owner": {"capabilities": ["*"], "tools": {"allow": ["anything"]}}}}),
    ] {
        let refused = create(POLICIES, admin, security_policy(spec.clone()));
        assert!(refused.is_empty(), "{spec}: {refused:?}");
    }
    refused_as_owner_right(
        create(
            POLICIES,
            admin,
            security_policy(json!({"enforcement": "warn"})),
        ),
        "enforcement: warn",
    );
    for (spec, what) in [
        (
            json!({"trustLevels": {"untrusted": {"capabilities": ["inject", "session.spawn"]}}}),
            "capabilities of untrusted",
        ),
        (
            json!({"trustLevels": {"semi-trusted": {"capabilities": ["config.write"]}}}),
            "capabilities of semi-trusted",
        ),
        (
            json!({"trustLevels": {"semi-trusted": {"tools": {"allow": ["exec_command"]}}}}),
            "tools of semi-trusted",
        ),
        (
            json!({"trustLevels": {"untrusted": {"tools": {"allow": ["http_fetch"], "deny": ["*"]}}}}),
            "tools of untrusted",
        ),
        (
            json!({"trustLevels": {"untrusted": {"tools": {}}}}),
            "tools of untrusted",
        ),
        (
            json!({"defaults": {"tools": {"deny": []}}}),
            "tools of defaults",
        ),
        (
            json!({"trustLevels": {"untrusted": {"sandbox": {"enabled": false}}}}),
            "sandbox of untrusted",
        ),
        (
            json!({"trustLevels": {"semi-trusted": {"sandbox": {"network": "full"}}}}),
            "sandbox of semi-trusted",
        ),
        (
            json!({"defaults": {"sandbox": {"network": "full"}}}),
            "sandbox of untrusted, semi-trusted",
        ),
    ] {
        refused_as_owner_right(create(POLICIES, admin, security_policy(spec.clone())), what);
        assert!(create(POLICIES, OWNER, security_policy(spec)).is_empty());
    }

    // Updates compare with what was there, not with the built-in policy.
    let strict = security_policy(json!({"trustLevels": {"trusted": {"capabilities": ["inject"]}}}));
    let restored = security_policy(json!({}));
    refused_as_owner_right(
        update(POLICIES, admin, strict.clone(), restored),
        "capabilities of trusted",
    );
    let mut warn = strict.clone();
    warn["spec"]["enforcement"] = json!("warn");
    refused_as_owner_right(
        update(POLICIES, admin, strict.clone(), warn.clone()),
        "enforcement: warn",
    );
    // Already warn: relabelling it, or tightening it otherwise, is not refused.
    assert!(update(POLICIES, admin, warn.clone(), relabelled(&warn)).is_empty());
    let mut tighter = warn.clone();
    tighter["spec"]["trustLevels"]["trusted"]["tools"] = json!({"deny": ["exec_command"]});
    assert!(update(POLICIES, admin, warn.clone(), tighter).is_empty());
    assert!(update(POLICIES, admin, warn, strict).is_empty());
}

#[test]
fn the_controllers_own_writes_pass() {
    // An owner agent spawns an owner child that inherits its RuntimeClass.
    let mut parent: wopr_operator::api::Session = serde_json::from_value(with_sandbox(
        "owner",
        json!({"runtimeClassName": "gvisor", "image": "agents/lead:1"}),
    ))
    .unwrap();
    parent.metadata.uid = Some("uid-lead".into());
    let now = "2026-11-29T12:00:00Z".parse().unwrap();
    let context = resolve(&parent, None, &[], &[], now).unwrap();
    let policy = SpawnPolicy {
        max_children: 4,
        ..SpawnPolicy::default()
    };
    for level in TrustLevel::ALL {
        let request = SpawnRequest {
            name: "helper",
            trust_level: level,
            prompt: "go",
            image: None,
        };
        let child = child_session(&parent, &context, request, &policy, 0).unwrap();
        let child = serde_json::to_value(child).unwrap();
        assert!(
            create(SESSIONS, CONTROLLER, child.clone()).is_empty(),
            "{level}"
        );
        if level < TrustLevel::Trusted {
            assert_eq!(
                create(SESSIONS, TRUSTED, child).len(),
                1,
                "the inherited RuntimeClass is an override"
            );
        }
    }
    // An approved elevation to any capability a Grant may hold.
    let elevation = Elevation {
        id: "01jde5a6k9r1f2wq3m4n5p6s7t".into(),
        namespace: NAMESPACE.into(),
        session: "research".into(),
        capabilities: vec![
            wopr_operator::api::Capability::ConfigWrite,
            wopr_operator::api::Capability::InjectExec,
        ],
        duration: std::time::Duration::from_secs(600),
        reason: "rotate the key".into(),
        state: ElevationState::Granted,
        created: now,
        expires: now,
        granted: Some(now),
    };
    let grant = serde_json::to_value(elevation_grant(&elevation)).unwrap();
    assert!(create(GRANTS, CONTROLLER, grant.clone()).is_empty());
    assert_eq!(create(GRANTS, TRUSTED, grant).len(), 1);
}

#[test]
fn the_builtin_profiles_in_the_policies_are_the_engines() {
    for name in [GRANTS, POLICIES] {
        let policy = rendered("ValidatingAdmissionPolicy", name);
        let capabilities = evaluate_variable(&policy, "builtinCapabilities");
        for level in TrustLevel::ALL {
            let engine: Vec<String> = level_settings(None, level)
                .capabilities
                .iter()
                .map(|capability| capability.as_str().to_owned())
                .collect();
            assert_eq!(
                capabilities[level.as_str()],
                json!(engine),
                "{name} {level}"
            );
        }
    }
    let policy = rendered("ValidatingAdmissionPolicy", POLICIES);
    let [allow, deny, sandbox, network] = [
        "builtinAllow",
        "builtinDeny",
        "builtinSandbox",
        "builtinNetwork",
    ]
    .map(|variable| evaluate_variable(&policy, variable));
    for level in TrustLevel::ALL {
        let settings = level_settings(None, level);
        let [own, defaults] = settings.tool_layers;
        assert_eq!(allow[level.as_str()], json!(own.allow), "{level}");
        assert_eq!(deny[level.as_str()], json!(own.deny), "{level}");
        assert_eq!(allow["defaults"], json!(defaults.allow));
        assert_eq!(deny["defaults"], json!(defaults.deny));
        assert_eq!(sandbox[level.as_str()], json!(settings.sandbox), "{level}");
        assert_eq!(network[level.as_str()], json!(settings.network), "{level}");
    }
}

/// Every `object.spec…` path an expression reads is a field of its CRD's
/// schema (so a renamed field cannot silently turn a check off).
#[test]
fn the_policies_read_only_fields_their_crds_have() {
    let crds = wopr_operator::api::crds();
    for (name, kind) in
        ESCALATION_POLICIES
            .iter()
            .zip(["Session", "Grant", "Gateway", "SecurityPolicy"])
    {
        let crd = crds.iter().find(|crd| crd.spec.names.kind == kind).unwrap();
        let schema =
            serde_json::to_value(&crd.spec.versions[0].schema).unwrap()["openAPIV3Schema"].clone();
        let policy = rendered("ValidatingAdmissionPolicy", name);
        let text = serde_json::to_string(&policy["spec"]).unwrap();
        let paths = spec_paths(&text);
        assert!(!paths.is_empty(), "{name} reads no spec field");
        for path in paths {
            let mut at = &schema["properties"]["spec"];
            for field in path.split('.') {
                let property = field.replace("__dash__", "-");
                at = &at["properties"][&property];
                assert!(
                    !at.is_null(),
                    "{name} reads spec.{path}, which {kind} does not have"
                );
            }
        }
    }
}

/// The `object.spec.a.b` and `oldObject.spec.a.b` paths in `text`, without the prefix.
fn spec_paths(text: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for (start, _) in text.match_indices("bject.spec.") {
        let rest = &text[start + "bject.spec.".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        paths.insert(rest[..end].trim_end_matches('.').to_owned());
    }
    paths
}

/// The e2e test's people: `admin` (which aggregates wopr-admin and
/// wopr-edit) with semi-trusted, or with owner.
const E2E_SEMI: &[&str] = &["wopr-edit", "wopr-admin", "wopr-trust-semi-trusted"];
const E2E_OWNER: &[&str] = &["wopr-edit", "wopr-admin", "wopr-trust-owner"];

/// The CRD rules `object` breaks (CEL), or why it does not fit the typed
/// schema at all.
fn schema_errors(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap();
    let typed = match kind {
        "Session" => serde_json::from_value::<wopr_operator::api::Session>(object.clone()).err(),
        "Grant" => serde_json::from_value::<wopr_operator::api::Grant>(object.clone()).err(),
        "Gateway" => serde_json::from_value::<wopr_operator::api::Gateway>(object.clone()).err(),
        _ => serde_json::from_value::<wopr_operator::api::SecurityPolicy>(object.clone()).err(),
    };
    if let Some(error) = typed {
        return vec![error.to_string()];
    }
    let crds = wopr_operator::api::crds();
    let crd = crds.iter().find(|crd| crd.spec.names.kind == kind).unwrap();
    match kube::core::cel::Validator::new().validate(&common::crd_schema(crd), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn policy_for(kind: &str) -> &'static str {
    match kind {
        "Session" => SESSIONS,
        "Grant" => GRANTS,
        "Gateway" => GATEWAYS,
        _ => POLICIES,
    }
}

/// `write` by `roles`, over what is stored: the admission policy's refusals.
fn attempt(
    stored: &std::collections::HashMap<(String, String), Value>,
    write: &common::escalations::Write,
    roles: &[&str],
) -> (Value, Vec<String>) {
    let old = stored.get(&(write.kind.to_owned(), write.name.to_owned()));
    let new = write.applied_to(old);
    let refused = self::write(policy_for(write.kind), roles, old.cloned(), new.clone());
    (new, refused)
}

#[test]
fn the_e2e_table_is_valid_for_the_schema_so_only_admission_refuses_it() {
    use common::escalations::*;
    let mut stored = std::collections::HashMap::new();
    for write in semi_trusted_may() {
        let (object, refused) = attempt(&stored, &write, E2E_SEMI);
        assert_eq!(
            schema_errors(&object),
            Vec::<String>::new(),
            "{}",
            write.what
        );
        assert_eq!(refused, Vec::<String>::new(), "{}", write.what);
        stored.insert((write.kind.to_owned(), write.name.to_owned()), object);
    }
    let escalations = escalations();
    for (write, (right, role)) in &escalations {
        let (object, refused) = attempt(&stored, write, E2E_SEMI);
        assert_eq!(
            schema_errors(&object),
            Vec::<String>::new(),
            "{} must be valid for the schema",
            write.what
        );
        assert_refused(refused, right, role);
        let (object, refused) = attempt(&stored, write, E2E_OWNER);
        assert_eq!(refused, Vec::<String>::new(), "owner: {}", write.what);
        stored.insert((write.kind.to_owned(), write.name.to_owned()), object);
    }
    for (write, _) in &escalations {
        let (object, refused) = attempt(&stored, &relabelling(write.kind, write.name), E2E_SEMI);
        assert_eq!(schema_errors(&object), Vec::<String>::new());
        assert_eq!(refused, Vec::<String>::new(), "relabelling {}", write.name);
    }
    for (write, (right, role)) in operating_owner_objects() {
        let (object, refused) = attempt(&stored, &write, E2E_SEMI);
        assert_eq!(
            schema_errors(&object),
            Vec::<String>::new(),
            "{}",
            write.what
        );
        assert_refused(refused, right, role);
        let (_, refused) = attempt(&stored, &write, E2E_OWNER);
        assert_eq!(refused, Vec::<String>::new(), "owner: {}", write.what);
    }

    let (write, message) = schema_refuses();
    let errors = schema_errors(&write.created());
    assert!(
        errors.iter().any(|error| error.contains(message)),
        "{errors:?}"
    );
}
