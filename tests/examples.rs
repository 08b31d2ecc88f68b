//! Every file in examples/ goes through the real deserializer and the
//! resolver, and the reference deployment behaves as documented.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{decide_named, now};
use wopr_operator::api::{
    Capability, Gateway, Grant, NetworkMode, SecurityPolicy, Session, TrustLevel, WoprObject,
    parse_manifests,
};
use wopr_operator::policy::models::provider_problem;
use wopr_operator::policy::{
    EffectiveContext, Outcome, Request, Source, callable_tools, decide, resolve, resolve_peer,
};

const NAMESPACE: &str = "wopr-examples";
const ALICE: &str = "MCowBQYDK2VwAyEAq1Jm4kTXJ6lf9bSVVuH0bWv0Fh3fAfZFNrgR0hA1HOU=";
const ALICE_OLD: &str = "MCowBQYDK2VwAyEAzN1D5Gx8cmRwqPZP0iDvXQ8dC2a0tX7Lk1uD4tH0y3M=";

#[derive(Default)]
struct Examples {
    policies: Vec<SecurityPolicy>,
    sessions: Vec<Session>,
    grants: Vec<Grant>,
    gateways: Vec<Gateway>,
}

/// The example directories: the reference deployment, the quickstart's,
/// the model provider example and the tools example.
const EXAMPLE_DIRS: [&str; 4] = [
    "examples",
    "examples/quickstart",
    "examples/providers",
    "examples/tools",
];

/// The YAML files of `dir`, sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

/// The reference deployment: every object of every examples/*.yaml file,
/// placed in one namespace as `kubectl apply -n` would.
fn load_examples() -> Examples {
    load("examples")
}

fn load(dir: &str) -> Examples {
    let mut examples = Examples::default();
    for path in yaml_files(dir) {
        let text = fs::read_to_string(&path).unwrap();
        let objects =
            parse_manifests(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert!(!objects.is_empty(), "{} holds no object", path.display());
        for object in objects {
            match object {
                WoprObject::SecurityPolicy(mut p) => {
                    p.metadata.namespace = Some(NAMESPACE.into());
                    examples.policies.push(*p);
                }
                WoprObject::Session(mut s) => {
                    s.metadata.namespace = Some(NAMESPACE.into());
                    examples.sessions.push(*s);
                }
                WoprObject::Grant(mut g) => {
                    g.metadata.namespace = Some(NAMESPACE.into());
                    examples.grants.push(g);
                }
                WoprObject::Gateway(mut g) => {
                    g.metadata.namespace = Some(NAMESPACE.into());
                    examples.gateways.push(g);
                }
                WoprObject::ApprovalRequest(_) => {}
            }
        }
    }
    examples
}

impl Examples {
    fn session_names(&self) -> Vec<String> {
        self.sessions
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect()
    }

    /// The namespace's SecurityPolicy, if the examples have one.
    fn policy(&self) -> Option<&SecurityPolicy> {
        assert!(self.policies.len() <= 1);
        let policy = self.policies.first()?;
        assert_eq!(policy.metadata.name.as_deref(), Some("default"));
        Some(policy)
    }

    fn context(&self, name: &str) -> EffectiveContext {
        let session = self
            .sessions
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no example session {name}"));
        resolve(session, self.policy(), &self.grants, &self.gateways, now())
            .unwrap_or_else(|err| panic!("{name}: {err}"))
    }
}

fn callable(context: &EffectiveContext) -> Vec<&'static str> {
    callable_tools(context)
        .iter()
        .map(|id| id.tool().name)
        .collect()
}

#[test]
fn every_example_session_resolves() {
    let examples = load_examples();
    let names = examples.session_names();
    assert_eq!(
        names,
        [
            "p2p-gateway",
            "code-executor",
            "research-agent",
            "api-handler"
        ]
    );
    assert_eq!(examples.grants.len(), 3);
    assert_eq!(examples.gateways.len(), 1);
    for name in &names {
        examples.context(name);
    }
}

#[test]
fn every_example_passes_its_crd_cel_rules() {
    use kube::core::cel::Validator;
    let crds = wopr_operator::api::crds();
    for path in EXAMPLE_DIRS.into_iter().flat_map(yaml_files) {
        let text = fs::read_to_string(&path).unwrap();
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        for document in documents.iter().filter(|d| !d.is_null()) {
            let crd = crds
                .iter()
                .find(|crd| crd.spec.names.kind == document["kind"])
                .unwrap_or_else(|| panic!("{}: unknown kind", path.display()));
            let schema = common::crd_schema(crd);
            if let Err(errors) = Validator::new().validate(&schema, document, None) {
                panic!(
                    "{}: {} fails {errors:?}",
                    path.display(),
                    document["metadata"]["name"]
                );
            }
        }
    }
}

/// The example policy is the built-in profiles spelled out, plus what no
/// built-in can hold: the namespace's model providers, and the models the
/// reference sessions use, which every one of them may then call.
#[test]
fn the_example_policy_spells_out_the_builtin_profiles() {
    let examples = load_examples();
    for session in &examples.sessions {
        let name = session.metadata.name.clone();
        let policy = examples
            .policy()
            .expect("the reference deployment has a policy");
        let mut with_example = resolve(
            session,
            Some(policy),
            &examples.grants,
            &examples.gateways,
            now(),
        )
        .unwrap();
        let mut with_builtin =
            resolve(session, None, &examples.grants, &examples.gateways, now()).unwrap();
        assert_eq!(
            provider_problem(&with_example.models).map(|p| p.to_string()),
            None,
            "{name:?}"
        );
        for context in [&mut with_example, &mut with_builtin] {
            context.models = Default::default();
            context.policy_hash = String::new();
        }
        assert_eq!(with_example, with_builtin, "{name:?}");
    }
}

#[test]
fn the_gateway_forwards_and_nothing_more() {
    let context = load_examples().context("p2p-gateway");
    assert_eq!(context.gateways.len(), 1);
    assert_eq!(context.gateways[0].forward_rules.len(), 2);
    assert_eq!(context.network, NetworkMode::None);
    assert!(context.capabilities.has(Capability::CrossInject));
    let tools = callable(&context);
    for tool in [
        "sessions_send",
        "gateway_forward",
        "gateway_respond",
        "gateway_queue",
        "memory_read",
    ] {
        assert!(tools.contains(&tool), "{tool} missing from {tools:?}");
    }
    for tool in ["http_fetch", "exec_command", "sessions_spawn", "config_set"] {
        assert!(!tools.contains(&tool), "{tool} in {tools:?}");
    }
}

#[test]
fn the_code_executor_executes_without_network() {
    let context = load_examples().context("code-executor");
    assert!(context.sandbox.enabled);
    assert_eq!(context.network, NetworkMode::None);
    assert_eq!(
        callable(&context),
        [
            "security_whoami",
            "security_check",
            "security_request",
            "exec_command",
            "memory_read",
            "memory_write",
            "config_get",
            "inbox_read",
            "inbox_ack",
            "inbox_reply"
        ]
    );
}

#[test]
fn the_research_agent_is_sandboxed_with_restricted_network() {
    let context = load_examples().context("research-agent");
    assert!(
        context.sandbox.enabled,
        "semi-trusted runs sandboxed by default"
    );
    assert_eq!(context.network, NetworkMode::Restricted);
    assert_eq!(
        decide_named(&context, "memory_read").outcome,
        Outcome::Allowed
    );
    assert_eq!(
        decide_named(&context, "http_fetch").outcome,
        Outcome::Denied
    );
}

#[test]
fn the_api_handler_only_has_security_tools_and_its_inbox() {
    let context = load_examples().context("api-handler");
    assert_eq!(context.trust_level, TrustLevel::Untrusted);
    assert_eq!(
        callable(&context),
        [
            "security_whoami",
            "security_check",
            "security_request",
            "inbox_read",
            "inbox_ack",
            "inbox_reply"
        ]
    );
}

#[test]
fn alice_reaches_the_gateway_only() {
    let examples = load_examples();
    let policy = examples.policy();
    assert!(policy.is_some());
    let standing = resolve_peer(
        ALICE,
        "p2p-gateway",
        NAMESPACE,
        policy,
        &examples.grants,
        now(),
    )
    .unwrap();
    let gateway = examples.context("p2p-gateway");
    assert_eq!(
        decide(&gateway, Request::Inject(&Source::peer(&standing))).outcome,
        Outcome::Allowed
    );
    // Her previous key was rotated on 2026-11-20: with a 24h grace it no longer counts.
    assert_eq!(
        resolve_peer(
            ALICE_OLD,
            "p2p-gateway",
            NAMESPACE,
            policy,
            &examples.grants,
            now()
        ),
        None
    );
    assert_eq!(
        resolve_peer(
            ALICE,
            "research-agent",
            NAMESPACE,
            policy,
            &examples.grants,
            now()
        ),
        None
    );
    // The research agent admits only trusted sources and the gateway session.
    let research = examples.context("research-agent");
    assert_eq!(
        decide(&research, Request::Inject(&Source::peer(&standing))).outcome,
        Outcome::Denied
    );
    assert_eq!(
        decide(&research, Request::Inject(&Source::session(&gateway))).outcome,
        Outcome::Allowed
    );
}

#[test]
fn the_quickstart_shows_each_trust_level_a_different_sidecar() {
    let quickstart = load("examples/quickstart");
    assert!(quickstart.policy().is_none(), "the built-in profiles apply");
    assert_eq!(
        quickstart.session_names(),
        [
            "demo-owner",
            "demo-trusted",
            "demo-semi-trusted",
            "demo-untrusted"
        ]
    );
    for session in &quickstart.sessions {
        let sandbox = session.spec.sandbox.clone().unwrap_or_default();
        assert_eq!(sandbox.image, None, "the default agent: the demo agent");
        assert!(sandbox.command.is_empty());
        assert!(
            sandbox.args.is_empty() || sandbox.args[0] == "demo-agent",
            "{:?}",
            sandbox.args
        );
    }
    // What the demo agents print: config_get allowed but for the untrusted
    // one; the trusted one holds session.spawn and the semi-trusted does not.
    let calls_config_get = |name: &str| callable(&quickstart.context(name)).contains(&"config_get");
    assert!(calls_config_get("demo-owner"));
    assert!(calls_config_get("demo-trusted"));
    assert!(calls_config_get("demo-semi-trusted"));
    assert!(!calls_config_get("demo-untrusted"));
    let spawns = |name: &str| {
        quickstart
            .context(name)
            .capabilities
            .has(Capability::SessionSpawn)
    };
    assert!(spawns("demo-trusted"));
    assert!(!spawns("demo-semi-trusted"));
    assert_eq!(
        quickstart.context("demo-untrusted").trust_level,
        TrustLevel::Untrusted
    );
}

/// The provider example's Session may call the model it names, through the
/// provider its policy configures, within the budgets the policy sets.
#[test]
fn the_provider_example_may_call_its_model() {
    let examples = load("examples/providers");
    let context = examples.context("model-agent");
    assert_eq!(
        provider_problem(&context.models).map(|p| p.to_string()),
        None
    );
    assert_eq!(context.models.providers[0].name, "openai");
    assert_eq!(context.models.tokens_per_day, 200_000);
    assert!(wopr_operator::policy::models::allows(
        &context.models.allow,
        "openai",
        "gpt-4o-mini"
    ));
    assert!(!wopr_operator::policy::models::allows(
        &context.models.allow,
        "openai",
        "gpt-4o"
    ));
}

#[test]
fn the_tools_example_holds_its_agents_to_their_rules() {
    use wopr_operator::policy::ToolCall;
    use wopr_operator::policy::ToolId;
    use wopr_operator::policy::tools::argument_rules::check;

    let examples = load("examples/tools");
    let researcher = examples.context("researcher");
    let runner = examples.context("runner");
    assert!(callable_tools(&researcher).contains(ToolId::HttpFetch));
    assert!(!callable_tools(&researcher).contains(ToolId::ExecCommand));
    assert!(callable_tools(&runner).contains(ToolId::ExecCommand));
    let call = |id, arguments: serde_json::Value| ToolCall::parse(id, arguments).unwrap();
    let fetch = |url: &str| call(ToolId::HttpFetch, serde_json::json!({ "url": url }));
    assert!(
        check(
            &fetch("https://export.arxiv.org/api/query?q=x"),
            &researcher.rules
        )
        .is_ok()
    );
    // The Session's own deny-list adds to its level's, and the defaults' to both.
    for refused in [
        "https://en.wikipedia.org/wiki/X",
        "http://db.internal/",
        "http://169.254.169.254/",
    ] {
        assert!(
            check(&fetch(refused), &researcher.rules).is_err(),
            "{refused}"
        );
    }
    let run = |command: &str, args: &[&str]| {
        call(
            ToolId::ExecCommand,
            serde_json::json!({ "command": command, "args": args }),
        )
    };
    assert!(check(&run("python3", &["report.py"]), &runner.rules).is_ok());
    assert!(check(&run("python3", &["-c", "import os"]), &runner.rules).is_err());
    assert!(check(&run("sh", &[]), &runner.rules).is_err());
}
