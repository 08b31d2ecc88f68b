//! The `wopr-operator` binary.

use std::{fs, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use wopr_operator::api;

/// Kubernetes operator for the WOPR agent-security model.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { output_dir } => print_crds(output_dir),
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
