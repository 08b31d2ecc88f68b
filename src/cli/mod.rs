//! `kubectl wopr`: the WOPR security CLI as a kubectl plugin. Each command
//! maps onto the Kubernetes API (our custom resources, read and written as
//! the person running it, so RBAC and admission decide) or, for the audit
//! trail, onto the control plane's Audit service with the person's own
//! credential.
//!
//! A command is a function of a [`Context`] (a client, a namespace, the
//! time) returning what it [`Shown`]: a table for people and the same
//! result as API objects for `-o json|yaml`. The binary
//! (`src/bin/kubectl-wopr.rs`) only parses, connects and prints, so every
//! command is tested in-process against a mock API server.

pub mod args;
mod audit;
mod config;
pub mod connect;
mod error;
mod gateway;
mod grants;
mod invites;
mod objects;
pub mod output;
pub use audit::follow;
mod policy_set;
pub mod portforward;
mod session;
mod status;
mod time;
mod usage;
mod verify;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{PatchParams, PostParams};

pub use args::{Cli, Command, Format};
pub use error::CliError;
pub use output::Shown;
pub use status::{NamespaceReport, SessionReport};

use args::{
    ConfigCommand, GatewayCommand, InviteCommand, PolicyCommand, SecurityCommand, SessionCommand,
};

/// The field manager of the CLI's server-side applies and creates, so
/// `managedFields` (and GitOps tools reading them) show what a person
/// changed with `kubectl wopr` rather than through the operator or a
/// manifest.
pub const CLI_FIELD_MANAGER: &str = "kubectl-wopr";

/// What every command works with.
#[derive(Clone)]
pub struct Context {
    /// The API server, as the person running the command.
    pub client: Client,
    /// The namespace commands act in.
    pub namespace: String,
    /// The time now (fixed in tests).
    pub now: Timestamp,
    /// The control plane, for the audit trail and messages.
    pub control_plane: connect::ControlPlane,
}

impl Context {
    /// Server-side apply as [`CLI_FIELD_MANAGER`]; `force` takes over fields
    /// another manager owns (`--force-conflicts`), as kubectl does.
    pub fn apply_params(&self, force: bool) -> PatchParams {
        let params = PatchParams::apply(CLI_FIELD_MANAGER);
        if force { params.force() } else { params }
    }

    /// A create as [`CLI_FIELD_MANAGER`].
    pub fn create_params(&self) -> PostParams {
        PostParams {
            field_manager: Some(CLI_FIELD_MANAGER.into()),
            ..PostParams::default()
        }
    }

    /// A merge patch as [`CLI_FIELD_MANAGER`].
    pub fn merge_params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(CLI_FIELD_MANAGER.into()),
            ..PatchParams::default()
        }
    }
}

/// The output format a command asked for.
pub fn format_of(command: &Command) -> Format {
    match command {
        Command::Security(command) => match command {
            SecurityCommand::Status { printing, .. }
            | SecurityCommand::Whoami { printing }
            | SecurityCommand::Revoke { printing, .. }
            | SecurityCommand::ListGrants { printing }
            | SecurityCommand::Verify { printing }
            | SecurityCommand::Migrate { printing, .. } => printing.format,
            SecurityCommand::Grant(args) => args.printing.format,
            SecurityCommand::Invite(InviteCommand::Create(args)) => args.printing.format,
            SecurityCommand::Gateway(command) => match command {
                GatewayCommand::List { printing }
                | GatewayCommand::Add { printing, .. }
                | GatewayCommand::Rules { printing, .. }
                | GatewayCommand::Queue { printing } => printing.format,
                GatewayCommand::Approve(args) | GatewayCommand::Deny(args) => args.printing.format,
            },
            SecurityCommand::Policy(PolicyCommand::Set(args)) => args.printing.format,
            // --follow has printed each event as it came: nothing after.
            SecurityCommand::Audit(args) if args.follow => Format::Table,
            SecurityCommand::Audit(args) => args.format,
        },
        Command::Session(command) => match command {
            SessionCommand::Create(args) => args.printing.format,
            SessionCommand::List { printing }
            | SessionCommand::Inject { printing, .. }
            | SessionCommand::Usage { printing, .. } => printing.format,
            SessionCommand::SetProvider(args) => args.printing.format,
        },
        Command::Config(ConfigCommand::Set { printing, .. }) => printing.format,
    }
}

/// Runs `command`: what to print, or why it failed.
pub async fn run(command: Command, context: &Context) -> Result<Shown, CliError> {
    match command {
        Command::Security(command) => match command {
            SecurityCommand::Status { session, .. } => status::status(context, session).await,
            SecurityCommand::Whoami { .. } => status::whoami(context).await,
            SecurityCommand::Grant(args) => grants::grant(context, args).await,
            SecurityCommand::Invite(InviteCommand::Create(args)) => {
                invites::create(context, args).await
            }
            SecurityCommand::Revoke { subject, .. } => grants::revoke(context, &subject).await,
            SecurityCommand::ListGrants { .. } => grants::list(context).await,
            SecurityCommand::Gateway(command) => gateway::run(context, command).await,
            SecurityCommand::Policy(PolicyCommand::Set(args)) => {
                policy_set::set(context, args).await
            }
            SecurityCommand::Audit(args) if args.follow => {
                let interrupted = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                audit::follow(context, &args, &mut std::io::stdout(), interrupted).await
            }
            SecurityCommand::Audit(args) => audit::audit(context, args).await,
            SecurityCommand::Verify { .. } => verify::verify(context).await,
            SecurityCommand::Migrate { since, .. } => audit::migrate(context, &since).await,
        },
        Command::Session(command) => session::run(context, command).await,
        Command::Config(ConfigCommand::Set {
            path,
            value,
            force_conflicts,
            ..
        }) => config::set(context, &path, &value, force_conflicts).await,
    }
}
