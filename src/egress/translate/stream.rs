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

#[cfg(test)]
mod tests {
    use super::*;
    use Dialect::{AnthropicMessages as A, OpenAiChat as O};
    use proptest::prelude::*;

    const OPENAI_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"look\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"q\\\":\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":5,\"total_tokens\":16}}\n\n",
        "data: [DONE]\n\n",
    );

    const ANTHROPIC_STREAM: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"there\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"look\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\":\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"2}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":6}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    /// The agent's events: (event name, data as JSON or the raw `[DONE]`).
    fn events(bytes: &[u8]) -> Vec<(Option<String>, Value)> {
        let mut parser = SseParser::new();
        parser
            .push(bytes)
            .into_iter()
            .map(|e| {
                (
                    e.event,
                    serde_json::from_str(&e.data).unwrap_or(Value::String(e.data)),
                )
            })
            .collect()
    }

    fn run(translator: &mut StreamTranslator, stream: &str) -> Vec<u8> {
        let mut out = translator.push(stream.as_bytes());
        out.extend(translator.finish());
        out
    }

    #[test]
    fn openai_stream_becomes_anthropic_events() {
        let mut translator = StreamTranslator::new(O, A, "claude-x", false);
        let out = events(&run(&mut translator, OPENAI_STREAM));
        let names: Vec<&str> = out
            .iter()
            .map(|(name, _)| name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        for (name, data) in &out {
            assert_eq!(data["type"], name.as_deref().unwrap());
        }
        assert_eq!(out[0].1["message"]["model"], "claude-x");
        assert_eq!(out[0].1["message"]["role"], "assistant");
        assert_eq!(
            out[1].1,
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(
            out[2].1["delta"],
            json!({"type": "text_delta", "text": "Hel"})
        );
        assert_eq!(
            out[5].1["content_block"],
            json!({"type": "tool_use", "id": "call_1", "name": "look", "input": {}})
        );
        assert_eq!(out[5].1["index"], 1);
        let json: String = out[6..8]
            .iter()
            .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
            .collect();
        assert_eq!(json, "{\"q\":1}");
        assert_eq!(
            out[9].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"input_tokens": 11, "output_tokens": 5}})
        );
        assert_eq!(
            translator.usage(),
            Some(Usage {
                input: 11,
                output: 5
            })
        );
    }

    #[test]
    fn anthropic_stream_becomes_openai_chunks() {
        let mut translator = StreamTranslator::new(A, O, "gpt-x", true);
        let out = events(&run(&mut translator, ANTHROPIC_STREAM));
        assert_eq!(out.last().unwrap().1, "[DONE]");
        let chunks = &out[..out.len() - 1];
        for (name, chunk) in chunks {
            assert_eq!(name, &None);
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["id"], "msg_1");
            assert_eq!(chunk["model"], "gpt-x");
        }
        assert_eq!(
            chunks[0].1["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let text: String = chunks
            .iter()
            .filter_map(|(_, c)| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hi there");
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|(_, c)| c["choices"][0]["delta"].get("tool_calls"))
            .collect();
        assert_eq!(
            calls[0],
            &json!([{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "look", "arguments": ""}}])
        );
        let arguments: String = calls[1..]
            .iter()
            .map(|c| c[0]["function"]["arguments"].as_str().unwrap())
            .collect();
        assert_eq!(arguments, "{\"q\":2}");
        let finish: Vec<&Value> = chunks
            .iter()
            .map(|(_, c)| &c["choices"][0]["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, [&json!("tool_calls")]);
        let last = &chunks.last().unwrap().1;
        assert_eq!(last["choices"], json!([]));
        assert_eq!(
            last["usage"],
            json!({"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15})
        );
        assert_eq!(
            translator.usage(),
            Some(Usage {
                input: 9,
                output: 6
            })
        );

        // Without include_usage the agent gets no usage chunk, but the egress still learns the tokens.
        let mut translator = StreamTranslator::new(A, O, "gpt-x", false);
        let out = events(&run(&mut translator, ANTHROPIC_STREAM));
        assert!(out.iter().all(|(_, c)| c.get("usage").is_none()));
        assert_eq!(
            translator.usage(),
            Some(Usage {
                input: 9,
                output: 6
            })
        );
    }

    #[test]
    fn same_dialect_passes_bytes_and_hides_only_unasked_usage() {
        let mut translator = StreamTranslator::new(A, A, "m", false);
        assert_eq!(
            run(&mut translator, ANTHROPIC_STREAM),
            ANTHROPIC_STREAM.as_bytes()
        );
        assert_eq!(
            translator.usage(),
            Some(Usage {
                input: 9,
                output: 6
            })
        );

        let mut translator = StreamTranslator::new(O, O, "m", true);
        assert_eq!(
            run(&mut translator, OPENAI_STREAM),
            OPENAI_STREAM.as_bytes()
        );
        assert_eq!(
            translator.usage(),
            Some(Usage {
                input: 11,
                output: 5
            })
        );

        let mut translator = StreamTranslator::new(O, O, "m", false);
        let out = String::from_utf8(run(&mut translator, OPENAI_STREAM)).unwrap();
        let usage_chunk = OPENAI_STREAM.split_inclusive("\n\n").nth(7).unwrap();
        assert!(usage_chunk.contains("\"usage\""));
        assert_eq!(out, OPENAI_STREAM.replace(usage_chunk, ""));
        assert_eq!(
            translator.usage(),
            Some(Usage {
                input: 11,
                output: 5
            })
        );
    }

    #[test]
    fn a_stream_that_ends_early_ends_in_an_error_event() {
        let cut = OPENAI_STREAM
            .split_inclusive("\n\n")
            .take(3)
            .collect::<String>();
        let mut translator = StreamTranslator::new(O, A, "m", false);
        let out = events(&run(&mut translator, &cut));
        let (name, data) = out.last().unwrap();
        assert_eq!(name.as_deref(), Some("error"));
        assert_eq!(data["error"]["type"], "api_error");

        let cut = ANTHROPIC_STREAM
            .split_inclusive("\n\n")
            .take(4)
            .collect::<String>();
        let mut translator = StreamTranslator::new(A, O, "m", false);
        let out = events(&run(&mut translator, &cut));
        assert_eq!(
            out.last().unwrap().1["error"]["message"],
            "the provider's stream ended before it finished"
        );
        assert!(out.iter().all(|(_, d)| d != "[DONE]"));
    }

    #[test]
    fn a_provider_error_event_reaches_the_agent_redacted() {
        let stream = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"key sk-ant-api03-abcdefghijklmnopqrstuvwxyz busy\"}}\n\n";
        let mut translator = StreamTranslator::new(A, O, "m", false);
        let out = events(&run(&mut translator, stream));
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].1["error"],
            json!({"message": "key [REDACTED] busy", "type": "server_error", "param": null, "code": null})
        );
    }

    #[test]
    fn unknown_anthropic_blocks_are_refused_not_dropped() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1,\"output_tokens\":0}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        );
        let mut translator = StreamTranslator::new(A, O, "m", false);
        let out = events(&run(&mut translator, stream));
        assert!(
            out.last().unwrap().1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("thinking block")
        );
    }

    proptest! {
        #[test]
        fn any_chunking_translates_the_same(
            cuts in proptest::collection::vec(0..ANTHROPIC_STREAM.len().min(OPENAI_STREAM.len()), 0..16),
        ) {
            for (from, to, stream) in [(O, A, OPENAI_STREAM), (A, O, ANTHROPIC_STREAM), (O, O, OPENAI_STREAM)] {
                let whole = run(&mut StreamTranslator::new(from, to, "m", false), stream);
                let mut cuts = cuts.clone();
                cuts.sort_unstable();
                let mut translator = StreamTranslator::new(from, to, "m", false);
                let (mut out, mut start) = (Vec::new(), 0);
                for cut in cuts.into_iter().chain([stream.len()]) {
                    out.extend(translator.push(&stream.as_bytes()[start..cut]));
                    start = cut;
                }
                out.extend(translator.finish());
                prop_assert_eq!(out, whole);
            }
        }
    }
}
