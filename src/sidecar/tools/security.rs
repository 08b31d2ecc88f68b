//! `security_whoami`, `security_check` and `security_request`: what the
//! session is, whether it holds a capability, and asking a person for more.

use std::time::Duration;

use serde_json::{Value, json};

use super::Scope;
use crate::approval::DEFAULT_ELEVATION;
use crate::policy::tools::arguments::{CapabilityQuery, ElevationAsk};
use crate::policy::{Outcome, Request, decide};
use crate::sidecar::engine::ToolError;

/// `security_whoami` under a policy.
pub fn whoami(scope: &Scope<'_>) -> Value {
    let context = &scope.served.context;
    json!({
        "session": context.session,
        "namespace": context.namespace,
        "trustLevel": context.trust_level,
        "capabilities": context.capabilities,
        "sandbox": {"enabled": context.sandbox.enabled},
        "network": context.network,
        "enforcement": context.enforcement,
        "provider": scope.served.provider.as_ref().map(|p| json!({"name": p.name, "model": p.model})),
        "prompt": scope.prompt,
        "policyHash": context.policy_hash,
    })
}

/// `security_whoami` while no policy is in force (the one tool that still
/// answers): who the session is, and `reason`.
pub fn whoami_without_policy(
    namespace: &str,
    session: &str,
    prompt: Option<&str>,
    reason: &str,
) -> Value {
    json!({
        "session": session,
        "namespace": namespace,
        "prompt": prompt,
        "policy": null,
        "reason": reason,
    })
}

/// `security_check`.
pub fn check(scope: &Scope<'_>, CapabilityQuery { capability }: CapabilityQuery) -> Value {
    let decision = decide(&scope.served.context, Request::Capability(capability));
    json!({
        "allowed": decision.outcome == Outcome::Allowed,
        "reason": decision.reason.to_string(),
    })
}

/// `security_request`: asks for an elevation through the broker, for the
/// duration asked or [`DEFAULT_ELEVATION`].
pub async fn request(scope: &Scope<'_>, ask: ElevationAsk) -> Result<Value, ToolError> {
    let ElevationAsk {
        capabilities,
        reason,
        duration,
    } = ask;
    let duration = match duration {
        None => DEFAULT_ELEVATION,
        Some(text) => text
            .parse::<kube::core::Duration>()
            .map(Duration::from)
            .map_err(|error| {
                ToolError::InvalidArguments(format!(
                    "duration {text:?} is not a duration such as 30m or 2h: {error}"
                ))
            })?,
    };
    scope
        .messenger()?
        .elevate(&capabilities, &reason, duration)
        .await
}
