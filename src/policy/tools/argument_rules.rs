//! `tools.rules`: what a call's arguments may say, checked before every
//! call whatever the tool list showed. Pure: [`ArgumentRulesInForce::of`]
//! combines the layers, [`check`] judges one parsed call.
//!
//! A refusal names the rule that refused it: the tool exists for this
//! caller (its capability and the tool lists let it through), so naming
//! the rule leaks nothing, and the agent learns what to change.

use core::net::IpAddr;
use std::path::{Component, Path};

use ipnet::IpNet;
use serde::Serialize;
use url::Host;

use super::ToolCall;
use super::arguments::{CommandRun, FetchRequest, WorkspacePath, WorkspaceWrite};
use crate::api::ArgumentRules;
use crate::policy::glob::glob;

/// The argument rules a session's calls are held to: each allow-list from
/// the most specific layer that sets one (`None`: no such list), each
/// deny-list every layer's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgumentRulesInForce {
    /// `tools.rules.http_fetch.allowHosts`.
    pub allow_hosts: Option<Vec<String>>,
    /// `tools.rules.http_fetch.denyHosts`.
    pub deny_hosts: Vec<String>,
    /// `tools.rules.exec_command.allowCommands`.
    pub allow_commands: Option<Vec<String>>,
    /// `tools.rules.exec_command.denyArgs`.
    pub deny_args: Vec<String>,
    /// `tools.rules.memory_read.paths`.
    pub read_paths: Option<Vec<String>>,
    /// `tools.rules.memory_write.paths`.
    pub write_paths: Option<Vec<String>>,
}

/// The names of the rules, as a refusal cites them.
pub const ALLOW_HOSTS: &str = "tools.rules.http_fetch.allowHosts";
pub const DENY_HOSTS: &str = "tools.rules.http_fetch.denyHosts";
pub const ALLOW_COMMANDS: &str = "tools.rules.exec_command.allowCommands";
pub const DENY_ARGS: &str = "tools.rules.exec_command.denyArgs";
pub const READ_PATHS: &str = "tools.rules.memory_read.paths";
pub const WRITE_PATHS: &str = "tools.rules.memory_write.paths";

impl ArgumentRulesInForce {
    /// The rules of `layers`, most specific first (the Session's, its
    /// trust level's, the policy's `defaults`).
    pub fn of(layers: &[Option<&ArgumentRules>]) -> ArgumentRulesInForce {
        let first = |pick: &dyn Fn(&ArgumentRules) -> Option<&Vec<String>>| {
            layers
                .iter()
                .flatten()
                .find_map(|rules| pick(rules))
                .cloned()
        };
        let every = |pick: &dyn Fn(&ArgumentRules) -> Option<&Vec<String>>| {
            let mut all: Vec<String> = Vec::new();
            for entry in layers
                .iter()
                .flatten()
                .filter_map(|rules| pick(rules))
                .flatten()
            {
                if !all.contains(entry) {
                    all.push(entry.clone());
                }
            }
            all
        };
        ArgumentRulesInForce {
            allow_hosts: first(&|r| r.http_fetch.as_ref()?.allow_hosts.as_ref()),
            deny_hosts: every(&|r| r.http_fetch.as_ref().map(|h| &h.deny_hosts)),
            allow_commands: first(&|r| r.exec_command.as_ref()?.allow_commands.as_ref()),
            deny_args: every(&|r| r.exec_command.as_ref().map(|c| &c.deny_args)),
            read_paths: first(&|r| r.memory_read.as_ref()?.paths.as_ref()),
            write_paths: first(&|r| r.memory_write.as_ref()?.paths.as_ref()),
        }
    }

    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == ArgumentRulesInForce::default()
    }

    /// Whether an `allowHosts` entry names `address` (the address itself,
    /// or a CIDR holding it): what lets `http_fetch` reach an address the
    /// SSRF guard refuses otherwise. A host name never does.
    pub fn names_address(&self, address: IpAddr) -> bool {
        self.allow_hosts.as_deref().is_some_and(|entries| {
            entries
                .iter()
                .any(|entry| entry_holds_address(entry, address.to_canonical()))
        })
    }

    /// Refuses `address` when a `denyHosts` entry names it (an address or
    /// a CIDR), whatever host resolved to it.
    pub fn check_address(&self, address: IpAddr) -> Result<(), Breach> {
        let address = address.to_canonical();
        match self
            .deny_hosts
            .iter()
            .find(|entry| entry_holds_address(entry, address))
        {
            Some(entry) => Err(Breach::new(
                DENY_HOSTS,
                format!("address {address} matches {entry:?}"),
            )),
            None => Ok(()),
        }
    }

    /// Refuses `host` (of a URL already parsed, so normalized) when a
    /// `denyHosts` entry matches it or `allowHosts` is set and none does.
    pub fn check_host(&self, host: &Host<&str>) -> Result<(), Breach> {
        if let Some(entry) = self
            .deny_hosts
            .iter()
            .find(|entry| host_matches(entry, host))
        {
            return Err(Breach::new(
                DENY_HOSTS,
                format!("host {host} matches {entry:?}"),
            ));
        }
        match &self.allow_hosts {
            Some(allowed) if !allowed.iter().any(|entry| host_matches(entry, host)) => {
                Err(Breach::new(
                    ALLOW_HOSTS,
                    format!("host {host} matches none of {allowed:?}"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Why a call's arguments are refused: the rule, and what broke it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused by {rule}: {detail}")]
pub struct Breach {
    /// The rule, as [`ALLOW_HOSTS`] and the others name it.
    pub rule: &'static str,
    /// What of the arguments broke it.
    pub detail: String,
}

impl Breach {
    fn new(rule: &'static str, detail: String) -> Breach {
        Breach { rule, detail }
    }
}

/// Checks `call` against `rules`; a tool without rules always passes.
pub fn check(call: &ToolCall, rules: &ArgumentRulesInForce) -> Result<(), Breach> {
    match call {
        ToolCall::HttpFetch(FetchRequest { url, .. }) => {
            // A URL that does not parse was refused by its validation.
            match url::Url::parse(url) {
                Ok(url) => match url.host() {
                    Some(host) => rules.check_host(&host),
                    None => Ok(()),
                },
                Err(_) => Ok(()),
            }
        }
        ToolCall::ExecCommand(CommandRun { command, args, .. }) => {
            if let Some(allowed) = &rules.allow_commands
                && !allowed.iter().any(|pattern| glob(pattern, command))
            {
                return Err(Breach::new(
                    ALLOW_COMMANDS,
                    format!("command {command:?} matches none of {allowed:?}"),
                ));
            }
            for arg in args {
                if let Some(pattern) = rules.deny_args.iter().find(|pattern| glob(pattern, arg)) {
                    return Err(Breach::new(
                        DENY_ARGS,
                        format!("argument {arg:?} matches {pattern:?}"),
                    ));
                }
            }
            Ok(())
        }
        ToolCall::MemoryRead(WorkspacePath { path }) => {
            check_path(READ_PATHS, rules.read_paths.as_deref(), path)
        }
        ToolCall::MemoryWrite(WorkspaceWrite { path, .. }) => {
            check_path(WRITE_PATHS, rules.write_paths.as_deref(), path)
        }
        _ => Ok(()),
    }
}

/// A workspace path against a `paths` rule. The path is matched as the
/// workspace opens it: `./` and repeated slashes dropped; a path with `..`
/// or absolute matches nothing (the workspace refuses it anyway, and it
/// opens no symlink, so the matched path is the file touched).
fn check_path(rule: &'static str, allowed: Option<&[String]>, path: &str) -> Result<(), Breach> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    let normal = normalized(path);
    match normal {
        Some(normal) if allowed.iter().any(|pattern| glob(pattern, &normal)) => Ok(()),
        _ => Err(Breach::new(
            rule,
            format!("path {path:?} matches none of {allowed:?}"),
        )),
    }
}

/// `path` relative to the workspace in its one spelling, or `None` when it
/// leaves it (absolute, `..`).
fn normalized(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Whether the host entry `entry` matches `host`: `*`; `*.suffix` for the
/// hosts below `suffix`; an address or a CIDR for a URL naming an address
/// in it; a name for that name (case and a final dot aside).
fn host_matches(entry: &str, host: &Host<&str>) -> bool {
    let entry = entry.trim_end_matches('.').to_ascii_lowercase();
    match host {
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if entry == "*" {
                return true;
            }
            match entry.strip_prefix("*.") {
                Some(suffix) => name
                    .strip_suffix(suffix)
                    .is_some_and(|below| below.ends_with('.')),
                None => name == entry,
            }
        }
        Host::Ipv4(address) => entry == "*" || entry_holds_address(&entry, IpAddr::V4(*address)),
        Host::Ipv6(address) => {
            entry == "*" || entry_holds_address(&entry, IpAddr::V6(*address).to_canonical())
        }
    }
}

/// Whether `entry` is an address equal to `address`, or a CIDR holding it
/// (IPv4-mapped IPv6 forms compared as the IPv4 address they carry).
fn entry_holds_address(entry: &str, address: IpAddr) -> bool {
    let entry = entry.trim_start_matches('[').trim_end_matches(']');
    if let Ok(named) = entry.parse::<IpAddr>() {
        return named.to_canonical() == address;
    }
    entry
        .parse::<IpNet>()
        .is_ok_and(|net| net.contains(&address))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::{CommandRules, HostRules, PathRules};
    use crate::policy::ToolId;

    fn call(id: ToolId, arguments: serde_json::Value) -> ToolCall {
        ToolCall::parse(id, arguments).unwrap()
    }

    fn hosts(allow: Option<&[&str]>, deny: &[&str]) -> ArgumentRulesInForce {
        ArgumentRulesInForce {
            allow_hosts: allow.map(|a| a.iter().map(|h| h.to_string()).collect()),
            deny_hosts: deny.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    fn fetch(url: &str) -> ToolCall {
        call(ToolId::HttpFetch, json!({ "url": url }))
    }

    #[test]
    fn allow_lists_come_from_the_most_specific_layer_deny_lists_from_all() {
        let session = ArgumentRules {
            http_fetch: Some(HostRules {
                allow_hosts: Some(vec!["a.example".into()]),
                deny_hosts: vec!["x.example".into()],
            }),
            ..Default::default()
        };
        let level = ArgumentRules {
            http_fetch: Some(HostRules {
                allow_hosts: Some(vec!["b.example".into()]),
                deny_hosts: vec!["y.example".into(), "x.example".into()],
            }),
            exec_command: Some(CommandRules {
                allow_commands: Some(vec!["python3".into()]),
                deny_args: vec!["-c".into()],
            }),
            memory_write: Some(PathRules {
                paths: Some(vec!["notes/*".into()]),
            }),
            ..Default::default()
        };
        let rules = ArgumentRulesInForce::of(&[Some(&session), Some(&level), None]);
        assert_eq!(rules.allow_hosts, Some(vec!["a.example".to_owned()]));
        assert_eq!(rules.deny_hosts, ["x.example", "y.example"]);
        assert_eq!(rules.allow_commands, Some(vec!["python3".to_owned()]));
        assert_eq!(rules.deny_args, ["-c"]);
        assert_eq!(rules.write_paths, Some(vec!["notes/*".to_owned()]));
        assert_eq!(rules.read_paths, None);
        assert!(ArgumentRulesInForce::of(&[None, None, None]).is_empty());
    }

    #[test]
    fn hosts_match_exactly_by_suffix_or_by_address() {
        let rules = hosts(
            Some(&["api.github.com", "*.example.org", "10.1.0.0/16"]),
            &[],
        );
        for allowed in [
            "https://api.github.com/x",
            "https://API.GitHub.com./x",
            "http://a.b.example.org/",
            "http://10.1.2.3/",
        ] {
            assert_eq!(check(&fetch(allowed), &rules), Ok(()), "{allowed}");
        }
        for refused in [
            "https://github.com/",
            "https://api.github.com.evil.net/",
            "http://example.org/",
            "http://badexample.org/",
            "http://10.2.0.1/",
        ] {
            let breach = check(&fetch(refused), &rules).unwrap_err();
            assert_eq!(breach.rule, ALLOW_HOSTS, "{refused}");
        }
    }

    #[test]
    fn a_deny_wins_over_an_allow() {
        let rules = hosts(Some(&["*"]), &["*.internal", "169.254.169.254"]);
        let breach = check(&fetch("http://db.internal/"), &rules).unwrap_err();
        assert_eq!(breach.rule, DENY_HOSTS);
        assert_eq!(
            breach.to_string(),
            "refused by tools.rules.http_fetch.denyHosts: host db.internal matches \"*.internal\""
        );
        assert!(check(&fetch("http://169.254.169.254/latest"), &rules).is_err());
        assert!(check(&fetch("http://example.com/"), &rules).is_ok());
        assert!(
            rules
                .check_address("169.254.169.254".parse().unwrap())
                .is_err()
        );
        assert!(
            rules
                .check_address("::ffff:169.254.169.254".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn only_addresses_and_cidrs_name_addresses() {
        let rules = hosts(
            Some(&["wiki.corp", "127.0.0.2", "10.0.0.0/8", "[::1]"]),
            &[],
        );
        assert!(rules.names_address("127.0.0.2".parse().unwrap()));
        assert!(rules.names_address("10.9.9.9".parse().unwrap()));
        assert!(rules.names_address("::ffff:10.9.9.9".parse().unwrap()));
        assert!(rules.names_address("::1".parse().unwrap()));
        assert!(!rules.names_address("127.0.0.1".parse().unwrap()));
        assert!(!hosts(Some(&["*"]), &[]).names_address("127.0.0.1".parse().unwrap()));
        assert!(!hosts(None, &[]).names_address("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn commands_and_their_arguments() {
        let rules = ArgumentRulesInForce {
            allow_commands: Some(vec!["python3".into(), "/usr/bin/*".into()]),
            deny_args: vec!["-c".into(), "*://*".into()],
            ..Default::default()
        };
        let run = |command: &str, args: &[&str]| {
            check(
                &call(
                    ToolId::ExecCommand,
                    json!({"command": command, "args": args}),
                ),
                &rules,
            )
        };
        assert_eq!(run("python3", &["script.py"]), Ok(()));
        assert_eq!(run("/usr/bin/ls", &["-l"]), Ok(()));
        assert_eq!(run("sh", &[]).unwrap_err().rule, ALLOW_COMMANDS);
        assert_eq!(run("python3", &["-c", "x"]).unwrap_err().rule, DENY_ARGS);
        assert_eq!(
            run("/usr/bin/curl", &["https://x"]).unwrap_err().rule,
            DENY_ARGS
        );
    }

    #[test]
    fn paths_are_matched_as_the_workspace_opens_them() {
        let rules = ArgumentRulesInForce {
            read_paths: Some(vec!["notes/*".into()]),
            write_paths: Some(vec![]),
            ..Default::default()
        };
        let read = |path: &str| check(&call(ToolId::MemoryRead, json!({ "path": path })), &rules);
        assert_eq!(read("notes/a.md"), Ok(()));
        assert_eq!(read("./notes//a.md"), Ok(()));
        assert_eq!(read("notes/../secrets").unwrap_err().rule, READ_PATHS);
        assert_eq!(read("/notes/a").unwrap_err().rule, READ_PATHS);
        assert_eq!(read("other").unwrap_err().rule, READ_PATHS);
        let write = call(
            ToolId::MemoryWrite,
            json!({"path": "notes/a", "content": ""}),
        );
        assert_eq!(check(&write, &rules).unwrap_err().rule, WRITE_PATHS);
        assert_eq!(check(&write, &ArgumentRulesInForce::default()), Ok(()));
    }
}
