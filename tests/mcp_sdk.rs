//! Interop with a client nobody here wrote: the official MCP Python SDK
//! (`pip install -r tests/mcp/requirements.txt`, done by .ci/run) drives the
//! sidecar's MCP endpoint: initialize or discover, list tools, an allowed
//! call, a denied one; `notifications/tools/list_changed` when a grant is
//! revoked, on a session's stream and on a 2026-07-28 subscription;
//! `notifications/resources/updated` when a message arrives in the inbox a
//! session subscribed to; and a client of an older revision.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::sidecar::{ControlPlane, Sidecar, token_for};
use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use wopr_operator::api::{Capability, SourceRef, TrustLevel};
use wopr_operator::inbox::{InboxMessage, MessageKind};

#[tokio::test(flavor = "multi_thread")]
async fn the_official_mcp_sdk_talks_to_the_sidecar_and_hears_of_revoked_grants() {
    let mut control_plane = ControlPlane::start(&["research"]).await;
    // semi-trusted holds only `inject` here, so memory tools need the grant.
    control_plane.put_policy(security_policy(
        json!({"trustLevels": {"semi-trusted": {"capabilities": ["inject"]}}}),
    ));
    control_plane.put_session(session("research", TrustLevel::SemiTrusted));
    let grant = session_grant("memory", "research", &[Capability::InjectTools]);
    control_plane.put_grant(grant.clone());
    let sidecar = Sidecar::start(
        &control_plane.address.to_string(),
        "research",
        &token_for("research"),
    )
    .await;
    sidecar
        .wait_for_policy(|p| p.is_some_and(|p| p.context.capabilities.has(Capability::InjectTools)))
        .await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/sdk_client.py");
    let url = format!("http://{}/mcp", sidecar.mcp);
    let mut client = tokio::process::Command::new("python3")
        .args([script, &url])
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stderr = client.stderr.take().unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "listening" {
                // What the control plane's index sees when a Grant is deleted.
                control_plane.delete_grant(grant.clone());
                // A message arrives in the inbox.
                let message = InboxMessage::new(
                    now(),
                    NAMESPACE,
                    "research",
                    SourceRef {
                        source_type: "session".into(),
                        identity: "lead".into(),
                        trust_level: TrustLevel::Trusted,
                    },
                    MessageKind::Message,
                    json!({"hello": "research"}),
                );
                sidecar.engine.inbox().hold(1, message);
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
        client.wait().await.unwrap()
    };
    let status = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the MCP SDK client finishes within a minute");
    let mut errors = String::new();
    stderr.read_to_string(&mut errors).await.unwrap();
    assert!(
        status.success(),
        "the MCP SDK client failed ({status}; is the `mcp` package installed? pip install -r tests/mcp/requirements.txt)\nstdout:\n{stdout}\nstderr:\n{errors}"
    );
    for expected in [
        "allowed call ok, denied call refused",
        "2025-11-25: notifications/tools/list_changed, then tools:",
        "2026-07-28: subscriptions/listen tools_list_changed, then tools:",
        "notifications/resources/updated wopr://inbox, then read it",
        "older revision 2025-03-26:",
        "mcp sdk interop: ok",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    println!("{stdout}");
}
