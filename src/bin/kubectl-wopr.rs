//! `kubectl-wopr`, the kubectl plugin: `kubectl wopr security …`,
//! `kubectl wopr session …`, `kubectl wopr config …`. Parses, connects as
//! kubectl would, runs the command and prints; every failure is one line
//! on stderr and a documented exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use k8s_openapi::jiff::Timestamp;
use wopr_operator::cli::connect::{self, ControlPlane};
use wopr_operator::cli::{self, Cli, CliError, Context};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; every other
        // parse failure, a missing subcommand included, is a usage error,
        // exit 1 (clap's own is 2, which here means "not found").
        Err(error) => {
            let _ = error.print();
            return match error.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let format = cli::format_of(&cli.command);
    let (client, config) = connect::cluster(&cli.cluster).await?;
    let context = Context {
        control_plane: ControlPlane::from_flags(&cli.cluster, &config, &client),
        client,
        namespace: connect::namespace(&cli.cluster, &config),
        now: Timestamp::now(),
    };
    let shown = cli::run(cli.command, &context).await?;
    let text = shown.render(format)?;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    if shown.failed_checks.is_empty() {
        Ok(())
    } else {
        Err(CliError::ChecksFailed(shown.failed_checks))
    }
}
