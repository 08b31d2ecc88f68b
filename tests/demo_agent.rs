//! The demo agent (`wopr-operator demo-agent`, the real binary) against a
//! real sidecar over MCP: what it prints for an untrusted session and for
//! a session with a grant, and again when the grant is revoked.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::sidecar::{ControlPlane, Sidecar, SidecarOptions, token_for};
use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use wopr_operator::api::{Capability, TrustLevel};

/// The demo agent against the sidecar at `mcp`, and its stdout.
fn demo_agent(mcp: std::net::SocketAddr) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_wopr-operator"))
        .args(["demo-agent", "--connect-timeout-seconds", "10"])
        .env("WOPR_MCP_URL", format!("http://{mcp}/mcp"))
        .env_remove("WOPR_PROMPT")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary runs");
    let lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    (agent, lines)
}

/// Reads lines until one contains `last`; all of them, joined.
async fn read_until(lines: &mut Lines<BufReader<ChildStdout>>, last: &str) -> String {
    let mut read = String::new();
    let reading = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            read.push_str(&line);
            read.push('\n');
            if line.contains(last) {
                return;
            }
        }
        panic!("the demo agent ended");
    };
    if tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .is_err()
    {
        panic!("no {last:?} within 30 s in\n{read}");
    }
    read
}

/// The sidecar of the untrusted session `visitor`, with its policy, and
/// the control plane that serves it.
async fn untrusted_sidecar() -> (ControlPlane, Sidecar) {
    let mut control_plane = ControlPlane::start(&["visitor"]).await;
    control_plane.put_policy(security_policy(json!({})));
    control_plane.put_session(session("visitor", TrustLevel::Untrusted));
    let sidecar = Sidecar::start(
        &control_plane.address.to_string(),
        "visitor",
        &token_for("visitor"),
    )
    .await;
    sidecar.wait_for_policy(|policy| policy.is_some()).await;
    (control_plane, sidecar)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_demo_agent_is_refused_what_it_may_not_use() {
    let (_control_plane, sidecar) = untrusted_sidecar().await;

    let (_agent, mut lines) = demo_agent(sidecar.mcp);
    let said = read_until(&mut lines, "call config_get").await;
    for expected in [
        "demo-agent: connected to http://",
        "demo-agent: I am team-a/visitor: trust level untrusted",
        "demo-agent: my tools: security_whoami, security_check",
        "demo-agent: call security_check inject.tools: ALLOWED: {\"allowed\":false",
        "demo-agent: call config_get: DENIED: tool not available: config_get",
    ] {
        assert!(said.contains(expected), "no {expected:?} in\n{said}");
    }
    assert!(!said.contains("config_get,"), "not listed:\n{said}");
    // The README's quickstart quotes the untrusted demo agent's tool list.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let quoted = readme
        .lines()
        .find_map(|line| line.strip_prefix("#   demo-agent: my tools: "))
        .expect("the README quotes the untrusted agent's tools");
    assert!(
        said.contains(&format!("demo-agent: my tools: {quoted}\n")),
        "the README says {quoted:?}; the agent said\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demo_agent_with_a_grant_is_allowed_until_it_is_revoked() {
    let mut control_plane = ControlPlane::start(&["builder"]).await;
    control_plane.put_policy(security_policy(
        json!({"trustLevels": {"semi-trusted": {"capabilities": ["inject"]}}}),
    ));
    control_plane.put_session(session("builder", TrustLevel::SemiTrusted));
    let grant = session_grant("tools", "builder", &[Capability::InjectTools]);
    control_plane.put_grant(grant.clone());
    let sidecar = Sidecar::start(
        &control_plane.address.to_string(),
        "builder",
        &token_for("builder"),
    )
    .await;
    sidecar
        .wait_for_policy(|p| p.is_some_and(|p| p.context.capabilities.has(Capability::InjectTools)))
        .await;

    let (_agent, mut lines) = demo_agent(sidecar.mcp);
    let said = read_until(&mut lines, "call config_get").await;
    for expected in [
        "trust level semi-trusted, capabilities inject, inject.tools,",
        "config_get",
        "demo-agent: call security_check inject.tools: ALLOWED: {\"allowed\":true",
        "demo-agent: call config_get: ALLOWED: {",
    ] {
        assert!(said.contains(expected), "no {expected:?} in\n{said}");
    }

    control_plane.delete_grant(grant);
    let said = read_until(&mut lines, "call config_get").await;
    for expected in [
        "demo-agent: the sidecar says my tools changed; again:",
        "demo-agent: call security_check inject.tools: ALLOWED: {\"allowed\":false",
        "demo-agent: call config_get: DENIED: tool not available: config_get",
    ] {
        assert!(said.contains(expected), "no {expected:?} in\n{said}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn once_the_demo_agent_goes_through_its_steps_and_exits() {
    let (_control_plane, sidecar) = untrusted_sidecar().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wopr-operator"))
        .args([
            "demo-agent",
            "--once",
            "--try-tools",
            "config_get,memory_write",
        ])
        .env("WOPR_MCP_URL", format!("http://{}/mcp", sidecar.mcp))
        .env_remove("WOPR_PROMPT")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("--once exits")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(stdout.lines().count(), 7, "{stdout}");
    assert!(
        stdout
            .contains("demo-agent: my prompt (WOPR_PROMPT): none; security_whoami says the same\n"),
        "{stdout}"
    );
    assert!(
        stdout
            .ends_with("demo-agent: call memory_write: DENIED: tool not available: memory_write\n")
    );
}

/// Given a prompt by its pod and asked to remember, the demo agent finds
/// the prompt in whoami too, and reads from the workspace, itself, what its
/// sidecar wrote there.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_agent_says_its_prompt_and_reads_what_its_sidecar_remembered() {
    let prompt = "You build the release.";
    let mut control_plane = ControlPlane::start(&["builder"]).await;
    control_plane.put_session(session("builder", TrustLevel::Trusted));
    let options = SidecarOptions {
        prompt: Some(prompt.into()),
        ..SidecarOptions::in_memory()
    };
    let address = control_plane.address.to_string();
    let sidecar = Sidecar::start_with(&address, "builder", &token_for("builder"), options).await;
    sidecar.wait_for_policy(|policy| policy.is_some()).await;
    let workspace = sidecar.workspace.display().to_string();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wopr-operator"))
        .args([
            "demo-agent",
            "--once",
            "--remember",
            "the build is green",
            "--workspace",
            &workspace,
        ])
        .env("WOPR_MCP_URL", format!("http://{}/mcp", sidecar.mcp))
        .env("WOPR_PROMPT", prompt)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("--once exits")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for expected in [
        format!(
            "demo-agent: my prompt (WOPR_PROMPT): {prompt:?}; security_whoami says the same\n"
        ),
        "demo-agent: call memory_write demo-agent-memory.md: ALLOWED: {\"path\":\"demo-agent-memory.md\",\"written\":18}\n".into(),
        "demo-agent: call memory_read demo-agent-memory.md: ALLOWED: {\"content\":\"the build is green\",".into(),
        format!(
            "demo-agent: read {workspace}/demo-agent-memory.md myself: \"the build is green\"\n"
        ),
    ] {
        assert!(stdout.contains(&expected), "no {expected:?} in\n{stdout}");
    }
    assert_eq!(
        std::fs::read_to_string(sidecar.workspace.join("demo-agent-memory.md")).unwrap(),
        "the build is green"
    );
}

#[tokio::test]
async fn a_demo_agent_without_a_sidecar_says_so_and_fails() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_wopr-operator"))
        .args(["demo-agent", "--connect-timeout-seconds", "1"])
        .env("WOPR_MCP_URL", format!("http://{closed}/mcp"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cannot reach the sidecar's MCP endpoint at http://{closed}/mcp within 1 s"
        )),
        "{stderr}"
    );
}
