//! Errors as each dialect's SDK expects them: the body, the HTTP status,
//! and the event that reports a failure after a stream began.

use super::Dialect;
use serde_json::json;

/// What went wrong, in the categories both SDKs raise distinct exceptions
/// for (by HTTP status, and by the error's `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed, over a limit, or uses a feature the link
    /// lacks (400).
    InvalidRequest,
    /// The request body is over the size taken (413).
    TooLarge,
    /// No or a wrong credential (401).
    Authentication,
    /// Authenticated, but the policy refuses (403).
    Permission,
    /// An unknown model (404).
    NotFound,
    /// A spent budget or a provider's rate limit (429).
    RateLimit,
    /// The provider or the egress service failed (500).
    Api,
    /// Every link is unavailable for now (Anthropic 529, OpenAI 503).
    Overloaded,
}

impl ErrorKind {
    /// The HTTP status an agent of `dialect` gets for this kind.
    pub fn status(self, dialect: Dialect) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::TooLarge => 413,
            ErrorKind::Authentication => 401,
            ErrorKind::Permission => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::RateLimit => 429,
            ErrorKind::Api => 500,
            ErrorKind::Overloaded => match dialect {
                Dialect::AnthropicMessages => 529,
                Dialect::OpenAiChat => 503,
            },
        }
    }

    /// The kind of an error `type` either dialect writes (a provider's
    /// error event); an unknown type is an [`ErrorKind::Api`].
    pub fn from_type_name(name: &str) -> ErrorKind {
        match name {
            "invalid_request_error" => ErrorKind::InvalidRequest,
            "request_too_large" => ErrorKind::TooLarge,
            "authentication_error" => ErrorKind::Authentication,
            "permission_error" => ErrorKind::Permission,
            "not_found_error" => ErrorKind::NotFound,
            "rate_limit_error" => ErrorKind::RateLimit,
            "overloaded_error" | "server_error" => ErrorKind::Overloaded,
            _ => ErrorKind::Api,
        }
    }

    /// The error's `type` in `dialect`'s error body.
    pub fn type_name(self, dialect: Dialect) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::TooLarge => match dialect {
                Dialect::AnthropicMessages => "request_too_large",
                Dialect::OpenAiChat => "invalid_request_error",
            },
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RateLimit => "rate_limit_error",
            ErrorKind::Api => "api_error",
            ErrorKind::Overloaded => match dialect {
                Dialect::AnthropicMessages => "overloaded_error",
                Dialect::OpenAiChat => "server_error",
            },
        }
    }
}

/// The JSON error body of `dialect`: OpenAI
/// `{"error":{"message","type","param":null,"code":null}}`, Anthropic
/// `{"type":"error","error":{"type","message"}}`.
pub fn error_body(dialect: Dialect, kind: ErrorKind, message: &str) -> Vec<u8> {
    error_value(dialect, kind, message).to_string().into_bytes()
}

fn error_value(dialect: Dialect, kind: ErrorKind, message: &str) -> serde_json::Value {
    let kind_name = kind.type_name(dialect);
    match dialect {
        Dialect::OpenAiChat => json!({
            "error": {"message": message, "type": kind_name, "param": null, "code": null}
        }),
        Dialect::AnthropicMessages => json!({
            "type": "error",
            "error": {"type": kind_name, "message": message}
        }),
    }
}

/// The server-sent event reporting a failure after a stream's head was
/// sent: Anthropic's `event: error`, and for OpenAI a `data:` line holding
/// the error body (the `openai` SDK raises an `APIError` for a chunk with
/// an `error`). The stream ends after it (no `[DONE]`).
pub fn stream_error(dialect: Dialect, kind: ErrorKind, message: &str) -> Vec<u8> {
    let data = error_value(dialect, kind, message).to_string();
    match dialect {
        Dialect::OpenAiChat => format!("data: {data}\n\n").into_bytes(),
        Dialect::AnthropicMessages => format!("event: error\ndata: {data}\n\n").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn openai_error_body_has_the_sdk_fields() {
        let body = parse(&error_body(
            Dialect::OpenAiChat,
            ErrorKind::RateLimit,
            "budget spent",
        ));
        assert_eq!(
            body,
            json!({"error": {"message": "budget spent", "type": "rate_limit_error", "param": null, "code": null}})
        );
    }

    #[test]
    fn anthropic_error_body_has_the_sdk_fields() {
        let body = parse(&error_body(
            Dialect::AnthropicMessages,
            ErrorKind::NotFound,
            "no model x",
        ));
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": "not_found_error", "message": "no model x"}})
        );
    }

    #[test]
    fn statuses_and_types_match_each_sdk() {
        use Dialect::*;
        use ErrorKind::*;
        let cases = [
            (
                InvalidRequest,
                400,
                "invalid_request_error",
                400,
                "invalid_request_error",
            ),
            (
                Authentication,
                401,
                "authentication_error",
                401,
                "authentication_error",
            ),
            (Permission, 403, "permission_error", 403, "permission_error"),
            (NotFound, 404, "not_found_error", 404, "not_found_error"),
            (RateLimit, 429, "rate_limit_error", 429, "rate_limit_error"),
            (Api, 500, "api_error", 500, "api_error"),
            (Overloaded, 503, "server_error", 529, "overloaded_error"),
        ];
        for (kind, o_status, o_type, a_status, a_type) in cases {
            assert_eq!(kind.status(OpenAiChat), o_status, "{kind:?}");
            assert_eq!(kind.type_name(OpenAiChat), o_type, "{kind:?}");
            assert_eq!(kind.status(AnthropicMessages), a_status, "{kind:?}");
            assert_eq!(kind.type_name(AnthropicMessages), a_type, "{kind:?}");
            assert_eq!(ErrorKind::from_type_name(a_type), kind);
            assert_eq!(ErrorKind::from_type_name(o_type), kind);
        }
        // Only Anthropic has a type of its own for a body over the limit.
        assert_eq!(TooLarge.status(OpenAiChat), 413);
        assert_eq!(TooLarge.type_name(OpenAiChat), "invalid_request_error");
        assert_eq!(TooLarge.status(AnthropicMessages), 413);
        assert_eq!(TooLarge.type_name(AnthropicMessages), "request_too_large");
        assert_eq!(ErrorKind::from_type_name("request_too_large"), TooLarge);
    }

    #[test]
    fn message_is_escaped_as_json() {
        let body = parse(&error_body(
            Dialect::OpenAiChat,
            ErrorKind::Api,
            "a \"quoted\"\nline",
        ));
        assert_eq!(body["error"]["message"], "a \"quoted\"\nline");
    }

    #[test]
    fn stream_errors_are_one_event_in_each_dialect() {
        let openai = stream_error(Dialect::OpenAiChat, ErrorKind::Api, "upstream failed");
        let text = String::from_utf8(openai).unwrap();
        let data = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        assert_eq!(parse(data.as_bytes())["error"]["type"], "api_error");

        let anthropic = stream_error(Dialect::AnthropicMessages, ErrorKind::Overloaded, "busy");
        let text = String::from_utf8(anthropic).unwrap();
        let data = text
            .strip_prefix("event: error\ndata: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        assert_eq!(parse(data.as_bytes())["error"]["type"], "overloaded_error");
    }
}
