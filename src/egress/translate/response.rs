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
