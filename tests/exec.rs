//! `exec_command` through the real control plane against the fake API
//! server's `pods/exec` (WebSocket, v5/v4 channels, the final Status): the
//! exact request (the caller's own pod, the agent container, the wrapper
//! and the agent's words, stdout and stderr, stdin only when given, no
//! TTY), the exit code, the output cap, the hard deadline; refusals
//! (no `inject.exec`, another session's pod, a pod not the Session's, the
//! argument rules) before anything reaches the API server; warn mode.

mod common;

use std::time::{Duration, Instant};

use common::fake_api::{ExecReply, FakeApi, Recorded};
use common::harness::pod_path;
use common::sidecar::{ControlPlane, Sidecar, as_sidecar, token_for};
use common::store::all_events;
use common::*;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use wopr_operator::api::{
    ArgumentRules, Capability, CommandRules, Enforcement, Session, SessionStatus, ToolRules,
    TrustLevel,
};
use wopr_operator::audit::AuditEvent;
use wopr_operator::controlplane::Settings;
use wopr_operator::controlplane::exec::{Executor, command_line};
use wopr_operator::policy::tools::arguments::CommandRun;
use wopr_operator::proto::v1alpha1::broker_client::BrokerClient;
use wopr_operator::proto::v1alpha1::{CallToolRequest, ExecRequest, ExecResponse};

/// The most bytes of stdout and of stderr kept, here.
const CAP: usize = 64;

/// `session` at trusted, its pod recorded in its status.
fn with_pod(name: &str) -> Session {
    let mut session = session(name, TrustLevel::Trusted);
    session.status = Some(SessionStatus {
        pod_name: Some(format!("wopr-{name}")),
        ..SessionStatus::default()
    });
    session
}

/// A control plane running commands against a fake API server (over
/// HTTP: pods/exec is a WebSocket upgrade): `coder` and `other` hold
/// `inject.exec`, `plain` does not; each has its pod.
async fn cluster() -> (ControlPlane, BrokerClient<Channel>) {
    let api = FakeApi::default();
    let address = api.serve_http().await;
    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    let settings = Settings {
        exec: Some(Executor::new(kube::Client::try_from(config).unwrap(), CAP)),
        ..Settings::default()
    };
    let names = ["coder", "other", "plain"];
    let mut control_plane =
        ControlPlane::start_on(api, &names, settings, common::tls::transport()).await;
    for name in names {
        let session = with_pod(name);
        let pod = serde_json::to_value(pod_of(&session)).unwrap();
        control_plane.api.insert(&pod_path(name), pod);
        control_plane.put_session(session);
    }
    for name in ["coder", "other"] {
        let grant = session_grant(&format!("exec-{name}"), name, &[Capability::InjectExec]);
        control_plane.put_grant(grant);
    }
    let client = BrokerClient::new(control_plane.channel().await);
    control_plane.api.take_requests();
    (control_plane, client)
}

/// `session`'s Exec of `command args`, in /tmp, for `timeout` seconds.
fn exec(session: &str, command: &str, args: &[&str], timeout: u32) -> ExecRequest {
    ExecRequest {
        namespace: NAMESPACE.into(),
        session: session.into(),
        command: command.into(),
        args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        cwd: "/tmp".into(),
        timeout_seconds: timeout,
        stdin: None,
    }
}

/// The command's end, or the refusal.
async fn run(
    client: &mut BrokerClient<Channel>,
    token_of: &str,
    request: ExecRequest,
) -> Result<ExecResponse, tonic::Status> {
    let mut ended = client
        .exec(as_sidecar(token_of, request))
        .await?
        .into_inner();
    Ok(ended.message().await?.expect("the command's end"))
}

/// The exec requests the API server got.
fn execs(requests: &[Recorded]) -> Vec<&Recorded> {
    requests
        .iter()
        .filter(|request| request.path.ends_with("/exec"))
        .collect()
}

/// The requests that reached pods (a read of one, an exec in one): the
/// Grant's `lastUsedAt` a decision that proceeds records is not one.
fn pod_requests(requests: Vec<Recorded>) -> Vec<String> {
    (requests.iter())
        .filter(|request| request.path.contains("/pods"))
        .map(Recorded::line)
        .collect()
}

/// The query of `request`, decoded, in order.
fn query(request: &Recorded) -> Vec<(String, String)> {
    let decode = |text: &str| {
        let spaced = text.replace('+', " ");
        percent_decode(&spaced)
    };
    request
        .query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), decode(value)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' && at + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[at + 1..at + 3]).unwrap();
            decoded.push(u8::from_str_radix(hex, 16).unwrap());
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).unwrap()
}

/// The events of `session`'s trail naming exec_command, newest first.
async fn exec_events(control_plane: &ControlPlane, session: &str) -> Vec<AuditEvent> {
    (all_events(&control_plane.store).await.into_iter())
        .filter(|event| event.session == session)
        .filter(|event| event.tool.as_deref() == Some("exec_command"))
        .collect()
}

#[tokio::test]
async fn the_command_runs_in_the_callers_own_agent_container_exactly_as_asked() {
    let (control_plane, mut client) = cluster().await;
    control_plane
        .api
        .script_exec(|_| ExecReply::exited(0, b"hello\n", b""));
    let request = exec("coder", "ls", &["-l", "a b", "$(id)"], 9);
    let ended = run(&mut client, "coder", request).await.unwrap();
    assert_eq!(ended.exit_code, 0);
    assert_eq!(ended.stdout, b"hello\n");
    assert!(!ended.timed_out && !ended.stdout_truncated && !ended.stderr_truncated);
    assert_eq!(ended.decision, "allowed");

    let requests = control_plane.api.take_requests();
    let execs = execs(&requests);
    assert_eq!(execs.len(), 1, "{requests:?}");
    assert_eq!(
        execs[0].line(),
        format!("GET /api/v1/namespaces/{NAMESPACE}/pods/wopr-coder/exec")
    );
    let query = query(execs[0]);
    let value = |key: &str| -> Vec<&str> {
        (query.iter())
            .filter(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .collect()
    };
    assert_eq!(value("container"), ["agent"]);
    assert_eq!(value("stdout"), ["true"]);
    assert_eq!(value("stderr"), ["true"]);
    assert_eq!(value("stdin"), Vec::<&str>::new(), "no stdin was given");
    assert!(value("tty").iter().all(|tty| *tty == "false"), "{query:?}");
    let expected = command_line(&CommandRun {
        command: "ls".into(),
        args: vec!["-l".into(), "a b".into(), "$(id)".into()],
        cwd: Some("/tmp".into()),
        timeout: Some(9),
        stdin: None,
    });
    assert_eq!(value("command"), expected);
    assert_eq!(
        value("command")[..4],
        ["/bin/sh", "-c", expected[2].as_str(), "wopr-exec"]
    );
    assert_eq!(
        value("command")[4..],
        ["/tmp", "9", "ls", "-l", "a b", "$(id)"]
    );

    // The pod was read to check it is the session's, before the exec.
    let lines: Vec<String> = requests.iter().map(Recorded::line).collect();
    let pod = format!("GET {}", pod_path("coder"));
    assert!(
        lines.iter().position(|line| *line == pod)
            < lines.iter().position(|line| line.ends_with("/exec"))
    );
    let events = exec_events(&control_plane, "coder").await;
    let record = events[0]
        .exec
        .as_ref()
        .expect("the command's end, recorded");
    assert_eq!(
        (
            record.pod.as_str(),
            record.container.as_str(),
            record.exit_code
        ),
        ("wopr-coder", "agent", 0)
    );
    assert_eq!(events[0].id, ended.audit_id);
}

#[tokio::test]
async fn the_exit_code_stdin_and_stderr_come_through() {
    let (control_plane, mut client) = cluster().await;
    control_plane.api.script_exec(|call| {
        let mut stdout = b"read: ".to_vec();
        stdout.extend_from_slice(&call.stdin);
        ExecReply::exited(3, &stdout, b"it failed\n")
    });
    let mut request = exec("coder", "cat", &[], 30);
    request.stdin = Some("some input\n".into());
    let ended = run(&mut client, "coder", request).await.unwrap();
    assert_eq!(ended.exit_code, 3);
    assert_eq!(ended.stdout, b"read: some input\n");
    assert_eq!(ended.stderr, b"it failed\n");
    let requests = control_plane.api.take_requests();
    let query = query(execs(&requests)[0]);
    assert!(
        query.contains(&("stdin".into(), "true".into())),
        "{query:?}"
    );
    let events = exec_events(&control_plane, "coder").await;
    assert_eq!(events[0].exec.as_ref().unwrap().exit_code, 3);
    assert!(events[0].reason.contains("exit 3"), "{}", events[0].reason);
}

#[tokio::test]
async fn output_past_the_cap_is_cut_and_says_so_and_bytes_stay_bytes() {
    let (control_plane, mut client) = cluster().await;
    control_plane
        .api
        .script_exec(|_| ExecReply::exited(0, &[b'x'; 100_000], &[0xff, 0xfe, b'\n']));
    let ended = run(&mut client, "coder", exec("coder", "yes", &[], 30))
        .await
        .unwrap();
    assert_eq!((ended.stdout.len(), ended.stdout_truncated), (CAP, true));
    assert_eq!(
        (ended.stderr.as_slice(), ended.stderr_truncated),
        (&[0xff, 0xfe, b'\n'][..], false)
    );
    let events = exec_events(&control_plane, "coder").await;
    let record = events[0].exec.as_ref().unwrap();
    assert!(record.stdout_truncated && !record.stderr_truncated);
    assert!(
        events[0].reason.contains("stdout truncated"),
        "{}",
        events[0].reason
    );
}

#[tokio::test]
async fn an_image_without_bin_sh_gets_a_clear_error() {
    let (control_plane, mut client) = cluster().await;
    control_plane.api.script_exec(|_| {
        ExecReply::not_started("failed to exec in container: OCI runtime exec failed: exec failed: unable to start container process: exec: \"/bin/sh\": stat /bin/sh: no such file or directory: unknown")
    });
    let refused = run(&mut client, "coder", exec("coder", "ls", &[], 30))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("exec_command needs /bin/sh in the agent image"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("stat /bin/sh: no such file"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn a_command_that_never_ends_is_cut_at_its_hard_deadline() {
    let (control_plane, mut client) = cluster().await;
    control_plane.api.script_exec(|_| ExecReply::hangs());
    let started = Instant::now();
    let refused = run(&mut client, "coder", exec("coder", "sleep", &["100"], 1))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        refused.code(),
        Code::DeadlineExceeded,
        "{}",
        refused.message()
    );
    assert!(
        refused
            .message()
            .contains("timeout of 1 s and 5 s of grace"),
        "{}",
        refused.message()
    );
    // The timeout (1 s) and the grace (5 s), not the unary bound (30 s).
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

#[tokio::test]
async fn without_inject_exec_nothing_reaches_the_api_server() {
    let (control_plane, mut client) = cluster().await;
    let refused = run(&mut client, "plain", exec("plain", "ls", &[], 30))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(refused.message(), "tool not available: exec_command");
    assert_eq!(control_plane.api.take_requests().len(), 0);
    let events = exec_events(&control_plane, "plain").await;
    assert_eq!(events.len(), 1, "the control plane's refusal is audited");
    assert_eq!(events[0].decision, wopr_operator::policy::Outcome::Denied);
}

#[tokio::test]
async fn a_token_never_runs_a_command_in_another_sessions_pod() {
    let (control_plane, mut client) = cluster().await;
    control_plane
        .api
        .script_exec(|_| ExecReply::exited(0, b"", b""));
    // coder's token naming other: refused before the API server.
    let refused = run(&mut client, "coder", exec("other", "ls", &[], 30))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("may not act for session"),
        "{}",
        refused.message()
    );
    assert_eq!(control_plane.api.take_requests().len(), 0);
    // The pod coder's token is bound to, once it is not coder's own (a pod
    // of that name another Session controls): refused, and never exec'd.
    control_plane.api.modify(&pod_path("coder"), |pod| {
        pod["metadata"]["ownerReferences"][0]["uid"] = json!("uid-of-another");
    });
    let refused = run(&mut client, "coder", exec("coder", "ls", &[], 30))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("not controlled by the Session"),
        "{}",
        refused.message()
    );
    assert_eq!(execs(&control_plane.api.take_requests()).len(), 0);
}

/// coder's rules: only `ls`, never an argument like `--delete*`.
fn rules() -> ToolRules {
    ToolRules {
        allow: Vec::new(),
        deny: Vec::new(),
        rules: Some(ArgumentRules {
            exec_command: Some(CommandRules {
                allow_commands: Some(vec!["ls".into()]),
                deny_args: vec!["--delete*".into()],
            }),
            ..ArgumentRules::default()
        }),
    }
}

#[tokio::test]
async fn argument_rules_refuse_in_enforce_mode_and_warn_mode_runs_as_would_deny() {
    let (mut control_plane, mut client) = cluster().await;
    control_plane
        .api
        .script_exec(|_| ExecReply::exited(0, b"", b""));
    let mut coder = with_pod("coder");
    coder.spec.tools = Some(rules());
    control_plane.put_session(coder);
    let refused = run(
        &mut client,
        "coder",
        exec("coder", "rm", &["-rf", "/tmp/x"], 30),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused
            .message()
            .starts_with("refused by tools.rules.exec_command.allowCommands"),
        "{}",
        refused.message()
    );
    let refused = run(
        &mut client,
        "coder",
        exec("coder", "ls", &["--delete-all"], 30),
    )
    .await
    .unwrap_err();
    assert!(
        refused
            .message()
            .starts_with("refused by tools.rules.exec_command.denyArgs"),
        "{}",
        refused.message()
    );
    assert_eq!(
        pod_requests(control_plane.api.take_requests()),
        Vec::<String>::new()
    );
    assert!(
        run(&mut client, "coder", exec("coder", "ls", &["-l"], 30))
            .await
            .is_ok()
    );
    control_plane.api.take_requests();

    control_plane.put_policy(security_policy(json!({"enforcement": "warn"})));
    let ended = run(
        &mut client,
        "coder",
        exec("coder", "rm", &["-rf", "/tmp/x"], 30),
    )
    .await
    .unwrap();
    assert_eq!(ended.decision, "would_deny");
    let events = exec_events(&control_plane, "coder").await;
    assert_eq!(
        events[0].decision,
        wopr_operator::policy::Outcome::WouldDeny
    );
    assert_eq!(events[0].enforcement, Enforcement::Warn);
    assert!(
        events[0]
            .reason
            .contains("would be refused by tools.rules.exec_command.allowCommands"),
        "{}",
        events[0].reason
    );
    assert_eq!(execs(&control_plane.api.take_requests()).len(), 1);
}

#[tokio::test]
async fn bad_arguments_are_refused_precisely_even_past_a_sidecar() {
    let (control_plane, mut client) = cluster().await;
    let cases: [(ExecRequest, &str); 5] = [
        (
            exec("coder", "l\0s", &[], 30),
            "command contains a NUL byte",
        ),
        (
            exec("coder", "ls", &["a\0b"], 30),
            "argument contains a NUL byte",
        ),
        (
            ExecRequest {
                cwd: "/etc".into(),
                ..exec("coder", "ls", &[], 30)
            },
            "cwd \"/etc\" refused",
        ),
        (
            ExecRequest {
                cwd: "/tmp/\0".into(),
                ..exec("coder", "ls", &[], 30)
            },
            "cwd contains a NUL byte",
        ),
        (
            exec("coder", "ls", &[&"a".repeat(5000)], 30),
            "argument longer than 4096 bytes",
        ),
    ];
    for (request, why) in cases {
        let refused = run(&mut client, "coder", request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().contains(why),
            "{why}: {}",
            refused.message()
        );
    }
    let refused = run(&mut client, "coder", exec("coder", "ls", &[], 601))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("from 1 to 600 seconds"),
        "{}",
        refused.message()
    );
    assert_eq!(
        pod_requests(control_plane.api.take_requests()),
        Vec::<String>::new()
    );
}

/// The agent's `exec_command` through its sidecar: listed with
/// `inject.exec`, answered with the command's end (non-UTF-8 stderr lossy
/// and exact), audited by the sidecar as every call.
#[tokio::test]
async fn an_agent_runs_a_command_with_its_sidecars_exec_command_tool() {
    let (control_plane, _) = cluster().await;
    control_plane
        .api
        .script_exec(|call| ExecReply::exited(2, call.command.last().unwrap().as_bytes(), &[0xff]));
    let address = control_plane.address.to_string();
    let coder = Sidecar::start(&address, "coder", &token_for("coder")).await;
    let plain = Sidecar::start(&address, "plain", &token_for("plain")).await;
    coder.wait_for_policy(|served| served.is_some()).await;
    plain.wait_for_policy(|served| served.is_some()).await;
    let listed = |sidecar: &Sidecar| {
        let mut tools = sidecar.engine.list().into_iter().map(|id| id.tool().name);
        tools.any(|name| name == "exec_command")
    };
    assert!(listed(&coder) && !listed(&plain));
    let call = CallToolRequest {
        name: "exec_command".into(),
        arguments_json: json!({"command": "echo", "args": ["hi"], "cwd": "/workspace"}).to_string(),
    };
    let answer = coder
        .tools()
        .await
        .call_tool(call)
        .await
        .unwrap()
        .into_inner();
    let answer: Value = serde_json::from_str(&answer.result_json).unwrap();
    assert_eq!(answer["exitCode"], 2);
    assert_eq!(answer["stdout"], "hi");
    assert_eq!(answer["stderr"], "\u{fffd}");
    assert_eq!(answer["stderrBase64"], "/w==");
    assert_eq!(answer["timedOut"], false);
    let requests = control_plane.api.take_requests();
    let query = query(execs(&requests)[0]);
    assert!(
        query.contains(&("command".into(), "/workspace".into())),
        "{query:?}"
    );
    let audited = coder.audit.take();
    let call = (audited.iter())
        .find(|event| event.tool.as_deref() == Some("exec_command"))
        .expect("the sidecar's event of the call");
    assert!(call.reason.contains("; exit 2 in "), "{}", call.reason);

    // Bad arguments stop at the sidecar, precisely.
    let outside = CallToolRequest {
        name: "exec_command".into(),
        arguments_json: json!({"command": "ls", "cwd": "/etc"}).to_string(),
    };
    let refused = coder.tools().await.call_tool(outside).await.unwrap_err();
    assert!(
        refused.message().contains("cwd \"/etc\" refused"),
        "{}",
        refused.message()
    );
    assert_eq!(execs(&control_plane.api.take_requests()).len(), 0);
}
