//! The request a link receives: the agent's own body with the link's model
//! when the dialects match, else translated field by field. Whatever has no
//! faithful equivalent in the link's dialect is refused, naming it: nothing
//! is silently dropped.

use super::{Asked, Dialect};
use serde_json::{Map, Value, json};

/// Anthropic requires `max_tokens`: the default when neither the request
/// nor the policy gives one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// A request feature the link's dialect cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the fallback link speaks {dialect} and cannot serve {feature}")]
pub struct Unsupported {
    /// What the request uses, as the error names it.
    pub feature: String,
    /// The link's dialect.
    pub dialect: &'static str,
}

/// The body to send a link of dialect `to` that serves `model`;
/// `max_tokens` is the policy's per-request limit, given to a request that
/// names none. An OpenAI stream always asks for usage (the budget needs the
/// tokens; [`super::StreamTranslator`] hides it from an agent that did not
/// ask).
pub fn request_for(
    asked: &Asked,
    to: Dialect,
    model: &str,
    max_tokens: Option<u32>,
) -> Result<Vec<u8>, Unsupported> {
    let unsupported = |feature: String| Unsupported {
        feature,
        dialect: to.name(),
    };
    let mut out = match (asked.dialect, to) {
        (Dialect::OpenAiChat, Dialect::OpenAiChat) => {
            let mut out = asked.body.clone();
            if asked.max_tokens.is_none()
                && let Some(n) = max_tokens
            {
                out.insert("max_completion_tokens".into(), n.into());
            }
            out
        }
        (Dialect::AnthropicMessages, Dialect::AnthropicMessages) => asked.body.clone(),
        (Dialect::OpenAiChat, Dialect::AnthropicMessages) => {
            let limit = asked
                .max_tokens
                .or(max_tokens)
                .unwrap_or(DEFAULT_MAX_TOKENS);
            openai_to_anthropic(&asked.body, limit).map_err(unsupported)?
        }
        (Dialect::AnthropicMessages, Dialect::OpenAiChat) => {
            anthropic_to_openai(&asked.body, asked.max_tokens).map_err(unsupported)?
        }
    };
    out.insert("model".into(), model.into());
    if to == Dialect::OpenAiChat && asked.stream {
        let options = out.entry("stream_options").or_insert_with(|| json!({}));
        if let Value::Object(options) = options {
            options.insert("include_usage".into(), true.into());
        } else {
            *options = json!({"include_usage": true});
        }
    }
    Ok(Value::Object(out).to_string().into_bytes())
}

type Translated = Result<Map<String, Value>, String>;

fn openai_to_anthropic(body: &Map<String, Value>, max_tokens: u32) -> Translated {
    let mut out = Map::new();
    out.insert("max_tokens".into(), max_tokens.into());
    for (key, value) in body {
        match key.as_str() {
            "model" | "messages" | "max_tokens" | "max_completion_tokens" | "stream_options" => {}
            "stream" | "top_p" => {
                out.insert(key.clone(), value.clone());
            }
            "temperature" => {
                if value.as_f64().is_some_and(|t| t > 1.0) {
                    return Err("a temperature above 1".into());
                }
                out.insert(key.clone(), value.clone());
            }
            "stop" => {
                let stops = match value {
                    Value::String(s) => vec![Value::String(s.clone())],
                    Value::Array(a) => a.clone(),
                    _ => vec![],
                };
                out.insert("stop_sequences".into(), stops.into());
            }
            "tools" => {
                out.insert("tools".into(), openai_tools(value)?.into());
            }
            "tool_choice" | "parallel_tool_calls" => {}
            "user" => {
                out.insert("metadata".into(), json!({"user_id": value}));
            }
            "n" if value.as_u64() == Some(1) => {}
            "logprobs" if value == &Value::Bool(false) => {}
            "response_format" if value.get("type").and_then(Value::as_str) == Some("text") => {}
            "n" => return Err("n > 1 (several choices)".into()),
            "response_format" => {
                let kind = value.get("type").and_then(Value::as_str).unwrap_or("?");
                return Err(format!("response_format {kind}"));
            }
            other => return Err(format!("`{other}`")),
        }
    }
    if let Some(choice) = anthropic_tool_choice(body)? {
        out.insert("tool_choice".into(), choice);
    }
    let (system, messages) = openai_messages(body.get("messages"))?;
    if let Some(system) = system {
        out.insert("system".into(), system.into());
    }
    out.insert("messages".into(), messages.into());
    Ok(out)
}

fn openai_tools(tools: &Value) -> Result<Vec<Value>, String> {
    let tools = tools.as_array().ok_or("`tools` that is not an array")?;
    tools
        .iter()
        .map(|tool| {
            let kind = tool
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("function");
            if kind != "function" {
                return Err(format!("tools of type {kind}"));
            }
            let function = tool.get("function").ok_or("a tool without `function`")?;
            if function.get("strict") == Some(&Value::Bool(true)) {
                return Err("strict tools".into());
            }
            let mut out = Map::new();
            out.insert(
                "name".into(),
                function.get("name").cloned().unwrap_or_default(),
            );
            if let Some(d) = function.get("description") {
                out.insert("description".into(), d.clone());
            }
            let schema = function
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            out.insert("input_schema".into(), schema);
            Ok(Value::Object(out))
        })
        .collect()
}

fn anthropic_tool_choice(body: &Map<String, Value>) -> Result<Option<Value>, String> {
    let mut choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => return Err(format!("tool_choice {other}")),
        }),
        Some(named) => {
            let name = named
                .pointer("/function/name")
                .ok_or("a tool_choice without a name")?;
            Some(json!({"type": "tool", "name": name}))
        }
    };
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
        choice["disable_parallel_tool_use"] = true.into();
    }
    Ok(choice)
}

/// The system prompt (leading system/developer messages) and the
/// Anthropic messages of an OpenAI conversation.
fn openai_messages(messages: Option<&Value>) -> Result<(Option<String>, Vec<Value>), String> {
    let mut system: Option<String> = None;
    let mut out: Vec<Value> = Vec::new();
    for message in messages.and_then(Value::as_array).into_iter().flatten() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content");
        match role {
            "system" | "developer" => {
                if !out.is_empty() {
                    return Err("a system message after the conversation began".into());
                }
                let text = plain_text(content)?;
                system = Some(match system {
                    Some(s) => format!("{s}\n\n{text}"),
                    None => text,
                });
            }
            "user" => out.push(json!({"role": "user", "content": user_content(content)?})),
            "assistant" => {
                let mut blocks = Vec::new();
                if content.is_some_and(|c| !c.is_null()) {
                    let text = plain_text(content)?;
                    if !text.is_empty() {
                        blocks.push(json!({"type": "text", "text": text}));
                    }
                }
                for call in message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let arguments = call.pointer("/function/arguments").and_then(Value::as_str);
                    let input: Value = match arguments {
                        None | Some("") => json!({}),
                        Some(a) => serde_json::from_str(a)
                            .map_err(|_| "tool call arguments that are not JSON".to_string())?,
                    };
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": call.pointer("/function/name"),
                        "input": input,
                    }));
                }
                out.push(json!({"role": "assistant", "content": blocks}));
            }
            "tool" => {
                let result = json!({
                    "type": "tool_result",
                    "tool_use_id": message.get("tool_call_id"),
                    "content": plain_text(content)?,
                });
                // Consecutive tool results answer one assistant turn: one user message.
                match out.last_mut() {
                    Some(last) if is_tool_results(last) => last["content"]
                        .as_array_mut()
                        .expect("checked")
                        .push(result),
                    _ => out.push(json!({"role": "user", "content": [result]})),
                }
            }
            other => return Err(format!("messages of role {other:?}")),
        }
    }
    Ok((system, out))
}

fn is_tool_results(message: &Value) -> bool {
    message["role"] == "user"
        && message["content"]
            .as_array()
            .is_some_and(|blocks| blocks.iter().all(|b| b["type"] == "tool_result"))
}

/// A string content, or the text of an array of text parts.
fn plain_text(content: Option<&Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    other => return Err(format!("content part type {}", other.unwrap_or("?"))),
                }
            }
            Ok(text)
        }
        Some(_) => Err("message content that is neither a string nor parts".into()),
    }
}

fn user_content(content: Option<&Value>) -> Result<Value, String> {
    let Some(Value::Array(parts)) = content else {
        return Ok(plain_text(content)?.into());
    };
    parts
        .iter()
        .map(|part| match part.get("type").and_then(Value::as_str) {
            Some("text") => Ok(json!({"type": "text", "text": part.get("text")})),
            Some("image_url") => {
                let url = part
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let source = match data_url(url) {
                    Some((media_type, data)) => {
                        json!({"type": "base64", "media_type": media_type, "data": data})
                    }
                    None => json!({"type": "url", "url": url}),
                };
                Ok(json!({"type": "image", "source": source}))
            }
            other => Err(format!("content part type {}", other.unwrap_or("?"))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::from)
}

/// `data:<media type>;base64,<data>` split.
fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (media_type, data) = rest.split_once(";base64,")?;
    Some((media_type, data))
}

fn anthropic_to_openai(body: &Map<String, Value>, max_tokens: Option<u32>) -> Translated {
    let mut out = Map::new();
    if let Some(n) = max_tokens {
        out.insert("max_completion_tokens".into(), n.into());
    }
    let mut messages = Vec::new();
    for (key, value) in body {
        match key.as_str() {
            "model" | "messages" | "max_tokens" | "tool_choice" => {}
            "stream" | "temperature" | "top_p" => {
                out.insert(key.clone(), value.clone());
            }
            "system" => {
                let text = anthropic_text(value)?;
                messages.push(json!({"role": "system", "content": text}));
            }
            "stop_sequences" => {
                out.insert("stop".into(), value.clone());
            }
            "tools" => {
                out.insert("tools".into(), anthropic_tools(value)?.into());
            }
            "metadata" => {
                if let Some(user) = value.get("user_id") {
                    out.insert("user".into(), user.clone());
                }
            }
            "thinking" if value.get("type").and_then(Value::as_str) == Some("disabled") => {}
            "thinking" => return Err("extended thinking (`thinking`)".into()),
            other => return Err(format!("`{other}`")),
        }
    }
    if let Some(choice) = body.get("tool_choice") {
        let kind = choice.get("type").and_then(Value::as_str).unwrap_or("");
        let mapped = match kind {
            "auto" => json!("auto"),
            "any" => json!("required"),
            "none" => json!("none"),
            "tool" => json!({"type": "function", "function": {"name": choice.get("name")}}),
            other => return Err(format!("tool_choice {other}")),
        };
        out.insert("tool_choice".into(), mapped);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), false.into());
        }
    }
    for message in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        anthropic_message(message, &mut messages)?;
    }
    out.insert("messages".into(), messages.into());
    Ok(out)
}

/// A string, or the text of an array of text blocks (`cache_control` is a
/// caching hint and changes no answer).
fn anthropic_text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut text = Vec::new();
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push(block.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    other => return Err(format!("content block type {}", other.unwrap_or("?"))),
                }
            }
            Ok(text.join("\n\n"))
        }
        _ => Err("content that is neither a string nor blocks".into()),
    }
}

fn anthropic_tools(tools: &Value) -> Result<Vec<Value>, String> {
    let tools = tools.as_array().ok_or("`tools` that is not an array")?;
    tools
        .iter()
        .map(|tool| {
            match tool.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(kind) => return Err(format!("tools of type {kind}")),
            }
            let mut function = Map::new();
            function.insert("name".into(), tool.get("name").cloned().unwrap_or_default());
            if let Some(d) = tool.get("description") {
                function.insert("description".into(), d.clone());
            }
            if let Some(schema) = tool.get("input_schema") {
                function.insert("parameters".into(), schema.clone());
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

fn anthropic_message(message: &Value, out: &mut Vec<Value>) -> Result<(), String> {
    let role = message.get("role").and_then(Value::as_str).unwrap_or("");
    let content = message.get("content").unwrap_or(&Value::Null);
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => return Err("content that is neither a string nor blocks".into()),
    };
    match role {
        "user" => {
            let mut parts = Vec::new();
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_result") => {
                        if block.get("is_error") == Some(&Value::Bool(true)) {
                            return Err("tool results marked is_error".into());
                        }
                        let text = anthropic_text(block.get("content").unwrap_or(&json!("")))?;
                        out.push(json!({
                            "role": "tool",
                            "tool_call_id": block.get("tool_use_id"),
                            "content": text,
                        }));
                    }
                    Some("text") => parts.push(json!({"type": "text", "text": block.get("text")})),
                    Some("image") => {
                        let source = block.get("source").unwrap_or(&Value::Null);
                        let url = match source.get("type").and_then(Value::as_str) {
                            Some("base64") => format!(
                                "data:{};base64,{}",
                                source["media_type"].as_str().unwrap_or(""),
                                source["data"].as_str().unwrap_or("")
                            ),
                            Some("url") => source["url"].as_str().unwrap_or("").to_owned(),
                            other => return Err(format!("image source {}", other.unwrap_or("?"))),
                        };
                        parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                    }
                    other => return Err(format!("content block type {}", other.unwrap_or("?"))),
                }
            }
            if !parts.is_empty() {
                out.push(json!({"role": "user", "content": parts}));
            }
        }
        "assistant" => {
            let mut text = Vec::new();
            let mut calls = Vec::new();
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => text.push(block["text"].as_str().unwrap_or("")),
                    Some("tool_use") => calls.push(json!({
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": block["input"].to_string()},
                    })),
                    other => return Err(format!("content block type {}", other.unwrap_or("?"))),
                }
            }
            let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { text.concat().into() }});
            if !calls.is_empty() {
                message["tool_calls"] = calls.into();
            }
            out.push(message);
        }
        other => return Err(format!("messages of role {other:?}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::translate::inspect;

    fn translate(
        from: Dialect,
        to: Dialect,
        body: Value,
        limit: Option<u32>,
    ) -> Result<Value, Unsupported> {
        let asked = inspect(from, body.to_string().as_bytes()).unwrap();
        request_for(&asked, to, "link-model", limit).map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn refused(from: Dialect, to: Dialect, body: Value) -> String {
        translate(from, to, body, None).unwrap_err().feature
    }

    use Dialect::{AnthropicMessages as A, OpenAiChat as O};

    #[test]
    fn same_dialect_replaces_only_the_model() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "seed": 3});
        let out = translate(O, O, body.clone(), Some(100)).unwrap();
        let mut expected = body.clone();
        expected["model"] = "link-model".into();
        assert_eq!(out, expected);

        let body = json!({"model": "m", "messages": [], "max_tokens": 5, "top_k": 3, "thinking": {"type": "enabled", "budget_tokens": 9}});
        let mut expected = body.clone();
        expected["model"] = "link-model".into();
        assert_eq!(translate(A, A, body, Some(100)).unwrap(), expected);
    }

    #[test]
    fn same_dialect_openai_streams_ask_usage_and_get_the_policy_limit() {
        let out = translate(
            O,
            O,
            json!({"model": "m", "messages": [], "stream": true}),
            Some(100),
        )
        .unwrap();
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert_eq!(out["max_completion_tokens"], 100);
        let out = translate(
            O,
            O,
            json!({"model": "m", "messages": [], "max_tokens": 7}),
            Some(100),
        )
        .unwrap();
        assert_eq!(out.get("max_completion_tokens"), None);
        assert_eq!(out.get("stream_options"), None);
    }

    #[test]
    fn openai_to_anthropic_translates_system_tools_and_results() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":\"cat\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "look", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "still a cat"}]},
            ],
            "tools": [{"type": "function", "function": {"name": "look", "description": "Looks", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "stop": "END",
            "temperature": 0.5,
            "top_p": 0.9,
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": "u1",
        });
        let out = translate(O, A, body, Some(300)).unwrap();
        assert_eq!(
            out,
            json!({
                "model": "link-model",
                "max_tokens": 300,
                "system": "Be brief.\n\nUse tools.",
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                        {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}},
                    ]},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": "cat"}},
                        {"type": "tool_use", "id": "call_2", "name": "look", "input": {}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "a cat"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "still a cat"},
                    ]},
                ],
                "tools": [{"name": "look", "description": "Looks", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "stop_sequences": ["END"],
                "temperature": 0.5,
                "top_p": 0.9,
                "stream": true,
                "metadata": {"user_id": "u1"},
            })
        );
    }

    #[test]
    fn openai_to_anthropic_defaults_max_tokens() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            translate(O, A, body.clone(), None).unwrap()["max_tokens"],
            DEFAULT_MAX_TOKENS
        );
        let body = json!({"model": "m", "messages": [], "max_completion_tokens": 12});
        assert_eq!(translate(O, A, body, Some(99)).unwrap()["max_tokens"], 12);
    }

    #[test]
    fn openai_features_without_an_anthropic_equivalent_are_refused_by_name() {
        let base = |extra: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        assert_eq!(
            refused(O, A, base(json!({"n": 2}))),
            "n > 1 (several choices)"
        );
        assert_eq!(refused(O, A, base(json!({"logprobs": true}))), "`logprobs`");
        assert_eq!(
            refused(
                O,
                A,
                base(json!({"response_format": {"type": "json_schema", "json_schema": {}}}))
            ),
            "response_format json_schema"
        );
        assert_eq!(
            refused(
                O,
                A,
                base(json!({"response_format": {"type": "json_object"}}))
            ),
            "response_format json_object"
        );
        assert_eq!(refused(O, A, base(json!({"seed": 1}))), "`seed`");
        assert_eq!(
            refused(O, A, base(json!({"temperature": 1.5}))),
            "a temperature above 1"
        );
        let audio = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]});
        assert_eq!(refused(O, A, audio), "content part type input_audio");
        let late = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]});
        assert_eq!(
            refused(O, A, late),
            "a system message after the conversation began"
        );
        // n = 1, logprobs false and a text response_format are faithful.
        assert!(
            translate(
                O,
                A,
                base(json!({"n": 1, "logprobs": false, "response_format": {"type": "text"}})),
                None
            )
            .is_ok()
        );
        let error = translate(O, A, base(json!({"n": 3})), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the fallback link speaks Anthropic messages and cannot serve n > 1 (several choices)"
        );
    }

    #[test]
    fn anthropic_to_openai_translates_system_tools_and_results() {
        let body = json!({
            "model": "claude",
            "max_tokens": 200,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": "x"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "found"}]},
                    {"type": "text", "text": "thanks"},
                ]},
            ],
            "tools": [{"name": "look", "description": "Looks", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "look", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "stream": true,
            "metadata": {"user_id": "u1"},
        });
        let out = translate(A, O, body, None).unwrap();
        assert_eq!(
            out,
            json!({
                "model": "link-model",
                "max_completion_tokens": 200,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Look"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                    ]},
                    {"role": "assistant", "content": "Looking.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":\"x\"}"}},
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "found"},
                    {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
                ],
                "tools": [{"type": "function", "function": {"name": "look", "description": "Looks", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "look"}},
                "parallel_tool_calls": false,
                "stop": ["END"],
                "temperature": 0.2,
                "stream": true,
                "stream_options": {"include_usage": true},
                "user": "u1",
            })
        );
    }

    #[test]
    fn anthropic_features_without_an_openai_equivalent_are_refused_by_name() {
        let base =
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let with = |key: &str, value: Value| {
            let mut body = base.clone();
            body[key] = value;
            body
        };
        assert_eq!(
            refused(
                A,
                O,
                with(
                    "thinking",
                    json!({"type": "enabled", "budget_tokens": 1024})
                )
            ),
            "extended thinking (`thinking`)"
        );
        assert_eq!(refused(A, O, with("top_k", json!(5))), "`top_k`");
        let document = json!([{"role": "user", "content": [{"type": "document", "source": {}}]}]);
        assert_eq!(
            refused(A, O, with("messages", document)),
            "content block type document"
        );
        let server_tool = json!([{"type": "web_search_20250305", "name": "web_search"}]);
        assert_eq!(
            refused(A, O, with("tools", server_tool)),
            "tools of type web_search_20250305"
        );
        let error_result = json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x", "is_error": true}]}]);
        assert_eq!(
            refused(A, O, with("messages", error_result)),
            "tool results marked is_error"
        );
        assert!(translate(A, O, with("thinking", json!({"type": "disabled"})), None).is_ok());
    }
}
