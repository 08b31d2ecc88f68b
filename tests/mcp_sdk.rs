//! Interop with a client nobody here wrote: the official MCP Python SDK
//! (`pip install -r tests/mcp/requirements.txt`, done by .ci/run) drives the
//! sidecar's MCP endpoint: initialize, list tools, an allowed call, a denied one.

mod common;

use common::sidecar::{ControlPlane, Sidecar, token_for};
use common::*;
use wopr_operator::api::TrustLevel;

#[tokio::test(flavor = "multi_thread")]
async fn the_official_mcp_sdk_talks_to_the_sidecar() {
    let mut control_plane = ControlPlane::start(&["research"]).await;
    control_plane.put_session(session("research", TrustLevel::SemiTrusted));
    let sidecar = Sidecar::start(
        &control_plane.address.to_string(),
        "research",
        &token_for("research"),
    )
    .await;
    sidecar.wait_for_policy(|policy| policy.is_some()).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/sdk_client.py");
    let url = format!("http://{}/mcp", sidecar.mcp);
    let output = tokio::process::Command::new("python3")
        .args([script, &url])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the MCP SDK client failed (is the `mcp` package installed? pip install -r tests/mcp/requirements.txt)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("mcp sdk interop: ok"), "{stdout}");
    assert!(stdout.contains("denied call:"), "{stdout}");
    println!("{stdout}");
}
