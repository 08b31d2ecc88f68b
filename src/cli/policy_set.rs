//! `security policy set`: a session's, or a trust level's, sandbox and tool
//! rules, by server-side apply as `kubectl-wopr`. Only the fields given are
//! applied, so the CLI owns exactly what the person changed; a field a
//! GitOps tool owns is a conflict (exit 3) unless `--force-conflicts`.

use serde_json::{Map, Value, json};

use super::args::{PolicySetArgs, Toggle};
use super::objects::{apply_spec, update_spec};
use super::output::Shown;
use super::{CliError, Context};
use crate::api::{DEFAULT_POLICY_NAME, SecurityPolicy, Session};
use crate::policy::tools::argument_rules::host_entry_problem;
use crate::policy::tools::{ToolId, entry_matches};

/// `security policy set`.
pub async fn set(context: &Context, args: PolicySetArgs) -> Result<Shown, CliError> {
    let settings = settings(&args)?;
    match (&args.session, args.trust_level) {
        (Some(session), _) => {
            let applied: Session =
                update_spec(context, session, settings, args.force_conflicts).await?;
            Ok(Shown::new(
                format!("session.wopr.dev/{session} configured\n"),
                &applied,
            ))
        }
        (None, Some(level)) => {
            let spec = json!({"trustLevels": {level.as_str(): settings}});
            let applied: SecurityPolicy =
                apply_spec(context, DEFAULT_POLICY_NAME, spec, args.force_conflicts).await?;
            Ok(Shown::new(
                format!(
                    "securitypolicy.wopr.dev/{DEFAULT_POLICY_NAME} configured: trust level {level}\n"
                ),
                &applied,
            ))
        }
        (None, None) => unreachable!("clap requires a session or --trust-level"),
    }
}

/// The `sandbox` and `tools` fields the flags set (`tools.rules` fields
/// one by one: server-side apply owns each list the person gave, no other).
fn settings(args: &PolicySetArgs) -> Result<Value, CliError> {
    let mut spec = Map::new();
    if let Some(toggle) = args.sandbox {
        spec.insert(
            "sandbox".into(),
            json!({"enabled": toggle == Toggle::Enabled}),
        );
    }
    let mut tools = Map::new();
    for (field, entries) in [("allow", &args.tools_allow), ("deny", &args.tools_deny)] {
        if let Some(entries) = entries {
            check_tool_entries(entries)?;
            tools.insert(field.into(), json!(entries));
        }
    }
    let mut rules = Map::new();
    for (tool, field, entries) in args.rules.given() {
        if field.ends_with("Hosts") {
            check_host_entries(entries)?;
        }
        let entries: Vec<&String> = entries.iter().filter(|entry| !entry.is_empty()).collect();
        let per_tool = rules
            .entry(tool)
            .or_insert_with(|| Value::Object(Map::new()));
        per_tool[field] = json!(entries);
    }
    if !rules.is_empty() {
        tools.insert("rules".into(), Value::Object(rules));
    }
    if !tools.is_empty() {
        spec.insert("tools".into(), Value::Object(tools));
    }
    if spec.is_empty() {
        return Err(CliError::Usage(
            "nothing to set: give --sandbox, --tools.allow, --tools.deny or a --tools.rules flag"
                .into(),
        ));
    }
    Ok(Value::Object(spec))
}

/// Every entry must name some tool: a tool, a prefix ending in `*`, `*`, or
/// a capability.
fn check_tool_entries(entries: &[String]) -> Result<(), CliError> {
    for entry in entries {
        if !ToolId::all().any(|id| entry_matches(entry, id.tool())) {
            let names: Vec<&str> = ToolId::all().map(|id| id.tool().name).collect();
            return Err(CliError::Usage(format!(
                "{entry:?} names no tool: use a tool ({}), a prefix ending in *, * or a capability",
                names.join(", ")
            )));
        }
    }
    Ok(())
}

/// Every host entry must be one `http_fetch` can match.
fn check_host_entries(entries: &[String]) -> Result<(), CliError> {
    match entries.iter().find_map(|entry| host_entry_problem(entry)) {
        Some(problem) => Err(CliError::Usage(problem)),
        None => Ok(()),
    }
}
