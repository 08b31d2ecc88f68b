//! `config set PATH VALUE`: the WOPR CLI's dotted settings mapped onto the
//! namespace's SecurityPolicy and its Gateways, applied as `kubectl-wopr`.
//! One table of paths ([`PATHS`]) serves parsing, the error that lists
//! them, and `--help`.

use serde_json::{Value, json};

use super::objects::{apply_spec, get};
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
    "security.gateway.forwardRules.<gateway>[.<rule>].allowForwardTo a,b",
    "security.gateway.forwardRules.<gateway>[.<rule>].allowActions a,b",
    "security.gateway.forwardRules.<gateway>[.<rule>].requireApproval true|false",
    "security.gateway.forwardRules.<gateway>[.<rule>].rateLimit PER_MINUTE",
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
            let (rule, field) = match rest {
                [field] => (None, *field),
                [rule, field] => (
                    Some(rule.parse::<usize>().map_err(|_| unknown_path(path))?),
                    *field,
                ),
                _ => return Err(unknown_path(path)),
            };
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

/// Sets one field of a gateway's forward rule: rule `rule`, or the only
/// one (a gateway without rules gets its first).
async fn set_rule(
    context: &Context,
    gateway_name: &str,
    rule: Option<usize>,
    field: &str,
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
                "gateway {gateway_name} has {count} rules: name one, as security.gateway.forwardRules.{gateway_name}.<0-{}>.{field}",
                count - 1
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
    let path = format!("security.gateway.forwardRules.{gateway_name}.{index}.{field}");
    let list = || {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let target = &mut rules[index];
    match field {
        "allowForwardTo" => target.allow_forward_to = list(),
        "allowActions" => target.allow_actions = list(),
        "requireApproval" => target.require_approval = boolean(&path, value)?,
        "rateLimit" => {
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
        _ => return Err(unknown_path(&path)),
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
