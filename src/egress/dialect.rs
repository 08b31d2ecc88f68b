//! What the service needs to know of the two dialects: the error body an
//! agent's SDK expects, a request prepared for a link of the same dialect,
//! and the tokens a provider reported (in a whole answer or a stream).
//!
//! This is the seam to `crate::egress::translate` (written in parallel):
//! when it lands, [`error_body`], [`usage`] and [`StreamUsage`] defer to it
//! and [`for_link`] translates between dialects instead of refusing.

use serde_json::{Map, Value, json};

use crate::proto::v1alpha1::Dialect;

/// A request of one dialect cannot be put to a link of another.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// The body of a request to a link serving `model` in `to`, from the
/// agent's `body` in `from`: for the same dialect the agent's body with
/// only `model` replaced (and, for an OpenAI stream, usage asked for, so
/// the tokens are known).
// TODO(issue 25, merge with h-translate): translate between dialects.
pub fn for_link(
    from: Dialect,
    to: Dialect,
    body: &Map<String, Value>,
    model: &str,
) -> Result<Vec<u8>, Unsupported> {
    if from != to {
        return Err(Unsupported(format!(
            "translating an {} request for an {} provider",
            name(from),
            name(to)
        )));
    }
    let mut body = body.clone();
    body.insert("model".into(), Value::from(model));
    if to == Dialect::OpenaiChat && streams(&body) {
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(options) = options {
            options.insert("include_usage".into(), Value::Bool(true));
        }
    }
    Ok(serde_json::to_vec(&body).expect("a JSON object serializes"))
}

/// Whether the request asks for a stream.
pub fn streams(body: &Map<String, Value>) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

fn name(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::AnthropicMessages => "Anthropic messages",
        _ => "OpenAI chat",
    }
}

/// An error body in `dialect`'s format for HTTP `status`.
pub fn error_body(dialect: Dialect, status: u16, message: &str) -> Vec<u8> {
    let body = match dialect {
        Dialect::AnthropicMessages => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        _ => {
            let (kind, code) = match status {
                400 => ("invalid_request_error", Value::Null),
                401 => ("invalid_request_error", json!("invalid_api_key")),
                403 => ("permission_error", Value::Null),
                404 => ("invalid_request_error", json!("model_not_found")),
                413 => ("invalid_request_error", json!("request_too_large")),
                429 => ("rate_limit_exceeded", json!("rate_limit_exceeded")),
                _ => ("api_error", Value::Null),
            };
            json!({"error": {"message": message, "type": kind, "code": code}})
        }
    };
    serde_json::to_vec(&body).expect("JSON serializes")
}

/// An error event ending a stream in `dialect` (after its head went out).
pub fn error_event(dialect: Dialect, message: &str) -> Vec<u8> {
    let body = String::from_utf8(error_body(dialect, 502, message)).expect("JSON is UTF-8");
    match dialect {
        Dialect::AnthropicMessages => format!("event: error\ndata: {body}\n\n").into_bytes(),
        _ => format!("data: {body}\n\n").into_bytes(),
    }
}

/// Tokens a provider counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
}

/// The usage a whole (non-streamed) answer in `dialect` reports.
pub fn usage(dialect: Dialect, body: &[u8]) -> Usage {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|answer| answer.get("usage").map(|usage| read_usage(dialect, usage)))
        .unwrap_or_default()
}

fn read_usage(dialect: Dialect, usage: &Value) -> Usage {
    let count = |field: &str| usage.get(field).and_then(Value::as_u64).unwrap_or(0);
    match dialect {
        Dialect::AnthropicMessages => Usage {
            input: count("input_tokens")
                + count("cache_creation_input_tokens")
                + count("cache_read_input_tokens"),
            output: count("output_tokens"),
        },
        _ => Usage {
            input: count("prompt_tokens"),
            output: count("completion_tokens"),
        },
    }
}

/// A link's answer on its way to the agent: in the agent's dialect, its
/// usage read in the link's.
// TODO(issue 25, merge with h-translate): translate answers, events and
// errors when the dialects differ (`for_link` refuses that until then).
#[derive(Debug)]
pub struct AnswerReader {
    agent: Dialect,
    link: Dialect,
    stream: StreamUsage,
    usage: Usage,
}

impl AnswerReader {
    /// For an agent speaking `agent` and a link speaking `link`.
    pub fn new(agent: Dialect, link: Dialect) -> Self {
        AnswerReader {
            agent,
            link,
            stream: StreamUsage::new(link),
            usage: Usage::default(),
        }
    }

    /// The agent's dialect.
    pub fn agent(&self) -> Dialect {
        self.agent
    }

    /// The next bytes of a streamed answer, as the agent gets them.
    pub fn stream_chunk(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.stream.feed(bytes);
        self.usage = self.stream.usage();
        bytes.to_vec()
    }

    /// A whole answer, as the agent gets it.
    pub fn whole(&mut self, body: &[u8]) -> Vec<u8> {
        self.usage = usage(self.link, body);
        body.to_vec()
    }

    /// A provider's error body (HTTP `status`), as the agent gets it.
    pub fn error(&mut self, _status: u16, body: &[u8]) -> Vec<u8> {
        body.to_vec()
    }

    /// The tokens the provider reported so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }
}

/// The longest event line kept while looking for usage; a longer one is
/// skipped (usage events are small).
const MAX_LINE: usize = 256 * 1024;

/// Follows a stream of server-sent events in a dialect for the usage it
/// reports: OpenAI's last chunk (`usage`, asked for with `include_usage`),
/// Anthropic's `message_start` (input) and `message_delta` (output so far).
#[derive(Debug)]
pub struct StreamUsage {
    dialect: Dialect,
    line: Vec<u8>,
    skipping: bool,
    usage: Usage,
}

impl StreamUsage {
    /// Following a stream in `dialect`.
    pub fn new(dialect: Dialect) -> Self {
        StreamUsage {
            dialect,
            line: Vec::new(),
            skipping: false,
            usage: Usage::default(),
        }
    }

    /// Reads the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                if !self.skipping {
                    let line = std::mem::take(&mut self.line);
                    self.event_line(&line);
                }
                self.line.clear();
                self.skipping = false;
            } else if !self.skipping {
                self.line.push(byte);
                if self.line.len() > MAX_LINE {
                    self.line.clear();
                    self.skipping = true;
                }
            }
        }
    }

    /// What the stream reported so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    fn event_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(event) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
            return;
        };
        match self.dialect {
            Dialect::AnthropicMessages => {
                if let Some(usage) = event.pointer("/message/usage") {
                    let start = read_usage(self.dialect, usage);
                    self.usage.input = start.input;
                    self.usage.output = self.usage.output.max(start.output);
                }
                if event.get("type").and_then(Value::as_str) == Some("message_delta")
                    && let Some(usage) = event.get("usage")
                {
                    let delta = read_usage(self.dialect, usage);
                    self.usage.output = delta.output;
                    self.usage.input = self.usage.input.max(delta.input);
                }
            }
            _ => {
                if let Some(usage) = event.get("usage").filter(|usage| usage.is_object()) {
                    self.usage = read_usage(self.dialect, usage);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_in_the_agents_dialect() {
        let openai: Value =
            serde_json::from_slice(&error_body(Dialect::OpenaiChat, 404, "no such model")).unwrap();
        assert_eq!(openai["error"]["message"], "no such model");
        assert_eq!(openai["error"]["code"], "model_not_found");
        let anthropic: Value =
            serde_json::from_slice(&error_body(Dialect::AnthropicMessages, 429, "spent")).unwrap();
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "rate_limit_error");
        assert_eq!(anthropic["error"]["message"], "spent");
    }

    #[test]
    fn a_same_dialect_link_gets_the_body_with_its_model() {
        let body = json!({"model": "asked", "stream": true, "messages": []});
        let prepared = for_link(
            Dialect::OpenaiChat,
            Dialect::OpenaiChat,
            body.as_object().unwrap(),
            "served",
        )
        .unwrap();
        let prepared: Value = serde_json::from_slice(&prepared).unwrap();
        assert_eq!(prepared["model"], "served");
        assert_eq!(prepared["stream_options"]["include_usage"], true);
        assert_eq!(prepared["messages"], json!([]));
        assert!(
            for_link(
                Dialect::OpenaiChat,
                Dialect::AnthropicMessages,
                body.as_object().unwrap(),
                "m"
            )
            .is_err()
        );
    }

    #[test]
    fn usage_is_read_from_answers_and_streams() {
        assert_eq!(
            usage(
                Dialect::OpenaiChat,
                br#"{"usage":{"prompt_tokens":3,"completion_tokens":5}}"#
            ),
            Usage {
                input: 3,
                output: 5
            }
        );
        let mut openai = StreamUsage::new(Dialect::OpenaiChat);
        openai.feed(b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"us");
        openai.feed(b"age\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
        assert_eq!(
            openai.usage(),
            Usage {
                input: 7,
                output: 2
            }
        );
        let mut anthropic = StreamUsage::new(Dialect::AnthropicMessages);
        anthropic.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n");
        anthropic.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n");
        assert_eq!(
            anthropic.usage(),
            Usage {
                input: 11,
                output: 9
            }
        );
    }
}
