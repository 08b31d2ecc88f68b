//! `config set PATH VALUE`: the WOPR CLI's dotted settings mapped onto the
//! namespace's SecurityPolicy and its Gateways, applied as `kubectl-wopr`.
//! One table of paths ([`PATHS`]) serves parsing, the error that lists
//! them, and `--help`.

use serde_json::{Value, json};

use super::objects::{apply_spec, get, is_object_name};
use super::output::Shown;
use super::time::parse_duration;
use super::{CliError, Context};
use crate::api::{
    DEFAULT_POLICY_NAME, Enforcement, ForwardRule, Gateway, RateLimit, SecurityPolicy, TrustLevel,
    from_name,
};

/// Every settable path, as `--help` and the unknown-path error list them.
pub const PATHS: &[&str] = &[
    "security.enforcement warn|enforce",
    "security.p2p.autoAccept true|false",
    "security.p2p.discoveryTrust LEVEL",
    "security.audit.retention DURATION",
    "security.audit.denialEvents true|false",
    "security.gateway.approvalTimeout.<gateway> DURATION",
    "security.gateway.forwardRules.<gateway>[.<rule>].allowForwardTo a,b|'[\"a\",\"b\"]'",
    "security.gateway.forwardRules.<gateway>[.<rule>].allowActions a,b|'[\"a\",\"b\"]'",
    "security.gateway.forwardRules.<gateway>[.<rule>].requireApproval true|false",
    "security.gateway.forwardRules.<gateway>[.<rule>].rateLimit[.perMinute] PER_MINUTE",
];

/// `config set`.
pub async fn set(
    context: &Context,
    path: &str,
    value: &str,
    force: bool,
) -> Result<Shown, CliError> {
    let segments: Vec<&str> = path.split('.').collect();
    match segments.as_slice() {
        ["security", "gateway", "forwardRules", gateway, rest @ ..] => {
            // An optional rule index, then the field's own dotted path
            // (`rateLimit.perMinute`, as the WOPR config nests it).
            let (rule, field) = match rest {
                [rule, field @ ..] if !field.is_empty() && rule.parse::<usize>().is_ok() => {
                    (rule.parse::<usize>().ok(), field)
                }
                field => (None, field),
            };
            let field = RuleField::parse(&field.join(".")).ok_or_else(|| unknown_path(path))?;
            set_rule(context, gateway, rule, field, value, force).await
        }
        ["security", "gateway", "approvalTimeout", gateway] => {
            parse_duration(value)?;
            get::<Gateway>(context, gateway).await?;
            apply_gateway(context, gateway, json!({"approvalTimeout": value}), force).await
        }
        ["security", rest @ ..] => {
            let spec = policy_setting(rest, value).ok_or_else(|| unknown_path(path))??;
            let applied: SecurityPolicy =
                apply_spec(context, DEFAULT_POLICY_NAME, spec, force).await?;
            Ok(Shown::new(
                format!("securitypolicy.wopr.dev/{DEFAULT_POLICY_NAME}: {path} = {value}\n"),
                &applied,
            ))
        }
        _ => Err(unknown_path(path)),
    }
}

fn unknown_path(path: &str) -> CliError {
    CliError::Usage(format!(
        "unknown config path {path:?}; valid paths: {}",
        PATHS.join("; ")
    ))
}

fn invalid(path: &str, value: &str, expected: &str) -> CliError {
    CliError::Usage(format!("{path}: {value:?} is not {expected}"))
}

fn boolean(path: &str, value: &str) -> Result<bool, CliError> {
    value
        .parse()
        .map_err(|_| invalid(path, value, "true or false"))
}

/// The SecurityPolicy spec fragment a `security.<rest>` path sets, or
/// `None` for an unknown path.
fn policy_setting(rest: &[&str], value: &str) -> Option<Result<Value, CliError>> {
    let path = format!("security.{}", rest.join("."));
    Some(match rest {
        ["enforcement"] => from_name::<Enforcement>(value)
            .map(|mode| json!({"enforcement": mode}))
            .ok_or_else(|| invalid(&path, value, "warn or enforce")),
        ["p2p", "autoAccept"] => boolean(&path, value).map(|on| json!({"p2p": {"autoAccept": on}})),
        ["p2p", "discoveryTrust"] => value
            .parse::<TrustLevel>()
            .map(|level| json!({"p2p": {"discoveryTrust": level}}))
            .map_err(|_| invalid(&path, value, "a trust level")),
        ["audit", "retention"] => {
            parse_duration(value).map(|_| json!({"audit": {"retention": value}}))
        }
        ["audit", "denialEvents"] => {
            boolean(&path, value).map(|on| json!({"audit": {"denialEvents": on}}))
        }
        _ => return None,
    })
}

/// The settable fields of a forward rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuleField {
    AllowForwardTo,
    AllowActions,
    RequireApproval,
    /// `rateLimit` or, as the WOPR config nests it, `rateLimit.perMinute`:
    /// the rule's one limit.
    RateLimit,
}

impl RuleField {
    fn parse(field: &str) -> Option<RuleField> {
        Some(match field {
            "allowForwardTo" => RuleField::AllowForwardTo,
            "allowActions" => RuleField::AllowActions,
            "requireApproval" => RuleField::RequireApproval,
            "rateLimit" | "rateLimit.perMinute" => RuleField::RateLimit,
            _ => return None,
        })
    }

    /// The field's name in the Gateway's spec, as paths name it.
    fn name(self) -> &'static str {
        match self {
            RuleField::AllowForwardTo => "allowForwardTo",
            RuleField::AllowActions => "allowActions",
            RuleField::RequireApproval => "requireApproval",
            RuleField::RateLimit => "rateLimit.perMinute",
        }
    }
}

/// A list value: a JSON array of strings (`'["a","b"]'`, as the WOPR config
/// writes lists) or comma-separated (`a,b`); every item a `*` or a name
/// `valid` accepts, so a value that does not parse is an error rather than
/// a list of one odd string that matches nothing.
fn list(
    path: &str,
    value: &str,
    what: &str,
    valid: fn(&str) -> bool,
) -> Result<Vec<String>, CliError> {
    let items: Vec<String> = if value.trim_start().starts_with('[') {
        serde_json::from_str(value).map_err(|error| {
            CliError::Usage(format!(
                "{path}: {value:?} is not a JSON array of strings ({error}); write '[\"a\",\"b\"]' or a,b"
            ))
        })?
    } else {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    match items.iter().find(|item| *item != "*" && !valid(item)) {
        Some(bad) => Err(CliError::Usage(format!(
            "{path}: {bad:?} is not {what} (or *)"
        ))),
        None => Ok(items),
    }
}

/// An action name: letters, digits, `_`, `-` and `.`.
fn is_action(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Sets one field of a gateway's forward rule: rule `rule`, or the only
/// one (a gateway without rules gets its first).
async fn set_rule(
    context: &Context,
    gateway_name: &str,
    rule: Option<usize>,
    field: RuleField,
    value: &str,
    force: bool,
) -> Result<Shown, CliError> {
    let gateway = get::<Gateway>(context, gateway_name).await?;
    let mut rules = gateway.spec.forward_rules;
    let index = match (rule, rules.len()) {
        (Some(index), count) if index <= count => index,
        (Some(index), count) => {
            return Err(CliError::NotFound(format!(
                "gateway {gateway_name} has {count} rule(s): rule {index} would leave a gap (use 0 to {count})"
            )));
        }
        (None, 0 | 1) => 0,
        (None, count) => {
            return Err(CliError::Usage(format!(
                "gateway {gateway_name} has {count} rules: name one, as security.gateway.forwardRules.{gateway_name}.<0-{}>.{}",
                count - 1,
                field.name()
            )));
        }
    };
    if index == rules.len() {
        rules.push(ForwardRule {
            allow_forward_to: Vec::new(),
            allow_actions: Vec::new(),
            require_approval: false,
            rate_limit: None,
        });
    }
    let path = format!(
        "security.gateway.forwardRules.{gateway_name}.{index}.{}",
        field.name()
    );
    let target = &mut rules[index];
    match field {
        RuleField::AllowForwardTo => {
            let targets = list(&path, value, "a session name", is_object_name)?;
            if targets.is_empty() {
                return Err(invalid(
                    &path,
                    value,
                    "a list of at least one session (or *)",
                ));
            }
            target.allow_forward_to = targets;
        }
        RuleField::AllowActions => {
            target.allow_actions = list(&path, value, "an action name", is_action)?;
        }
        RuleField::RequireApproval => target.require_approval = boolean(&path, value)?,
        RuleField::RateLimit => {
            let per_minute = value
                .trim_end_matches("/min")
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    invalid(&path, value, "a number of forwards per minute (at least 1)")
                })?;
            target.rate_limit = Some(RateLimit { per_minute });
        }
    }
    apply_gateway(context, gateway_name, json!({"forwardRules": rules}), force).await
}

/// Applies `spec` (a fragment) to the Gateway `name`, which the caller
/// found: apply would create a missing one.
async fn apply_gateway(
    context: &Context,
    name: &str,
    spec: Value,
    force: bool,
) -> Result<Shown, CliError> {
    let applied: Gateway = apply_spec(context, name, spec, force).await?;
    Ok(Shown::new(
        format!("gateway.wopr.dev/{name} configured\n"),
        &applied,
    ))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn help_lists_every_path() {
        let mut cli = Cli::command();
        let set = cli
            .find_subcommand_mut("config")
            .and_then(|config| config.find_subcommand_mut("set"))
            .unwrap();
        let help = set.get_after_help().unwrap().to_string();
        for path in PATHS {
            assert!(help.contains(path), "{path} is not in --help:\n{help}");
        }
    }

    #[test]
    fn rule_fields_by_their_paths() {
        assert_eq!(
            RuleField::parse("rateLimit.perMinute"),
            Some(RuleField::RateLimit)
        );
        assert_eq!(RuleField::parse("rateLimit"), Some(RuleField::RateLimit));
        for unknown in ["rateLimit.perHour", "perMinute", "allowForwardTo.0", ""] {
            assert_eq!(RuleField::parse(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn lists_are_json_arrays_or_comma_separated() {
        let parse = |value| list("p", value, "a session name", is_object_name);
        let names = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse(r#"["internal-processor"]"#).unwrap(),
            names(&["internal-processor"])
        );
        assert_eq!(parse(r#" ["a", "b"] "#).unwrap(), names(&["a", "b"]));
        assert_eq!(parse("a, b,").unwrap(), names(&["a", "b"]));
        assert_eq!(parse("*").unwrap(), names(&["*"]));
        assert_eq!(parse("[]").unwrap(), names(&[]));
        for (bad, why) in [
            (r#"["internal-processor""#, "is not a JSON array of strings"),
            (r#"[1]"#, "is not a JSON array of strings"),
            (r#"["a"],b"#, "is not a JSON array of strings"),
            (
                r#""internal-processor""#,
                "\"\\\"internal-processor\\\"\" is not a session name",
            ),
            ("Internal", "\"Internal\" is not a session name"),
            ("a b", "\"a b\" is not a session name"),
        ] {
            match parse(bad) {
                Err(CliError::Usage(message)) => {
                    assert!(message.contains(why), "{bad}: {message}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            list("p", "query, look up", "an action name", is_action),
            Err(CliError::Usage(_))
        ));
    }
}
