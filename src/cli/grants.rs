//! `security grant`, `revoke`, `list-grants` and the stale-grant report:
//! Grants written and read as the person running the command.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::SignedDuration;
use kube::api::{DeleteParams, Patch};
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};

use super::args::GrantArgs;
use super::objects::is_object_name;
use super::output::{Shown, Table, age, joined, or_none, until};
use super::time::parse_time;
use super::{CliError, Context};
use crate::api::{Grant, GrantSpec, GrantState, GrantSubject, Session};
use crate::policy::grant_validity;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo, base64-encoded: every
/// peer key starts with it (60 characters in all: 44 bytes of DER).
const ED25519_KEY_PREFIX: &str = "MCowBQYDK2VwAyEA";

/// `PEER-KEY`, `session:NAME` (or a bare `NAME`) or
/// `serviceaccount:NAMESPACE/NAME` as a Grant's subject. A bare word is a
/// peer key when it is one, else a Session's name: the two never overlap
/// (a key has upper-case letters and ends in `=`, which no object name
/// has), so which one the WOPR CLI meant is never a guess.
pub fn parse_subject(value: &str) -> Result<GrantSubject, CliError> {
    if let Some(session) = value.strip_prefix("session:") {
        if session.is_empty() {
            return Err(CliError::Usage("session: needs a session name".into()));
        }
        return Ok(GrantSubject::session(session));
    }
    if let Some(account) = value.strip_prefix("serviceaccount:") {
        return match account.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(GrantSubject::service_account(namespace, name))
            }
            _ => Err(CliError::Usage(format!(
                "{value:?}: expected serviceaccount:NAMESPACE/NAME"
            ))),
        };
    }
    let base64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    let valid = value.len() == 60
        && value.starts_with(ED25519_KEY_PREFIX)
        && value.ends_with('=')
        && value[..59].chars().all(base64);
    if valid {
        return Ok(GrantSubject::peer(value));
    }
    if is_object_name(value) {
        return Ok(GrantSubject::session(value));
    }
    Err(CliError::Usage(format!(
        "{value:?} is not a subject: use a session's NAME (or session:NAME), serviceaccount:NAMESPACE/NAME or a peer key (a base64 Ed25519 public key, 60 characters starting {ED25519_KEY_PREFIX})"
    )))
}

/// How a subject reads in tables and messages.
pub fn subject_text(subject: &GrantSubject) -> String {
    match subject {
        GrantSubject {
            session: Some(session),
            ..
        } => format!("session:{session}"),
        GrantSubject {
            peer: Some(peer), ..
        } => match &peer.name {
            Some(name) => format!("peer:{name}"),
            None => format!(
                "peer:{}…",
                &peer.public_key[..peer.public_key.len().min(24)]
            ),
        },
        GrantSubject {
            service_account: Some(account),
            ..
        } => format!("serviceaccount:{}/{}", account.namespace, account.name),
        _ => "<none>".into(),
    }
}

/// The name of the Grant the CLI keeps for `subject`: granting again
/// updates it.
fn grant_name(subject: &GrantSubject) -> String {
    match (&subject.session, &subject.peer, &subject.service_account) {
        (Some(session), _, _) => format!("session-{session}"),
        (None, Some(peer), _) => format!("peer-{}", short_digest(&peer.public_key)),
        (None, None, Some(account)) => format!(
            "serviceaccount-{}",
            short_digest(&format!("{}/{}", account.namespace, account.name))
        ),
        (None, None, None) => unreachable!("parse_subject always names a subject"),
    }
}

/// The first 8 bytes of `value`'s SHA-256, in hex: a name part that fits
/// any subject.
fn short_digest(value: &str) -> String {
    Sha256::digest(value.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether two subjects name the same receiver (a peer by its key).
fn same_subject(a: &GrantSubject, b: &GrantSubject) -> bool {
    match (a, b) {
        (
            GrantSubject {
                session: Some(a), ..
            },
            GrantSubject {
                session: Some(b), ..
            },
        ) => a == b,
        (GrantSubject { peer: Some(a), .. }, GrantSubject { peer: Some(b), .. }) => {
            a.public_key == b.public_key
        }
        (
            GrantSubject {
                service_account: Some(a),
                ..
            },
            GrantSubject {
                service_account: Some(b),
                ..
            },
        ) => a == b,
        _ => false,
    }
}

/// `security grant`.
pub async fn grant(context: &Context, args: GrantArgs) -> Result<Shown, CliError> {
    let subject = parse_subject(&args.subject)?;
    if subject.session.is_some() && !args.sessions.is_empty() {
        return Err(CliError::Usage(
            "--sessions applies to peer and service-account grants only; a session grant applies to its session".into(),
        ));
    }
    let future = |value: &Option<String>| {
        value
            .as_deref()
            .map(|value| parse_time(value, context.now, 1))
            .transpose()
    };
    let (not_before, expires_at) = (future(&args.not_before)?, future(&args.expires)?);
    if expires_at.is_some_and(|at| at <= context.now) {
        return Err(CliError::Usage("--expires is in the past".into()));
    }
    if let (Some(starts), Some(ends)) = (not_before, expires_at)
        && ends <= starts
    {
        return Err(CliError::Usage(
            "--expires is not after --not-before".into(),
        ));
    }
    if let Some(session) = &subject.session {
        let found = super::objects::get_opt::<Session>(context, session).await?;
        if found.is_none() {
            return Err(CliError::NotFound(
                if args.subject.starts_with("session:") {
                    format!("session {session:?} not found")
                } else {
                    format!(
                        "{session:?} is neither a Session in namespace {} nor a peer key (a base64 Ed25519 public key, 60 characters starting {ED25519_KEY_PREFIX}): create the session first, or name the peer by its key",
                        context.namespace
                    )
                },
            ));
        }
    }
    let name = grant_name(&subject);
    let grant = Grant {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(context.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: GrantSpec {
            subject,
            profile: args.profile,
            capabilities: args.capabilities,
            sessions: args.sessions,
            not_before: not_before.map(Time),
            expires_at: expires_at.map(Time),
            previous_keys: Vec::new(),
        },
        status: None,
    };
    let applied = grants(context)
        .patch(&name, &context.apply_params(false), &Patch::Apply(&grant))
        .await
        .map_err(|e| CliError::from_kube(&format!("grant {name:?}"), e))?;
    Ok(Shown::new(
        format!(
            "grant.wopr.dev/{name} gives {} {}\n",
            subject_text(&applied.spec.subject),
            gives(&applied.spec)
        ),
        &applied,
    ))
}

/// `security revoke`: deletes every Grant of the subject.
pub async fn revoke(context: &Context, subject: &str) -> Result<Shown, CliError> {
    let subject = parse_subject(subject)?;
    let api = grants(context);
    let matching: Vec<Grant> = list_grants(context)
        .await?
        .into_iter()
        .filter(|grant| same_subject(&grant.spec.subject, &subject))
        .collect();
    if matching.is_empty() {
        return Err(CliError::NotFound(format!(
            "no Grant of {} in namespace {}",
            subject_text(&subject),
            context.namespace
        )));
    }
    let mut text = String::new();
    for grant in &matching {
        let name = grant.name_any();
        api.delete(&name, &DeleteParams::default())
            .await
            .map_err(|e| CliError::from_kube(&format!("grant {name:?}"), e))?;
        text.push_str(&format!("grant.wopr.dev/{name} deleted\n"));
    }
    Ok(Shown::list(text, &matching))
}

/// `security list-grants`.
pub async fn list(context: &Context) -> Result<Shown, CliError> {
    let grants = list_grants(context).await?;
    let mut table = Table::new(&[
        "NAME",
        "SUBJECT",
        "GIVES",
        "SESSIONS",
        "STATE",
        "EXPIRES",
        "LAST USED",
        "AGE",
    ]);
    for grant in &grants {
        let status = grant.status.clone().unwrap_or_default();
        table.row(vec![
            grant.name_any(),
            subject_text(&grant.spec.subject),
            gives(&grant.spec),
            joined(&grant.spec.sessions),
            or_none(status.state.as_ref().map(crate::api::name_of)),
            grant
                .spec
                .expires_at
                .as_ref()
                .map_or_else(|| "never".into(), |at| until(at, context.now)),
            status.last_used_at.as_ref().map_or_else(
                || "never".into(),
                |at| format!("{} ago", age(Some(at), context.now)),
            ),
            age(grant.metadata.creation_timestamp.as_ref(), context.now),
        ]);
    }
    let empty = format!("No grants found in namespace {}.", context.namespace);
    Ok(Shown::list(table.render_or(&empty), &grants))
}

/// `security audit --stale-grants`: Grants expired or revoked but still
/// present, or not used for `days`: by their `lastUsedAt` (which the
/// control plane records), and by their age only when no use was ever
/// recorded, as the report says.
pub async fn stale(context: &Context, days: u32) -> Result<Shown, CliError> {
    let unused_since = context
        .now
        .checked_sub(SignedDuration::from_hours(24 * i64::from(days)))
        .unwrap_or(context.now);
    let mut stale = Vec::new();
    let mut table = Table::new(&["NAME", "SUBJECT", "WHY"]);
    for grant in list_grants(context).await? {
        let last_used = grant.status.as_ref().and_then(|s| s.last_used_at.as_ref());
        let created = grant.metadata.creation_timestamp.as_ref();
        let why = match grant_validity(&grant, context.now).state {
            // Not started yet: nothing could have used it.
            GrantState::NotYetValid => continue,
            GrantState::Expired => "expired but present: revoke it".to_owned(),
            GrantState::Revoked => format!(
                "revoked but present: held by finalizer(s) {}",
                joined(grant.metadata.finalizers.as_deref().unwrap_or_default())
            ),
            GrantState::Active => match (last_used, created) {
                (Some(at), _) if at.0 < unused_since => {
                    format!("last used {} ago", age(Some(at), context.now))
                }
                (None, Some(at)) if at.0 < unused_since => {
                    format!("never used; created {} ago", age(Some(at), context.now))
                }
                _ => continue,
            },
        };
        table.row(vec![
            grant.name_any(),
            subject_text(&grant.spec.subject),
            why,
        ]);
        stale.push(grant);
    }
    let empty = format!(
        "No stale grants in namespace {} (unused for {days} days, expired or revoked).",
        context.namespace
    );
    Ok(Shown::list(table.render_or(&empty), &stale))
}

/// What a Grant gives: its profile or its capabilities.
fn gives(spec: &GrantSpec) -> String {
    match spec.profile {
        Some(level) => format!("profile {level}"),
        None => joined(&spec.capabilities),
    }
}

fn grants(context: &Context) -> Api<Grant> {
    Api::namespaced(context.client.clone(), &context.namespace)
}

/// The namespace's Grants, by name.
pub async fn list_grants(context: &Context) -> Result<Vec<Grant>, CliError> {
    super::objects::list::<Grant>(context).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let key = "MCowBQYDK2VwAyEAq1Jm4kTXJ6lf9bSVVuH0bWv0Fh3fAfZFNrgR0hA1HOU=";
        assert_eq!(
            parse_subject(key).unwrap().peer.unwrap().public_key,
            key.to_owned()
        );
        assert_eq!(
            parse_subject("session:research-agent")
                .unwrap()
                .session
                .as_deref(),
            Some("research-agent")
        );
        assert_eq!(
            parse_subject("researcher-agent").unwrap(),
            GrantSubject::session("researcher-agent"),
            "a bare name is a session's"
        );
        for bad in [
            "session:",
            "Alice",
            "researcher agent",
            "researcher_agent",
            &key[..59],
            "MCowBQYDK2VwAyEAq1Jm4kTXJ6lf9bSVVuH0bWv0Fh3fAfZFNrgR0hA1HO!=",
            "serviceaccount:ns",
            "serviceaccount:/name",
            "serviceaccount:ns/a/b",
        ] {
            assert!(
                matches!(parse_subject(bad), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn service_accounts_are_namespace_slash_name() {
        let subject = parse_subject("serviceaccount:ci/bot").unwrap();
        assert_eq!(subject, GrantSubject::service_account("ci", "bot"));
        assert_eq!(subject_text(&subject), "serviceaccount:ci/bot");
        assert!(grant_name(&subject).starts_with("serviceaccount-"));
    }

    #[test]
    fn each_subject_keeps_one_cli_grant() {
        let a = parse_subject("session:a").unwrap();
        assert_eq!(grant_name(&a), "session-a");
        let key = "MCowBQYDK2VwAyEAq1Jm4kTXJ6lf9bSVVuH0bWv0Fh3fAfZFNrgR0hA1HOU=";
        let peer = grant_name(&parse_subject(key).unwrap());
        assert!(peer.starts_with("peer-") && peer.len() == 21, "{peer}");
    }
}
