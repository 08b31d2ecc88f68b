//! The `wopr-operator` binary.

use std::process::ExitCode;
use std::time::Duration;
use std::{fs, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use wopr_operator::api;
use wopr_operator::demo_agent::{self, DemoAgentArgs};
use wopr_operator::egress;
use wopr_operator::egress::run::EgressArgs;
use wopr_operator::logging::{self, LogFormat};
use wopr_operator::operator;
use wopr_operator::operator::args::ControllerArgs;
use wopr_operator::sidecar;
use wopr_operator::sidecar::ready::ReadyArgs;
use wopr_operator::sidecar::run::SidecarArgs;

/// Kubernetes operator for the WOPR agent-security model.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, env = "WOPR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CRD as one multi-document YAML stream.
    Crd {
        /// Instead of printing, write one file per CRD into this directory.
        #[arg(long, env = "WOPR_CRD_OUTPUT_DIR")]
        output_dir: Option<PathBuf>,
    },
    /// Run the controller: reconcile Sessions into hardened sandbox pods,
    /// and serve the control-plane API.
    Controller(Box<ControllerArgs>),
    /// Run a session's sidecar: serve the agent the tools its policy allows.
    Sidecar(Box<SidecarArgs>),
    /// Run the egress service: relay sessions' model calls to their
    /// providers with the keys no session pod holds.
    Egress(Box<EgressArgs>),
    /// Wait until the sidecar in this pod lets the agent start (the sidecar
    /// container's postStart hook).
    SidecarReady(ReadyArgs),
    /// Run the demo agent: use this pod's sidecar over MCP as an agent
    /// would and print what it allows and refuses.
    DemoAgent(DemoAgentArgs),
}

/// How long the runtime waits for blocking work (a DNS lookup, say) once
/// the command is done.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// Errors end the process with one line on stderr, what went wrong and
/// what to do, and exit code 1.
fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    // The process's one crypto provider (ring, as every TLS config of ours
    // names explicitly), for the clients that take the process default:
    // reqwest (built with `rustls-no-provider`) inside rmcp's MCP client,
    // which the demo agent uses, panics without one.
    let _ = wopr_operator::tls::server::provider().install_default();
    match run_command(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Crd { output_dir } => print_crds(output_dir),
        Command::Controller(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let result = runtime.block_on(operator::run(*args, shutdown_signal()));
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            Ok(result?)
        }
        Command::Sidecar(args) => {
            let runtime = sidecar::run::runtime().context("starting the runtime")?;
            let result = runtime.block_on(sidecar::run::run(*args, shutdown_signal()));
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            Ok(result?)
        }
        Command::Egress(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let result = runtime.block_on(egress::run::run(*args, shutdown_signal()));
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            Ok(result?)
        }
        Command::SidecarReady(args) => {
            let runtime = sidecar::run::runtime().context("starting the runtime")?;
            Ok(runtime.block_on(sidecar::ready::wait(&args))?)
        }
        Command::DemoAgent(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let result = runtime.block_on(demo_agent::run(args, shutdown_signal()));
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            Ok(result?)
        }
    }
}

fn print_crds(output_dir: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(dir) = &output_dir {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for crd in api::crds() {
        let yaml = api::crd_yaml(&crd).context("serializing a CRD")?;
        match &output_dir {
            Some(dir) => {
                let path = dir.join(api::crd_file_name(&crd));
                fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("{yaml}"),
        }
    }
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
