//! What a request asks: its model, token limit and streaming, read once
//! from the agent's body (which stays parsed for [`super::request_for`]).

use super::Dialect;
use serde_json::{Map, Value};

/// A parsed agent request and what the egress service decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    /// The dialect the agent spoke.
    pub dialect: Dialect,
    /// The `model` the request names (never empty).
    pub model: String,
    /// `max_completion_tokens` or `max_tokens` (OpenAI), `max_tokens`
    /// (Anthropic, required).
    pub max_tokens: Option<u32>,
    /// Whether the agent asked to stream.
    pub stream: bool,
    /// Whether the agent asked OpenAI's `stream_options.include_usage`
    /// (so its final usage-only chunk must reach it).
    pub include_usage: bool,
    /// The request's JSON object.
    pub body: Map<String, Value>,
}

/// A request that is not what its dialect defines, in words naming the
/// problem (for a 400 `invalid_request_error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Reads what `body` asks, in `dialect`.
pub fn inspect(dialect: Dialect, body: &[u8]) -> Result<Asked, BadRequest> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(BadRequest("the request body must be a JSON object".into()));
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) | None => {
            return Err(BadRequest("the request names no model (`model`)".into()));
        }
        Some(_) => return Err(BadRequest("`model` must be a string".into())),
    };
    match body.get("messages") {
        Some(Value::Array(_)) => {}
        None => return Err(BadRequest("the request has no `messages`".into())),
        Some(_) => return Err(BadRequest("`messages` must be an array".into())),
    }
    let max_tokens = match dialect {
        Dialect::OpenAiChat => match count(&body, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => count(&body, "max_tokens")?,
        },
        Dialect::AnthropicMessages => Some(
            count(&body, "max_tokens")?
                .ok_or_else(|| BadRequest("`max_tokens` is required".into()))?,
        ),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(BadRequest("`stream` must be a boolean".into())),
    };
    let include_usage = dialect == Dialect::OpenAiChat
        && body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    Ok(Asked {
        dialect,
        model,
        max_tokens,
        stream,
        include_usage,
        body,
    })
}

/// A non-negative integer field that fits `u32`, if present and not null.
fn count(body: &Map<String, Value>, field: &str) -> Result<Option<u32>, BadRequest> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| BadRequest(format!("`{field}` must be a non-negative integer"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(dialect: Dialect, body: &str) -> String {
        inspect(dialect, body.as_bytes()).unwrap_err().0
    }

    #[test]
    fn reads_an_openai_request() {
        let asked = inspect(
            Dialect::OpenAiChat,
            br#"{"model":"gpt-4o","messages":[],"max_completion_tokens":50,"max_tokens":9,
                "stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(asked.model, "gpt-4o");
        assert_eq!(asked.max_tokens, Some(50));
        assert!(asked.stream && asked.include_usage);

        let asked = inspect(
            Dialect::OpenAiChat,
            br#"{"model":"m","messages":[],"max_tokens":9}"#,
        )
        .unwrap();
        assert_eq!(asked.max_tokens, Some(9));
        assert!(!asked.stream && !asked.include_usage);
        let asked = inspect(Dialect::OpenAiChat, br#"{"model":"m","messages":[]}"#).unwrap();
        assert_eq!(asked.max_tokens, None);
    }

    #[test]
    fn reads_an_anthropic_request() {
        let asked = inspect(
            Dialect::AnthropicMessages,
            br#"{"model":"claude","messages":[],"max_tokens":100,"stream":true}"#,
        )
        .unwrap();
        assert_eq!(
            (asked.model.as_str(), asked.max_tokens, asked.stream),
            ("claude", Some(100), true)
        );
        assert!(!asked.include_usage);
    }

    #[test]
    fn malformed_requests_get_precise_errors() {
        let o = Dialect::OpenAiChat;
        assert!(err(o, "{\"model\":").starts_with("the request body is not valid JSON"));
        assert_eq!(err(o, "[1]"), "the request body must be a JSON object");
        assert_eq!(
            err(o, r#"{"messages":[]}"#),
            "the request names no model (`model`)"
        );
        assert_eq!(
            err(o, r#"{"model":"","messages":[]}"#),
            "the request names no model (`model`)"
        );
        assert_eq!(
            err(o, r#"{"model":3,"messages":[]}"#),
            "`model` must be a string"
        );
        assert_eq!(err(o, r#"{"model":"m"}"#), "the request has no `messages`");
        assert_eq!(
            err(o, r#"{"model":"m","messages":{}}"#),
            "`messages` must be an array"
        );
        assert_eq!(
            err(o, r#"{"model":"m","messages":[],"max_tokens":-1}"#),
            "`max_tokens` must be a non-negative integer"
        );
        assert_eq!(
            err(o, r#"{"model":"m","messages":[],"stream":"yes"}"#),
            "`stream` must be a boolean"
        );
        assert_eq!(
            err(Dialect::AnthropicMessages, r#"{"model":"m","messages":[]}"#),
            "`max_tokens` is required"
        );
    }
}
