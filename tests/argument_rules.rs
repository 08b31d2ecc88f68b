//! `tools.rules` held by the sidecar's engine, whatever the tool list
//! showed: in enforce mode a call whose arguments break a rule is refused
//! with the rule's name and never runs; in warn mode it runs and its audit
//! event says `would_deny`. A property test over random rules and calls
//! shows that no breaking call is ever executed, for any tool.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{NAMESPACE, session};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use serde_json::{Value, json};
use wopr_operator::api::{Enforcement, RateLimit, TrustLevel};
use wopr_operator::audit::MemorySink;
use wopr_operator::policy::tools::argument_rules::{self, ArgumentRulesInForce};
use wopr_operator::policy::{Outcome, ToolCall, ToolId, resolve};
use wopr_operator::sidecar::engine::{Limits, ToolEngine, ToolError};
use wopr_operator::sidecar::policy_state::{PolicyState, Served};
use wopr_operator::sidecar::workspace::Workspace;

/// An engine for an owner session (every capability, every tool) held to
/// `rules` under `enforcement`, its workspace, and what it audits.
fn engine(
    rules: ArgumentRulesInForce,
    enforcement: Enforcement,
) -> (ToolEngine, Arc<MemorySink>, tempfile::TempDir) {
    let mut context = resolve(
        &session("agent", TrustLevel::Owner),
        None,
        &[],
        &[],
        Timestamp::UNIX_EPOCH,
    )
    .unwrap();
    context.rules = rules;
    context.enforcement = enforcement;
    let policy = Arc::new(PolicyState::new(Duration::from_secs(3600)));
    policy.update(Ok(Served {
        context,
        provider: None,
    }));
    let audit = Arc::new(MemorySink::default());
    let workspace = tempfile::tempdir().unwrap();
    std::fs::create_dir(workspace.path().join("notes")).unwrap();
    std::fs::write(workspace.path().join("notes/a.md"), "a").unwrap();
    std::fs::write(workspace.path().join("secret"), "s").unwrap();
    let limits = Limits::new(
        RateLimit {
            per_minute: 100_000,
        },
        RateLimit {
            per_minute: 100_000,
        },
    );
    let engine = ToolEngine::new(
        NAMESPACE,
        "agent",
        policy,
        audit.clone(),
        Workspace::new(workspace.path()),
        limits,
        || Timestamp::UNIX_EPOCH,
    );
    (engine, audit, workspace)
}

fn write_only_notes() -> ArgumentRulesInForce {
    ArgumentRulesInForce {
        write_paths: Some(vec!["notes/*".into()]),
        ..Default::default()
    }
}

/// Every file of the workspace and its content.
fn files(root: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                found.push((name, std::fs::read_to_string(&path).unwrap_or_default()));
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn a_call_breaking_a_rule_is_refused_by_name_and_never_runs() {
    let (engine, audit, workspace) = engine(write_only_notes(), Enforcement::Enforce);
    let answer = engine
        .call(
            "memory_write",
            &json!({"path": "secret", "content": "overwritten"}),
        )
        .await;
    let reason =
        "refused by tools.rules.memory_write.paths: path \"secret\" matches none of [\"notes/*\"]";
    assert_eq!(answer.result, Err(ToolError::Refused(reason.into())));
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("secret")).unwrap(),
        "s"
    );
    let events = audit.take();
    let event = events.last().unwrap();
    assert_eq!(event.decision, Outcome::Denied);
    assert_eq!(event.reason, reason);
    assert_eq!(event.tool.as_deref(), Some("memory_write"));
    assert_eq!(event.id, answer.audit_id);

    // Within the rule, the same tool runs.
    let answer = engine
        .call(
            "memory_write",
            &json!({"path": "notes/b.md", "content": "b"}),
        )
        .await;
    assert!(answer.result.is_ok(), "{:?}", answer.result);
    assert_eq!(audit.take().last().unwrap().decision, Outcome::Allowed);
}

#[tokio::test]
async fn warn_mode_runs_the_call_and_records_would_deny() {
    let (engine, audit, workspace) = engine(write_only_notes(), Enforcement::Warn);
    let answer = engine
        .call(
            "memory_write",
            &json!({"path": "secret", "content": "overwritten"}),
        )
        .await;
    assert!(answer.result.is_ok(), "{:?}", answer.result);
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("secret")).unwrap(),
        "overwritten"
    );
    let event = audit.take().last().cloned().unwrap();
    assert_eq!(event.decision, Outcome::WouldDeny);
    assert!(
        event
            .reason
            .ends_with("would be refused by tools.rules.memory_write.paths: path \"secret\" matches none of [\"notes/*\"]"),
        "{}",
        event.reason
    );
}

#[tokio::test]
async fn bad_arguments_get_precise_errors_not_panics() {
    let (engine, _, _) = engine(ArgumentRulesInForce::default(), Enforcement::Enforce);
    for (tool, arguments, error) in [
        (
            "memory_read",
            json!({"path": "a\u{0}b"}),
            "path contains a NUL byte",
        ),
        (
            "memory_read",
            json!({"path": "x".repeat(5000)}),
            "path longer than 4096 bytes",
        ),
        ("http_fetch", json!({"url": "not a url"}), "invalid URL"),
        (
            "http_fetch",
            json!({"url": "file:///etc/passwd"}),
            "only http and https",
        ),
        (
            "http_fetch",
            json!({"url": "http://allowed@evil.example/"}),
            "user or password",
        ),
        (
            "http_fetch",
            json!({"url": format!("http://x.example/{}", "a".repeat(9000))}),
            "URL longer than",
        ),
        (
            "http_fetch",
            json!({"url": "http://x.example/", "method": "TRACE"}),
            "method \"TRACE\"",
        ),
        (
            "http_fetch",
            json!({"url": "http://x.example/", "headers": {"X-A": "a\r\nEvil: 1"}}),
            "no CR, LF or NUL",
        ),
        (
            "http_fetch",
            json!({"url": "http://x.example/", "headers": {"bad name": "a"}}),
            "not a valid HTTP header name",
        ),
        (
            "http_fetch",
            json!({"url": "http://x.example/", "body": "a".repeat(1024 * 1024 + 1)}),
            "body larger than",
        ),
        (
            "exec_command",
            json!({"command": "ls\u{0}rm"}),
            "command contains a NUL byte",
        ),
        (
            "exec_command",
            json!({"command": "ls", "args": ["a\u{0}"]}),
            "argument contains a NUL byte",
        ),
        ("exec_command", json!({"command": ""}), "command is empty"),
        (
            "exec_command",
            json!({"command": "ls", "cwd": "/etc"}),
            "cwd \"/etc\" refused",
        ),
        (
            "exec_command",
            json!({"command": "ls", "cwd": "/workspace/../etc"}),
            "refused",
        ),
        (
            "exec_command",
            json!({"command": "ls", "cwd": "/tmpfoo"}),
            "refused",
        ),
        (
            "exec_command",
            json!({"command": "ls", "timeout": 0}),
            "timeout 0 s",
        ),
        (
            "exec_command",
            json!({"command": "ls", "timeout": 601}),
            "timeout 601 s",
        ),
        (
            "exec_command",
            json!({"command": "ls", "args": vec!["a"; 1025]}),
            "more than 1024 arguments",
        ),
        (
            "exec_command",
            json!({"command": "ls", "stdin": "a".repeat(1024 * 1024 + 1)}),
            "stdin larger than",
        ),
    ] {
        // Parsing is what refuses them, before any rule or handler.
        let parsed = ToolCall::parse(ToolId::lookup(tool).unwrap(), arguments.clone());
        let message = parsed.expect_err(tool);
        assert!(message.contains(error), "{tool} {arguments:.80}: {message}");
        if ToolId::lookup(tool).unwrap().implemented() {
            let answer = engine.call(tool, &arguments).await;
            assert!(
                matches!(&answer.result, Err(ToolError::InvalidArguments(m)) if m.contains(error)),
                "{tool}: {:?}",
                answer.result
            );
        }
    }
}

/// Rules drawn from small pools, so calls hit and miss them.
fn rules_strategy() -> impl Strategy<Value = ArgumentRulesInForce> {
    let hosts = prop::sample::subsequence(
        vec!["a.example", "*.example", "10.0.0.0/8", "*", "b.example"],
        0..3,
    );
    let commands = prop::sample::subsequence(vec!["ls", "python*", "/usr/bin/*", "*"], 0..3);
    let args = prop::sample::subsequence(vec!["-c", "*secret*", "--*"], 0..2);
    let paths = prop::sample::subsequence(vec!["notes/*", "*.md", "secret", "*"], 0..3);
    let owned = |list: Vec<&str>| list.into_iter().map(String::from).collect::<Vec<_>>();
    (
        prop::option::of(hosts.clone()),
        hosts,
        prop::option::of(commands),
        args,
        prop::option::of(paths.clone()),
        prop::option::of(paths),
    )
        .prop_map(
            move |(allow_hosts, deny_hosts, allow_commands, deny_args, read, write)| {
                ArgumentRulesInForce {
                    allow_hosts: allow_hosts.map(owned),
                    deny_hosts: owned(deny_hosts),
                    allow_commands: allow_commands.map(owned),
                    deny_args: owned(deny_args),
                    read_paths: read.map(owned),
                    write_paths: write.map(owned),
                }
            },
        )
}

/// A call of any tool, its arguments drawn so that rules sometimes refuse them.
fn call_strategy() -> impl Strategy<Value = (ToolId, Value)> {
    let path = prop::sample::select(vec![
        "notes/a.md",
        "./notes/b.md",
        "secret",
        "x.md",
        "notes/../secret",
    ]);
    let host = prop::sample::select(vec![
        "a.example",
        "c.example",
        "10.1.2.3",
        "b.example",
        "d.org",
    ]);
    let command = prop::sample::select(vec!["ls", "python3", "/usr/bin/env", "sh"]);
    let arg = prop::sample::select(vec!["-c", "-l", "my-secret-file", "--upload", "x"]);
    let any_tool = prop::sample::select(ToolId::all().collect::<Vec<_>>());
    prop_oneof![
        path.clone()
            .prop_map(|path| (ToolId::MemoryRead, json!({ "path": path }))),
        path.prop_map(|path| (
            ToolId::MemoryWrite,
            json!({ "path": path, "content": "changed" })
        )),
        host.prop_map(|host| (
            ToolId::HttpFetch,
            json!({ "url": format!("http://{host}/x") })
        )),
        (command, prop::collection::vec(arg, 0..3)).prop_map(|(command, args)| (
            ToolId::ExecCommand,
            json!({ "command": command, "args": args })
        )),
        any_tool.prop_map(|id| (id, json!({}))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// In enforce mode, a call whose arguments break a rule is refused with
    /// that rule's name and changes nothing; a call that breaks none is
    /// never refused by a rule.
    #[test]
    fn no_call_breaking_a_rule_is_ever_executed(rules in rules_strategy(), (id, arguments) in call_strategy()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (engine, audit, workspace) = engine(rules.clone(), Enforcement::Enforce);
        let before = files(workspace.path());
        let answer = runtime.block_on(engine.call(id.name(), &arguments));
        let breach = ToolCall::parse(id, arguments.clone())
            .ok()
            .and_then(|call| argument_rules::check(&call, &rules).err());
        match breach {
            Some(breach) => {
                prop_assert_eq!(&answer.result, &Err(ToolError::Refused(breach.to_string())));
                prop_assert_eq!(files(workspace.path()), before);
                let events = audit.take();
                prop_assert_eq!(events.last().unwrap().decision, Outcome::Denied);
            }
            None => prop_assert!(
                !matches!(answer.result, Err(ToolError::Refused(_))),
                "{:?} {} refused: {:?}", id, arguments, answer.result
            ),
        }
    }
}
