//! A non-streamed completion in the agent's dialect, and the tokens a
//! completion reports (for the budget and the audit event).

use super::Dialect;
use serde_json::{Value, json};

/// Tokens a provider reported: the prompt's and the completion's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// OpenAI `prompt_tokens`, Anthropic `input_tokens`.
    pub input: u64,
    /// OpenAI `completion_tokens`, Anthropic `output_tokens`.
    pub output: u64,
}

/// A provider response that is not what its dialect defines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the provider's response is not a {dialect} completion: {problem}")]
pub struct BadResponse {
    /// The provider's dialect.
    pub dialect: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// The usage a completion body of `dialect` reports, if it reports one.
pub fn usage(dialect: Dialect, body: &[u8]) -> Option<Usage> {
    let value: Value = serde_json::from_slice(body).ok()?;
    usage_of(dialect, value.get("usage")?)
}

/// The usage of a `usage` object of `dialect`.
pub(crate) fn usage_of(dialect: Dialect, usage: &Value) -> Option<Usage> {
    let (input, output) = match dialect {
        Dialect::OpenAiChat => ("prompt_tokens", "completion_tokens"),
        Dialect::AnthropicMessages => ("input_tokens", "output_tokens"),
    };
    let input = usage.get(input).and_then(Value::as_u64);
    let output = usage.get(output).and_then(Value::as_u64);
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(Usage {
        input: input.unwrap_or(0),
        output: output.unwrap_or(0),
    })
}

/// The completion `body` of dialect `from` as dialect `to` writes it,
/// naming `agent_model` (the model the agent asked for). Same dialect: the
/// body unchanged.
pub fn response_for(
    from: Dialect,
    to: Dialect,
    body: &[u8],
    agent_model: &str,
) -> Result<Vec<u8>, BadResponse> {
    if from == to {
        return Ok(body.to_vec());
    }
    let bad = |problem: &str| BadResponse {
        dialect: from.name(),
        problem: problem.to_owned(),
    };
    let value: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let out = match from {
        Dialect::OpenAiChat => {
            let choice = value
                .pointer("/choices/0")
                .ok_or_else(|| bad("no choices"))?;
            let message = choice
                .get("message")
                .ok_or_else(|| bad("a choice without a message"))?;
            let mut content = Vec::new();
            if let Some(text) = message
                .get("content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                content.push(json!({"type": "text", "text": text}));
            }
            for call in message
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let arguments = call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let input: Value = if arguments.is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(arguments)
                        .map_err(|_| bad("tool call arguments that are not JSON"))?
                };
                content.push(json!({
                    "type": "tool_use", "id": call.get("id"),
                    "name": call.pointer("/function/name"), "input": input,
                }));
            }
            let usage = usage_of(Dialect::OpenAiChat, &value["usage"]).unwrap_or_default();
            json!({
                "id": value.get("id").and_then(Value::as_str).unwrap_or("msg"),
                "type": "message",
                "role": "assistant",
                "model": agent_model,
                "content": content,
                "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
                "stop_sequence": null,
                "usage": {"input_tokens": usage.input, "output_tokens": usage.output},
            })
        }
        Dialect::AnthropicMessages => {
            let blocks = value
                .get("content")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no content"))?;
            let mut text = String::new();
            let mut calls = Vec::new();
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
                    Some("tool_use") => calls.push(json!({
                        "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": block["input"].to_string()},
                    })),
                    _ => return Err(bad("a content block OpenAI has no equivalent for")),
                }
            }
            let mut message = json!({
                "role": "assistant",
                "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { text.into() },
                "refusal": null,
            });
            if !calls.is_empty() {
                message["tool_calls"] = calls.into();
            }
            let usage = usage_of(Dialect::AnthropicMessages, &value["usage"]).unwrap_or_default();
            json!({
                "id": value.get("id").and_then(Value::as_str).unwrap_or("chatcmpl"),
                "object": "chat.completion",
                "created": 0,
                "model": agent_model,
                "choices": [{
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason(value.get("stop_reason").and_then(Value::as_str)),
                    "logprobs": null,
                }],
                "usage": openai_usage(usage),
            })
        }
    };
    Ok(out.to_string().into_bytes())
}

/// OpenAI's `usage` object for `usage`.
pub(crate) fn openai_usage(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
    })
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
pub(crate) fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub(crate) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: Vec<u8>) -> Value {
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn openai_completion_becomes_an_anthropic_message() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me look.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}],
            }}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        });
        let bytes = body.to_string().into_bytes();
        let out = parse(
            response_for(
                Dialect::OpenAiChat,
                Dialect::AnthropicMessages,
                &bytes,
                "claude-x",
            )
            .unwrap(),
        );
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": 1}},
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 4},
            })
        );
        assert_eq!(
            usage(Dialect::OpenAiChat, &bytes),
            Some(Usage {
                input: 10,
                output: 4
            })
        );
    }

    #[test]
    fn anthropic_message_becomes_an_openai_completion() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
            "stop_reason": "max_tokens", "stop_sequence": null,
            "usage": {"input_tokens": 7, "output_tokens": 2},
        });
        let bytes = body.to_string().into_bytes();
        let out = parse(
            response_for(
                Dialect::AnthropicMessages,
                Dialect::OpenAiChat,
                &bytes,
                "gpt-x",
            )
            .unwrap(),
        );
        assert_eq!(
            out,
            json!({
                "id": "msg_1", "object": "chat.completion", "created": 0, "model": "gpt-x",
                "choices": [{"index": 0, "finish_reason": "length", "logprobs": null,
                    "message": {"role": "assistant", "content": "Hello there", "refusal": null}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
            })
        );
        assert_eq!(
            usage(Dialect::AnthropicMessages, &bytes),
            Some(Usage {
                input: 7,
                output: 2
            })
        );
    }

    #[test]
    fn anthropic_tool_use_becomes_tool_calls() {
        let body = json!({"id": "msg_2", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1]}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}});
        let out = parse(
            response_for(
                Dialect::AnthropicMessages,
                Dialect::OpenAiChat,
                body.to_string().as_bytes(),
                "m",
            )
            .unwrap(),
        );
        let message = &out["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(
            message["tool_calls"],
            json!([{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":[1]}"}}])
        );
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn same_dialect_is_unchanged_and_bad_bodies_are_errors() {
        let body = b"{\"anything\":1}";
        assert_eq!(
            response_for(Dialect::OpenAiChat, Dialect::OpenAiChat, body, "m").unwrap(),
            body
        );
        let error = response_for(
            Dialect::OpenAiChat,
            Dialect::AnthropicMessages,
            b"nope",
            "m",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the provider's response is not a OpenAI chat completions completion: not JSON"
        );
        assert!(
            response_for(
                Dialect::OpenAiChat,
                Dialect::AnthropicMessages,
                b"{\"choices\":[]}",
                "m"
            )
            .is_err()
        );
        let thinking = json!({"content": [{"type": "thinking", "thinking": "x"}]}).to_string();
        assert!(
            response_for(
                Dialect::AnthropicMessages,
                Dialect::OpenAiChat,
                thinking.as_bytes(),
                "m"
            )
            .is_err()
        );
        assert_eq!(usage(Dialect::OpenAiChat, b"{}"), None);
        assert_eq!(usage(Dialect::OpenAiChat, b"not json"), None);
    }

    #[test]
    fn stop_and_finish_reasons_map_both_ways() {
        for (finish, stop) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("content_filter", "refusal"),
        ] {
            assert_eq!(stop_reason(Some(finish)), stop);
            assert_eq!(finish_reason(Some(stop)), finish);
        }
        assert_eq!(finish_reason(Some("stop_sequence")), "stop");
    }
}
