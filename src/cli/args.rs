//! The command line of `kubectl wopr`: the WOPR CLI's commands, with
//! kubectl's cluster flags and output formats. Every leaf command's help
//! ends with an example (`tests/cli_help.rs` checks each one).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::CliError;
use crate::api::{Capability, TrustLevel};
use crate::audit::EventType;

/// The WOPR security model on Kubernetes: sessions, trust levels, grants,
/// gateways, approvals and the audit trail.
#[derive(Parser, Debug)]
#[command(name = "kubectl-wopr", bin_name = "kubectl wopr", version)]
#[command(
    after_help = "Exit codes: 0 done, 1 usage, 2 not found, 3 refused by the server (a port-forward your RBAC does not allow included), \
4 cluster or control plane unreachable (no Ready controller pod to port-forward to, or no answer within --request-timeout), 5 a check failed (security verify, security audit --verify)."
)]
pub struct Cli {
    #[command(flatten)]
    pub cluster: ClusterFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// Where to connect, as kubectl has them.
#[derive(Args, Debug, Clone)]
pub struct ClusterFlags {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The kubeconfig cluster to use.
    #[arg(long, global = true)]
    pub cluster: Option<String>,
    /// The kubeconfig user to use.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// The namespace (default: the context's namespace, then `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The control plane's gRPC address (host:port or https://host:port;
    /// http://host:port only with --insecure-plaintext), for `security
    /// audit`, `security migrate` and `session inject`. Without it they
    /// reach a ready controller pod through the API server's port-forward,
    /// as `kubectl port-forward` does (which needs list on pods, get and
    /// create on pods/portforward, and get on the ConfigMap wopr-ca-bundle,
    /// in --operator-namespace: the Role wopr-control-plane-client there).
    #[arg(long, global = true, env = "WOPR_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// The namespace the operator runs in, where a port-forward without
    /// --control-plane finds its controller pods and its CA bundle.
    #[arg(
        long,
        global = true,
        env = "WOPR_OPERATOR_NAMESPACE",
        default_value = super::portforward::DEFAULT_OPERATOR_NAMESPACE
    )]
    pub operator_namespace: String,
    /// The CA bundle the control plane's certificate is verified against:
    /// the `ca.crt` of the ConfigMap `wopr-ca-bundle` in a namespace with
    /// Sessions. Through a port-forward it is read from that ConfigMap in
    /// --operator-namespace when not given.
    #[arg(long, global = true, env = "WOPR_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,
    /// The name the control plane's certificate must carry, when not the
    /// host of --control-plane (a port-forwarded localhost, say).
    #[arg(long, global = true, env = "WOPR_CONTROL_PLANE_SERVER_NAME")]
    pub control_plane_server_name: Option<String>,
    /// Talk to the control plane in plaintext: for development only.
    #[arg(long, global = true, env = "WOPR_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// The bearer token presented to the control plane (default: the
    /// kubeconfig user's token).
    #[arg(long, global = true, env = "WOPR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long to wait for each answer of the API server and the control
    /// plane (and for each connection) before giving up with exit code 4:
    /// a number and a unit of s, m or h (30s, 2m).
    #[arg(
        long,
        global = true,
        env = "WOPR_REQUEST_TIMEOUT",
        default_value = "30s",
        value_parser = parse_timeout
    )]
    pub request_timeout: Duration,
}

/// How a command prints what it found.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns, as kubectl prints.
    #[default]
    Table,
    Json,
    Yaml,
}

/// `-o json|yaml|table`.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct Printing {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trust levels, grants, gateways, approvals, policy and the audit trail.
    #[command(subcommand)]
    Security(SecurityCommand),
    /// Agent sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Change settings by the WOPR CLI's dotted paths.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
pub enum SecurityCommand {
    /// The effective policy of a session, or without one the namespace's.
    #[command(
        after_help = "Examples:\n  kubectl wopr security status\n  kubectl wopr security status research-agent -o yaml"
    )]
    Status {
        /// The session.
        session: Option<String>,
        #[command(flatten)]
        printing: Printing,
    },
    /// Who the API server says you are, and the trust that applies to you.
    #[command(after_help = "Example:\n  kubectl wopr security whoami")]
    Whoami {
        #[command(flatten)]
        printing: Printing,
    },
    /// Give a peer or a session capabilities, or a trust level's profile.
    #[command(
        after_help = "Examples:\n  kubectl wopr security grant research-agent inject,inject.tools,inject.network\n  kubectl wopr security grant session:research-agent a2a.call cross.inject\n  kubectl wopr security grant MCowBQYDK2VwAyEAq1Jm4kTXJ6lf9bSVVuH0bWv0Fh3fAfZFNrgR0hA1HOU= --profile semi-trusted --sessions p2p-gateway --expires 720h\n  kubectl wopr security grant serviceaccount:ci/task-bot --profile untrusted --sessions p2p-gateway"
    )]
    Grant(GrantArgs),
    /// Remove every Grant of a subject.
    #[command(after_help = "Example:\n  kubectl wopr security revoke session:research-agent")]
    Revoke {
        /// PEER-KEY, NAME or session:NAME, or serviceaccount:NAMESPACE/NAME.
        subject: String,
        #[command(flatten)]
        printing: Printing,
    },
    /// The namespace's Grants, with state, expiry and last use.
    #[command(after_help = "Example:\n  kubectl wopr security list-grants -n agents")]
    ListGrants {
        #[command(flatten)]
        printing: Printing,
    },
    /// Invites for WOPR peers (`wop1://` tokens a peer claims for a Grant).
    #[command(subcommand)]
    Invite(InviteCommand),
    /// Gateways, their forward rules and the approval queue.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Set a session's or a trust level's sandbox and tool rules.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Query the audit trail.
    #[command(
        after_help = "Examples:\n  kubectl wopr security audit --denied --last 20\n  kubectl wopr security audit --denied --since \"1 week ago\"\n  kubectl wopr security audit --session research-agent --since 1w --format json --output week.json\n  kubectl wopr security audit --stale-grants\n  kubectl wopr security audit --verify\n  kubectl wopr security audit --follow --denied"
    )]
    Audit(AuditArgs),
    /// Run the WOPR verification checklist on the namespace.
    #[command(
        after_help = "Example:\n  kubectl wopr security verify -n agents || echo 'fix the failing checks'"
    )]
    Verify {
        #[command(flatten)]
        printing: Printing,
    },
    /// From warn mode's would_deny events, the Grants that would let them
    /// pass, as YAML to review and apply.
    #[command(
        after_help = "Example:\n  kubectl wopr security migrate --since 1w > grants.yaml && kubectl apply -f grants.yaml"
    )]
    Migrate {
        /// How far back to read: a duration (1w, 24h, "1 week ago") or an
        /// RFC 3339 time.
        #[arg(long, default_value = "1w")]
        since: String,
        /// The table form is the Grants as commented YAML; `-o json|yaml`
        /// gives them as a kubectl List.
        #[command(flatten)]
        printing: Printing,
    },
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// PEER-KEY (a base64 Ed25519 public key), a session's NAME (or
    /// session:NAME), or serviceaccount:NAMESPACE/NAME (a workload).
    pub subject: String,
    /// Capabilities to give, comma- or space-separated (inject,
    /// inject.tools, inject.network, inject.exec, session.spawn,
    /// cross.inject, config.write, a2a.call).
    #[arg(
        conflicts_with = "profile",
        required_unless_present = "profile",
        value_delimiter = ',',
        value_parser = parse_capability
    )]
    pub capabilities: Vec<Capability>,
    /// Give a trust level's capabilities instead (never owner).
    #[arg(long, value_parser = parse_grantable_level)]
    pub profile: Option<TrustLevel>,
    /// For a peer or a service account: only in these sessions
    /// (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub sessions: Vec<String>,
    /// When the grant starts counting: a duration from now (1h, "2 days")
    /// or an RFC 3339 time. At once when absent.
    #[arg(long)]
    pub not_before: Option<String>,
    /// When the grant ends: a duration from now (24h, 30d, "1 week") or an
    /// RFC 3339 time.
    #[arg(long)]
    pub expires: Option<String>,
    #[command(flatten)]
    pub printing: Printing,
}

#[derive(Subcommand, Debug)]
pub enum InviteCommand {
    /// Sign an invite for one peer with the namespace's ingress key. The
    /// peer claims it through the peer ingress once, and gets a Grant; you
    /// need what writing that Grant needs.
    #[command(
        after_help = "Example:\n  kubectl wopr security invite create --peer MCowBQYDK2VwAyEAq1Jm4kTXJ6lf9bSVVuH0bWv0Fh3fAfZFNrgR0hA1HOU= --session p2p-gateway --cap inject --expires 168h"
    )]
    Create(InviteArgs),
}

#[derive(Args, Debug)]
pub struct InviteArgs {
    /// The invited peer's public key (SPKI DER, base64).
    #[arg(long)]
    pub peer: String,
    /// A session the Grant reaches (repeat, or comma-separate; `*`: all).
    #[arg(long = "session", value_delimiter = ',', required = true)]
    pub sessions: Vec<String>,
    /// A capability, by WOPR's names (`inject` is inject and inject.tools).
    #[arg(long = "cap", value_delimiter = ',', required = true)]
    pub capabilities: Vec<String>,
    /// How long the invite may be claimed (Go duration: 168h, 30m).
    #[arg(long, default_value = "168h")]
    pub expires: String,
    #[command(flatten)]
    pub printing: Printing,
}

#[derive(Subcommand, Debug)]
pub enum GatewayCommand {
    /// The namespace's Gateways.
    #[command(after_help = "Example:\n  kubectl wopr security gateway list")]
    List {
        #[command(flatten)]
        printing: Printing,
    },
    /// Make a session a gateway (with no forward rules: it forwards nothing
    /// until you add some with `config set`).
    #[command(after_help = "Example:\n  kubectl wopr security gateway add p2p-gateway")]
    Add {
        /// The session that receives the untrusted input.
        session: String,
        #[command(flatten)]
        printing: Printing,
    },
    /// The forward rules of one gateway's session, or of every gateway.
    #[command(
        after_help = "Examples:\n  kubectl wopr security gateway rules p2p-gateway\n  kubectl wopr security gateway rules --all"
    )]
    Rules {
        /// The gateway's session.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        session: Option<String>,
        /// Every gateway.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        printing: Printing,
    },
    /// Requests waiting for a human decision.
    #[command(after_help = "Example:\n  kubectl wopr security gateway queue")]
    Queue {
        #[command(flatten)]
        printing: Printing,
    },
    /// Approve a waiting request, as you.
    #[command(
        after_help = "Example:\n  kubectl wopr security gateway approve 01JDX3M4Q7 --reason 'checked the command'"
    )]
    Approve(DecideArgs),
    /// Deny a waiting request, as you.
    #[command(
        after_help = "Example:\n  kubectl wopr security gateway deny 01JDX3M4Q7 --reason 'not from a known peer'"
    )]
    Deny(DecideArgs),
}

#[derive(Args, Debug)]
pub struct DecideArgs {
    /// The request's id (the ApprovalRequest's name).
    pub id: String,
    /// Why, recorded on the request.
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub printing: Printing,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Set sandbox and tool rules of a session, or with --trust-level of a
    /// level in the namespace's SecurityPolicy (server-side apply as
    /// kubectl-wopr).
    #[command(
        after_help = "Examples:\n  kubectl wopr security policy set research-agent --sandbox enabled --tools.deny exec_command\n  kubectl wopr security policy set --trust-level semi-trusted --sandbox enabled --tools.allow memory_read,memory_write\n  kubectl wopr security policy set research-agent --tools.rules.http_fetch.allowHosts api.github.com,*.arxiv.org --tools.rules.http_fetch.denyHosts 169.254.169.254"
    )]
    Set(PolicySetArgs),
}

/// The `tools.rules` flags of `security policy set`.
#[derive(Args, Debug, Default)]
pub struct RuleFlags {
    /// Hosts http_fetch may reach: names, *.suffix, *, addresses, CIDRs.
    #[arg(long = "tools.rules.http_fetch.allowHosts", value_delimiter = ',')]
    pub allow_hosts: Option<Vec<String>>,
    /// Hosts http_fetch may never reach.
    #[arg(long = "tools.rules.http_fetch.denyHosts", value_delimiter = ',')]
    pub deny_hosts: Option<Vec<String>>,
    /// Commands (argv[0] globs) exec_command may run.
    #[arg(long = "tools.rules.exec_command.allowCommands", value_delimiter = ',')]
    pub allow_commands: Option<Vec<String>>,
    /// Argument globs exec_command refuses.
    #[arg(
        long = "tools.rules.exec_command.denyArgs",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub deny_args: Option<Vec<String>>,
    /// Workspace path globs memory_read may read.
    #[arg(long = "tools.rules.memory_read.paths", value_delimiter = ',')]
    pub read_paths: Option<Vec<String>>,
    /// Workspace path globs memory_write may write.
    #[arg(long = "tools.rules.memory_write.paths", value_delimiter = ',')]
    pub write_paths: Option<Vec<String>>,
}

impl RuleFlags {
    /// Each flag given, as (tool, field, entries).
    pub fn given(&self) -> Vec<(&'static str, &'static str, &[String])> {
        [
            ("http_fetch", "allowHosts", &self.allow_hosts),
            ("http_fetch", "denyHosts", &self.deny_hosts),
            ("exec_command", "allowCommands", &self.allow_commands),
            ("exec_command", "denyArgs", &self.deny_args),
            ("memory_read", "paths", &self.read_paths),
            ("memory_write", "paths", &self.write_paths),
        ]
        .into_iter()
        .filter_map(|(tool, field, entries)| Some((tool, field, entries.as_deref()?)))
        .collect()
    }
}

#[derive(Args, Debug)]
pub struct PolicySetArgs {
    /// The session (omit with --trust-level).
    #[arg(
        required_unless_present = "trust_level",
        conflicts_with = "trust_level"
    )]
    pub session: Option<String>,
    /// The trust level whose profile to set.
    #[arg(long)]
    pub trust_level: Option<TrustLevel>,
    /// enabled or disabled.
    #[arg(long, value_enum)]
    pub sandbox: Option<Toggle>,
    /// Tools to allow (comma-separated; replaces the list).
    #[arg(long = "tools.allow", value_delimiter = ',')]
    pub tools_allow: Option<Vec<String>>,
    /// Tools to deny (comma-separated; replaces the list).
    #[arg(long = "tools.deny", value_delimiter = ',')]
    pub tools_deny: Option<Vec<String>>,
    /// Argument rules (`tools.rules`), each comma-separated and replacing
    /// its list; an empty value sets an empty list.
    #[command(flatten)]
    pub rules: RuleFlags,
    /// Take over fields another manager (a GitOps tool) owns.
    #[arg(long)]
    pub force_conflicts: bool,
    #[command(flatten)]
    pub printing: Printing,
}

/// `enabled` or `disabled`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggle {
    Enabled,
    Disabled,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only denials (denied and would_deny).
    #[arg(long)]
    pub denied: bool,
    /// The newest N events.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub last: u32,
    /// Only events about this capability.
    #[arg(long, value_parser = parse_capability)]
    pub capability: Option<Capability>,
    /// Only this session's events.
    #[arg(long)]
    pub session: Option<String>,
    /// Only events of this type (tool_call, injection, forward, approval,
    /// grant, rate_limited, policy, model_call).
    #[arg(long = "type", value_parser = parse_event_type)]
    pub event_type: Option<EventType>,
    /// Only events since: a duration back from now (1w, 24h, "1 week ago",
    /// "3 days ago") or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "format", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Instead of events: Grants unused for --stale-days or expired but present.
    #[arg(long, conflicts_with = "verify")]
    pub stale_grants: bool,
    /// Instead of events: walk the namespace's chain of events and name the
    /// first one edited, deleted or reordered (exit 5 when broken).
    #[arg(long)]
    pub verify: bool,
    /// With --stale-grants: days without use that make a grant stale.
    #[arg(long, default_value_t = 30)]
    pub stale_days: u32,
    /// Keep printing events as they are stored, oldest first, until
    /// interrupted (Ctrl-C); the filters apply, --last and --since do not.
    #[arg(long, conflicts_with_all = ["verify", "stale_grants", "output", "last", "since"])]
    pub follow: bool,
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Create a session.
    #[command(
        after_help = "Without --trust-level a session is untrusted (sandboxed, message only): the SecurityPolicy names no default level for new sessions, so none higher is assumed.\n\nExamples:\n  kubectl wopr session create sandbox-agent \"You are a sandboxed assistant\" --provider openai\n  kubectl wopr session create research-agent \"You research papers\" --trust-level semi-trusted --provider anthropic --model claude-sonnet"
    )]
    Create(SessionCreateArgs),
    /// The namespace's sessions.
    #[command(after_help = "Example:\n  kubectl wopr session list -o json")]
    List {
        #[command(flatten)]
        printing: Printing,
    },
    /// Set a session's model provider.
    #[command(
        after_help = "Example:\n  kubectl wopr session set-provider research-agent anthropic --model claude-sonnet --fallback openai:gpt-5,local"
    )]
    SetProvider(SetProviderArgs),
    /// Tokens each session's model calls used, per minute and per UTC day,
    /// against its budgets.
    #[command(
        after_help = "Reads the model_call events of the audit trail (as security audit --type model_call does).\n\nExample:\n  kubectl wopr session usage research-agent"
    )]
    Usage {
        /// The session (default: every session with a provider).
        name: Option<String>,
        #[command(flatten)]
        printing: Printing,
    },
    /// Send a message to a session's agent, as you.
    #[command(
        after_help = "Needs create on sessions/inject (ClusterRole wopr-session-injector) and, for a person, use on trustlevels.wopr.dev named the session's trust level (ClusterRole wopr-trust-<level>); edit holds the first, and the second up to semi-trusted. A service account needs a Grant instead of the second.\n\nExample:\n  kubectl wopr session inject research-agent \"Summarize today's papers\""
    )]
    Inject {
        /// The session.
        name: String,
        /// The message.
        message: String,
        #[command(flatten)]
        printing: Printing,
    },
}

#[derive(Args, Debug)]
pub struct SessionCreateArgs {
    pub name: String,
    /// The agent's prompt.
    pub prompt: String,
    /// The session's trust level (default: untrusted).
    #[arg(long)]
    pub trust_level: Option<TrustLevel>,
    #[arg(long)]
    pub provider: Option<String>,
    #[arg(long, requires = "provider")]
    pub model: Option<String>,
    #[command(flatten)]
    pub printing: Printing,
}

#[derive(Args, Debug)]
pub struct SetProviderArgs {
    pub name: String,
    pub provider: String,
    #[arg(long)]
    pub model: Option<String>,
    /// Fallbacks in order, as PROVIDER[:MODEL] (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub fallback: Vec<String>,
    /// Take over fields another manager (a GitOps tool) owns.
    #[arg(long)]
    pub force_conflicts: bool,
    #[command(flatten)]
    pub printing: Printing,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Set a value by its dotted path (`kubectl wopr config set --help`
    /// lists them).
    #[command(
        after_help = "Paths:\n  security.enforcement warn|enforce\n  security.p2p.autoAccept true|false\n  security.p2p.discoveryTrust LEVEL\n  security.audit.retention DURATION\n  security.audit.denialEvents true|false\n  security.gateway.approvalTimeout.<gateway> DURATION\n  security.gateway.forwardRules.<gateway>[.<rule>].allowForwardTo a,b|'[\"a\",\"b\"]'\n  security.gateway.forwardRules.<gateway>[.<rule>].allowActions a,b|'[\"a\",\"b\"]'\n  security.gateway.forwardRules.<gateway>[.<rule>].requireApproval true|false\n  security.gateway.forwardRules.<gateway>[.<rule>].rateLimit[.perMinute] PER_MINUTE\n\nExamples:\n  kubectl wopr config set security.enforcement warn\n  kubectl wopr config set security.gateway.forwardRules.external-gateway.allowForwardTo '[\"internal-processor\"]'\n  kubectl wopr config set security.gateway.forwardRules.external-gateway.rateLimit.perMinute 10\n  kubectl wopr config set security.gateway.forwardRules.p2p-gateway.1.rateLimit.perMinute 5"
    )]
    Set {
        /// The dotted path.
        path: String,
        /// The value.
        value: String,
        /// Take over fields another manager (a GitOps tool) owns.
        #[arg(long)]
        force_conflicts: bool,
        #[command(flatten)]
        printing: Printing,
    },
}

/// A capability a Grant may give: every one but the wildcard.
fn parse_event_type(value: &str) -> Result<EventType, CliError> {
    crate::api::from_name(value).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown event type {value:?}: use tool_call, injection, forward, approval, grant, rate_limited, policy or model_call"
        ))
    })
}

fn parse_capability(value: &str) -> Result<Capability, CliError> {
    match value.parse::<Capability>() {
        Ok(Capability::All) => Err(CliError::Usage(
            "a Grant can never give the wildcard '*'".into(),
        )),
        Ok(capability) => Ok(capability),
        Err(_) => Err(CliError::Usage(format!(
            "unknown capability {value:?}: use one of {}",
            Capability::ALL
                .iter()
                .filter(|c| **c != Capability::All)
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `--request-timeout`: a duration ([`super::time::parse_duration`]).
fn parse_timeout(value: &str) -> Result<Duration, CliError> {
    let duration = super::time::parse_duration(value)?;
    Duration::try_from(duration).map_err(|error| CliError::Usage(error.to_string()))
}

/// A trust level a Grant may give: every one but owner.
fn parse_grantable_level(value: &str) -> Result<TrustLevel, CliError> {
    match value.parse::<TrustLevel>() {
        Ok(TrustLevel::Owner) => Err(CliError::Usage(
            "a Grant can never give the owner profile: owner is set on a Session only".into(),
        )),
        Ok(level) => Ok(level),
        Err(_) => Err(CliError::Usage(format!(
            "unknown trust level {value:?}: use trusted, semi-trusted or untrusted"
        ))),
    }
}
