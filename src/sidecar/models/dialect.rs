//! The two wire formats the model proxy speaks to the agent, as far as the
//! sidecar itself answers in them: its own error responses and the model
//! list. Everything else (requests, replies, the egress service's own
//! refusals) passes through as the egress service wrote it.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::proto::v1alpha1 as pb;

/// The API an agent's request is written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's (`POST /v1/chat/completions`).
    OpenAi,
    /// Anthropic's (`POST /v1/messages`).
    Anthropic,
}

impl Dialect {
    /// The dialect of a `GET /v1/models` (or of a request to no route):
    /// Anthropic's SDKs send `anthropic-version` and `x-api-key`, OpenAI's neither.
    pub fn of_headers(headers: &HeaderMap) -> Dialect {
        if headers.contains_key("anthropic-version") || headers.contains_key("x-api-key") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }

    /// As the Models service names it.
    pub fn wire(self) -> pb::Dialect {
        match self {
            Dialect::OpenAi => pb::Dialect::OpenaiChat,
            Dialect::Anthropic => pb::Dialect::AnthropicMessages,
        }
    }

    /// An error response with `status` and `message`, in the format this
    /// dialect's SDKs parse (OpenAI `{"error":{"message","type","code"}}`,
    /// Anthropic `{"type":"error","error":{"type","message"}}`).
    pub fn error(self, status: StatusCode, message: &str) -> Response {
        let (openai_type, anthropic_type, code) = match status.as_u16() {
            400 => (
                "invalid_request_error",
                "invalid_request_error",
                "invalid_request",
            ),
            401 => (
                "authentication_error",
                "authentication_error",
                "unauthenticated",
            ),
            403 => ("permission_error", "permission_error", "permission_denied"),
            404 => ("not_found_error", "not_found_error", "not_found"),
            413 => (
                "invalid_request_error",
                "request_too_large",
                "request_too_large",
            ),
            429 => ("rate_limit_error", "rate_limit_error", "rate_limited"),
            _ => ("server_error", "api_error", "unavailable"),
        };
        let body = match self {
            Dialect::OpenAi => json!({
                "error": {"message": message, "type": openai_type, "code": code}
            }),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": {"type": anthropic_type, "message": message}
            }),
        };
        (status, Json(body)).into_response()
    }

    /// The model list of `GET /v1/models`: each model a session may name
    /// (`ids`, first link first), in this dialect's list format.
    pub fn model_list(self, ids: &[String]) -> Value {
        match self {
            Dialect::OpenAi => json!({
                "object": "list",
                "data": ids.iter().map(|id| json!({
                    "id": id, "object": "model", "created": 0, "owned_by": "wopr"
                })).collect::<Vec<_>>(),
            }),
            Dialect::Anthropic => json!({
                "data": ids.iter().map(|id| json!({
                    "type": "model",
                    "id": id,
                    "display_name": id,
                    "created_at": "1970-01-01T00:00:00Z",
                })).collect::<Vec<_>>(),
                "has_more": false,
                "first_id": ids.first(),
                "last_id": ids.last(),
            }),
        }
    }
}

/// The models `GET /v1/models` lists: the links' models, first link first,
/// each once; a link naming no model (any model the request names) lists none.
pub fn listed_models(links: &[pb::ModelLink]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for link in links {
        if !link.model.is_empty() && !ids.contains(&link.model) {
            ids.push(link.model.clone());
        }
    }
    ids
}

/// The HTTP status for a gRPC error of the egress service.
pub fn status_of(code: tonic::Code) -> StatusCode {
    match code {
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: Response) -> Value {
        let bytes =
            futures::executor::block_on(axum::body::to_bytes(response.into_body(), 4096)).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn errors_are_in_each_dialects_format() {
        let openai = Dialect::OpenAi.error(StatusCode::PAYLOAD_TOO_LARGE, "too big");
        assert_eq!(openai.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            body(openai),
            json!({"error": {"message": "too big", "type": "invalid_request_error", "code": "request_too_large"}})
        );
        let anthropic = Dialect::Anthropic.error(StatusCode::SERVICE_UNAVAILABLE, "down");
        assert_eq!(
            body(anthropic),
            json!({"type": "error", "error": {"type": "api_error", "message": "down"}})
        );
    }

    #[test]
    fn the_list_names_each_model_once_and_skips_links_of_any_model() {
        let link = |provider: &str, model: &str| pb::ModelLink {
            provider: provider.into(),
            model: model.into(),
        };
        let ids = listed_models(&[
            link("a", "m1"),
            link("b", ""),
            link("c", "m1"),
            link("c", "m2"),
        ]);
        assert_eq!(ids, ["m1", "m2"]);
        let anthropic = Dialect::Anthropic.model_list(&ids);
        assert_eq!(anthropic["first_id"], "m1");
        assert_eq!(anthropic["last_id"], "m2");
        assert_eq!(anthropic["data"][1]["display_name"], "m2");
        assert_eq!(Dialect::Anthropic.model_list(&[])["first_id"], Value::Null);
        assert_eq!(
            Dialect::OpenAi.model_list(&ids)["data"][0]["owned_by"],
            "wopr"
        );
    }
}
