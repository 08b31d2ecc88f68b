//! `session usage [SESSION]`: the tokens each Session's model calls used,
//! per minute and per UTC day, against the budgets its policy gives it.
//! The figures are the `model_call` events of its audit trail, so this is
//! exactly what `security audit --type model_call` lists, summed.

use k8s_openapi::jiff::{SignedDuration, Timestamp, ToSpan, tz::TimeZone};
use kube::ResourceExt;
use serde::Serialize;

use super::audit::query_events;
use super::objects::{get, get_opt, list};
use super::output::{Shown, Table};
use super::{CliError, Context};
use crate::api::{DEFAULT_POLICY_NAME, Gateway, Grant, SecurityPolicy, Session, name_of};
use crate::audit::{AuditEvent, EventType};
use crate::policy::{Outcome, resolve};
use crate::proto::v1alpha1::AuditQueryRequest;

/// The most `model_call` events of one Session and day read.
const MOST_EVENTS: u32 = 100_000;

/// One Session's usage.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub session: String,
    /// Model calls today (UTC), refused ones included.
    pub calls: u64,
    /// Tokens (in and out) in the last 60 s, and the limit (0: none).
    pub minute_tokens: u64,
    pub tokens_per_minute: u64,
    /// Tokens today (UTC), and the limit (0: none).
    pub day_tokens: u64,
    pub tokens_per_day: u64,
    /// When today's budget resets: the next UTC midnight.
    pub day_resets_at: String,
}

/// `session usage`.
pub async fn usage(context: &Context, session: Option<&str>) -> Result<Shown, CliError> {
    let sessions = match session {
        Some(name) => vec![get::<Session>(context, name).await?],
        None => list::<Session>(context).await?,
    };
    let policy = get_opt::<SecurityPolicy>(context, DEFAULT_POLICY_NAME).await?;
    let grants = list::<Grant>(context).await?;
    let gateways = list::<Gateway>(context).await?;
    let day_start = day_start(context.now);
    let mut usages = Vec::new();
    for session in sessions.iter().filter(|s| s.spec.provider.is_some()) {
        let models = resolve(session, policy.as_ref(), &grants, &gateways, context.now)
            .map(|effective| effective.models)
            .unwrap_or_default();
        let query = AuditQueryRequest {
            namespace: context.namespace.clone(),
            session: session.name_any(),
            r#type: name_of(&EventType::ModelCall),
            since: day_start.to_string(),
            ..AuditQueryRequest::default()
        };
        let events = query_events(context, query, MOST_EVENTS).await?;
        usages.push(Usage {
            session: session.name_any(),
            calls: events.len() as u64,
            minute_tokens: tokens_since(&events, context.now - SignedDuration::from_secs(60)),
            tokens_per_minute: models.tokens_per_minute,
            day_tokens: tokens_since(&events, day_start),
            tokens_per_day: models.tokens_per_day,
            day_resets_at: (day_start + 24.hours()).to_string(),
        });
    }
    let mut table = Table::new(&["SESSION", "CALLS TODAY", "LAST MINUTE", "TODAY", "RESETS"]);
    for usage in &usages {
        table.row(vec![
            usage.session.clone(),
            usage.calls.to_string(),
            against(usage.minute_tokens, usage.tokens_per_minute),
            against(usage.day_tokens, usage.tokens_per_day),
            usage.day_resets_at.clone(),
        ]);
    }
    let empty = format!(
        "No session with a model provider in namespace {}.",
        context.namespace
    );
    Ok(Shown::list(table.render_or(&empty), &usages))
}

/// The tokens charged (calls that went through, warn mode's included) at
/// or after `since`.
fn tokens_since(events: &[AuditEvent], since: Timestamp) -> u64 {
    events
        .iter()
        .filter(|event| event.time >= since && event.decision != Outcome::Denied)
        .filter_map(|event| event.model.as_ref())
        .map(|call| call.input_tokens + call.output_tokens)
        .sum()
}

/// `used/limit`, or `used/unlimited`.
fn against(used: u64, limit: u64) -> String {
    if limit == 0 {
        format!("{used}/unlimited")
    } else {
        format!("{used}/{limit}")
    }
}

/// The start of `now`'s UTC day.
fn day_start(now: Timestamp) -> Timestamp {
    now.to_zoned(TimeZone::UTC)
        .date()
        .to_zoned(TimeZone::UTC)
        .map(|midnight| midnight.timestamp())
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_starts_at_utc_midnight() {
        let now: Timestamp = "2026-12-07T13:45:10Z".parse().unwrap();
        assert_eq!(day_start(now).to_string(), "2026-12-07T00:00:00Z");
        assert_eq!(against(5, 0), "5/unlimited");
        assert_eq!(against(5, 9), "5/9");
    }
}
