//! Raw MCP requests over HTTP/1.1, as an agent's client sends them, for
//! tests that check status codes and headers an SDK client hides.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The protocol revision without sessions: every request stands alone.
pub const SINGLE_EXCHANGE: &str = "2026-07-28";

/// An HTTP answer: status, headers (lower-case names), the JSON-RPC
/// message of the body (a JSON body, or the last `data:` of an SSE one).
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub message: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A JSON-RPC request (id 7).
pub fn request(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).to_string()
}

/// One HTTP/1.1 POST of `body` to `/mcp` at `address`, with `headers`
/// (a `Host` among them replaces the default).
pub async fn raw_post(address: &str, body: String, headers: &[(&str, &str)]) -> Answer {
    let mut stream = open(address, body, headers).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    answer_of(&response)
}

/// Sends the POST and leaves the connection open for reading its answer.
pub async fn open(address: &str, body: String, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        extra.push_str(&format!("Host: {address}\r\n"));
    }
    let request = format!(
        "POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\n{extra}Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The server may answer (413) before reading a large body.
    let _ = stream.write_all(body.as_bytes()).await;
    stream
}

/// The answer in the bytes of an HTTP response.
pub fn answer_of(response: &[u8]) -> Answer {
    let response = String::from_utf8_lossy(response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let message = body
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .next_back()
        .or_else(|| {
            // A chunked JSON body: its JSON object.
            let start = body.find('{')?;
            let end = body.rfind('}')?;
            serde_json::from_str(&body[start..=end]).ok()
        })
        .unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        message,
    }
}

/// A request of the single-exchange revision: see [`stamp`].
pub async fn single_exchange(address: &str, body: String, headers: &[(&str, &str)]) -> Answer {
    let (body, headers) = stamp(body, headers);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    raw_post(address, body, &headers).await
}

/// Sends a request of the single-exchange revision (see [`stamp`]) and
/// leaves the connection open: for streams.
pub async fn open_single_exchange(address: &str, body: String) -> TcpStream {
    let (body, headers) = stamp(body, &[]);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    open(address, body, &headers).await
}

/// What the single-exchange revision asks of every request, added to a
/// well-formed one: the version and capabilities in `_meta`, the
/// `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers. Anything
/// else is left as it is.
pub fn stamp<'a>(body: String, headers: &[(&'a str, &str)]) -> (String, Vec<(&'a str, String)>) {
    let mut headers: Vec<(&str, String)> = headers
        .iter()
        .map(|(name, value)| (*name, (*value).to_owned()))
        .collect();
    headers.push(("MCP-Protocol-Version", SINGLE_EXCHANGE.into()));
    let mut body = body;
    let parsed = serde_json::from_str::<Value>(&body);
    if let Ok(Value::Object(mut message)) = parsed
        && let Some(method) = message.get("method").and_then(Value::as_str)
    {
        headers.push(("Mcp-Method", method.to_owned()));
        // A tool's or a prompt's name, a resource's URI.
        let params = message.get("params");
        let name = params.and_then(|params| params.get("name").or_else(|| params.get("uri")));
        if let Some(name) = name.and_then(Value::as_str) {
            headers.push(("Mcp-Name", name.to_owned()));
        }
        if let Value::Object(params) = message.entry("params").or_insert_with(|| json!({})) {
            params.insert(
                "_meta".into(),
                json!({
                    "io.modelcontextprotocol/protocolVersion": SINGLE_EXCHANGE,
                    "io.modelcontextprotocol/clientCapabilities": {},
                }),
            );
        }
        body = Value::Object(message).to_string();
    }
    (body, headers)
}

/// One MCP request as an agent sends it: the JSON-RPC answer.
pub async fn call(address: &str, method: &str, params: Value) -> Value {
    single_exchange(address, request(method, params), &[])
        .await
        .message
}
