//! `security verify`: the WOPR verification checklist, each item a named
//! check over the namespace's objects, passed or failed with what to fix.
//! Any failure makes the exit code 5, so CI and scripts can gate on it.

use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};

use super::objects::{get_opt, list};
use super::output::{Shown, Table};
use super::status::enforcement_of;
use super::{CliError, Context};
use crate::api::{
    DEFAULT_POLICY_NAME, ESCALATION_GUARDED, Enforcement, Gateway, Grant, SecurityPolicy, Session,
    TrustLevel,
};
use crate::cluster::escalation::{CANNOT_VERIFY, read_escalation_guard};
use crate::contract::{SIDECAR_CONTAINER, child_name, env};
use crate::policy::models::provider_problem;
use crate::policy::{level_settings, resolve};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;

/// One item of the checklist and its result.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Check {
    /// A stable name (`sandbox-below-trusted`).
    pub name: String,
    pub passed: bool,
    /// What was found: the offenders, or why it passes.
    pub detail: String,
}

fn check(name: &str, failures: Vec<String>, passed_detail: &str) -> Check {
    Check {
        name: name.into(),
        passed: failures.is_empty(),
        detail: if failures.is_empty() {
            passed_detail.into()
        } else {
            failures.join("; ")
        },
    }
}

/// `failure` when `failed`, else nothing.
fn failure_if(failed: bool, failure: &str) -> Vec<String> {
    if failed {
        vec![failure.to_owned()]
    } else {
        Vec::new()
    }
}

/// `security verify`.
pub async fn verify(context: &Context) -> Result<Shown, CliError> {
    let policy = get_opt::<SecurityPolicy>(context, DEFAULT_POLICY_NAME).await?;
    let spec = policy.as_ref().map(|policy| &policy.spec);
    let gateways = list::<Gateway>(context).await?;
    // Listed raw, once: a Session that does not parse fails the first
    // check instead of hiding every other.
    let mut raw_sessions = Api::<DynamicObject>::namespaced_with(
        context.client.clone(),
        &context.namespace,
        &ApiResource::erase::<Session>(&()),
    )
    .list(&ListParams::default())
    .await
    .map_err(|e| CliError::from_kube("sessions", e))?
    .items;
    raw_sessions.sort_by_key(ResourceExt::name_any);
    let sessions: Vec<Session> = raw_sessions
        .iter()
        .filter_map(|object| object.clone().try_parse().ok())
        .collect();

    let mut checks = vec![escalation_guarded(context, policy.as_ref()).await?];
    checks.push(check(
        "sessions-have-trust-level",
        raw_sessions
            .iter()
            .filter(|object| {
                object.data["spec"]["trustLevel"]
                    .as_str()
                    .is_none_or(|level| level.parse::<TrustLevel>().is_err())
            })
            .map(|object| format!("session {} has no valid trustLevel", object.name_any()))
            .collect(),
        "every session has a trust level",
    ));

    let mut gateway_failures = Vec::new();
    if gateways.is_empty() {
        gateway_failures
            .push("no Gateway: untrusted input has no gated path to privileged sessions".into());
    }
    for gateway in &gateways {
        if !sessions
            .iter()
            .any(|s| s.name_any() == gateway.spec.session)
        {
            gateway_failures.push(format!(
                "gateway {} names session {}, which does not exist",
                gateway.name_any(),
                gateway.spec.session
            ));
        }
    }
    checks.push(check(
        "gateways-for-external-input",
        gateway_failures,
        &format!("{} gateway(s), each with its session", gateways.len()),
    ));

    let auto_accept = spec
        .and_then(|s| s.p2p.as_ref())
        .is_some_and(|p2p| p2p.auto_accept);
    checks.push(check(
        "auto-accept-off",
        failure_if(
            auto_accept,
            "spec.p2p.autoAccept is true: unknown peers are accepted without review",
        ),
        "unknown peers are not accepted automatically",
    ));

    checks.push(check(
        "sandbox-below-trusted",
        sessions
            .iter()
            .filter(|session| session.spec.trust_level < TrustLevel::Trusted)
            .filter(|session| {
                let sandboxed = match session.status.as_ref().and_then(|s| s.effective.as_ref()) {
                    Some(effective) => effective.sandbox,
                    None => level_settings(spec, session.spec.trust_level).sandbox,
                };
                !sandboxed
            })
            .map(|session| {
                format!(
                    "{} session {} runs without a sandbox",
                    session.spec.trust_level,
                    session.name_any()
                )
            })
            .collect(),
        "every untrusted and semi-trusted session is sandboxed",
    ));

    let mut unlimited = Vec::new();
    let mut wildcards = Vec::new();
    for gateway in &gateways {
        for (index, rule) in gateway.spec.forward_rules.iter().enumerate() {
            let at = format!("gateway {} rule {index}", gateway.name_any());
            if rule.rate_limit.is_none() {
                unlimited.push(format!("{at} has no rateLimit"));
            }
            if rule.allow_forward_to.iter().any(|t| t == "*") {
                wildcards.push(format!("{at} forwards to *"));
            }
            if rule.allow_actions.iter().any(|a| a == "*") {
                wildcards.push(format!("{at} allows every action (*)"));
            }
        }
    }
    checks.push(check(
        "rate-limits-set",
        unlimited,
        "every forward rule is rate-limited",
    ));

    let denial_events = spec
        .and_then(|s| s.audit.as_ref())
        .is_none_or(|audit| audit.denial_events);
    checks.push(check(
        "audit-on",
        failure_if(
            !denial_events,
            "spec.audit.denialEvents is false: denials raise no Kubernetes Events",
        ),
        "every decision is audited and denials raise Events",
    ));
    checks.push(check(
        "forward-rules-not-wildcard",
        wildcards,
        "every forward rule names its targets and actions",
    ));
    let enforcement = enforcement_of(spec);
    checks.push(check(
        "enforce-mode",
        failure_if(
            enforcement == Enforcement::Warn,
            "enforcement is warn: violations are only audited (kubectl wopr security migrate, then config set security.enforcement enforce)",
        ),
        "violations are blocked",
    ));

    let mut pods = Vec::new();
    for session in &sessions {
        pods.extend(get_opt::<Pod>(context, &child_name(&session.name_any())).await?);
    }
    let grants = list::<Grant>(context).await?;
    checks.push(check(
        "providers-resolve",
        providers_resolve(context, &sessions, policy.as_ref(), &grants, &gateways).await?,
        "every session's provider chain is configured, allowed and has its key",
    ));

    checks.push(check(
        "control-plane-tls",
        plaintext_sidecars(&pods),
        "every session's sidecar verifies the control plane over TLS",
    ));

    let mut table = Table::new(&["CHECK", "RESULT", "DETAIL"]);
    for check in &checks {
        table.row(vec![
            check.name.clone(),
            if check.passed { "pass" } else { "FAIL" }.into(),
            check.detail.clone(),
        ]);
    }
    let mut shown = Shown::list(table.render_or(""), &checks);
    shown.failed_checks = checks
        .iter()
        .filter(|check| !check.passed)
        .map(|check| check.name.clone())
        .collect();
    Ok(shown)
}

/// What is wrong with each Session's model providers: a link of its chain
/// that the namespace's SecurityPolicy does not configure, a first link its
/// trust level (with its Grants) does not allow, or a provider whose
/// Secret or key is missing. A Secret the caller may not read is a failure
/// too: the check cannot vouch for it.
async fn providers_resolve(
    context: &Context,
    sessions: &[Session],
    policy: Option<&SecurityPolicy>,
    grants: &[Grant],
    gateways: &[Gateway],
) -> Result<Vec<String>, CliError> {
    let mut failures = Vec::new();
    let mut secrets_checked = BTreeMap::new();
    for session in sessions.iter().filter(|s| s.spec.provider.is_some()) {
        let name = session.name_any();
        let context_of = match resolve(session, policy, grants, gateways, Timestamp::now()) {
            Ok(effective) => effective,
            Err(error) => {
                failures.push(format!("session {name}: {error}"));
                continue;
            }
        };
        let models = &context_of.models;
        if let Some(problem) = provider_problem(models) {
            failures.push(format!("session {name}: {problem}"));
        }
        for link in &models.chain {
            let Some(provider) = models.providers.iter().find(|p| p.name == link.provider) else {
                if link.provider != models.chain[0].provider {
                    failures.push(format!(
                        "session {name}: fallback provider {} is not in the SecurityPolicy's spec.providers",
                        link.provider
                    ));
                }
                continue;
            };
            let secret = &provider.secret_ref;
            let key = (secret.name.clone(), secret.key.clone());
            if !secrets_checked.contains_key(&key) {
                let problem = secret_problem(context, &secret.name, &secret.key).await?;
                secrets_checked.insert(key.clone(), problem);
            }
            if let Some(problem) = &secrets_checked[&key] {
                failures.push(format!(
                    "session {name}: provider {}: {problem}",
                    provider.name
                ));
            }
        }
    }
    Ok(failures)
}

/// Why the Secret key `name`/`key` cannot serve as a provider's API key,
/// if it cannot: missing, without the key, or not readable by the caller.
async fn secret_problem(
    context: &Context,
    name: &str,
    key: &str,
) -> Result<Option<String>, CliError> {
    match get_opt::<Secret>(context, name).await {
        Ok(None) => Ok(Some(format!("Secret {name} does not exist"))),
        Ok(Some(secret)) => {
            let has_key = secret
                .data
                .as_ref()
                .is_some_and(|data| data.contains_key(key))
                || secret
                    .string_data
                    .as_ref()
                    .is_some_and(|data| data.contains_key(key));
            Ok((!has_key).then(|| format!("Secret {name} has no key {key}")))
        }
        Err(CliError::Refused(why)) => Ok(Some(format!(
            "Secret {name} cannot be checked ({why}): the check needs get on it"
        ))),
        Err(error) => Err(error),
    }
}

/// The session pods whose sidecar reaches the control plane in plaintext
/// (its token and every policy readable on the network): the controller
/// runs with `--insecure-plaintext`.
fn plaintext_sidecars(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter(|pod| {
            let spec = pod.spec.iter();
            spec.flat_map(|spec| spec.init_containers.iter().flatten())
                .filter(|container| container.name == SIDECAR_CONTAINER)
                .flat_map(|container| container.env.iter().flatten())
                .any(|var| {
                    var.name == env::INSECURE_PLAINTEXT && var.value.as_deref() == Some("true")
                })
        })
        .map(|pod| {
            format!(
                "pod {}: its sidecar reaches the control plane in plaintext (the controller runs with --insecure-plaintext, for development only)",
                pod.name_any()
            )
        })
        .collect()
}

/// Whether the cluster refuses trust-level escalation at admission, as far
/// as you may see: the escalation policies themselves, else (when your RBAC
/// may not read them) what the operator reports on the namespace's
/// SecurityPolicy. Not knowing fails the check.
async fn escalation_guarded(
    context: &Context,
    policy: Option<&SecurityPolicy>,
) -> Result<Check, CliError> {
    let guard = read_escalation_guard(&context.client)
        .await
        .map_err(|e| CliError::from_kube("validatingadmissionpolicies", e))?;
    let reported = policy
        .and_then(|policy| policy.status.as_ref())
        .and_then(|status| {
            status
                .conditions
                .iter()
                .find(|condition| condition.type_ == ESCALATION_GUARDED)
        });
    let (guarded, detail) = match reported {
        Some(condition) if guard.reason == CANNOT_VERIFY => (
            condition.status == "True",
            format!("as the operator reports it: {}", condition.message),
        ),
        _ => (guard.guarded, guard.message),
    };
    Ok(check(
        "escalation-guarded",
        failure_if(!guarded, &detail),
        &detail,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, env: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": "agent"}],
                "initContainers": [{"name": SIDECAR_CONTAINER, "env": env}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_plaintext_sidecar_fails_the_tls_check() {
        let tls = pod(
            "wopr-a",
            serde_json::json!([{"name": env::CONTROL_PLANE_CA, "value": "/ca.crt"}]),
        );
        let plaintext = pod(
            "wopr-b",
            serde_json::json!([{"name": env::INSECURE_PLAINTEXT, "value": "true"}]),
        );
        assert!(plaintext_sidecars(std::slice::from_ref(&tls)).is_empty());
        let failures = plaintext_sidecars(&[tls, plaintext]);
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0]
                .starts_with("pod wopr-b: its sidecar reaches the control plane in plaintext")
        );
    }
}
