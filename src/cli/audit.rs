//! `security audit` (the trail, from the control plane's Audit service, with
//! your own credential: your RBAC decides what you may read) and
//! `security migrate` (from warn mode's would_deny events, the Grants that
//! would let them pass).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use super::args::{AuditArgs, Format};
use super::grants::stale;
use super::output::{Shown, Table, or_none};
use super::time::parse_time;
use super::{CliError, Context};
use crate::api::{Capability, Grant, GrantSpec, GrantSubject, name_of};
use crate::audit::AuditEvent;
use crate::proto::v1alpha1::{AuditQueryRequest, VerifyRequest};

/// The most events one Query page holds.
const PAGE: u32 = 1000;
/// The most would_deny events `migrate` reads.
const MIGRATE_EVENTS: u32 = 20_000;

/// `security audit`.
pub async fn audit(context: &Context, args: AuditArgs) -> Result<Shown, CliError> {
    let shown = if args.stale_grants {
        stale(context, args.stale_days).await?
    } else if args.verify {
        verify_chain(context).await?
    } else {
        let query = AuditQueryRequest {
            since: since(args.since.as_deref(), context.now)?,
            ..filters(context, &args)
        };
        let events = query_events(context, query, args.last).await?;
        let mut table = Table::new(&COLUMNS);
        for event in &events {
            table.row(row(event));
        }
        let empty = format!("No audit events match in namespace {}.", context.namespace);
        Shown::list(table.render_or(&empty), &events)
    };
    let Some(path) = &args.output else {
        return Ok(shown);
    };
    let rendered = shown.render(args.format)?;
    std::fs::write(path, rendered)
        .map_err(|error| CliError::Usage(format!("cannot write {}: {error}", path.display())))?;
    let count = shown.data["items"].as_array().map_or(0, Vec::len);
    Ok(Shown::new(
        format!("{count} written to {}\n", path.display()),
        &serde_json::json!({"written": count, "file": path}),
    ))
}

/// The columns of the audit table, and of `--follow`'s lines.
const COLUMNS: [&str; 8] = [
    "TIME",
    "SESSION",
    "TYPE",
    "TOOL",
    "CAPABILITY",
    "DECISION",
    "SOURCE",
    "REASON",
];

/// One event as a row of [`COLUMNS`].
fn row(event: &AuditEvent) -> Vec<String> {
    vec![
        event.time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        event.session.clone(),
        name_of(&event.event_type),
        or_none(event.tool.clone().or_else(|| event.action.clone())),
        or_none(event.capability),
        name_of(&event.decision),
        format!("{}:{}", event.source.source_type, event.source.identity),
        event.reason.clone(),
    ]
}

/// The Query of `args`' filters in the context's namespace.
fn filters(context: &Context, args: &AuditArgs) -> AuditQueryRequest {
    AuditQueryRequest {
        namespace: context.namespace.clone(),
        session: args.session.clone().unwrap_or_default(),
        decision: if args.denied {
            "denied".into()
        } else {
            String::new()
        },
        capability: args.capability.map(|c| c.to_string()).unwrap_or_default(),
        r#type: args.event_type.map(|t| name_of(&t)).unwrap_or_default(),
        ..AuditQueryRequest::default()
    }
}

/// How long `--follow` waits before asking for events stored since.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// `security audit --follow`: writes to `out` each event of the namespace
/// matching `args`' filters as it is stored after the call, in storage
/// order (one that arrived late, with an older time, when it arrived),
/// until `stop` completes (Ctrl-C). It pages the same Query as the table,
/// in storage order from a chain position, so the reader's rights are
/// exactly Query's. A table is one line per event (the header first);
/// JSON and YAML are one JSON line per event.
pub async fn follow(
    context: &Context,
    args: &AuditArgs,
    out: &mut (impl Write + Send),
    stop: impl Future<Output = ()>,
) -> Result<Shown, CliError> {
    let (mut client, caller) = context.control_plane.audit().await?;
    let written = |error: std::io::Error| CliError::Usage(format!("cannot write: {error}"));
    let table = args.format == Format::Table;
    if table {
        writeln!(out, "{}", COLUMNS.join("  ")).map_err(written)?;
    }
    let mut query = AuditQueryRequest {
        limit: PAGE,
        // From the chain's head now: only what is stored from here on.
        stored_after: Some(-1),
        ..filters(context, args)
    };
    let mut stop = std::pin::pin!(stop);
    let mut followed = 0u64;
    loop {
        let request = caller.request(query.clone())?;
        let page = caller.answer(client.query(request)).await?;
        for line in &page.events {
            if table {
                writeln!(out, "{}", row(&read_event(line)?).join("  ")).map_err(written)?;
            } else {
                writeln!(out, "{line}").map_err(written)?;
            }
            followed += 1;
        }
        out.flush().map_err(written)?;
        let full = page.events.len() as u32 == PAGE;
        query.stored_after = Some(page.last_seq);
        if full {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            () = &mut stop => break,
        }
    }
    Ok(Shown::new(
        String::new(),
        &serde_json::json!({ "followed": followed }),
    ))
}

/// An event line of the Audit service.
fn read_event(line: &str) -> Result<AuditEvent, CliError> {
    serde_json::from_str(line).map_err(|error| {
        CliError::Refused(format!(
            "the control plane sent an audit event this kubectl-wopr cannot read ({error}): upgrade it"
        ))
    })
}

/// `security audit --verify`: the control plane walks the namespace's
/// chain; a break is a failed check (exit 5), named with where it is.
async fn verify_chain(context: &Context) -> Result<Shown, CliError> {
    let (mut client, caller) = context.control_plane.audit().await?;
    let request = caller.request(VerifyRequest {
        namespace: context.namespace.clone(),
    })?;
    let answer = caller.answer(client.verify(request)).await?;
    let namespace = &context.namespace;
    let data = serde_json::json!({
        "namespace": namespace, "intact": answer.intact, "events": answer.events,
        "brokenSeq": answer.broken_seq, "brokenId": answer.broken_id, "problem": answer.problem,
        "prunedEvents": answer.pruned_events, "lastPrunedTime": answer.last_pruned_time,
    });
    let pruned = pruned(answer.pruned_events, &answer.last_pruned_time);
    if answer.intact {
        let text = format!(
            "The audit trail of namespace {namespace} is intact: {} events.{pruned}\n",
            answer.events
        );
        return Ok(Shown::new(text, &data));
    }
    let text = format!(
        "The audit trail of namespace {namespace} is broken at event {} (seq {}): {}{pruned}\n",
        or_none((!answer.broken_id.is_empty()).then_some(&answer.broken_id)),
        answer.broken_seq,
        answer.problem
    );
    let mut shown = Shown::new(text, &data);
    shown.failed_checks = vec![CHAIN_CHECK.to_owned()];
    Ok(shown)
}

/// What retention deleted, as a sentence after the verdict (nothing when
/// it deleted nothing).
fn pruned(events: u64, last_time: &str) -> String {
    match (events, last_time) {
        (0, _) => String::new(),
        (events, "") => format!(" Retention deleted the {events} events before them."),
        (events, last) => {
            format!(" Retention deleted the {events} events before them, the last from {last}.")
        }
    }
}

/// The check `audit --verify` fails when the chain is broken.
const CHAIN_CHECK: &str = "audit-chain-intact";

/// `--since` as the RFC 3339 time the Query takes (empty: no bound).
fn since(value: Option<&str>, now: Timestamp) -> Result<String, CliError> {
    value.map_or(Ok(String::new()), |value| {
        Ok(parse_time(value, now, -1)?.to_string())
    })
}

/// Up to `wanted` events matching `query`, newest first, page by page.
pub(super) async fn query_events(
    context: &Context,
    mut query: AuditQueryRequest,
    wanted: u32,
) -> Result<Vec<AuditEvent>, CliError> {
    let (mut client, caller) = context.control_plane.audit().await?;
    let mut events = Vec::new();
    loop {
        query.limit = (wanted - events.len() as u32).min(PAGE);
        let request = caller.request(query.clone())?;
        let page = caller.answer(client.query(request)).await?;
        for line in &page.events {
            events.push(read_event(line)?);
        }
        if page.next_cursor.is_empty() || events.len() as u32 >= wanted {
            return Ok(events);
        }
        query.cursor = page.next_cursor;
    }
}

/// What warn mode reported for one session.
#[derive(Default)]
struct Violations {
    /// Capabilities it lacked, with how often.
    capabilities: BTreeMap<String, (Capability, u32)>,
    /// Tools its tool rules refused (no Grant changes those), with how often.
    tools: BTreeMap<String, u32>,
}

/// `security migrate`: per session, the Grant giving the capabilities its
/// would_deny events lacked, as YAML to review and apply; refusals no Grant
/// changes (tool rules) as comments.
pub async fn migrate(context: &Context, since_value: &str) -> Result<Shown, CliError> {
    let query = AuditQueryRequest {
        namespace: context.namespace.clone(),
        decision: "would_deny".into(),
        since: since(Some(since_value), context.now)?,
        ..AuditQueryRequest::default()
    };
    let events = query_events(context, query, MIGRATE_EVENTS).await?;
    let mut sessions: BTreeMap<String, Violations> = BTreeMap::new();
    for event in &events {
        let violations = sessions.entry(event.session.clone()).or_default();
        match (event.capability, &event.tool) {
            (Some(capability), _) if capability != Capability::All => {
                violations
                    .capabilities
                    .entry(capability.to_string())
                    .or_insert((capability, 0))
                    .1 += 1;
            }
            (_, Some(tool)) => *violations.tools.entry(tool.clone()).or_default() += 1,
            _ => {}
        }
    }
    let mut text = format!(
        "# Grants that would let the would_deny events of namespace {} since {since_value} pass ({} events).\n# Review each before applying: a Grant widens what a session may do.\n",
        context.namespace,
        events.len()
    );
    let mut grants = Vec::new();
    for (session, violations) in &sessions {
        let counts: Vec<String> = violations
            .capabilities
            .iter()
            .map(|(name, (_, count))| format!("{name} ×{count}"))
            .collect();
        for (tool, count) in &violations.tools {
            text.push_str(&format!(
                "# {session}: {tool} ×{count} was refused by tool rules, not a missing capability: change the rules (kubectl wopr security policy set) if it should run\n"
            ));
        }
        if violations.capabilities.is_empty() {
            continue;
        }
        let grant = Grant {
            metadata: ObjectMeta {
                name: Some(format!("migrate-{session}")),
                namespace: Some(context.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: GrantSpec {
                subject: GrantSubject::session(session),
                profile: None,
                capabilities: violations.capabilities.values().map(|(c, _)| *c).collect(),
                sessions: Vec::new(),
                not_before: None,
                expires_at: None,
                previous_keys: Vec::new(),
            },
            status: None,
        };
        text.push_str(&format!("---\n# {session}: {}\n", counts.join(", ")));
        text.push_str(&Shown::new(String::new(), &grant).render(Format::Yaml)?);
        grants.push(grant);
    }
    if grants.is_empty() && sessions.is_empty() {
        text.push_str("# No would_deny events: nothing to grant.\n");
    }
    Ok(Shown::list(text, &grants))
}
