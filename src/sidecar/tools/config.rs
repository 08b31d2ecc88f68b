//! `config_get`: the session's effective security configuration
//! (`config_set` is not implemented yet: its handler goes here).

use serde_json::{Value, json};

use super::Scope;

/// `config_get`.
pub fn get(scope: &Scope<'_>) -> Value {
    let context = &scope.served.context;
    json!({
        "session": context.session,
        "namespace": context.namespace,
        "effective": context.summary(),
        "enforcement": context.enforcement,
        "access": context.access,
        "grants": context.grants,
        "gateways": context.gateways,
        "policyHash": context.policy_hash,
    })
}
