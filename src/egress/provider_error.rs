//! A provider's error body as the agent gets it: without the key the link
//! was called with or anything else that looks like a credential, and in
//! the agent's own dialect.

use serde_json::Value;

use super::redact::{redact, redact_key};
use super::translate::{self, Dialect, ErrorKind};

/// A provider's error body with the key it was called with and anything
/// else that looks like a credential taken out.
pub fn redacted(bytes: &[u8], key: &str) -> String {
    let text = String::from_utf8_lossy(bytes);
    redact(&redact_key(&text, key)).into_owned()
}

/// A (redacted) error body of a link speaking `from`, as an agent speaking
/// `to` reads it: its kind and message kept (both dialects nest them under
/// `error`), the body itself if it is not one.
pub fn for_agent(from: Dialect, to: Dialect, text: &str) -> Vec<u8> {
    let error = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|body| body.get("error").cloned());
    let kind = error
        .as_ref()
        .and_then(|error| error.get("type"))
        .and_then(Value::as_str)
        .map_or(ErrorKind::Api, ErrorKind::from_type_name);
    let message = error
        .as_ref()
        .and_then(|error| error.get("message"))
        .and_then(Value::as_str)
        .map_or_else(
            || format!("the {} provider failed: {text}", from.name()),
            str::to_owned,
        );
    translate::error_body(to, kind, &message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_providers_error_loses_its_key_and_anything_like_a_credential() {
        let body = br#"{"error":{"message":"key key-0123 rejected; try sk-ant-api03-abcdefghijklmnopqrstuvwxyz"}}"#;
        let text = redacted(body, "key-0123");
        assert!(
            !text.contains("key-0123") && !text.contains("sk-ant-"),
            "{text}"
        );
        assert_eq!(text.matches("[REDACTED]").count(), 2, "{text}");
    }

    #[test]
    fn a_providers_error_reaches_the_agent_in_its_dialect() {
        let anthropic = r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad [REDACTED]"}}"#;
        let body: Value = serde_json::from_slice(&for_agent(
            Dialect::AnthropicMessages,
            Dialect::OpenAiChat,
            anthropic,
        ))
        .unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "bad [REDACTED]");
        let body: Value = serde_json::from_slice(&for_agent(
            Dialect::OpenAiChat,
            Dialect::AnthropicMessages,
            "gateway down",
        ))
        .unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "api_error");
        assert_eq!(
            body["error"]["message"],
            "the OpenAI chat completions provider failed: gateway down"
        );
    }
}
