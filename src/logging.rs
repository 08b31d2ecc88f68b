//! The binary's logs: to stderr (stdout carries the sidecar's audit lines),
//! filtered by `RUST_LOG` (default `info`), coloured only on a terminal.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// The filter without `RUST_LOG`. kube's client logs every failed request
/// at ERROR, and each failure reaches the user through its caller anyway
/// (a start-up error, a watch retry, a reconcile error), so it is off. The
/// MCP SDK logs five INFO lines for every request it serves and a WARN for
/// every refused call: tool calls are the audit log's to record (an agent
/// probing for tools must not flood the logs), so errors only.
const DEFAULT_FILTER: &str = "info,kube_client::client::builder=off,rmcp=error";

/// Installs the global logger. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
