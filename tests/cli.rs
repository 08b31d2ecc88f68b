//! `kubectl wopr`, tier 2: every command against the mock API server (and,
//! for the audit trail, a real in-process control plane), tables pinned by
//! `insta` snapshots, JSON read back into the API types, and the real
//! binary's exit codes and one-line errors.

use clap::{CommandFactory, Parser};
use http::StatusCode;
use insta::assert_snapshot;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use wopr_operator::api::{
    ApprovalRequest, ApprovalState, Enforcement, Gateway, Grant, Session, WoprObject,
    parse_manifests,
};
use wopr_operator::cli::connect::{ControlPlane as ControlPlaneAddress, Route};
use wopr_operator::cli::portforward::PortForward;
use wopr_operator::cli::{self, Cli, CliError, Context, Format, NamespaceReport, SessionReport};

mod common;

use common::NAMESPACE;
use common::fake_api::FakeApi;

/// The time the commands see: five days after the fake API's objects were made.
fn now() -> Timestamp {
    "2026-11-29T12:00:00Z".parse().unwrap()
}

fn path(plural: &str, name: &str) -> String {
    format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/{plural}/{name}")
}

/// Stores a wopr.dev object in the fake API, in [`NAMESPACE`].
fn put(api: &FakeApi, object: &WoprObject) {
    let (plural, mut value) = match object {
        WoprObject::SecurityPolicy(o) => ("securitypolicies", serde_json::to_value(o).unwrap()),
        WoprObject::Session(o) => ("sessions", serde_json::to_value(o).unwrap()),
        WoprObject::Grant(o) => ("grants", serde_json::to_value(o).unwrap()),
        WoprObject::Gateway(o) => ("gateways", serde_json::to_value(o).unwrap()),
        WoprObject::ApprovalRequest(o) => ("approvalrequests", serde_json::to_value(o).unwrap()),
    };
    value["metadata"]["namespace"] = json!(NAMESPACE);
    let name = value["metadata"]["name"].as_str().unwrap().to_owned();
    api.insert(&path(plural, &name), value);
}

/// The reference deployment (`examples/`), as a cluster would hold it.
fn load_examples(api: &FakeApi) {
    for file in ["security-policy", "sessions", "grants", "gateway"] {
        let text = std::fs::read_to_string(format!("examples/{file}.yaml")).unwrap();
        for object in parse_manifests(&text).unwrap() {
            put(api, &object);
        }
    }
    // The providers' keys, as `kubectl create secret generic model-keys` makes them.
    api.insert(
        &format!("/api/v1/namespaces/{NAMESPACE}/secrets/model-keys"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "model-keys", "namespace": NAMESPACE},
               "data": {"anthropic": "c2stYW50LWV4YW1wbGU=", "openai": "c2stZXhhbXBsZQ=="}}),
    );
    install_escalation_policies(api);
}

/// A forward waiting for approval, as the broker files it.
fn pending_request(api: &FakeApi, id: &str) {
    api.insert(
        &path("approvalrequests", id),
        json!({
            "apiVersion": "wopr.dev/v1alpha1", "kind": "ApprovalRequest",
            "metadata": {"name": id, "namespace": NAMESPACE},
            "spec": {
                "type": "forward", "gateway": "p2p-gateway",
                "source": {"type": "p2p", "identity": "alice", "trustLevel": "semi-trusted"},
                "target": "code-executor", "action": "execute", "payload": "{\"cmd\":\"ls\"}",
                "expiresAt": "2026-11-29T12:04:00Z",
            },
            "status": {"state": "Pending"},
        }),
    );
}

/// The API server's answer to SelfSubjectReview: `alice`.
fn authenticate_as_alice(api: &FakeApi) {
    api.respond_to("/apis/authentication.k8s.io/v1/selfsubjectreviews", |_| {
        json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
            "status": {"userInfo": {"username": "alice", "groups": ["platform", "system:authenticated"]}},
        })
    });
    api.respond_to(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        |review| {
            let attributes = &review["spec"]["resourceAttributes"];
            let resource = attributes["resource"].as_str().unwrap_or("");
            // What `edit` gives: not the SecurityPolicy, trust levels up to
            // semi-trusted, no sandbox overrides.
            let allowed = match resource {
                "securitypolicies" | "sandboxoverrides" => false,
                "trustlevels" => ["untrusted", "semi-trusted"]
                    .contains(&attributes["name"].as_str().unwrap_or("")),
                _ => true,
            };
            let mut answer = review.clone();
            answer["status"] = json!({"allowed": allowed});
            answer
        },
    );
}

struct Cluster {
    api: FakeApi,
    context: Context,
}

fn cluster() -> Cluster {
    let (client, api) = FakeApi::start();
    Cluster {
        api,
        context: context(client),
    }
}

/// What the commands see through `client`: [`NAMESPACE`], [`now`], and the
/// control plane as the binary reaches it without `--control-plane`,
/// presenting the reader's token.
fn context(client: kube::Client) -> Context {
    let forward = PortForward {
        client: client.clone(),
        namespace: OPERATOR_NAMESPACE.into(),
    };
    Context {
        client,
        namespace: NAMESPACE.into(),
        now: now(),
        control_plane: ControlPlaneAddress::on_route(
            Route::PortForward(forward),
            None,
            Some(common::sidecar::READER),
        ),
    }
}

/// The example Sessions, on `plane`'s API server, in the test namespace.
fn put_example_sessions(plane: &mut common::sidecar::ControlPlane) {
    for object in
        parse_manifests(&std::fs::read_to_string("examples/sessions.yaml").unwrap()).unwrap()
    {
        if let WoprObject::Session(mut session) = object {
            session.metadata.namespace = Some(NAMESPACE.into());
            plane.put_session(*session);
        }
    }
}

/// The messages waiting in research-agent's inbox on `plane`.
async fn queued_for_research_agent(
    plane: &common::sidecar::ControlPlane,
) -> Vec<wopr_operator::store::Queued> {
    plane
        .store
        .pending_messages(NAMESPACE, "research-agent", 0, 10)
        .await
        .unwrap()
}

/// Where the chart installs the controller.
const OPERATOR_NAMESPACE: &str = "wopr-system";

fn examples() -> Cluster {
    let cluster = cluster();
    load_examples(&cluster.api);
    cluster
}

/// The chart's escalation policies and their bindings, as installed with
/// the examples.
fn install_escalation_policies(api: &FakeApi) {
    for object in common::install_yaml() {
        let plural = match object["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => "validatingadmissionpolicies",
            Some("ValidatingAdmissionPolicyBinding") => "validatingadmissionpolicybindings",
            _ => continue,
        };
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        api.insert(&format!("{ADMISSION}/{plural}/{name}"), object);
    }
}

const ADMISSION: &str = "/apis/admissionregistration.k8s.io/v1";

/// A command line's words, as a POSIX shell splits them: at blanks, except
/// inside '…' or "…" (the seed's lines use no escapes).
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(open), c) if c == open => quote = None,
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, ' ') => words.extend(word.take()),
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    assert!(quote.is_none(), "unbalanced quote in {line}");
    words.extend(word);
    words
}

#[test]
fn words_split_as_a_shell_does() {
    assert_eq!(
        words(r#"session create a "You are a sandboxed assistant" --provider openai"#),
        [
            "session",
            "create",
            "a",
            "You are a sandboxed assistant",
            "--provider",
            "openai"
        ]
    );
    assert_eq!(
        words(r#"config set x '["internal-processor"]'  ''"#),
        ["config", "set", "x", r#"["internal-processor"]"#, ""]
    );
}

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("kubectl-wopr").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

impl Cluster {
    async fn run(&self, args: &[&str]) -> Result<cli::Shown, CliError> {
        cli::run(parse(args).command, &self.context).await
    }

    async fn text(&self, args: &[&str]) -> String {
        self.run(args)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .text
    }

    async fn json(&self, args: &[&str]) -> Value {
        let shown = self.run(args).await.unwrap();
        let rendered = shown.render(Format::Json).unwrap();
        serde_json::from_str(&rendered).unwrap()
    }

    /// The last request, checked to be a server-side apply to `path` as
    /// `kubectl-wopr`: its query and body.
    fn last_apply(&self, path: &str) -> (String, Value) {
        let request = self.api.take_requests().pop().unwrap();
        assert_eq!(request.line(), format!("PATCH {path}"));
        assert!(
            request.query.contains("fieldManager=kubectl-wopr"),
            "{}",
            request.query
        );
        (request.query, request.body.unwrap())
    }

    fn stored(&self, plural: &str, name: &str) -> Option<Value> {
        self.api.get(&path(plural, name))
    }
}

/// The items of a `-o json` list, as `T`.
fn items<T: serde::de::DeserializeOwned>(list: Value) -> Vec<T> {
    assert_eq!(list["kind"], "List");
    serde_json::from_value(list["items"].clone()).unwrap()
}

fn usage(result: Result<cli::Shown, CliError>) -> String {
    match result {
        Err(CliError::Usage(message)) => message,
        other => panic!("expected a usage error, got {other:?}"),
    }
}

#[test]
fn every_command_has_help_with_an_example() {
    fn leaves(command: &clap::Command, path: String, found: &mut Vec<(String, String)>) {
        let subcommands: Vec<_> = command.get_subcommands().collect();
        if subcommands.is_empty() {
            let help = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            found.push((path.clone(), help));
        }
        for sub in subcommands {
            leaves(sub, format!("{path} {}", sub.get_name()), found);
        }
    }
    let mut found = Vec::new();
    leaves(&Cli::command(), "kubectl wopr".into(), &mut found);
    assert_eq!(found.len(), 22, "{found:?}");
    for (path, help) in found {
        assert!(
            help.contains("Example"),
            "{path} has no example in its help"
        );
        assert!(
            help.contains(&path),
            "{path}'s example does not use it: {help}"
        );
    }
}

#[tokio::test]
async fn status_of_the_namespace_and_of_a_session() {
    let cluster = examples();
    pending_request(&cluster.api, "01jdx3m4q7");
    assert_snapshot!(
        "status_namespace",
        cluster.text(&["security", "status"]).await
    );
    let report: NamespaceReport =
        serde_json::from_value(cluster.json(&["security", "status", "-o", "json"]).await).unwrap();
    assert_eq!(report.enforcement, Enforcement::Enforce);
    assert_eq!(report.sessions.len(), 4);
    assert_eq!(report.pending_approvals.len(), 1);
    assert!(report.security_policy.is_some());

    cluster.api.modify(&path("sessions", "research-agent"), |session| {
        session["status"] = json!({
            "phase": "Ready", "podName": "wopr-research-agent",
            "effective": {"trustLevel": "semi-trusted", "capabilities": ["inject", "inject.tools"],
                          "tools": ["memory_read", "security_whoami"], "sandbox": true, "network": "restricted",
                          "rules": {"http_fetch": {"allowHosts": ["api.github.com", "*.arxiv.org"],
                                                   "denyHosts": ["169.254.169.254"]},
                                    "memory_write": {"paths": []}}},
        });
    });
    assert_snapshot!(
        "status_session",
        cluster
            .text(&["security", "status", "research-agent"])
            .await
    );
    let report: SessionReport = serde_json::from_value(
        cluster
            .json(&["security", "status", "research-agent", "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(
        report.session.metadata.name.as_deref(),
        Some("research-agent")
    );
    let missing = cluster.run(&["security", "status", "ghost"]).await;
    assert!(
        matches!(missing, Err(CliError::NotFound(ref m)) if m == "session \"ghost\" not found"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn whoami_asks_the_api_server() {
    let cluster = examples();
    authenticate_as_alice(&cluster.api);
    assert_snapshot!("whoami", cluster.text(&["security", "whoami"]).await);
    let report = cluster.json(&["security", "whoami", "-o", "json"]).await;
    assert_eq!(report["user"]["username"], "alice");
    assert_eq!(report["trustLevel"], Value::Null);
    assert_eq!(
        report["usableTrustLevels"],
        json!(["untrusted", "semi-trusted"]),
        "asked of RBAC, one level at a time"
    );
}

#[tokio::test]
async fn whoami_as_a_sessions_service_account_shows_its_trust() {
    let cluster = examples();
    authenticate_as_alice(&cluster.api);
    cluster.api.respond_to("/apis/authentication.k8s.io/v1/selfsubjectreviews", |_| {
        json!({"status": {"userInfo": {"username": format!("system:serviceaccount:{NAMESPACE}:wopr-code-executor")}}})
    });
    let text = cluster.text(&["security", "whoami"]).await;
    assert!(text.contains("Session:     code-executor"), "{text}");
    assert!(text.contains("Trust level: trusted"), "{text}");
    assert!(text.contains("Grants:      code-executor-exec"), "{text}");
}

#[tokio::test]
async fn whoami_as_a_workload_shows_its_grants() {
    let cluster = examples();
    authenticate_as_alice(&cluster.api);
    cluster.api.respond_to(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        |_| json!({"status": {"userInfo": {"username": "system:serviceaccount:ci:task-bot"}}}),
    );
    let text = cluster.text(&["security", "whoami"]).await;
    assert!(
        text.contains("Workload:    serviceaccount:ci/task-bot"),
        "{text}"
    );
    assert!(
        text.contains("no Grant names this service account"),
        "{text}"
    );
    cluster
        .text(&[
            "security",
            "grant",
            "serviceaccount:ci/task-bot",
            "--profile",
            "semi-trusted",
        ])
        .await;
    let text = cluster.text(&["security", "whoami"]).await;
    assert!(text.contains("Trust level: up to semi-trusted"), "{text}");
    assert!(text.contains("Grants:      serviceaccount-"), "{text}");
}

#[tokio::test]
async fn grant_list_and_revoke() {
    let cluster = examples();
    let shown = cluster
        .run(&[
            "security",
            "grant",
            "session:research-agent",
            "a2a.call",
            "cross.inject",
            "--expires",
            "30d",
        ])
        .await
        .unwrap();
    assert_eq!(
        shown.text,
        "grant.wopr.dev/session-research-agent gives session:research-agent a2a.call,cross.inject\n"
    );
    let (query, _) = cluster.last_apply(&path("grants", "session-research-agent"));
    assert!(!query.contains("force=true"), "{query}");
    let stored: Grant =
        serde_json::from_value(cluster.stored("grants", "session-research-agent").unwrap())
            .unwrap();
    assert_eq!(
        stored.spec.subject.session.as_deref(),
        Some("research-agent")
    );
    assert_eq!(
        stored.spec.expires_at.unwrap().0,
        "2026-12-29T12:00:00Z".parse::<Timestamp>().unwrap()
    );
    assert_eq!(stored.spec.not_before, None, "in force at once");

    // A grant that starts later says when.
    cluster
        .run(&[
            "security",
            "grant",
            "research-agent",
            "a2a.call",
            "--not-before",
            "2026-12-01T09:00:00Z",
        ])
        .await
        .unwrap();
    let (_, body) = cluster.last_apply(&path("grants", "session-research-agent"));
    assert_eq!(body["spec"]["notBefore"], json!("2026-12-01T09:00:00Z"));

    // The WOPR CLI's forms: a bare session name, capabilities comma-separated.
    let shown = cluster
        .run(&[
            "security",
            "grant",
            "research-agent",
            "a2a.call,cross.inject",
            "--expires",
            "30d",
        ])
        .await
        .unwrap();
    assert_eq!(
        shown.text,
        "grant.wopr.dev/session-research-agent gives session:research-agent a2a.call,cross.inject\n"
    );
    let (_, body) = cluster.last_apply(&path("grants", "session-research-agent"));
    assert_eq!(
        body["spec"]["subject"],
        json!({"session": "research-agent"})
    );
    assert_eq!(
        body["spec"]["capabilities"],
        json!(["a2a.call", "cross.inject"])
    );

    let key = "MCowBQYDK2VwAyEAq1Jm4kTXJ6lf9bSVVuH0bWv0Fh3fAfZFNrgR0hA1HOU=";
    cluster
        .run(&[
            "security",
            "grant",
            key,
            "--profile",
            "untrusted",
            "--sessions",
            "p2p-gateway,research-agent",
        ])
        .await
        .unwrap();
    cluster
        .api
        .modify(&path("grants", "p2p-gateway-forwarding"), |grant| {
            grant["status"] = json!({"state": "Active", "lastUsedAt": "2026-11-29T11:00:00Z"});
        });
    assert_snapshot!(
        "list_grants",
        cluster.text(&["security", "list-grants"]).await
    );
    let grants: Vec<Grant> = items(
        cluster
            .json(&["security", "list-grants", "-o", "json"])
            .await,
    );
    assert_eq!(grants.len(), 5);

    // Revoking alice's key removes both of her grants: the manifest's and the CLI's.
    let revoked = cluster.text(&["security", "revoke", key]).await;
    assert_eq!(revoked.lines().count(), 2, "{revoked}");
    assert!(cluster.stored("grants", "peer-alice").is_none());
    let again = cluster.run(&["security", "revoke", key]).await;
    assert!(matches!(again, Err(CliError::NotFound(_))), "{again:?}");
}

#[tokio::test]
async fn grant_refuses_bad_subjects_and_values() {
    let cluster = examples();
    let unknown = cluster
        .run(&["security", "grant", "session:ghost", "a2a.call"])
        .await;
    assert!(
        matches!(unknown, Err(CliError::NotFound(ref m)) if m == "session \"ghost\" not found"),
        "{unknown:?}"
    );
    // A bare word that is no peer key names a Session, which must exist.
    let bare = cluster
        .run(&["security", "grant", "alice", "a2a.call"])
        .await;
    assert!(
        matches!(bare, Err(CliError::NotFound(ref m)) if m.starts_with(&format!(
            "\"alice\" is neither a Session in namespace {NAMESPACE} nor a peer key (a base64 Ed25519 public key, 60 characters starting MCowBQYDK2VwAyEA)"
        ))),
        "{bare:?}"
    );
    for (args, message) in [
        (
            &["Alice", "a2a.call"][..],
            "is not a subject: use a session's NAME (or session:NAME)",
        ),
        (
            &["research-agent", "a2a.call", "--sessions", "x"][..],
            "peer and service-account grants only",
        ),
        (
            &["session:research-agent", "a2a.call", "--sessions", "x"][..],
            "peer and service-account grants only",
        ),
        (
            &[
                "session:research-agent",
                "a2a.call",
                "--expires",
                "2020-01-01T00:00:00Z",
            ][..],
            "--expires is in the past",
        ),
        (
            &[
                "session:research-agent",
                "a2a.call",
                "--not-before",
                "2d",
                "--expires",
                "1d",
            ][..],
            "--expires is not after --not-before",
        ),
    ] {
        let mut grant = vec!["security", "grant"];
        grant.extend_from_slice(args);
        let refused = usage(cluster.run(&grant).await);
        assert!(refused.contains(message), "{args:?}: {refused}");
    }
    // Parsed before anything is sent: clap's own usage errors.
    for (args, message) in [
        (
            vec!["security", "grant", "session:a", "fly"],
            "unknown capability \"fly\"",
        ),
        (
            vec!["security", "grant", "session:a", "*"],
            "never give the wildcard",
        ),
        (
            vec!["security", "grant", "session:a", "inject,fly"],
            "unknown capability \"fly\"",
        ),
        (
            vec!["security", "grant", "session:a", "inject,*"],
            "never give the wildcard",
        ),
        (
            vec!["security", "grant", "session:a", "--profile", "owner"],
            "never give the owner profile",
        ),
    ] {
        let error =
            Cli::try_parse_from(std::iter::once("kubectl-wopr").chain(args.iter().copied()))
                .unwrap_err()
                .to_string();
        assert!(error.contains(message), "{args:?}: {error}");
    }
    assert!(
        cluster
            .api
            .take_requests()
            .iter()
            .all(|r| r.method == http::Method::GET)
    );
}

#[tokio::test]
async fn gateway_list_rules_and_add() {
    let cluster = examples();
    cluster.api.modify(&path("gateways", "p2p-gateway"), |gateway| {
        gateway["status"] = json!({
            "pending": 1, "forwards": [{"rule": 0, "forwarded": 42}, {"rule": 1, "forwarded": 3}],
            "lastDecision": {"requestId": "01jdx3m4q6", "decision": "approved", "at": "2026-11-29T11:30:00Z"},
        });
    });
    assert_snapshot!(
        "gateway_list",
        cluster.text(&["security", "gateway", "list"]).await
    );
    assert_snapshot!(
        "gateway_rules",
        cluster
            .text(&["security", "gateway", "rules", "p2p-gateway"])
            .await
    );
    assert_eq!(
        cluster
            .text(&["security", "gateway", "rules", "--all"])
            .await,
        cluster
            .text(&["security", "gateway", "rules", "p2p-gateway"])
            .await
    );
    let gateways: Vec<Gateway> = items(
        cluster
            .json(&["security", "gateway", "list", "-o", "json"])
            .await,
    );
    assert_eq!(gateways[0].spec.forward_rules.len(), 2);
    let none = cluster
        .run(&["security", "gateway", "rules", "research-agent"])
        .await;
    assert!(matches!(none, Err(CliError::NotFound(_))), "{none:?}");

    cluster
        .text(&["security", "gateway", "add", "api-handler"])
        .await;
    let added: Gateway =
        serde_json::from_value(cluster.stored("gateways", "api-handler").unwrap()).unwrap();
    assert_eq!(added.spec.session, "api-handler");
    assert_eq!(
        added.spec.trust_level,
        wopr_operator::api::TrustLevel::Untrusted,
        "at the session's level (api-handler is untrusted), not the default"
    );
    assert!(
        added.spec.forward_rules.is_empty(),
        "a new gateway forwards nothing"
    );
    let ghost = cluster.run(&["security", "gateway", "add", "ghost"]).await;
    assert!(matches!(ghost, Err(CliError::NotFound(_))), "{ghost:?}");
}

#[tokio::test]
async fn queue_approve_and_deny_as_the_current_user() {
    let cluster = examples();
    authenticate_as_alice(&cluster.api);
    pending_request(&cluster.api, "01jdx3m4q7");
    pending_request(&cluster.api, "01jdx3m4q8");
    assert_snapshot!(
        "gateway_queue",
        cluster.text(&["security", "gateway", "queue"]).await
    );

    let approved = cluster
        .text(&[
            "security",
            "gateway",
            "approve",
            "01jdx3m4q7",
            "--reason",
            "checked the command",
        ])
        .await;
    assert_eq!(
        approved,
        "approvalrequest.wopr.dev/01jdx3m4q7 approved by alice\n"
    );
    let patch = cluster.api.take_requests().pop().unwrap();
    assert_eq!(
        patch.line(),
        format!("PATCH {}/status", path("approvalrequests", "01jdx3m4q7"))
    );
    let body = patch.body.unwrap();
    assert_eq!(body["status"]["decidedBy"], "alice");
    assert_eq!(body["status"]["decisionReason"], "checked the command");
    assert!(
        body["metadata"]["resourceVersion"].is_string(),
        "the patch is conditional: {body}"
    );
    let request: ApprovalRequest =
        serde_json::from_value(cluster.stored("approvalrequests", "01jdx3m4q7").unwrap()).unwrap();
    assert_eq!(request.status.unwrap().state, Some(ApprovalState::Approved));

    cluster
        .text(&["security", "gateway", "deny", "01jdx3m4q8"])
        .await;
    let denied: ApprovalRequest =
        serde_json::from_value(cluster.stored("approvalrequests", "01jdx3m4q8").unwrap()).unwrap();
    assert_eq!(denied.status.unwrap().state, Some(ApprovalState::Denied));

    let twice = cluster
        .run(&["security", "gateway", "deny", "01jdx3m4q7"])
        .await;
    assert!(
        matches!(twice, Err(CliError::Refused(ref m)) if m.contains("already Approved (decided by alice)")),
        "{twice:?}"
    );
    let unknown = cluster
        .run(&["security", "gateway", "approve", "nope"])
        .await;
    assert!(matches!(unknown, Err(CliError::NotFound(_))), "{unknown:?}");
    assert_eq!(
        cluster.text(&["security", "gateway", "queue"]).await,
        "No requests waiting in namespace team-a.\n"
    );
}

#[tokio::test]
async fn policy_set_applies_only_the_fields_given() {
    let cluster = examples();
    cluster
        .text(&[
            "security",
            "policy",
            "set",
            "research-agent",
            "--sandbox",
            "enabled",
            "--tools.deny",
            "exec_command,http_fetch",
        ])
        .await;
    let (_, body) = cluster.last_apply(&path("sessions", "research-agent"));
    assert_eq!(
        body["spec"],
        json!({"sandbox": {"enabled": true}, "tools": {"deny": ["exec_command", "http_fetch"]}})
    );

    cluster
        .text(&[
            "security",
            "policy",
            "set",
            "--trust-level",
            "semi-trusted",
            "--sandbox",
            "enabled",
            "--force-conflicts",
        ])
        .await;
    let (query, body) = cluster.last_apply(&path("securitypolicies", "default"));
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(
        body["spec"],
        json!({"trustLevels": {"semi-trusted": {"sandbox": {"enabled": true}}}})
    );

    let unknown_tool = usage(
        cluster
            .run(&[
                "security",
                "policy",
                "set",
                "research-agent",
                "--tools.allow",
                "rm_rf",
            ])
            .await,
    );
    assert!(
        unknown_tool.contains("\"rm_rf\" names no tool"),
        "{unknown_tool}"
    );
    cluster
        .text(&[
            "security",
            "policy",
            "set",
            "research-agent",
            "--tools.rules.http_fetch.allowHosts",
            "api.github.com,*.arxiv.org",
            "--tools.rules.exec_command.denyArgs",
            "-c",
            "--tools.rules.memory_write.paths",
            "",
        ])
        .await;
    let (_, body) = cluster.last_apply(&path("sessions", "research-agent"));
    assert_eq!(
        body["spec"],
        json!({"tools": {"rules": {
            "http_fetch": {"allowHosts": ["api.github.com", "*.arxiv.org"]},
            "exec_command": {"denyArgs": ["-c"]},
            "memory_write": {"paths": []},
        }}})
    );
    let url_as_host = usage(
        cluster
            .run(&[
                "security",
                "policy",
                "set",
                "research-agent",
                "--tools.rules.http_fetch.denyHosts",
                "https://evil.example/",
            ])
            .await,
    );
    assert!(
        url_as_host.contains("host entry \"https://evil.example/\""),
        "{url_as_host}"
    );
    let nothing = usage(
        cluster
            .run(&["security", "policy", "set", "research-agent"])
            .await,
    );
    assert!(nothing.contains("nothing to set"), "{nothing}");
    let ghost = cluster
        .run(&["security", "policy", "set", "ghost", "--sandbox", "enabled"])
        .await;
    assert!(matches!(ghost, Err(CliError::NotFound(_))), "{ghost:?}");
    assert!(
        cluster.stored("sessions", "ghost").is_none(),
        "apply must not create a session"
    );
}

#[tokio::test]
async fn sessions_create_list_and_set_provider() {
    let cluster = examples();
    cluster
        .text(&[
            "session",
            "create",
            "helper",
            "You help",
            "--trust-level",
            "semi-trusted",
            "--provider",
            "anthropic",
            "--model",
            "claude-sonnet-4-5",
        ])
        .await;
    let created: Session =
        serde_json::from_value(cluster.stored("sessions", "helper").unwrap()).unwrap();
    assert_eq!(created.spec.prompt.as_deref(), Some("You help"));
    assert_eq!(
        created.spec.provider.unwrap().model.as_deref(),
        Some("claude-sonnet-4-5")
    );
    let again = cluster
        .run(&[
            "session",
            "create",
            "helper",
            "You help",
            "--trust-level",
            "semi-trusted",
        ])
        .await;
    assert!(
        matches!(again, Err(CliError::Refused(ref m)) if m.contains("409")),
        "{again:?}"
    );

    // Without --trust-level: untrusted, the lowest, even when the policy
    // lets discovered peers in higher (that level is a peer's, not a
    // new session's).
    cluster
        .api
        .modify(&path("securitypolicies", "default"), |policy| {
            policy["spec"]["p2p"]["discoveryTrust"] = json!("trusted");
        });
    let shown = cluster
        .text(&[
            "session",
            "create",
            "plain",
            "You answer",
            "--provider",
            "openai",
        ])
        .await;
    assert_eq!(
        shown,
        "session.wopr.dev/plain created (untrusted, the default: pass --trust-level to choose)\n"
    );
    let plain: Session =
        serde_json::from_value(cluster.stored("sessions", "plain").unwrap()).unwrap();
    assert_eq!(
        plain.spec.trust_level,
        wopr_operator::api::TrustLevel::Untrusted
    );
    assert_eq!(plain.spec.provider.unwrap().name, "openai");
    cluster.api.remove(&path("sessions", "plain"));

    assert_snapshot!("session_list", cluster.text(&["session", "list"]).await);
    let sessions: Vec<Session> = items(cluster.json(&["session", "list", "-o", "json"]).await);
    assert_eq!(sessions.len(), 5);

    cluster
        .text(&[
            "session",
            "set-provider",
            "research-agent",
            "openai",
            "--model",
            "gpt-5",
            "--fallback",
            "anthropic:claude-sonnet-4-5,local",
        ])
        .await;
    let (_, body) = cluster.last_apply(&path("sessions", "research-agent"));
    assert_eq!(
        body["spec"],
        json!({"provider": {"name": "openai", "model": "gpt-5", "fallback": [
            {"name": "anthropic", "model": "claude-sonnet-4-5"}, {"name": "local"}]}})
    );
    let bad = usage(
        cluster
            .run(&[
                "session",
                "set-provider",
                "research-agent",
                "openai",
                "--fallback",
                ":x",
            ])
            .await,
    );
    assert!(bad.contains("PROVIDER:MODEL"), "{bad}");
}

#[tokio::test]
async fn config_set_maps_dotted_paths() {
    let cluster = examples();
    let policy = path("securitypolicies", "default");
    let gateway = path("gateways", "p2p-gateway");
    for (setting, value, at, spec) in [
        (
            "security.enforcement",
            "warn",
            &policy,
            json!({"enforcement": "warn"}),
        ),
        (
            "security.p2p.autoAccept",
            "true",
            &policy,
            json!({"p2p": {"autoAccept": true}}),
        ),
        (
            "security.p2p.discoveryTrust",
            "semi-trusted",
            &policy,
            json!({"p2p": {"discoveryTrust": "semi-trusted"}}),
        ),
        (
            "security.audit.retention",
            "2160h",
            &policy,
            json!({"audit": {"retention": "2160h"}}),
        ),
        (
            "security.audit.denialEvents",
            "false",
            &policy,
            json!({"audit": {"denialEvents": false}}),
        ),
        (
            "security.gateway.approvalTimeout.p2p-gateway",
            "10m",
            &gateway,
            json!({"approvalTimeout": "10m"}),
        ),
    ] {
        cluster.text(&["config", "set", setting, value]).await;
        let (_, body) = cluster.last_apply(at);
        assert_eq!(body["spec"], spec, "{setting}");
    }

    cluster
        .text(&[
            "config",
            "set",
            "security.gateway.forwardRules.p2p-gateway.1.rateLimit",
            "3",
        ])
        .await;
    let (_, body) = cluster.last_apply(&path("gateways", "p2p-gateway"));
    let rules = &body["spec"]["forwardRules"];
    assert_eq!(rules[1]["rateLimit"], json!({"perMinute": 3}));
    assert_eq!(
        rules[0]["rateLimit"],
        json!({"perMinute": 20}),
        "the other rule is kept"
    );

    // The WOPR config's own forms: lists as JSON arrays, the rate limit's
    // field by its nested name.
    for (field, value, expected) in [
        (
            "1.allowForwardTo",
            r#"["code-executor", "research-agent"]"#,
            json!({"allowForwardTo": ["code-executor", "research-agent"]}),
        ),
        (
            "1.allowForwardTo",
            "code-executor,api-handler",
            json!({"allowForwardTo": ["code-executor", "api-handler"]}),
        ),
        (
            "1.allowActions",
            r#"["execute","explain"]"#,
            json!({"allowActions": ["execute", "explain"]}),
        ),
        (
            "1.rateLimit.perMinute",
            "7",
            json!({"rateLimit": {"perMinute": 7}}),
        ),
    ] {
        cluster
            .text(&[
                "config",
                "set",
                &format!("security.gateway.forwardRules.p2p-gateway.{field}"),
                value,
            ])
            .await;
        let (_, body) = cluster.last_apply(&path("gateways", "p2p-gateway"));
        let rule = &body["spec"]["forwardRules"][1];
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(&rule[key], value, "{field} {value}");
        }
    }
    // Values that do not parse are errors that say so; nothing is sent.
    for (field, value, message) in [
        (
            "1.allowForwardTo",
            r#"["internal-processor""#,
            "is not a JSON array of strings",
        ),
        (
            "1.allowForwardTo",
            r#"[{"session": "a"}]"#,
            "is not a JSON array of strings",
        ),
        (
            "1.allowForwardTo",
            r#""internal-processor""#,
            "is not a session name (or *)",
        ),
        (
            "1.allowForwardTo",
            "[]",
            "a list of at least one session (or *)",
        ),
        (
            "1.allowForwardTo",
            "",
            "a list of at least one session (or *)",
        ),
        (
            "1.allowActions",
            "look up",
            "\"look up\" is not an action name",
        ),
        (
            "1.rateLimit.perMinute",
            "0",
            "not a number of forwards per minute",
        ),
        (
            "1.rateLimit.perMinute",
            "ten",
            "not a number of forwards per minute",
        ),
        (
            "1.rateLimit.perMinute",
            "{\"perMinute\": 10}",
            "not a number of forwards per minute",
        ),
        ("1.requireApproval", "yes", "is not true or false"),
    ] {
        let refused = usage(
            cluster
                .run(&[
                    "config",
                    "set",
                    &format!("security.gateway.forwardRules.p2p-gateway.{field}"),
                    value,
                ])
                .await,
        );
        assert!(refused.contains(message), "{field} {value:?}: {refused}");
        assert!(
            refused.starts_with("security.gateway.forwardRules.p2p-gateway.1."),
            "{refused}"
        );
    }
    assert!(
        cluster
            .api
            .take_requests()
            .iter()
            .all(|r| r.method == http::Method::GET)
    );
    for unknown in [
        "1.rateLimit.perHour",
        "1.rateLimit.perMinute.x",
        "x.rateLimit",
    ] {
        let refused = usage(
            cluster
                .run(&[
                    "config",
                    "set",
                    &format!("security.gateway.forwardRules.p2p-gateway.{unknown}"),
                    "1",
                ])
                .await,
        );
        assert!(
            refused.starts_with("unknown config path"),
            "{unknown}: {refused}"
        );
    }

    let ambiguous = usage(
        cluster
            .run(&[
                "config",
                "set",
                "security.gateway.forwardRules.p2p-gateway.requireApproval",
                "true",
            ])
            .await,
    );
    assert!(ambiguous.contains("has 2 rules"), "{ambiguous}");
    let unknown = usage(
        cluster
            .run(&["config", "set", "security.sandbox.enabled", "false"])
            .await,
    );
    assert!(
        unknown.starts_with(
            "unknown config path \"security.sandbox.enabled\"; valid paths: security.enforcement"
        ),
        "{unknown}"
    );
    let bad_value = usage(
        cluster
            .run(&["config", "set", "security.enforcement", "off"])
            .await,
    );
    assert!(bad_value.contains("not warn or enforce"), "{bad_value}");
    let no_gateway = cluster
        .run(&[
            "config",
            "set",
            "security.gateway.forwardRules.ghost.allowActions",
            "x",
        ])
        .await;
    assert!(
        matches!(no_gateway, Err(CliError::NotFound(_))),
        "{no_gateway:?}"
    );
}

#[tokio::test]
async fn verify_passes_on_the_examples_and_names_what_fails() {
    let cluster = examples();
    let shown = cluster.run(&["security", "verify"]).await.unwrap();
    assert!(shown.failed_checks.is_empty(), "{}", shown.text);
    assert_snapshot!("verify_examples", shown.text);

    // Weakened: peers auto-accepted, a rule to anyone without a rate limit,
    // warn mode, and a semi-trusted session whose sandbox is off.
    cluster
        .api
        .modify(&path("securitypolicies", "default"), |policy| {
            policy["spec"]["p2p"]["autoAccept"] = json!(true);
            policy["spec"]["enforcement"] = json!("warn");
        });
    cluster
        .api
        .modify(&path("gateways", "p2p-gateway"), |gateway| {
            gateway["spec"]["forwardRules"][0]["allowForwardTo"] = json!(["*"]);
            gateway["spec"]["forwardRules"][0]
                .as_object_mut()
                .unwrap()
                .remove("rateLimit");
        });
    cluster.api.modify(&path("sessions", "research-agent"), |session| {
        session["status"] = json!({"effective": {"trustLevel": "semi-trusted", "capabilities": [],
            "tools": [], "sandbox": false, "network": "restricted"}});
    });
    // And the grants' escalation policy unbound.
    cluster.api.remove(&format!(
        "{ADMISSION}/validatingadmissionpolicybindings/wopr-escalation-grants"
    ));
    // And its fallback provider's key gone, and api-handler asking for a
    // model its level does not allow.
    cluster.api.modify(
        &format!("/api/v1/namespaces/{NAMESPACE}/secrets/model-keys"),
        |secret| {
            secret["data"].as_object_mut().unwrap().remove("openai");
        },
    );
    cluster
        .api
        .modify(&path("sessions", "api-handler"), |session| {
            session["spec"]["provider"]["model"] = json!("claude-opus-4");
        });
    // And its pod built by a controller serving plaintext.
    cluster.api.insert(
        &format!("/api/v1/namespaces/{NAMESPACE}/pods/wopr-research-agent"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "wopr-research-agent", "namespace": NAMESPACE},
               "spec": {"containers": [{"name": "agent"}],
                        "initContainers": [{"name": "a2a", "env": [
                            {"name": "WOPR_CONTROL_PLANE_ADDRESS", "value": "http://wopr-operator.wopr-system.svc:9443"},
                            {"name": "WOPR_INSECURE_PLAINTEXT", "value": "true"}]}]}}),
    );
    let shown = cluster.run(&["security", "verify"]).await.unwrap();
    assert_eq!(
        shown.failed_checks,
        [
            "escalation-guarded",
            "auto-accept-off",
            "sandbox-below-trusted",
            "rate-limits-set",
            "forward-rules-not-wildcard",
            "enforce-mode",
            "providers-resolve",
            "control-plane-tls"
        ]
    );
    assert_snapshot!("verify_weakened", shown.text);
}

/// Someone whose RBAC may not read the escalation policies gets what the
/// operator reports on the namespace's SecurityPolicy, and without a report
/// the check fails, saying why.
#[tokio::test]
async fn verify_falls_back_to_what_the_operator_reports() {
    let cluster = examples();
    cluster.api.refuse(
        &format!("{ADMISSION}/validatingadmissionpolicies"),
        StatusCode::FORBIDDEN,
        "validatingadmissionpolicies.admissionregistration.k8s.io is forbidden: User \"alice\" cannot get resource",
    );
    let unknown = cluster.run(&["security", "verify"]).await.unwrap();
    assert_eq!(unknown.failed_checks, ["escalation-guarded"]);
    assert!(
        unknown
            .text
            .contains("cannot tell whether trust-level escalation is refused at admission"),
        "{}",
        unknown.text
    );
    for (status, failed) in [("True", false), ("False", true)] {
        cluster.api.modify(&path("securitypolicies", "default"), |policy| {
            policy["status"] = json!({"conditions": [{"type": "EscalationGuarded", "status": status,
                "reason": "Guarded", "message": "the operator's word",
                "lastTransitionTime": "2026-11-29T12:00:00Z"}]});
        });
        let reported = cluster.run(&["security", "verify"]).await.unwrap();
        assert_eq!(
            reported
                .failed_checks
                .contains(&"escalation-guarded".to_owned()),
            failed
        );
        assert!(
            reported
                .text
                .contains("as the operator reports it: the operator's word"),
            "{}",
            reported.text
        );
    }
}

/// A Session whose trust level no version of the API knows fails the first
/// check by name, and the other checks still run on the rest.
#[tokio::test]
async fn verify_names_a_session_without_a_valid_trust_level() {
    let cluster = examples();
    cluster.api.insert(
        &path("sessions", "rogue"),
        json!({"apiVersion": "wopr.dev/v1alpha1", "kind": "Session",
               "metadata": {"name": "rogue", "namespace": NAMESPACE},
               "spec": {"trustLevel": "root"}}),
    );
    let shown = cluster.run(&["security", "verify"]).await.unwrap();
    assert_eq!(shown.failed_checks, ["sessions-have-trust-level"]);
    assert!(
        shown.text.contains("session rogue has no valid trustLevel"),
        "{}",
        shown.text
    );
}

mod with_control_plane {
    use common::sidecar::{ControlPlane, READER};
    use common::store::event;
    use wopr_operator::api::{Capability, TrustLevel};
    use wopr_operator::audit::AuditEvent;
    use wopr_operator::policy::Outcome;

    use super::*;

    async fn control_plane(cluster: &mut Cluster) -> ControlPlane {
        let plane = ControlPlane::start(&[]).await;
        cluster.context.control_plane = ControlPlaneAddress::with_token(
            plane.address.to_string().as_str(),
            common::tls::client_tls(),
            Some(READER),
        );
        plane
    }

    /// A `model_call` event of `session` at `seconds` from the CLI's now.
    fn model_call(
        now: Timestamp,
        session: &str,
        decision: Outcome,
        seconds: i64,
        tokens: (u64, u64),
    ) -> AuditEvent {
        AuditEvent {
            time: now + k8s_openapi::jiff::SignedDuration::from_secs(seconds),
            event_type: wopr_operator::audit::EventType::ModelCall,
            model: Some(wopr_operator::audit::ModelCall {
                provider: "anthropic".into(),
                model: "claude-3-5-haiku".into(),
                input_tokens: tokens.0,
                output_tokens: tokens.1,
                ..Default::default()
            }),
            ..event(NAMESPACE, session, decision, seconds)
        }
    }

    /// `session usage` sums the tokens of today's model calls (UTC), and of
    /// the last minute, against the budgets of the session's level; refused
    /// calls count as calls, not tokens. `audit --type model_call` lists
    /// the same events.
    #[tokio::test]
    async fn session_usage_sums_todays_model_calls_against_the_budgets() {
        let mut cluster = examples();
        let plane = control_plane(&mut cluster).await;
        // The CLI's now is 12:00 UTC.
        let now = cluster.context.now;
        let events = vec![
            model_call(now, "research-agent", Outcome::Allowed, -30, (100, 50)),
            model_call(now, "research-agent", Outcome::Allowed, -3_600, (1_000, 0)),
            model_call(now, "research-agent", Outcome::Denied, -10, (0, 0)),
            // Yesterday (UTC): not today's.
            model_call(
                now,
                "research-agent",
                Outcome::Allowed,
                -13 * 3_600,
                (7_000, 0),
            ),
            // Another session's.
            model_call(now, "code-executor", Outcome::Allowed, -5, (9, 9)),
            event(NAMESPACE, "research-agent", Outcome::Allowed, -20),
        ];
        plane.store.insert_events(&events).await.unwrap();

        let shown = cluster
            .run(&["session", "usage", "research-agent", "-o", "json"])
            .await
            .unwrap();
        assert_eq!(
            shown.data["items"],
            json!([{"session": "research-agent", "calls": 3,
                    "minuteTokens": 150, "tokensPerMinute": 20000,
                    "dayTokens": 1150, "tokensPerDay": 200000,
                    "dayResetsAt": "2026-11-30T00:00:00Z"}])
        );
        let table = cluster.text(&["session", "usage"]).await;
        assert!(table.contains("150/20000"), "{table}");
        assert!(table.contains("code-executor"), "{table}");

        let listed = cluster
            .run(&[
                "security",
                "audit",
                "--type",
                "model_call",
                "--session",
                "research-agent",
                "-o",
                "json",
            ])
            .await
            .unwrap();
        assert_eq!(listed.data["items"].as_array().unwrap().len(), 4);
        let unknown = Cli::try_parse_from(["kubectl-wopr", "security", "audit", "--type", "model"])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("use tool_call"), "{unknown}");
    }

    #[tokio::test]
    async fn audit_queries_the_trail_as_the_reader() {
        let mut cluster = examples();
        let plane = control_plane(&mut cluster).await;
        let mut events: Vec<AuditEvent> = (0..30)
            .map(|n| {
                event(
                    NAMESPACE,
                    if n % 2 == 0 {
                        "research-agent"
                    } else {
                        "code-executor"
                    },
                    if n % 3 == 0 {
                        Outcome::Denied
                    } else {
                        Outcome::Allowed
                    },
                    n,
                )
            })
            .collect();
        events[27].capability = Some(Capability::InjectExec);
        plane.store.insert_events(&events).await.unwrap();

        let table = cluster
            .text(&[
                "security",
                "audit",
                "--denied",
                "--last",
                "3",
                "--session",
                "research-agent",
            ])
            .await;
        assert_snapshot!("audit_denied", table);
        let read: Vec<AuditEvent> = items(
            cluster
                .json(&["security", "audit", "--last", "1000", "--format", "json"])
                .await,
        );
        assert_eq!(read.len(), 30);
        assert_eq!(read[0], events[29], "newest first, as stored");
        let exec: Vec<AuditEvent> = items(
            cluster
                .json(&[
                    "security",
                    "audit",
                    "--capability",
                    "inject.exec",
                    "-o",
                    "json",
                ])
                .await,
        );
        assert_eq!(exec, vec![events[27].clone()]);
        let recent: Vec<AuditEvent> = items(
            cluster
                .json(&[
                    "security",
                    "audit",
                    "--since",
                    "2026-11-24T12:00:25Z",
                    "-o",
                    "json",
                ])
                .await,
        );
        assert_eq!(recent.len(), 5);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.json");
        let written = cluster
            .text(&[
                "security",
                "audit",
                "--format",
                "json",
                "--output",
                file.to_str().unwrap(),
            ])
            .await;
        assert_eq!(written, format!("30 written to {}\n", file.display()));
        let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(items::<AuditEvent>(saved).len(), 30);

        // Another namespace's reader is refused by the control plane.
        cluster.context.namespace = "elsewhere".into();
        let refused = cluster.run(&["security", "audit"]).await;
        assert!(
            matches!(refused, Err(CliError::Refused(ref m)) if m.contains("wopr-audit-reader")),
            "{refused:?}"
        );
        drop(plane);
    }

    #[tokio::test]
    async fn inject_sends_as_the_user_whom_rbac_allows() {
        let mut cluster = examples();
        let mut plane = control_plane(&mut cluster).await;
        put_example_sessions(&mut plane);
        let sent = cluster
            .run(&[
                "session",
                "inject",
                "research-agent",
                "Summarize today's papers",
            ])
            .await
            .unwrap();
        let queued = queued_for_research_agent(&plane).await;
        assert_eq!(queued.len(), 1);
        let message = &queued[0].message;
        assert_eq!(message.payload, json!({"text": "Summarize today's papers"}));
        assert_eq!(
            (
                message.source.source_type.as_str(),
                message.source.identity.as_str()
            ),
            ("person", "alice")
        );
        assert_eq!(sent.data["messageId"], json!(message.id));
        let audited: Vec<AuditEvent> = common::store::all_events(&plane.store).await;
        assert_eq!(audited[0].id, sent.data["auditId"].as_str().unwrap());
        assert_eq!(audited[0].action.as_deref(), Some("session_inject"));
        assert_eq!(audited[0].decision, Outcome::Allowed);

        let unknown = cluster.run(&["session", "inject", "ghost", "hi"]).await;
        assert!(
            matches!(unknown, Err(CliError::NotFound(ref m)) if m.contains("no session ghost")),
            "{unknown:?}"
        );
        // Mallory's RBAC allows her another namespace only: refused, and audited.
        cluster.context.control_plane = ControlPlaneAddress::with_token(
            plane.address.to_string().as_str(),
            common::tls::client_tls(),
            Some(common::sidecar::OUTSIDER),
        );
        let refused = cluster
            .run(&["session", "inject", "research-agent", "hi"])
            .await;
        assert!(
            matches!(refused, Err(CliError::Refused(ref m)) if m.contains("wopr-session-injector")),
            "{refused:?}"
        );
        let newest = &common::store::all_events(&plane.store).await[0];
        assert_eq!(
            (newest.source.identity.as_str(), newest.decision),
            ("mallory", Outcome::Denied)
        );
        assert_eq!(
            plane
                .store
                .pending_messages(NAMESPACE, "research-agent", 0, 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    /// `security invite create` prints an invite signed by the namespace's
    /// ingress key for whoever RBAC lets write the Grant its claim makes,
    /// and records who invited whom; anyone else is refused, naming the
    /// roles to bind, and nothing is signed.
    #[tokio::test]
    async fn invite_create_signs_for_whoever_may_write_its_grant() {
        use std::sync::Arc;
        use wopr_operator::controlplane::peers::{IngressKeys, MemoryIngressKeys};
        use wopr_operator::controlplane::{PeerKeys, Settings};
        use wopr_operator::p2p::{IngressKey, invite};

        let keys = Arc::new(MemoryIngressKeys::default());
        let settings = Settings {
            peer_keys: Some(PeerKeys(keys.clone())),
            ..Settings::default()
        };
        let plane = ControlPlane::start_with(&[], settings).await;
        let mut cluster = examples();
        let as_token = |cluster: &mut Cluster, token: &str| {
            cluster.context.control_plane = ControlPlaneAddress::with_token(
                plane.address.to_string().as_str(),
                common::tls::client_tls(),
                Some(token),
            );
        };
        as_token(&mut cluster, READER);
        let peer = IngressKey::generate().public_key();
        let invite_args = |capability: &'static str| {
            vec![
                "security",
                "invite",
                "create",
                "--peer",
                peer.as_str(),
                "--session",
                "p2p-gateway",
                "--cap",
                capability,
                "--expires",
                "48h",
            ]
        };

        let shown = cluster.run(&invite_args("inject")).await.unwrap();
        let token = shown.data["token"].as_str().unwrap();
        assert!(
            shown.text.starts_with(&format!("{token}\n")),
            "{}",
            shown.text
        );
        let parsed = invite::parse(token).unwrap();
        let ingress = keys.key(NAMESPACE).await.unwrap().public_key();
        assert_eq!(parsed.issuer, ingress);
        assert_eq!(shown.data["ingressKeyId"], json!(ingress.short_id()));
        assert_eq!(parsed.subject, peer);
        assert_eq!(parsed.sessions, [format!("{NAMESPACE}/p2p-gateway")]);
        assert_eq!(parsed.capabilities, ["inject"]);
        let lifetime = parsed.expires_ms - Timestamp::now().as_millisecond();
        assert!(
            (47 * 3_600_000..=48 * 3_600_000).contains(&lifetime),
            "{lifetime} ms"
        );
        let recorded = &common::store::all_events(&plane.store).await[0];
        assert_eq!(recorded.source.identity, "alice");
        assert!(
            recorded
                .reason
                .contains(&format!("alice invited peer {}", peer.short_id())),
            "{}",
            recorded.reason
        );

        // Alice may confer semi-trusted, not trusted: a2a.call is refused.
        let above = cluster.run(&invite_args("a2a.call")).await;
        assert!(
            matches!(above, Err(CliError::Refused(ref m)) if m.contains("wopr-trust-trusted")),
            "{above:?}"
        );
        // Mallory may write Grants in another namespace only.
        as_token(&mut cluster, common::sidecar::OUTSIDER);
        let elsewhere = cluster.run(&invite_args("inject")).await;
        assert!(
            matches!(elsewhere, Err(CliError::Refused(ref m))
                if m.contains("mallory") && m.contains(&format!("namespace {NAMESPACE}"))),
            "{elsewhere:?}"
        );
        // A sidecar's token is no person's: refused.
        as_token(&mut cluster, "not-a-token");
        let unknown = cluster.run(&invite_args("inject")).await;
        assert!(matches!(unknown, Err(CliError::Refused(_))), "{unknown:?}");
        // Bad input, precisely, before anything is asked of RBAC.
        as_token(&mut cluster, READER);
        let mut bad_key = invite_args("inject");
        bad_key[4] = "not-a-key";
        let refused = cluster.run(&bad_key).await;
        assert!(
            matches!(refused, Err(CliError::Usage(ref m)) if m.contains("peer_key")),
            "{refused:?}"
        );
        let mut too_long = invite_args("inject");
        too_long[10] = "1000h";
        let refused = cluster.run(&too_long).await;
        assert!(
            matches!(refused, Err(CliError::Usage(ref m)) if m.contains("720 h at most")),
            "{refused:?}"
        );
        let everything = cluster.run(&invite_args("*")).await;
        assert!(
            matches!(everything, Err(CliError::Usage(ref m)) if m.contains("never *")),
            "{everything:?}"
        );
        // Only Alice's one invite was recorded.
        let invited = common::store::all_events(&plane.store)
            .await
            .into_iter()
            .filter(|event| event.reason.contains("invited peer"))
            .count();
        assert_eq!(invited, 1);
    }

    /// A workload's message arrives as its Grant says, through the
    /// session's access list; without a Grant in scope, not at all.
    #[tokio::test]
    async fn a_workload_sends_as_its_grant_says() {
        let mut cluster = examples();
        let mut plane = control_plane(&mut cluster).await;
        cluster.context.control_plane = ControlPlaneAddress::with_token(
            plane.address.to_string().as_str(),
            common::tls::client_tls(),
            Some(common::sidecar::WORKLOAD),
        );
        put_example_sessions(&mut plane);
        let inject = || {
            cluster.run(&[
                "session",
                "inject",
                "research-agent",
                "run the nightly report",
            ])
        };
        let refused = |result: Result<cli::Shown, CliError>, why: &str| match result {
            Err(CliError::Refused(message)) => assert!(message.contains(why), "{message}"),
            other => panic!("expected a refusal ({why}), got {other:?}"),
        };
        refused(
            inject().await,
            "no Grant gives serviceaccount ci/task-bot standing towards session research-agent",
        );

        // The CLI writes the Grant; an untrusted workload is not in
        // research-agent's access list (trust:trusted, session:p2p-gateway).
        cluster
            .text(&[
                "security",
                "grant",
                "serviceaccount:ci/task-bot",
                "--profile",
                "untrusted",
                "--sessions",
                "research-agent",
            ])
            .await;
        let stored = cluster.api.take_requests().pop().unwrap().body.unwrap();
        let mut grant: Grant = serde_json::from_value(stored).unwrap();
        assert_eq!(
            grant.spec.subject.service_account.as_ref().unwrap().name,
            "task-bot"
        );
        grant.metadata.namespace = Some(NAMESPACE.into());
        plane.put_grant(grant.clone());
        refused(
            inject().await,
            "does not take messages from serviceaccount ci/task-bot",
        );

        grant.spec.profile = Some(wopr_operator::api::TrustLevel::Trusted);
        plane.put_grant(grant);
        let sent = inject().await.unwrap();
        let queued = queued_for_research_agent(&plane).await;
        assert_eq!(queued.len(), 1);
        let source = &queued[0].message.source;
        assert_eq!(
            (
                source.source_type.as_str(),
                source.identity.as_str(),
                source.trust_level
            ),
            (
                "serviceaccount",
                "ci/task-bot",
                wopr_operator::api::TrustLevel::Trusted
            )
        );
        let audited = common::store::all_events(&plane.store).await;
        assert_eq!(audited[0].id, sent.data["auditId"].as_str().unwrap());
        let refusals = audited
            .iter()
            .filter(|event| event.decision == Outcome::Denied)
            .count();
        assert_eq!(refusals, 2, "each refusal is audited");
    }

    /// What `audit --follow` writes, shared with the test, and how many
    /// times it flushed (once per page it asked for).
    #[derive(Clone, Default)]
    struct Followed(std::sync::Arc<std::sync::Mutex<(Vec<u8>, usize)>>);

    impl std::io::Write for Followed {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().0.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.0.lock().unwrap().1 += 1;
            Ok(())
        }
    }

    impl Followed {
        fn flushes(&self) -> usize {
            self.0.lock().unwrap().1
        }

        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().0.clone()).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    /// `audit --follow` prints the events stored after it started, in the
    /// order they were stored (a late one, with an older time, where it
    /// arrived), with the filters applied, until stopped.
    #[tokio::test]
    async fn audit_follow_prints_events_as_they_are_stored() {
        let mut cluster = examples();
        let plane = control_plane(&mut cluster).await;
        let before: Vec<AuditEvent> = (0..3)
            .map(|n| event(NAMESPACE, "research-agent", Outcome::Denied, n))
            .collect();
        plane.store.insert_events(&before).await.unwrap();
        use wopr_operator::cli::args::SecurityCommand;
        let cli::Command::Security(SecurityCommand::Audit(args)) =
            parse(&["security", "audit", "--follow", "--denied", "-o", "json"]).command
        else {
            panic!("not security audit");
        };
        let out = Followed::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut writer = out.clone();
        let following = cli::follow(&cluster.context, &args, &mut writer, async {
            let _ = stopped.await;
        });
        let store = plane.store.clone();
        let watcher = out.clone();
        let driver = async move {
            // Its first page read the head: what is stored now is new.
            while watcher.flushes() == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let mut stored = Vec::new();
            for round in 0..3i64 {
                let events = vec![
                    event(NAMESPACE, "code-executor", Outcome::Denied, 100 + round),
                    event(NAMESPACE, "code-executor", Outcome::Allowed, 100 + round),
                    // Shipped late: older than everything before it.
                    event(NAMESPACE, "research-agent", Outcome::Denied, -50 - round),
                ];
                store.insert_events(&events).await.unwrap();
                stored.extend(events.into_iter().filter(|e| e.decision == Outcome::Denied));
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            for _ in 0..200 {
                if watcher.lines().len() >= stored.len() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            stop.send(()).unwrap();
            stored
        };
        let (followed, stored) = tokio::join!(following, driver);
        followed.unwrap();
        let printed: Vec<AuditEvent> = out
            .lines()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            printed, stored,
            "the denials stored after it started, in storage order"
        );
        let command = parse(&["security", "audit", "--follow", "-o", "json"]).command;
        assert_eq!(
            cli::format_of(&command),
            Format::Table,
            "nothing is printed after the followed lines"
        );
    }

    /// `audit --verify` names the first event that breaks the chain, as a
    /// failed check (exit 5).
    #[tokio::test]
    async fn audit_verify_finds_an_edited_event() {
        let mut cluster = examples();
        let plane = control_plane(&mut cluster).await;
        let events: Vec<AuditEvent> = (0..5)
            .map(|n| event(NAMESPACE, "research-agent", Outcome::Denied, n))
            .collect();
        plane.store.insert_events(&events).await.unwrap();
        let intact = cluster
            .run(&["security", "audit", "--verify"])
            .await
            .unwrap();
        assert_eq!(
            intact.text,
            "The audit trail of namespace team-a is intact: 5 events.\n"
        );
        assert!(intact.failed_checks.is_empty());

        // A denial rewritten, in the database, past the store.
        common::store::tamper(
            &plane.store_url,
            &format!(
                "UPDATE audit_events SET event = REPLACE(event, 'event at 2 s', 'nothing happened') WHERE id = '{}'",
                events[2].id
            ),
        )
        .await;
        let broken = cluster
            .run(&["security", "audit", "--verify"])
            .await
            .unwrap();
        assert!(
            broken.text.starts_with(&format!(
                "The audit trail of namespace team-a is broken at event {}",
                events[2].id
            )),
            "{}",
            broken.text
        );
        assert_eq!(broken.failed_checks, ["audit-chain-intact"]);
    }

    /// `audit --verify` says how many events retention deleted, and when
    /// the last of them was from.
    #[tokio::test]
    async fn audit_verify_says_what_retention_deleted() {
        let mut cluster = examples();
        let plane = control_plane(&mut cluster).await;
        let events: Vec<AuditEvent> = (0..5)
            .map(|n| event(NAMESPACE, "research-agent", Outcome::Denied, n))
            .collect();
        plane.store.insert_events(&events).await.unwrap();
        let prune = wopr_operator::store::Prune {
            older_than: events[2].time,
            max_per_namespace: 1_000,
            keep_since: Timestamp::MAX,
        };
        assert_eq!(plane.store.prune_events(prune).await.unwrap(), 2);
        let shown = cluster
            .run(&["security", "audit", "--verify"])
            .await
            .unwrap();
        assert_eq!(
            shown.text,
            "The audit trail of namespace team-a is intact: 3 events. Retention deleted the 2 events before them, the last from 2026-11-24T12:00:01Z.\n"
        );
        assert_eq!(
            (&shown.data["prunedEvents"], &shown.data["lastPrunedTime"]),
            (&json!(2), &json!("2026-11-24T12:00:01Z"))
        );
        assert!(shown.failed_checks.is_empty());
    }

    /// Without `--control-plane` and no controller pod to port-forward to,
    /// the error says where it looked and what to pass instead; without a
    /// token, what to pass for one.
    #[tokio::test]
    async fn audit_without_a_control_plane_or_a_token_says_what_to_pass() {
        let cluster = examples();
        let missing = cluster.run(&["security", "audit"]).await;
        let Err(CliError::Unreachable(missing)) = missing else {
            panic!("{missing:?}");
        };
        assert!(
            missing.contains("in namespace wopr-system")
                && missing.contains("--operator-namespace")
                && missing.contains("--control-plane"),
            "{missing}"
        );
        let mut cluster = examples();
        cluster.context.control_plane =
            ControlPlaneAddress::with_token("127.0.0.1:1", common::tls::client_tls(), None);
        let no_token = usage(cluster.run(&["security", "audit"]).await);
        assert!(no_token.contains("--token"), "{no_token}");
        cluster.context.control_plane =
            ControlPlaneAddress::with_token("127.0.0.1:1", common::tls::client_tls(), Some(READER));
        let down = cluster.run(&["security", "audit"]).await;
        assert!(matches!(down, Err(CliError::Unreachable(_))), "{down:?}");
    }

    /// Every command line of the seed in `tests/fixtures/seed-commands.txt`,
    /// parsed by the real command line and run in order against the mock
    /// API server and a real control plane, works as printed: what each
    /// prints is pinned, and what the seed's forms mean is checked on the
    /// objects written.
    #[tokio::test]
    async fn seed_commands_work_as_printed() {
        let mut cluster = examples();
        let plane = control_plane(&mut cluster).await;
        // The sessions the seed's lines name without creating them.
        for name in [
            "gateway-session",
            "researcher-agent",
            "code-agent",
            "review-agent",
            "external-gateway",
        ] {
            cluster.api.insert(
                &path("sessions", name),
                json!({"apiVersion": "wopr.dev/v1alpha1", "kind": "Session",
                       "metadata": {"name": name, "namespace": NAMESPACE,
                                    "creationTimestamp": "2026-11-24T12:00:00Z"},
                       "spec": {"trustLevel": "untrusted"}}),
            );
        }
        // Denials older than a week, within it, and an allowed event.
        let mut events = vec![
            event(NAMESPACE, "code-agent", Outcome::Denied, -3 * 86_400),
            event(NAMESPACE, "researcher-agent", Outcome::Denied, 10),
            event(NAMESPACE, "researcher-agent", Outcome::Allowed, 20),
            event(NAMESPACE, "code-agent", Outcome::Denied, 30),
        ];
        events[3].capability = Some(Capability::InjectExec);
        plane.store.insert_events(&events).await.unwrap();

        let key = "MCowBQYDK2VwAyEAq1Jm4kTXJ6lf9bSVVuH0bWv0Fh3fAfZFNrgR0hA1HOU=";
        let fixture = std::fs::read_to_string("tests/fixtures/seed-commands.txt").unwrap();
        let mut transcript = String::new();
        for line in fixture
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let printed = line
                .strip_prefix("wopr ")
                .unwrap_or_else(|| panic!("{line}"));
            let filled = printed
                .replace("<peer-key>", key)
                .replace("<session>", "gateway-session");
            let args = words(&filled);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let shown = cluster
                .run(&args)
                .await
                .unwrap_or_else(|error| panic!("{line}: {error}"));
            transcript.push_str(&format!("$ kubectl wopr {printed}\n{}\n", shown.text));
        }
        assert_snapshot!("seed_commands", transcript);

        // What the seed's forms mean, on the objects written.
        let grant = |name: &str| -> Grant {
            serde_json::from_value(cluster.stored("grants", name).unwrap()).unwrap()
        };
        let researcher = grant("session-researcher-agent");
        assert_eq!(
            researcher.spec.subject,
            wopr_operator::api::GrantSubject::session("researcher-agent")
        );
        assert_eq!(
            researcher.spec.capabilities,
            [
                Capability::Inject,
                Capability::InjectTools,
                Capability::InjectNetwork
            ]
        );
        assert_eq!(
            grant("session-review-agent").spec.capabilities,
            [Capability::Inject]
        );
        let sandboxed: Session =
            serde_json::from_value(cluster.stored("sessions", "sandbox-agent").unwrap()).unwrap();
        assert_eq!(sandboxed.spec.trust_level, TrustLevel::Untrusted);
        assert_eq!(
            sandboxed.spec.prompt.as_deref(),
            Some("You are a sandboxed assistant")
        );
        assert_eq!(sandboxed.spec.provider.unwrap().name, "openai");
        let gateway: Gateway =
            serde_json::from_value(cluster.stored("gateways", "external-gateway").unwrap())
                .unwrap();
        let rule = &gateway.spec.forward_rules[0];
        assert_eq!(rule.allow_forward_to, ["internal-processor"]);
        assert_eq!(rule.rate_limit.as_ref().unwrap().per_minute, 10);
        let since: Vec<AuditEvent> = items(
            cluster
                .json(&[
                    "security",
                    "audit",
                    "--denied",
                    "--since",
                    "1 week ago",
                    "-o",
                    "json",
                ])
                .await,
        );
        assert_eq!(
            since,
            [events[3].clone(), events[1].clone()],
            "the denials of the last week, newest first"
        );
        drop(plane);
    }

    #[tokio::test]
    async fn stale_grants_are_expired_or_unused() {
        let cluster = examples();
        cluster
            .api
            .modify(&path("grants", "p2p-gateway-forwarding"), |grant| {
                grant["status"] = json!({"state": "Active", "lastUsedAt": "2026-11-29T11:00:00Z"});
            });
        cluster.api.modify(&path("grants", "peer-alice"), |grant| {
            grant["spec"]["expiresAt"] = json!("2026-11-28T00:00:00Z");
            grant["status"] = json!({"state": "Expired"});
        });
        let table = cluster
            .text(&["security", "audit", "--stale-grants", "--stale-days", "3"])
            .await;
        assert_snapshot!("stale_grants", table);

        // A grant created 5 days ago counts by its recorded use, not its age:
        // used an hour ago it is not stale (above); last used 4 days ago it is.
        cluster
            .api
            .modify(&path("grants", "p2p-gateway-forwarding"), |grant| {
                grant["status"]["lastUsedAt"] = json!("2026-11-25T12:00:00Z");
            });
        let table = cluster
            .text(&["security", "audit", "--stale-grants", "--stale-days", "3"])
            .await;
        let line = table
            .lines()
            .find(|line| line.starts_with("p2p-gateway-forwarding"))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(line.ends_with("last used 4d ago"), "{line}");
        let fresh = cluster
            .text(&["security", "audit", "--stale-grants", "--stale-days", "5"])
            .await;
        assert!(!fresh.contains("p2p-gateway-forwarding"), "{fresh}");
    }

    #[tokio::test]
    async fn migrate_proposes_the_grants_warn_mode_needed() {
        let mut cluster = examples();
        let plane = control_plane(&mut cluster).await;
        let mut events = Vec::new();
        for (n, (session, capability, tool)) in [
            (
                "research-agent",
                Some(Capability::InjectNetwork),
                "http_fetch",
            ),
            (
                "research-agent",
                Some(Capability::InjectNetwork),
                "http_fetch",
            ),
            ("research-agent", Some(Capability::A2aCall), "sessions_list"),
            ("api-handler", None, "memory_write"),
            (
                "code-executor",
                Some(Capability::InjectExec),
                "exec_command",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let mut would_deny = event(NAMESPACE, session, Outcome::WouldDeny, n as i64);
            would_deny.capability = capability;
            would_deny.tool = Some(tool.into());
            events.push(would_deny);
        }
        events.push(event(NAMESPACE, "research-agent", Outcome::Denied, 10));
        plane.store.insert_events(&events).await.unwrap();
        let yaml = cluster
            .text(&["security", "migrate", "--since", "2026-11-24T00:00:00Z"])
            .await;
        assert_snapshot!("migrate", yaml);
        let grants: Vec<Grant> = parse_manifests(&yaml)
            .unwrap()
            .into_iter()
            .map(|object| match object {
                WoprObject::Grant(grant) => grant,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(grants.len(), 2);
        assert_eq!(
            grants[1].spec.capabilities,
            [Capability::A2aCall, Capability::InjectNetwork]
        );
        let listed: Vec<Grant> = items(
            cluster
                .json(&[
                    "security",
                    "migrate",
                    "--since",
                    "2026-11-24T00:00:00Z",
                    "-o",
                    "json",
                ])
                .await,
        );
        assert_eq!(listed, grants, "-o json gives the same Grants as a List");
        drop(plane);
    }
}

/// Without `--control-plane`: the control plane through the API server's
/// `pods/portforward` to a ready controller pod, the fake API serving it
/// over WebSocket as the real one does and bridging it to a real control
/// plane on 127.0.0.1.
mod through_port_forward {
    use common::sidecar::{ControlPlane, READER};
    use common::store::event;
    use kube::{Client, Config};
    use wopr_operator::audit::AuditEvent;
    use wopr_operator::policy::Outcome;

    use super::*;

    /// The ready controller pod the CLI must choose.
    const READY: &str = "wopr-operator-6c9d7-ready";
    /// A controller pod that is not Ready, first by name: a port-forward
    /// to it gets only a refused connection.
    const STARTING: &str = "wopr-operator-0-starting";

    fn pod_path(name: &str) -> String {
        format!("/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{name}")
    }

    /// A controller pod as the chart's Deployment makes it.
    fn controller_pod(name: &str, ready: bool) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE, "labels": {
                "app.kubernetes.io/name": "wopr-operator", "app.kubernetes.io/instance": "wopr-operator"}},
            "spec": {"containers": [{
                "name": "controller", "image": "ghcr.io/wopr-network/wopr-operator:test",
                "args": ["controller", "--control-plane-address=https://localhost:9443",
                         "--control-plane-listen=0.0.0.0:9443"],
                "ports": [{"name": "grpc", "containerPort": 9443, "protocol": "TCP"},
                          {"name": "admin", "containerPort": 8080, "protocol": "TCP"}],
            }]},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    /// The operator's CA bundle ConfigMap in its namespace, holding `pem`.
    fn publish_bundle(api: &FakeApi, pem: &str) {
        api.insert(
            &format!("/api/v1/namespaces/{OPERATOR_NAMESPACE}/configmaps/wopr-ca-bundle"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "wopr-ca-bundle", "namespace": OPERATOR_NAMESPACE},
                   "data": {"ca.crt": pem}}),
        );
    }

    /// The examples, a controller pod that is starting and one that is
    /// ready (advertising the name the test certificate carries), the
    /// ready one's gRPC port bridged to `plane`, and the operator's CA
    /// bundle published; served over
    /// HTTP (an upgrade needs a connection).
    struct Forwarded {
        cluster: Cluster,
        plane: ControlPlane,
        address: std::net::SocketAddr,
    }

    async fn forwarded() -> Forwarded {
        let api = FakeApi::default();
        load_examples(&api);
        authenticate_as_alice(&api);
        let plane = ControlPlane::start(&[]).await;
        for (name, ready) in [(STARTING, false), (READY, true)] {
            api.insert(&pod_path(name), controller_pod(name, ready));
        }
        api.forward(&pod_path(READY), 9443, plane.address);
        publish_bundle(&api, &common::tls::pki().ca.cert_pem);
        let address = api.serve_http().await;
        let url = format!("http://{address}").parse().unwrap();
        let client = Client::try_from(Config::new(url)).unwrap();
        Forwarded {
            cluster: Cluster {
                api,
                context: context(client),
            },
            plane,
            address,
        }
    }

    fn lines(requests: &[common::fake_api::Recorded]) -> Vec<String> {
        requests
            .iter()
            .map(|request| format!("{} {}?{}", request.method, request.path, request.query))
            .collect()
    }

    #[tokio::test]
    async fn audit_and_migrate_reach_the_control_plane_through_the_ready_pod() {
        let Forwarded { cluster, plane, .. } = forwarded().await;
        let mut events: Vec<AuditEvent> = (0..30)
            .map(|n| event(NAMESPACE, "research-agent", Outcome::Denied, n))
            .collect();
        let mut would_deny = event(NAMESPACE, "research-agent", Outcome::WouldDeny, 30);
        would_deny.capability = Some(wopr_operator::api::Capability::InjectExec);
        events.push(would_deny);
        plane.store.insert_events(&events).await.unwrap();
        cluster.api.take_requests();

        let read: Vec<AuditEvent> = items(
            cluster
                .json(&["security", "audit", "--last", "1000", "--format", "json"])
                .await,
        );
        assert_eq!(read.len(), 31);
        assert_eq!(read[0], events[30], "newest first, as stored");
        let sent = lines(&cluster.api.take_requests());
        assert_eq!(
            sent,
            [
                "GET /api/v1/namespaces/wopr-system/pods?&labelSelector=app.kubernetes.io%2Fname%3Dwopr-operator%2Capp.kubernetes.io%2Fcomponent%21%3Degress".to_owned(),
                "GET /api/v1/namespaces/wopr-system/configmaps/wopr-ca-bundle?".to_owned(),
                format!("GET {}/portforward?&ports=9443", pod_path(READY)),
            ],
            "the pods listed by the chart's label, the CA bundle read, then one port-forward to the ready one"
        );

        // migrate takes the same path, and proposes the Grant the one
        // would_deny event asks for.
        let migrated = cluster
            .run(&["security", "migrate", "--since", "1w"])
            .await
            .unwrap();
        assert!(
            migrated.text.contains("(1 events)") && migrated.text.contains("inject.exec ×1"),
            "{}",
            migrated.text
        );
        assert!(
            lines(&cluster.api.take_requests())
                .contains(&format!("GET {}/portforward?&ports=9443", pod_path(READY)))
        );
    }

    /// Through a port-forward the control plane is verified against the
    /// bundle the operator publishes: without one the CLI says what to
    /// pass; with another CA's bundle the certificate is refused, and
    /// nothing is read.
    #[tokio::test]
    async fn the_port_forward_verifies_the_control_plane_against_the_published_bundle() {
        let Forwarded {
            cluster,
            plane: _serving,
            ..
        } = forwarded().await;
        cluster.api.remove(&format!(
            "/api/v1/namespaces/{OPERATOR_NAMESPACE}/configmaps/wopr-ca-bundle"
        ));
        let missing = cluster.run(&["security", "audit"]).await;
        let Err(CliError::Unreachable(message)) = missing else {
            panic!("{missing:?}");
        };
        assert!(
            message.contains("ConfigMap wopr-system/wopr-ca-bundle")
                && message.contains("--control-plane-ca"),
            "{message}"
        );
        assert!(
            !lines(&cluster.api.take_requests())
                .iter()
                .any(|line| line.contains("/portforward")),
            "no port-forward without a bundle to verify its far end"
        );

        let other = wopr_operator::tls::issue::issue_ca(
            k8s_openapi::jiff::Timestamp::now(),
            wopr_operator::tls::issue::CA_LIFETIME,
        )
        .unwrap();
        publish_bundle(&cluster.api, &other.cert_pem);
        let refused = cluster.run(&["security", "audit"]).await;
        let Err(CliError::Unreachable(message)) = refused else {
            panic!("another CA's bundle must refuse the control plane: {refused:?}");
        };
        assert!(message.contains("UnknownIssuer"), "{message}");
    }

    #[tokio::test]
    async fn inject_sends_through_the_port_forward_as_the_user() {
        let Forwarded {
            cluster, mut plane, ..
        } = forwarded().await;
        put_example_sessions(&mut plane);
        let sent = cluster
            .run(&[
                "session",
                "inject",
                "research-agent",
                "hello through the API server",
            ])
            .await
            .unwrap();
        let queued = queued_for_research_agent(&plane).await;
        assert_eq!(queued.len(), 1);
        assert_eq!(sent.data["messageId"], json!(queued[0].message.id));
        assert_eq!(queued[0].message.source.identity, "alice");
    }

    #[tokio::test]
    async fn no_ready_pod_is_unreachable_and_says_where_it_looked() {
        let Forwarded { cluster, .. } = forwarded().await;
        cluster.api.modify(&pod_path(READY), |pod| {
            pod["metadata"]["deletionTimestamp"] = json!("2026-11-29T11:59:00Z");
        });
        let refused = cluster.run(&["security", "audit"]).await;
        let Err(CliError::Unreachable(message)) = refused else {
            panic!("{refused:?}");
        };
        assert!(
            message.starts_with("no ready controller pod in namespace wopr-system (2 found, none Ready and not terminating)"),
            "{message}"
        );
        assert!(
            !lines(&cluster.api.take_requests())
                .iter()
                .any(|line| line.contains("/portforward")),
            "no port-forward to a pod that is not ready"
        );
    }

    /// A Ready pod whose port refuses the connection (the kubelet says so
    /// on the error channel and ends the stream): unreachable, at once
    /// rather than at the timeout, with the kubelet's word.
    #[tokio::test]
    async fn a_port_the_pod_refuses_is_unreachable() {
        let Forwarded { mut cluster, .. } = forwarded().await;
        cluster.api.remove(&pod_path(READY));
        cluster.api.modify(&pod_path(STARTING), |pod| {
            pod["status"]["conditions"][0]["status"] = json!("True");
        });
        cluster.context.control_plane.timeout = std::time::Duration::from_secs(3600);
        let refused = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            cluster.run(&["security", "audit"]),
        )
        .await
        .expect("an answer long before the request timeout");
        let Err(CliError::Unreachable(message)) = refused else {
            panic!("{refused:?}");
        };
        assert!(
            message.starts_with(&format!(
                "the control plane through the port-forward to pod wopr-system/{STARTING} port 9443 failed: error forwarding port 9443 to pod"
            )) && message.ends_with("connection refused"),
            "the kubelet's word: {message}"
        );
    }

    /// `--request-timeout` bounds the port-forward's setup too: an API
    /// server that never answers the upgrade is unreachable after it.
    #[tokio::test]
    async fn the_request_timeout_bounds_the_port_forward() {
        let Forwarded { mut cluster, .. } = forwarded().await;
        cluster
            .api
            .stall(&format!("{}/portforward", pod_path(READY)));
        cluster.context.control_plane.timeout = std::time::Duration::from_secs(1);
        let stalled = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            cluster.run(&["security", "audit"]),
        )
        .await
        .expect("an answer once the request timeout is over");
        let Err(CliError::Unreachable(message)) = stalled else {
            panic!("{stalled:?}");
        };
        assert_eq!(
            message,
            "the control plane through a port-forward in namespace wopr-system did not answer within 1s (--request-timeout)"
        );
    }

    #[tokio::test]
    async fn a_forbidden_port_forward_names_the_right_it_needs() {
        let Forwarded { cluster, .. } = forwarded().await;
        cluster.api.refuse(
            &format!("{}/portforward", pod_path(READY)),
            StatusCode::FORBIDDEN,
            "pods \"wopr-operator-6c9d7-ready\" is forbidden: User \"alice\" cannot get resource \"pods/portforward\" in API group \"\" in the namespace \"wopr-system\"",
        );
        let refused = cluster.run(&["security", "audit"]).await;
        let Err(CliError::Refused(message)) = refused else {
            panic!("{refused:?}");
        };
        assert!(
            message.starts_with(&format!(
                "port-forward to pod wopr-system/{READY} port 9443 refused: reaching the control plane without --control-plane needs list on pods, get and create on pods/portforward, and get on the ConfigMap wopr-ca-bundle, in namespace wopr-system (bind the Role wopr-control-plane-client there), or pass --control-plane HOST:PORT"
            )),
            "{message}"
        );
        assert!(message.contains("403 Forbidden"), "{message}");

        // Not even the pods may be listed: the same rights named.
        cluster.api.refuse(
            &format!("/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods"),
            StatusCode::FORBIDDEN,
            "pods is forbidden: User \"alice\" cannot list resource \"pods\"",
        );
        let refused = cluster.run(&["security", "audit"]).await;
        let Err(CliError::Refused(message)) = refused else {
            panic!("{refused:?}");
        };
        assert!(
            message.starts_with("cannot list the controller's pods in namespace wopr-system: reaching the control plane without --control-plane needs list on pods"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn whoami_says_which_path_the_control_plane_takes() {
        let Forwarded { mut cluster, .. } = forwarded().await;
        let text = cluster.text(&["security", "whoami"]).await;
        assert!(
            text.ends_with(&format!(
                "\nControl plane: port-forward to pod wopr-system/{READY} port 9443 (through the API server)\n"
            )),
            "{text}"
        );
        let report = cluster.json(&["security", "whoami", "-o", "json"]).await;
        assert_eq!(
            report["controlPlane"],
            json!({"portForward": {"namespace": "wopr-system", "pod": READY, "port": 9443,
                                   "uri": "https://localhost:9443"}})
        );

        cluster.api.modify(&pod_path(READY), |pod| {
            pod["status"]["conditions"][0]["status"] = json!("False");
        });
        let text = cluster.text(&["security", "whoami"]).await;
        assert!(
            text.contains("\nControl plane: port-forward, unavailable: no ready controller pod in namespace wopr-system"),
            "{text}"
        );

        cluster.context.control_plane =
            ControlPlaneAddress::with_token("10.0.0.7:9443", common::tls::client_tls(), None);
        let text = cluster.text(&["security", "whoami"]).await;
        assert!(
            text.ends_with("\nControl plane: 10.0.0.7:9443 (--control-plane, direct)\n"),
            "{text}"
        );
        let report = cluster.json(&["security", "whoami", "-o", "json"]).await;
        assert_eq!(report["controlPlane"], json!({"address": "10.0.0.7:9443"}));
    }

    /// The real binary, with only a kubeconfig: the audit trail through the
    /// port-forward (exit 0), no ready pod (exit 4), a refused port-forward
    /// (exit 3), each failure one line.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_binary_needs_only_a_kubeconfig() {
        let Forwarded {
            cluster,
            plane,
            address,
        } = forwarded().await;
        plane
            .store
            .insert_events(&[event(NAMESPACE, "research-agent", Outcome::Denied, 1)])
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = FakeApi::kubeconfig(dir.path(), address);
        let audit = move || {
            let kubeconfig = kubeconfig.clone();
            tokio::task::spawn_blocking(move || {
                super::binary::kubectl_wopr_with(
                    &kubeconfig,
                    &["-n", NAMESPACE, "security", "audit", "-o", "json"],
                    &[("WOPR_TOKEN", READER)],
                )
            })
        };
        let read = audit().await.unwrap();
        assert_eq!(read.code, 0, "{}", read.stderr);
        assert_eq!(
            items::<AuditEvent>(serde_json::from_str(&read.stdout).unwrap()).len(),
            1
        );

        cluster.api.modify(&pod_path(READY), |pod| {
            pod["status"]["conditions"][0]["status"] = json!("False");
        });
        let unready = audit().await.unwrap();
        assert_eq!(unready.code, 4, "{}", unready.stderr);
        assert!(
            super::binary::one_line(&unready).starts_with("no ready controller pod"),
            "{}",
            unready.stderr
        );

        cluster.api.modify(&pod_path(READY), |pod| {
            pod["status"]["conditions"][0]["status"] = json!("True");
        });
        cluster.api.refuse(
            &format!("{}/portforward", pod_path(READY)),
            StatusCode::FORBIDDEN,
            "pods/portforward is forbidden",
        );
        let refused = audit().await.unwrap();
        assert_eq!(refused.code, 3, "{}", refused.stderr);
        assert!(
            super::binary::one_line(&refused).contains("get and create on pods/portforward"),
            "{}",
            refused.stderr
        );
    }
}

mod binary {
    //! The real `kubectl-wopr` against the fake API over HTTP: what a
    //! script sees, exit codes and stderr.

    use std::process::Command;

    use super::*;

    pub(super) struct Run {
        pub(super) code: i32,
        pub(super) stdout: String,
        pub(super) stderr: String,
    }

    fn kubectl_wopr(kubeconfig: &std::path::Path, args: &[&str]) -> Run {
        kubectl_wopr_with(kubeconfig, args, &[])
    }

    /// [`kubectl_wopr`] with more environment variables. A run that has not
    /// ended after a minute fails the test rather than hanging it.
    pub(super) fn kubectl_wopr_with(
        kubeconfig: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-wopr"));
        command
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("WOPR_CONTROL_PLANE")
            .env_remove("WOPR_TOKEN")
            .env_remove("WOPR_REQUEST_TIMEOUT")
            .envs(env.iter().copied());
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(command.output()));
        let output = ended
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("kubectl-wopr {args:?} did not end within a minute"))
            .unwrap();
        Run {
            code: output.status.code().unwrap(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    async fn served() -> (FakeApi, tempfile::TempDir, std::path::PathBuf) {
        let api = FakeApi::default();
        load_examples(&api);
        let address = api.serve_http().await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = FakeApi::kubeconfig(dir.path(), address);
        (api, dir, kubeconfig)
    }

    /// One line on stderr, starting `error: `.
    pub(super) fn one_line(run: &Run) -> &str {
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        run.stderr
            .strip_prefix("error: ")
            .unwrap_or(&run.stderr)
            .trim_end()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn exit_codes_scripts_can_trust() {
        let (api, _dir, kubeconfig) = served().await;
        let run = |args: &'static [&'static str]| {
            let kubeconfig = kubeconfig.clone();
            tokio::task::spawn_blocking(move || {
                let mut all = vec!["-n", NAMESPACE];
                all.extend_from_slice(args);
                kubectl_wopr(&kubeconfig, &all)
            })
        };

        let listed = run(&["session", "list", "-o", "json"]).await.unwrap();
        assert_eq!(listed.code, 0, "{}", listed.stderr);
        assert_eq!(
            items::<Session>(serde_json::from_str(&listed.stdout).unwrap()).len(),
            4
        );
        let yaml = run(&["security", "list-grants", "-o", "yaml"])
            .await
            .unwrap();
        assert!(yaml.stdout.contains("kind: List"), "{}", yaml.stdout);

        for (args, code, message) in [
            (
                &["security", "grant", "session:a", "fly"][..],
                1,
                "unknown capability",
            ),
            (
                &["security", "grant", "session:a", "--profile", "owner"][..],
                1,
                "owner",
            ),
            (
                &["security", "grant", "Not-A-Key", "inject"][..],
                1,
                "is not a subject: use a session's NAME (or session:NAME)",
            ),
            (
                &["security", "grant", "not-a-key", "inject"][..],
                2,
                "\"not-a-key\" is neither a Session in namespace",
            ),
            (
                &["config", "set", "security.nope", "1"][..],
                1,
                "unknown config path",
            ),
            (
                &["security", "status", "ghost"][..],
                2,
                "session \"ghost\" not found",
            ),
            (
                &["security", "grant", "session:ghost", "inject"][..],
                2,
                "session \"ghost\" not found",
            ),
        ] {
            let result = run(args).await.unwrap();
            assert_eq!(result.code, code, "{args:?}: {}", result.stderr);
            assert!(
                result.stderr.contains(message),
                "{args:?}: {}",
                result.stderr
            );
            if code != 1 {
                one_line(&result);
            }
        }

        api.refuse(
            &path("grants", ""),
            StatusCode::FORBIDDEN,
            "grants.wopr.dev is forbidden: User \"bob\" cannot patch resource \"grants\"",
        );
        let refused = run(&["security", "grant", "session:research-agent", "inject"])
            .await
            .unwrap();
        assert_eq!(refused.code, 3, "{}", refused.stderr);
        assert!(one_line(&refused).contains("403"), "{}", refused.stderr);

        api.modify(&path("securitypolicies", "default"), |policy| {
            policy["spec"]["p2p"]["autoAccept"] = json!(true);
        });
        let failing = run(&["security", "verify"]).await.unwrap();
        assert_eq!(failing.code, 5, "{}", failing.stderr);
        assert!(
            failing.stdout.contains("auto-accept-off"),
            "{}",
            failing.stdout
        );
        assert_eq!(one_line(&failing), "failing checks: auto-accept-off");
    }

    /// A server that accepts connections and never answers: each one is
    /// held open, unread, until the test ends.
    fn silent_server() -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for connection in listener.incoming() {
                held.push(connection);
            }
        });
        address
    }

    /// The CLI reaches the control plane over TLS only: an http://
    /// address needs --insecure-plaintext, and TLS needs the CA bundle;
    /// each refusal is a usage error (exit 1) saying what to pass.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_control_plane_is_reached_over_tls_unless_told_otherwise() {
        let (_api, _dir, kubeconfig) = served().await;
        let run = |args: Vec<String>| {
            let kubeconfig = kubeconfig.clone();
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                kubectl_wopr(&kubeconfig, &args)
            })
        };
        let audit = |extra: &[&str]| {
            ["security", "audit", "--token", "t"]
                .iter()
                .chain(extra)
                .map(|arg| arg.to_string())
                .collect::<Vec<_>>()
        };
        let plaintext = run(audit(&[
            "--control-plane",
            "http://127.0.0.1:1",
            &common::tls::ca_flag("control-plane-ca"),
        ]))
        .await
        .unwrap();
        assert_eq!(plaintext.code, 1, "{}", plaintext.stderr);
        assert!(
            one_line(&plaintext)
                .contains("refusing plaintext to the control plane at http://127.0.0.1:1"),
            "{}",
            plaintext.stderr
        );
        let no_bundle = run(audit(&["--control-plane", "127.0.0.1:1"]))
            .await
            .unwrap();
        assert_eq!(no_bundle.code, 1, "{}", no_bundle.stderr);
        assert!(
            one_line(&no_bundle).contains("pass --control-plane-ca FILE"),
            "{}",
            no_bundle.stderr
        );
    }

    /// A control plane or an API server that accepts and never answers
    /// ends in exit 4 and says who did not answer in how long, after
    /// `--request-timeout` (or `WOPR_REQUEST_TIMEOUT`).
    #[tokio::test(flavor = "multi_thread")]
    async fn no_answer_is_exit_4_after_the_request_timeout() {
        let (_api, _dir, kubeconfig) = served().await;
        let silent = silent_server().to_string();
        let control_plane = silent.clone();
        let audit = tokio::task::spawn_blocking(move || {
            kubectl_wopr(
                &kubeconfig,
                &[
                    "security",
                    "audit",
                    "--control-plane",
                    &control_plane,
                    &common::tls::ca_flag("control-plane-ca"),
                    "--token",
                    "t",
                    "--request-timeout",
                    "1s",
                ],
            )
        })
        .await
        .unwrap();
        assert_eq!(audit.code, 4, "{}", audit.stderr);
        assert_eq!(
            one_line(&audit),
            format!("the control plane at {silent} did not answer within 1s (--request-timeout)")
        );

        let dir = tempfile::tempdir().unwrap();
        let silent_api = FakeApi::kubeconfig(dir.path(), silent_server());
        let list = tokio::task::spawn_blocking(move || {
            kubectl_wopr_with(
                &silent_api,
                &["session", "list"],
                &[("WOPR_REQUEST_TIMEOUT", "1s")],
            )
        })
        .await
        .unwrap();
        assert_eq!(list.code, 4, "{}", list.stderr);
        assert!(
            one_line(&list).starts_with("cannot reach the cluster"),
            "{}",
            list.stderr
        );
    }

    #[test]
    fn no_cluster_is_exit_4() {
        let dir = tempfile::tempdir().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let kubeconfig = FakeApi::kubeconfig(dir.path(), closed);
        let unreachable = kubectl_wopr(&kubeconfig, &["session", "list"]);
        assert_eq!(unreachable.code, 4, "{}", unreachable.stderr);
        assert!(
            one_line(&unreachable).starts_with("cannot reach the cluster"),
            "{}",
            unreachable.stderr
        );

        let missing = kubectl_wopr(&dir.path().join("nothing"), &["session", "list"]);
        assert_eq!(missing.code, 4, "{}", missing.stderr);
        assert!(
            one_line(&missing).starts_with("no cluster to talk to"),
            "{}",
            missing.stderr
        );

        let help = kubectl_wopr(&kubeconfig, &["security", "grant", "--help"]);
        assert_eq!(help.code, 0);
        assert!(help.stdout.contains("Examples:"), "{}", help.stdout);
        let incomplete = kubectl_wopr(&kubeconfig, &["security", "gateway"]);
        assert_eq!(incomplete.code, 1, "a missing subcommand is a usage error");
        assert!(
            incomplete.stderr.contains("Usage:"),
            "{}",
            incomplete.stderr
        );
    }
}
