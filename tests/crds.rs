//! The committed CRDs match the code, and every CEL rule accepts a valid
//! object and rejects an invalid one (evaluated offline with kube's `cel`).

mod common;

use std::{collections::BTreeSet, fs, path::Path};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::core::cel::{Validator, compile_schema};
use serde_json::{Value, json};
use wopr_operator::api::{self, ApprovalRequest, Gateway, Grant, SecurityPolicy, Session};

#[test]
fn committed_crds_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected_files = BTreeSet::new();
    for crd in api::crds() {
        let file = api::crd_file_name(&crd);
        let committed = fs::read_to_string(dir.join(&file)).unwrap_or_default();
        assert!(
            committed == api::crd_yaml(&crd).unwrap(),
            "crds/{file} differs from the code: run `cargo run -- crd --output-dir crds` and commit"
        );
        expected_files.insert(file);
    }
    let committed_files: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        committed_files, expected_files,
        "stray or missing files in crds/"
    );
}

#[test]
fn crds_have_the_documented_names_and_subresources() {
    for crd in api::crds() {
        let spec = &crd.spec;
        assert_eq!(spec.group, "wopr.dev");
        assert_eq!(spec.scope, "Namespaced");
        assert_eq!(spec.names.categories, Some(vec!["wopr".to_string()]));
        let short_names = spec.names.short_names.clone().unwrap_or_default();
        assert!(
            !short_names.is_empty(),
            "{} has no short name",
            spec.names.kind
        );
        assert!(
            !short_names.iter().any(|s| s == "gw" || s == "gtw"),
            "gw/gtw belong to the Gateway API"
        );
        let version = &spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        assert!(
            !version
                .additional_printer_columns
                .clone()
                .unwrap_or_default()
                .is_empty()
        );
    }
    let columns: Vec<String> = Session::crd().spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap()
        .into_iter()
        .map(|column| column.name)
        .collect();
    assert_eq!(columns, ["Trust", "Phase", "Pod", "Age"]);
}

#[test]
fn conditions_are_list_maps_keyed_by_type() {
    for crd in [
        SecurityPolicy::crd(),
        Session::crd(),
        Grant::crd(),
        Gateway::crd(),
    ] {
        let conditions = &schema(&crd)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(
            conditions["x-kubernetes-list-type"], "map",
            "{}",
            crd.spec.names.kind
        );
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    }
}

#[test]
fn every_cel_rule_compiles() {
    for crd in api::crds() {
        let compiled = compile_schema(&schema(&crd));
        assert!(
            !compiled.has_errors(),
            "{}: {:?}",
            crd.spec.names.kind,
            compiled.compilation_errors()
        );
    }
}

#[test]
fn field_docs_become_schema_descriptions() {
    let sandbox = &schema(&Session::crd())["properties"]["spec"]["properties"]["sandbox"];
    let description = sandbox["properties"]["workspace"]["description"]
        .as_str()
        .unwrap();
    assert!(
        description.contains("read-only at /workspace"),
        "{description}"
    );
    assert!(sandbox["properties"]["egress"]["description"].is_string());
}

use common::crd_schema as schema;

/// Runs the CRD's CEL rules on `object` (with `old` for transition rules)
/// and returns the messages of the rules that failed.
fn cel_errors(crd: &CustomResourceDefinition, object: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema(crd), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|error| error.to_string()).collect(),
    }
}

fn assert_accepted(crd: &CustomResourceDefinition, object: Value) {
    let errors = cel_errors(crd, &object, None);
    assert!(
        errors.is_empty(),
        "expected {object} to pass, got {errors:?}"
    );
}

fn assert_rejected(crd: &CustomResourceDefinition, object: Value, message: &str) {
    let errors = cel_errors(crd, &object, None);
    assert!(
        errors.iter().any(|error| error.contains(message)),
        "expected {object} to fail with {message:?}, got {errors:?}"
    );
}

fn object(kind: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "wopr.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns"},
        "spec": spec,
    })
}

fn peer() -> Value {
    json!({"peer": {"publicKey": "MCowBQYDK2VwAyEA", "name": "alice"}})
}

#[test]
fn grant_never_confers_owner() {
    let crd = Grant::crd();
    assert_accepted(
        &crd,
        object("Grant", json!({"subject": peer(), "profile": "trusted"})),
    );
    assert_rejected(
        &crd,
        object("Grant", json!({"subject": peer(), "profile": "owner"})),
        "never confer the owner profile",
    );
}

#[test]
fn grant_never_confers_the_wildcard() {
    let crd = Grant::crd();
    assert_accepted(
        &crd,
        object(
            "Grant",
            json!({"subject": peer(), "capabilities": ["inject", "a2a.call"]}),
        ),
    );
    assert_rejected(
        &crd,
        object(
            "Grant",
            json!({"subject": peer(), "capabilities": ["inject", "*"]}),
        ),
        "wildcard capability",
    );
}

#[test]
fn grant_has_exactly_one_of_profile_or_capabilities() {
    let crd = Grant::crd();
    let message = "exactly one of profile or capabilities";
    assert_rejected(&crd, object("Grant", json!({"subject": peer()})), message);
    assert_rejected(
        &crd,
        object("Grant", json!({"subject": peer(), "capabilities": []})),
        message,
    );
    assert_rejected(
        &crd,
        object(
            "Grant",
            json!({"subject": peer(), "profile": "trusted", "capabilities": ["inject"]}),
        ),
        message,
    );
}

#[test]
fn grant_subject_is_a_peer_a_session_or_a_service_account() {
    let crd = Grant::crd();
    assert_accepted(
        &crd,
        object(
            "Grant",
            json!({"subject": {"session": "research"}, "capabilities": ["a2a.call"]}),
        ),
    );
    assert_rejected(
        &crd,
        object("Grant", json!({"subject": {}, "profile": "trusted"})),
        "exactly one of peer, session or serviceAccount",
    );
    assert_rejected(
        &crd,
        object(
            "Grant",
            json!({"subject": {"session": "a", "peer": {"publicKey": "k"}}, "profile": "trusted"}),
        ),
        "exactly one of peer, session or serviceAccount",
    );
    let workload = json!({"serviceAccount": {"namespace": "ci", "name": "task-bot"}});
    assert_accepted(
        &crd,
        object(
            "Grant",
            json!({"subject": workload, "profile": "untrusted", "sessions": ["p2p-gateway"]}),
        ),
    );
    assert_rejected(
        &crd,
        object(
            "Grant",
            json!({"subject": {"session": "a", "serviceAccount": {"namespace": "ci", "name": "b"}},
                   "profile": "trusted"}),
        ),
        "exactly one of peer, session or serviceAccount",
    );
    assert_rejected(
        &crd,
        object(
            "Grant",
            json!({"subject": workload, "profile": "untrusted",
                   "previousKeys": [{"publicKey": "k", "rotatedAt": "2026-11-20T09:00:00Z"}]}),
        ),
        "previousKeys applies to peer grants only",
    );
    assert_rejected(
        &crd,
        object(
            "Grant",
            json!({"subject": {"session": "a"}, "profile": "trusted", "sessions": ["b"]}),
        ),
        "peer and service-account grants only",
    );
    let window = |not_before: &str, expires_at: &str| {
        object(
            "Grant",
            json!({"subject": {"session": "a"}, "profile": "trusted",
                   "notBefore": not_before, "expiresAt": expires_at}),
        )
    };
    assert_accepted(&crd, window("2026-12-08T09:00:00Z", "2026-12-09T09:00:00Z"));
    for (not_before, expires_at) in [
        ("2026-12-09T09:00:00Z", "2026-12-08T09:00:00Z"),
        ("2026-12-08T09:00:00Z", "2026-12-08T09:00:00Z"),
    ] {
        assert_rejected(
            &crd,
            window(not_before, expires_at),
            "notBefore must be before expiresAt",
        );
    }
}

#[test]
fn rate_limits_are_at_least_one() {
    let crd = Gateway::crd();
    let gateway = |per_minute: i64| {
        object(
            "Gateway",
            json!({"session": "p2p-gateway", "forwardRules": [
                {"allowForwardTo": ["research"], "rateLimit": {"perMinute": per_minute}}
            ]}),
        )
    };
    assert_accepted(&crd, gateway(1));
    assert_rejected(&crd, gateway(0), "perMinute must be at least 1");

    let crd = SecurityPolicy::crd();
    let policy = |per_minute: i64| {
        object(
            "SecurityPolicy",
            json!({"p2p": {"rateLimits": {"perPeer": {"perMinute": per_minute}}}}),
        )
    };
    assert_accepted(&crd, policy(60));
    assert_rejected(&crd, policy(0), "perMinute must be at least 1");
}

#[test]
fn only_restricted_network_takes_egress() {
    let crd = Session::crd();
    let session = |network: &str| {
        object(
            "Session",
            json!({"trustLevel": "semi-trusted", "sandbox": {
                "network": network, "egress": [{"cidr": "10.0.0.0/8", "ports": [{"port": 443}]}]
            }}),
        )
    };
    assert_accepted(&crd, session("restricted"));
    for network in ["none", "full"] {
        assert_rejected(
            &crd,
            session(network),
            "egress is only allowed with network: restricted",
        );
    }
    assert_rejected(
        &crd,
        object(
            "Session",
            json!({"trustLevel": "semi-trusted", "sandbox": {"egress": [{"cidr": "10.0.0.0/8"}]}}),
        ),
        "egress is only allowed with network: restricted",
    );
}

#[test]
fn egress_cidr_must_be_a_cidr() {
    let crd = Session::crd();
    let session = |cidr: &str| {
        object(
            "Session",
            json!({"trustLevel": "trusted", "sandbox": {
                "network": "restricted", "egress": [{"cidr": cidr}]
            }}),
        )
    };
    assert_accepted(&crd, session("2001:db8::/32"));
    assert_rejected(&crd, session("example.com"), "cidr must be a CIDR");
}

#[test]
fn untrusted_sessions_cannot_disable_the_sandbox() {
    let crd = Session::crd();
    let session = |level: &str, enabled: bool| {
        object(
            "Session",
            json!({"trustLevel": level, "sandbox": {"enabled": enabled}}),
        )
    };
    assert_accepted(&crd, session("untrusted", true));
    assert_accepted(&crd, session("trusted", false));
    assert_rejected(
        &crd,
        session("untrusted", false),
        "untrusted sessions always run sandboxed",
    );
}

#[test]
fn session_trust_level_may_change() {
    let crd = Session::crd();
    let old = object("Session", json!({"trustLevel": "semi-trusted"}));
    let new = object("Session", json!({"trustLevel": "trusted"}));
    assert!(cel_errors(&crd, &new, Some(&old)).is_empty());
    let untrusted_unsandboxed = object(
        "Session",
        json!({"trustLevel": "untrusted", "sandbox": {"enabled": false}}),
    );
    let old = object(
        "Session",
        json!({"trustLevel": "trusted", "sandbox": {"enabled": false}}),
    );
    assert!(!cel_errors(&crd, &untrusted_unsandboxed, Some(&old)).is_empty());
}

#[test]
fn workspace_has_exactly_one_source() {
    let crd = Session::crd();
    let session = |workspace: Value| {
        object(
            "Session",
            json!({"trustLevel": "trusted", "sandbox": {"workspace": workspace}}),
        )
    };
    assert_accepted(
        &crd,
        session(json!({"persistentVolumeClaim": {"claimName": "code"}})),
    );
    let message = "workspace needs exactly one of";
    assert_rejected(&crd, session(json!({})), message);
    assert_rejected(
        &crd,
        session(json!({"configMap": {"name": "a"}, "secret": {"secretName": "b"}})),
        message,
    );
}

#[test]
fn a_prompt_fits_in_the_agents_environment() {
    use wopr_operator::api::MAX_PROMPT_BYTES;
    let crd = Session::crd();
    let session = |prompt: String| {
        object(
            "Session",
            json!({"trustLevel": "trusted", "prompt": prompt}),
        )
    };
    assert_accepted(&crd, session("a".repeat(MAX_PROMPT_BYTES)));
    // Bytes, not characters: 'é' is two bytes of UTF-8.
    assert_accepted(&crd, session("é".repeat(MAX_PROMPT_BYTES / 2)));
    let message = "prompt is over 65536 bytes";
    assert_rejected(&crd, session("a".repeat(MAX_PROMPT_BYTES + 1)), message);
    assert_rejected(&crd, session("é".repeat(MAX_PROMPT_BYTES / 2 + 1)), message);
    let prompt = &schema(&crd)["properties"]["spec"]["properties"]["prompt"];
    assert_eq!(
        prompt["maxLength"],
        json!(MAX_PROMPT_BYTES),
        "bounds the rule's cost"
    );
}

fn approval(payload: &str) -> Value {
    object(
        "ApprovalRequest",
        json!({
            "type": "forward",
            "gateway": "p2p-gateway",
            "source": {"type": "p2p", "identity": "MCowBQYDK2VwAyEA", "trustLevel": "untrusted"},
            "target": "research-agent",
            "action": "query",
            "payload": payload,
            "expiresAt": "2026-11-24T12:05:00Z",
        }),
    )
}

#[test]
fn approval_request_spec_is_immutable() {
    let crd = ApprovalRequest::crd();
    let old = approval("what is 2+2?");
    let mut with_status = old.clone();
    with_status["status"] = json!({"state": "Approved", "decidedBy": "alice"});
    assert!(cel_errors(&crd, &with_status, Some(&old)).is_empty());
    let errors = cel_errors(&crd, &approval("rm -rf /"), Some(&old));
    assert!(
        errors
            .iter()
            .any(|error| error.contains("spec is immutable")),
        "{errors:?}"
    );
}

#[test]
fn approval_request_kinds_need_their_fields() {
    let crd = ApprovalRequest::crd();
    assert_accepted(&crd, approval("hello"));
    let mut forward = approval("hello");
    forward["spec"].as_object_mut().unwrap().remove("target");
    assert_rejected(&crd, forward, "a forward request needs gateway and target");
    let elevation = object(
        "ApprovalRequest",
        json!({
            "type": "elevation",
            "source": {"type": "session", "identity": "research-agent", "trustLevel": "semi-trusted"},
            "expiresAt": "2026-11-24T12:05:00Z",
        }),
    );
    assert_rejected(
        &crd,
        elevation,
        "an elevation request needs requestedCapabilities",
    );
}

#[test]
fn a_gateway_declares_the_level_it_routes_to_semi_trusted_by_default() {
    let crd = Gateway::crd();
    let schema = common::crd_schema(&crd);
    let level = &schema["properties"]["spec"]["properties"]["trustLevel"];
    assert_eq!(level["default"], "semi-trusted", "{level}");
    assert_eq!(level["enum"], json!(api::TRUST_LEVEL_NAMES), "{level}");
    let columns = &crd.spec.versions[0].additional_printer_columns;
    assert!(
        columns
            .iter()
            .flatten()
            .any(|c| c.name == "Level" && c.json_path == ".spec.trustLevel"),
        "{columns:?}"
    );
    let typed = |spec: Value| serde_json::from_value::<Gateway>(object("Gateway", spec));
    assert_eq!(
        typed(json!({"session": "gw"})).unwrap().spec.trust_level,
        api::TrustLevel::SemiTrusted
    );
    assert_eq!(
        typed(json!({"session": "gw", "trustLevel": "owner"}))
            .unwrap()
            .spec
            .trust_level,
        api::TrustLevel::Owner
    );
    assert!(typed(json!({"session": "gw", "trustLevel": "admin"})).is_err());
    assert_accepted(
        &crd,
        object("Gateway", json!({"session": "gw", "trustLevel": "trusted"})),
    );
}

#[test]
fn durations_must_be_positive() {
    let crd = Gateway::crd();
    let gateway = |timeout: &str| {
        object(
            "Gateway",
            json!({"session": "gw", "approvalTimeout": timeout}),
        )
    };
    assert_accepted(&crd, gateway("5m"));
    assert_rejected(
        &crd,
        gateway("0s"),
        "approvalTimeout must be a positive duration",
    );
    let crd = SecurityPolicy::crd();
    assert_rejected(
        &crd,
        object(
            "SecurityPolicy",
            json!({"p2p": {"keyRotationGracePeriod": "-1h"}}),
        ),
        "keyRotationGracePeriod must not be negative",
    );
}

#[test]
fn max_unavailable_is_only_for_rolling_updates() {
    let crd = SecurityPolicy::crd();
    let policy = |update: Value| object("SecurityPolicy", json!({"updatePolicy": update}));
    assert_accepted(
        &crd,
        policy(json!({"type": "Rolling", "maxUnavailable": 3})),
    );
    assert_accepted(&crd, policy(json!({"type": "OnRestart"})));
    assert_rejected(
        &crd,
        policy(json!({"type": "OnRestart", "maxUnavailable": 3})),
        "maxUnavailable is only for type Rolling",
    );
}

/// Every rule with the schema node it sits on, walking the whole tree.
fn rules_with_nodes<'a>(
    node: &'a kube::core::cel::CompiledSchema,
    path: String,
    out: &mut Vec<(String, String, &'a kube::core::cel::CompiledSchema)>,
) {
    for compiled in node.validations.iter().flatten() {
        out.push((path.clone(), compiled.rule.rule.clone(), node));
    }
    for (name, child) in &node.properties {
        rules_with_nodes(child, format!("{path}.{name}"), out);
    }
    if let Some(items) = &node.items {
        rules_with_nodes(items, format!("{path}[]"), out);
    }
    if let Some(values) = &node.additional_properties {
        rules_with_nodes(values, format!("{path}{{}}"), out);
    }
}

#[test]
fn cel_rules_fit_the_apiserver_cost_budget() {
    use kube::core::cel::{WarningKind, estimate_rule_cost};
    let mut problems = Vec::new();
    for crd in api::crds() {
        let compiled = compile_schema(&schema(&crd));
        let mut rules = Vec::new();
        rules_with_nodes(&compiled, crd.spec.names.kind.clone(), &mut rules);
        for (path, rule, node) in rules {
            for warning in estimate_rule_cost(&rule, node) {
                if matches!(
                    warning.kind,
                    WarningKind::CostExceeded | WarningKind::MissingBounds
                ) {
                    problems.push(format!("{path}: {rule}: {}", warning.message));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn model_providers_are_named_once_and_located_by_a_url() {
    let crd = SecurityPolicy::crd();
    let policy = |providers: Value| object("SecurityPolicy", json!({"providers": providers}));
    let provider = |name: &str, type_: &str, base_url: Option<&str>| {
        let mut provider = json!({"name": name, "type": type_,
            "secretRef": {"name": "model-keys", "key": name}});
        if let Some(url) = base_url {
            provider["baseURL"] = json!(url);
        }
        provider
    };
    assert_accepted(
        &crd,
        policy(json!([
            provider("openai", "openai", None),
            provider("anthropic", "anthropic", Some("https://api.anthropic.com")),
            provider(
                "local",
                "openai-compatible",
                Some("http://llm.models.svc:8000/v1")
            ),
        ])),
    );
    assert_rejected(
        &crd,
        policy(json!([
            provider("openai", "openai", None),
            provider(
                "openai",
                "openai-compatible",
                Some("https://proxy.example/v1")
            ),
        ])),
        "each name may appear only once",
    );
    assert_rejected(
        &crd,
        policy(json!([provider("local", "openai-compatible", None)])),
        "an openai-compatible provider needs a baseURL",
    );
    for bad in [
        "ftp://models.example",
        "api.openai.com/v1",
        "file:///etc/passwd",
        "",
    ] {
        assert_rejected(
            &crd,
            policy(json!([provider("openai", "openai", Some(bad))])),
            "baseURL must start with https:// or http://",
        );
    }
}
