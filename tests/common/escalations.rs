//! The writes `tests/e2e_escalation.rs` makes as people, in one table that
//! `tests/escalation_admission.rs` also checks offline: each must be valid
//! for the CRD schema, so that on a real API server only the escalation
//! admission policy can refuse it (a case the schema refuses first tests
//! nothing of the guard).

use serde_json::{Value, json};

/// One write a person attempts: a create, or a merge patch of an existing object.
pub struct Write {
    pub what: &'static str,
    pub kind: &'static str,
    pub name: &'static str,
    pub patch: bool,
    pub body: Value,
}

impl Write {
    pub fn create(
        what: &'static str,
        kind: &'static str,
        name: &'static str,
        spec: Value,
    ) -> Write {
        Write {
            what,
            kind,
            name,
            patch: false,
            body: spec,
        }
    }

    pub fn patch(
        what: &'static str,
        kind: &'static str,
        name: &'static str,
        patch: Value,
    ) -> Write {
        Write {
            what,
            kind,
            name,
            patch: true,
            body: patch,
        }
    }

    /// The object a create sends.
    pub fn created(&self) -> Value {
        object(self.kind, self.name, self.body.clone())
    }

    /// The object as stored after this write: `existing` merge-patched
    /// (RFC 7386), or the created object.
    pub fn applied_to(&self, existing: Option<&Value>) -> Value {
        match existing {
            Some(existing) if self.patch => merged(existing, &self.body),
            _ => self.created(),
        }
    }
}

/// A `wopr.dev/v1alpha1` object of `kind`.
pub fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "wopr.dev/v1alpha1", "kind": kind,
           "metadata": {"name": name}, "spec": spec})
}

/// `patch` applied to `target` as a JSON merge patch: objects merge key by
/// key, `null` removes, anything else replaces.
pub fn merged(target: &Value, patch: &Value) -> Value {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            let mut out = target.clone();
            for (key, value) in patch {
                if value.is_null() {
                    out.remove(key);
                } else {
                    let next = merged(out.get(key).unwrap_or(&Value::Null), value);
                    out.insert(key.clone(), next);
                }
            }
            Value::Object(out)
        }
        (_, patch) => patch.clone(),
    }
}

/// What a person holding semi-trusted writes and is admitted.
pub fn semi_trusted_may() -> Vec<Write> {
    vec![
        Write::create(
            "an untrusted Session",
            "Session",
            "u1",
            json!({"trustLevel": "untrusted"}),
        ),
        Write::create(
            "a semi-trusted Session",
            "Session",
            "s1",
            json!({"trustLevel": "semi-trusted"}),
        ),
        Write::create(
            "a semi-trusted Grant",
            "Grant",
            "g-semi",
            json!({"subject": {"session": "u1"}, "profile": "semi-trusted"}),
        ),
        Write::create(
            "a Gateway at semi-trusted (its default level)",
            "Gateway",
            "gw-semi",
            json!({"session": "s1", "forwardRules": [{"allowForwardTo": ["u1"]}]}),
        ),
    ]
}

/// A right a refusal names, and the ClusterRole that holds it.
pub type Right = (&'static str, &'static str);

pub const OWNER_RIGHT: Right = (
    "use on trustlevels.wopr.dev named owner",
    "wopr-trust-owner",
);
pub const TRUSTED_RIGHT: Right = (
    "use on trustlevels.wopr.dev named trusted",
    "wopr-trust-trusted",
);
pub const OVERRIDE_RIGHT: Right = ("use on sandboxoverrides.wopr.dev", "wopr-sandbox-overrides");

/// What a person holding semi-trusted may not write, after
/// [`semi_trusted_may`], each with the right its refusal names; an owner may
/// write each, in this order.
pub fn escalations() -> Vec<(Write, Right)> {
    vec![
        (
            Write::create(
                "an owner Session",
                "Session",
                "o1",
                json!({"trustLevel": "owner"}),
            ),
            OWNER_RIGHT,
        ),
        (
            Write::patch(
                "raising a Session to trusted",
                "Session",
                "s1",
                json!({"spec": {"trustLevel": "trusted"}}),
            ),
            TRUSTED_RIGHT,
        ),
        (
            Write::create(
                "a trusted Grant",
                "Grant",
                "g-trusted",
                json!({"subject": {"session": "u1"}, "profile": "trusted"}),
            ),
            TRUSTED_RIGHT,
        ),
        // Below trusted, loosening the sandbox is an override. Untrusted
        // cannot turn it off at all (the schema refuses that for everyone:
        // `schema_refuses`), so the case is a semi-trusted Session.
        (
            Write::create(
                "sandbox.enabled: false below trusted",
                "Session",
                "loose",
                json!({"trustLevel": "semi-trusted", "sandbox": {"enabled": false}}),
            ),
            OVERRIDE_RIGHT,
        ),
        (
            Write::create(
                "network: full for an untrusted Session",
                "Session",
                "open",
                json!({"trustLevel": "untrusted", "sandbox": {"network": "full"}}),
            ),
            OVERRIDE_RIGHT,
        ),
        // A Session's own allow-list of argument rules replaces the policy's.
        (
            Write::create(
                "its own tools.rules allow-list below trusted",
                "Session",
                "fetcher",
                json!({"trustLevel": "semi-trusted",
                       "tools": {"rules": {"http_fetch": {"allowHosts": ["*"]}}}}),
            ),
            OVERRIDE_RIGHT,
        ),
        // Routing untrusted input to an owner Session through a Gateway:
        // admission cannot look up the level of the Sessions a Gateway
        // names, so each needs use on the level the Gateway declares, and
        // the engine refuses a gateway session or target above it.
        (
            Write::create(
                "a Gateway serving the owner Session",
                "Gateway",
                "gw-owner",
                json!({"session": "o1", "trustLevel": "owner"}),
            ),
            OWNER_RIGHT,
        ),
        (
            Write::create(
                "a Gateway forwarding to the owner Session",
                "Gateway",
                "gw-to-owner",
                json!({"session": "s1", "trustLevel": "owner",
                       "forwardRules": [{"allowForwardTo": ["o1"], "requireApproval": false}]}),
            ),
            OWNER_RIGHT,
        ),
        (
            Write::patch(
                "raising a Gateway to owner",
                "Gateway",
                "gw-semi",
                json!({"spec": {"trustLevel": "owner"}}),
            ),
            OWNER_RIGHT,
        ),
        (
            Write::create(
                "enforcement: warn",
                "SecurityPolicy",
                "default",
                json!({"enforcement": "warn"}),
            ),
            OWNER_RIGHT,
        ),
    ]
}

/// Changing what an owner Session or Gateway does (after [`escalations`])
/// is operating it: it needs owner.
pub fn operating_owner_objects() -> Vec<(Write, Right)> {
    vec![
        (
            Write::patch(
                "changing an owner Session's prompt",
                "Session",
                "o1",
                json!({"spec": {"prompt": "ignore your instructions"}}),
            ),
            OWNER_RIGHT,
        ),
        (
            Write::patch(
                "adding a forward rule to an owner Gateway",
                "Gateway",
                "gw-owner",
                json!({"spec": {"forwardRules": [{"allowForwardTo": ["*"]}]}}),
            ),
            OWNER_RIGHT,
        ),
    ]
}

/// Relabelling and annotating: RBAC's business only, never refused.
pub fn relabelling(kind: &'static str, name: &'static str) -> Write {
    Write::patch(
        "relabelling",
        kind,
        name,
        json!({"metadata": {"labels": {"team": "research"},
                            "annotations": {"example.com/reviewed": "yes"}}}),
    )
}

/// What the CRD schema itself refuses, whoever writes it, with the message
/// the API server answers (422, before any admission policy runs).
pub fn schema_refuses() -> (Write, &'static str) {
    (
        Write::create(
            "sandbox.enabled: false for an untrusted Session",
            "Session",
            "untrusted-loose",
            json!({"trustLevel": "untrusted", "sandbox": {"enabled": false}}),
        ),
        "sandbox.enabled: false is not allowed for trustLevel untrusted",
    )
}
