//! A streamed completion, event by event, in the agent's dialect. Each
//! pushed chunk is parsed only for the events it completes; in
//! pass-through mode an event is parsed as JSON only when it mentions
//! `usage`.

use super::Dialect;
use super::error::{ErrorKind, stream_error};
use super::response::{Usage, finish_reason, openai_usage, stop_reason};
use super::sse::{SseEvent, SseParser};
use crate::egress::redact::redact;
use serde_json::{Value, json};

/// Turns a provider's SSE stream of dialect `from` into the agent's (`to`),
/// and keeps the usage it reports.
#[derive(Debug)]
pub struct StreamTranslator {
    parser: SseParser,
    from: Dialect,
    to: Dialect,
    agent_model: String,
    agent_asked_usage: bool,
    usage: Option<Usage>,
    /// The agent's stream is complete (ended or failed): later input is ignored.
    ended: bool,
    /// Whether the agent's stream has begun (Anthropic `message_start`).
    started: bool,
    /// The finish reason seen, in the agent's dialect.
    finish: Option<&'static str>,
    /// OpenAI → Anthropic: the open content block (index, is text).
    open: Option<(usize, bool)>,
    next_block: usize,
    /// The pairs (the source's tool index, the agent's tool index).
    tools: Vec<(u64, usize)>,
    id: String,
}

impl StreamTranslator {
    /// A translator for a stream the provider writes in `from` and the
    /// agent reads in `to`; `agent_asked_usage` is OpenAI's
    /// `stream_options.include_usage` as the agent sent it.
    pub fn new(from: Dialect, to: Dialect, agent_model: &str, agent_asked_usage: bool) -> Self {
        StreamTranslator {
            parser: SseParser::new(),
            from,
            to,
            agent_model: agent_model.to_owned(),
            agent_asked_usage,
            usage: None,
            ended: false,
            started: false,
            finish: None,
            open: None,
            next_block: 0,
            tools: Vec::new(),
            id: String::new(),
        }
    }

    /// The usage the provider reported so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The agent's bytes for the provider's next `bytes` (possibly none).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let events = self.parser.push(bytes);
        if self.passes_bytes() {
            for event in &events {
                self.note_usage(event);
            }
            return bytes.to_vec();
        }
        let mut out = Vec::new();
        for event in events {
            self.event(&event, &mut out);
        }
        out
    }

    /// The agent's last bytes, once the provider's stream ended: closes a
    /// translated stream, or reports that it ended before it finished.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(event) = self.parser.finish() {
            if self.passes_bytes() {
                self.note_usage(&event);
            } else {
                self.event(&event, &mut out);
            }
        }
        if self.from != self.to {
            self.end(&mut out);
        }
        out
    }

    /// Same dialect, nothing to hide: the provider's bytes go through as they are.
    fn passes_bytes(&self) -> bool {
        self.from == self.to && (self.from == Dialect::AnthropicMessages || self.agent_asked_usage)
    }

    /// Records the usage an event of the provider's dialect carries.
    fn note_usage(&mut self, event: &SseEvent) -> Option<Value> {
        if !event.data.contains("\"usage\"") {
            return None;
        }
        let value: Value = serde_json::from_str(&event.data).ok()?;
        let usage = value
            .get("usage")
            .or_else(|| value.pointer("/message/usage"))?;
        let (input, output) = match self.from {
            Dialect::OpenAiChat => ("prompt_tokens", "completion_tokens"),
            Dialect::AnthropicMessages => ("input_tokens", "output_tokens"),
        };
        let (input, output) = (
            usage.get(input).and_then(Value::as_u64),
            usage.get(output).and_then(Value::as_u64),
        );
        if input.is_some() || output.is_some() {
            let seen = self.usage.get_or_insert_with(Usage::default);
            if let Some(n) = input {
                seen.input = n;
            }
            if let Some(n) = output {
                seen.output = n;
            }
        }
        Some(value)
    }

    fn event(&mut self, event: &SseEvent, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if self.from == self.to {
            // OpenAI, the agent did not ask for usage: drop the usage-only chunk.
            if let Some(value) = self.note_usage(event)
                && value
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
            {
                return;
            }
            out.extend_from_slice(format!("data: {}\n\n", event.data).as_bytes());
            return;
        }
        if event.is_done() {
            return self.end(out);
        }
        let parsed = self
            .note_usage(event)
            .map(Ok)
            .unwrap_or_else(|| serde_json::from_str(&event.data));
        let Ok(value) = parsed else {
            return self.fail(
                out,
                ErrorKind::Api,
                "the provider sent an event that is not JSON",
            );
        };
        if let Some(error) = value.get("error") {
            let kind = ErrorKind::from_type_name(error["type"].as_str().unwrap_or(""));
            let message =
                redact(error["message"].as_str().unwrap_or("the provider failed")).into_owned();
            return self.fail(out, kind, &message);
        }
        match self.from {
            Dialect::OpenAiChat => self.openai_chunk(&value, out),
            Dialect::AnthropicMessages => self.anthropic_event(&value, out),
        }
    }

    fn fail(&mut self, out: &mut Vec<u8>, kind: ErrorKind, message: &str) {
        self.ended = true;
        out.extend(stream_error(self.to, kind, message));
    }

    /// Closes the agent's stream: its final events, or an error when the
    /// provider's stream ended before it said why it stopped.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        let Some(finish) = self.finish else {
            return self.fail(
                out,
                ErrorKind::Api,
                "the provider's stream ended before it finished",
            );
        };
        self.ended = true;
        let usage = self.usage.unwrap_or_default();
        match self.to {
            Dialect::AnthropicMessages => {
                self.close_block(out);
                anthropic_event(
                    out,
                    "message_delta",
                    json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": finish, "stop_sequence": null},
                        "usage": {"input_tokens": usage.input, "output_tokens": usage.output},
                    }),
                );
                anthropic_event(out, "message_stop", json!({"type": "message_stop"}));
            }
            Dialect::OpenAiChat => {
                if self.agent_asked_usage {
                    let mut chunk = self.chunk(json!({}), None);
                    chunk["choices"] = json!([]);
                    chunk["usage"] = openai_usage(usage);
                    openai_data(out, &chunk);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
        }
    }

    // OpenAI chunks → Anthropic events.

    fn openai_chunk(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            anthropic_event(
                out,
                "message_start",
                json!({
                    "type": "message_start",
                    "message": {
                        "id": chunk.get("id").and_then(Value::as_str).unwrap_or("msg"),
                        "type": "message", "role": "assistant", "model": self.agent_model,
                        "content": [], "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": 0, "output_tokens": 0},
                    },
                }),
            );
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if self.open.is_none_or(|(_, text)| !text) {
                self.close_block(out);
                self.open_block(out, true, json!({"type": "text", "text": ""}));
            }
            let index = self.open.map_or(0, |(i, _)| i);
            anthropic_event(
                out,
                "content_block_delta",
                json!({
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": text},
                }),
            );
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let source = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                self.close_block(out);
                self.tools.push((source, self.next_block));
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.open_block(
                    out,
                    false,
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                );
            }
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            let block = self
                .tools
                .iter()
                .find(|(s, _)| *s == source)
                .map(|(_, b)| *b);
            if let (false, Some(index)) = (arguments.is_empty(), block) {
                anthropic_event(
                    out,
                    "content_block_delta",
                    json!({
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": arguments},
                    }),
                );
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(stop_reason(Some(reason)));
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, text: bool, block: Value) {
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, text));
        anthropic_event(
            out,
            "content_block_start",
            json!({
                "type": "content_block_start", "index": index, "content_block": block,
            }),
        );
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            anthropic_event(
                out,
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    // Anthropic events → OpenAI chunks.

    fn anthropic_event(&mut self, event: &Value, out: &mut Vec<u8>) {
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                self.started = true;
                self.id = event
                    .pointer("/message/id")
                    .and_then(Value::as_str)
                    .unwrap_or("chatcmpl")
                    .to_owned();
                let chunk = self.chunk(json!({"role": "assistant", "content": ""}), None);
                openai_data(out, &chunk);
            }
            "content_block_start" => {
                let block = &event["content_block"];
                match block.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text" => {}
                    "tool_use" => {
                        let index = self.tools.len();
                        self.tools
                            .push((event["index"].as_u64().unwrap_or(0), index));
                        let chunk = self.chunk(
                            json!({"tool_calls": [{
                                "index": index, "id": block.get("id"), "type": "function",
                                "function": {"name": block.get("name"), "arguments": ""},
                            }]}),
                            None,
                        );
                        openai_data(out, &chunk);
                    }
                    other => {
                        let message = format!(
                            "the provider answered with a {other} block, which OpenAI chat completions cannot carry"
                        );
                        self.fail(out, ErrorKind::Api, &message)
                    }
                }
            }
            "content_block_delta" => {
                let delta = &event["delta"];
                match delta.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text_delta" => {
                        let chunk = self.chunk(json!({"content": delta.get("text")}), None);
                        openai_data(out, &chunk);
                    }
                    "input_json_delta" => {
                        let source = event["index"].as_u64().unwrap_or(0);
                        let Some(&(_, index)) = self.tools.iter().find(|(s, _)| *s == source)
                        else {
                            return self.fail(
                                out,
                                ErrorKind::Api,
                                "the provider sent tool input for no tool call",
                            );
                        };
                        let chunk = self.chunk(json!({"tool_calls": [{
                            "index": index, "function": {"arguments": delta.get("partial_json")},
                        }]}), None);
                        openai_data(out, &chunk);
                    }
                    other => {
                        let message = format!(
                            "the provider sent a {other}, which OpenAI chat completions cannot carry"
                        );
                        self.fail(out, ErrorKind::Api, &message)
                    }
                }
            }
            "message_delta" => {
                let reason =
                    finish_reason(event.pointer("/delta/stop_reason").and_then(Value::as_str));
                self.finish = Some(reason);
                let chunk = self.chunk(json!({}), Some(reason));
                openai_data(out, &chunk);
            }
            "message_stop" => self.end(out),
            _ => {} // ping, content_block_stop
        }
    }

    /// A `chat.completion.chunk` with one choice.
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": 0,
            "model": self.agent_model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}],
        })
    }
}

fn anthropic_event(out: &mut Vec<u8>, name: &str, data: Value) {
    out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
}

fn openai_data(out: &mut Vec<u8>, data: &Value) {
    out.extend_from_slice(format!("data: {data}\n\n").as_bytes());
}
