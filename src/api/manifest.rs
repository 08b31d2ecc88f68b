//! Parsing YAML manifests of wopr.dev objects, with errors that name the
//! document and the field that was wrong.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{ApprovalRequest, GROUP, Gateway, Grant, SecurityPolicy, Session};

/// The apiVersion every object of this API carries.
const API_VERSION: &str = "wopr.dev/v1alpha1";

/// Any object of the wopr.dev API.
#[derive(Clone, Debug, PartialEq)]
pub enum WoprObject {
    /// A SecurityPolicy.
    SecurityPolicy(Box<SecurityPolicy>),
    /// A Session.
    Session(Box<Session>),
    /// A Grant.
    Grant(Grant),
    /// A Gateway.
    Gateway(Gateway),
    /// An ApprovalRequest.
    ApprovalRequest(ApprovalRequest),
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The text is not YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// A document is not an object of this API.
    #[error("document {document}: {message}")]
    NotWopr {
        /// Index of the document in the file, from 0.
        document: usize,
        /// What was wrong.
        message: String,
    },
    /// A field has a wrong value.
    #[error("document {document} ({kind}): {field}: {message}")]
    InvalidField {
        /// Index of the document in the file, from 0.
        document: usize,
        /// The object's kind.
        kind: String,
        /// Path of the field, such as `spec.trustLevel`.
        field: String,
        /// What was wrong.
        message: String,
    },
}

/// Parses every YAML document of `text` (separated by `---`) as a wopr.dev
/// object. Empty documents are skipped.
pub fn parse_manifests(text: &str) -> Result<Vec<WoprObject>, ManifestError> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|err| ManifestError::Yaml(err.to_string()))?;
    documents
        .into_iter()
        .enumerate()
        .filter(|(_, document)| !document.is_null())
        .map(|(index, document)| parse_object(index, document))
        .collect()
}

fn parse_object(document: usize, value: Value) -> Result<WoprObject, ManifestError> {
    let not_wopr = |message: String| ManifestError::NotWopr { document, message };
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    if api_version != Some(API_VERSION) {
        return Err(not_wopr(format!(
            "apiVersion is {api_version:?}, expected {API_VERSION:?} (group {GROUP})"
        )));
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match kind.as_str() {
        "SecurityPolicy" => {
            typed(document, &kind, value).map(|p| WoprObject::SecurityPolicy(Box::new(p)))
        }
        "Session" => typed(document, &kind, value).map(|s| WoprObject::Session(Box::new(s))),
        "Grant" => typed(document, &kind, value).map(WoprObject::Grant),
        "Gateway" => typed(document, &kind, value).map(WoprObject::Gateway),
        "ApprovalRequest" => typed(document, &kind, value).map(WoprObject::ApprovalRequest),
        other => Err(not_wopr(format!(
            "unknown kind {other:?}: expected SecurityPolicy, Session, Grant, Gateway or ApprovalRequest"
        ))),
    }
}

fn typed<T: DeserializeOwned>(
    document: usize,
    kind: &str,
    value: Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|err| ManifestError::InvalidField {
        document,
        kind: kind.to_owned(),
        field: err.path().to_string(),
        message: err.into_inner().to_string(),
    })
}
