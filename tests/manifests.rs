//! Bad input: malformed manifests fail with an error naming the field, and
//! never with a panic.

use proptest::prelude::*;
use wopr_operator::api::{ManifestError, WoprObject, parse_manifests};

/// Parses `yaml` and returns the invalid field's path and message.
fn invalid_field(yaml: &str) -> (String, String) {
    match parse_manifests(yaml) {
        Err(ManifestError::InvalidField { field, message, .. }) => (field, message),
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

const SESSION: &str = "apiVersion: wopr.dev/v1alpha1\nkind: Session\nmetadata: {name: s}\n";
const GRANT: &str = "apiVersion: wopr.dev/v1alpha1\nkind: Grant\nmetadata: {name: g}\n";

#[test]
fn unknown_capability_names_the_list_entry() {
    let (field, message) = invalid_field(&format!(
        "{GRANT}spec:\n  subject: {{session: s}}\n  capabilities: [inject, teleport]\n"
    ));
    assert_eq!(field, "spec.capabilities[1]");
    assert!(message.contains("unknown variant `teleport`"), "{message}");
    assert!(
        message.contains("inject.tools"),
        "lists the valid values: {message}"
    );
}

#[test]
fn unknown_trust_level_names_the_field() {
    let (field, message) = invalid_field(&format!("{SESSION}spec:\n  trustLevel: superuser\n"));
    assert_eq!(field, "spec.trustLevel");
    assert!(message.contains("superuser"), "{message}");
}

#[test]
fn missing_trust_level_names_the_object() {
    let (field, message) = invalid_field(&format!("{SESSION}spec:\n  prompt: hi\n"));
    assert_eq!(field, "spec");
    assert!(message.contains("missing field `trustLevel`"), "{message}");
}

#[test]
fn negative_rate_limit_names_the_field() {
    let (field, message) = invalid_field(
        "apiVersion: wopr.dev/v1alpha1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  session: gw\n  forwardRules:\n  - allowForwardTo: [a]\n    rateLimit: {perMinute: -5}\n",
    );
    assert_eq!(field, "spec.forwardRules[0].rateLimit.perMinute");
    assert!(message.contains("-5"), "{message}");
}

#[test]
fn bad_rfc3339_time_names_the_field() {
    let (field, message) = invalid_field(&format!(
        "{GRANT}spec:\n  subject: {{session: s}}\n  profile: trusted\n  expiresAt: next tuesday\n"
    ));
    assert_eq!(field, "spec.expiresAt");
    assert!(!message.is_empty());
    let (field, _) = invalid_field(&format!(
        "{GRANT}spec:\n  subject: {{peer: {{publicKey: k}}}}\n  profile: trusted\n  previousKeys: [{{publicKey: o, rotatedAt: '2026-13-45T25:00:00Z'}}]\n"
    ));
    assert_eq!(field, "spec.previousKeys[0].rotatedAt");
}

#[test]
fn bad_access_pattern_names_the_entry() {
    let (field, message) = invalid_field(&format!(
        "{SESSION}spec:\n  trustLevel: trusted\n  access: ['*', root]\n"
    ));
    assert_eq!(field, "spec.access[1]");
    assert!(
        message.contains("invalid access pattern \"root\""),
        "{message}"
    );
    let (_, message) = invalid_field(&format!(
        "{SESSION}spec:\n  trustLevel: trusted\n  access: ['trust:admin']\n"
    ));
    assert!(
        message.contains("unknown trust level \"admin\""),
        "{message}"
    );
}

#[test]
fn bad_duration_names_the_field() {
    let (field, _) = invalid_field(
        "apiVersion: wopr.dev/v1alpha1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  session: gw\n  approvalTimeout: five minutes\n",
    );
    assert_eq!(field, "spec.approvalTimeout");
}

#[test]
fn bad_network_mode_and_port_name_the_field() {
    let (field, _) = invalid_field(&format!(
        "{SESSION}spec:\n  trustLevel: trusted\n  sandbox: {{network: bridge}}\n"
    ));
    assert_eq!(field, "spec.sandbox.network");
    let (field, _) = invalid_field(&format!(
        "{SESSION}spec:\n  trustLevel: trusted\n  sandbox: {{network: restricted, egress: [{{cidr: 10.0.0.0/8, ports: [{{port: 70000}}]}}]}}\n"
    ));
    assert_eq!(field, "spec.sandbox.egress[0].ports[0].port");
}

#[test]
fn foreign_and_broken_documents_are_refused() {
    assert!(matches!(
        parse_manifests("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"),
        Err(ManifestError::NotWopr { document: 0, .. })
    ));
    let error = parse_manifests("apiVersion: wopr.dev/v1alpha1\nkind: Sessoin\n").unwrap_err();
    assert!(
        error.to_string().contains("unknown kind \"Sessoin\""),
        "{error}"
    );
    assert!(matches!(
        parse_manifests("spec: [unclosed"),
        Err(ManifestError::Yaml(_))
    ));
    let second =
        format!("{SESSION}spec: {{trustLevel: owner}}\n---\n{SESSION}spec: {{trustLevel: 7}}\n");
    assert!(matches!(
        parse_manifests(&second),
        Err(ManifestError::InvalidField { document: 1, .. })
    ));
}

#[test]
fn valid_multi_document_input_parses() {
    let objects = parse_manifests(&format!(
        "---\n{SESSION}spec: {{trustLevel: owner}}\n---\n---\n{GRANT}spec: {{subject: {{session: s}}, profile: trusted}}\n"
    ))
    .unwrap();
    assert!(matches!(
        objects.as_slice(),
        [WoprObject::Session(_), WoprObject::Grant(_)]
    ));
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse_manifests(&text);
    }

    #[test]
    fn arbitrary_specs_never_panic(
        kind in prop::sample::select(vec!["Session", "Grant", "Gateway", "SecurityPolicy", "ApprovalRequest"]),
        body in "[a-zA-Z:{}\\[\\], \\-0-9.*\\n]{0,120}",
    ) {
        let _ = parse_manifests(&format!("apiVersion: wopr.dev/v1alpha1\nkind: {kind}\nspec: {body}\n"));
    }
}
