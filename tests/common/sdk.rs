//! The official OpenAI and Anthropic Python SDKs, unmodified, run as child
//! processes against a model proxy (tests/models/*.py).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use wopr_operator::contract::{PLACEHOLDER_API_KEY, env};

/// Runs `tests/models/{script}` with `python3` (a child process, never
/// blocking the runtime), the SDK pointed at `sidecar` by its variables
/// only; its stdout. Fails (never skips) when the SDKs are missing.
pub async fn python(script: &str, mode: &str, models: SocketAddr, model: &str) -> String {
    let path = format!("{}/tests/models/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut command = tokio::process::Command::new("python3");
    command
        .args([path.as_str(), mode])
        .env(env::AGENT_OPENAI_BASE_URL, format!("http://{models}/v1"))
        .env(env::AGENT_ANTHROPIC_BASE_URL, format!("http://{models}"))
        .env(env::AGENT_OPENAI_API_KEY, PLACEHOLDER_API_KEY)
        .env(env::AGENT_ANTHROPIC_API_KEY, PLACEHOLDER_API_KEY)
        .env("WOPR_TEST_MODEL", model)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the SDK client finishes within a minute")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} {mode} failed ({}; are the SDKs installed? run hack/test.sh, which pip-installs tests/models/requirements.txt)\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
