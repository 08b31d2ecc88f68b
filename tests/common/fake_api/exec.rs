//! `pods/exec` over WebSocket, as the API server (and the kubelet behind
//! it) serves it to clients such as kube's: the `v5.channel.k8s.io`
//! subprotocol when offered (else `v4.channel.k8s.io`), every frame
//! prefixed by its channel (0 stdin, 1 stdout, 2 stderr, 3 error; v5's 255
//! closes a channel), the error channel's one message the final `Status`,
//! the exit code in a `NonZeroExitCode` cause as the API server sends it.
//! What the "container" answers is scripted by the test
//! ([`FakeApi::script_exec`]).

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};

use super::{FakeApi, Reply, not_found, percent_decode, respond, screen};

/// An exec as the container sees it.
#[derive(Clone, Debug)]
pub struct ExecCall {
    /// The pod's path.
    pub pod: String,
    pub container: Option<String>,
    /// Each `command=` of the query, in order.
    pub command: Vec<String>,
    /// What came on stdin until it was closed (empty without stdin).
    pub stdin: Vec<u8>,
}

/// What the container answers an exec.
#[derive(Clone, Debug, Default)]
pub struct ExecReply {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The final Status; `None`: none is ever sent (a command that hangs).
    pub status: Option<Value>,
}

impl ExecReply {
    /// The command ran and exited with `code`, after writing these.
    pub fn exited(code: i32, stdout: &[u8], stderr: &[u8]) -> ExecReply {
        let status = if code == 0 {
            json!({"metadata": {}, "status": "Success"})
        } else {
            json!({
                "metadata": {}, "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
            })
        };
        ExecReply {
            stdout: stdout.to_vec(),
            stderr: stderr.to_vec(),
            status: Some(status),
        }
    }

    /// The runtime could not start the command, in its words.
    pub fn not_started(message: &str) -> ExecReply {
        ExecReply {
            status: Some(json!({
                "metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("Internal error occurred: error executing command in container: {message}"),
                "code": 500
            })),
            ..ExecReply::default()
        }
    }

    /// The command never ends.
    pub fn hangs() -> ExecReply {
        ExecReply::default()
    }
}

/// Computes the container's answer to an exec.
pub type ExecScript = Arc<dyn Fn(&ExecCall) -> ExecReply + Send + Sync>;

/// The subprotocols, most preferred first.
const EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

impl FakeApi {
    /// Answers every exec with what `script` computes.
    pub fn script_exec(&self, script: impl Fn(&ExecCall) -> ExecReply + Send + Sync + 'static) {
        self.state.lock().unwrap().exec = Some(Arc::new(script));
    }

    /// Serves an exec request: recorded, refused (RBAC), the pod's
    /// existence, the upgrade with a subprotocol, then the scripted answer.
    pub(super) async fn exec(
        &self,
        mut request: axum::extract::Request,
    ) -> axum::response::Response {
        let (method, uri, headers) = (
            request.method().clone(),
            request.uri().clone(),
            request.headers().clone(),
        );
        let path = uri.path().to_owned();
        let query = uri.query().unwrap_or_default().to_owned();
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_owned(), percent_decode(value)))
            .collect();
        let pod = path.trim_end_matches("/exec").to_owned();
        let chosen = self.screen_exec(&method, &headers, (&path, &query), &pod);
        let protocol = match chosen {
            Ok(protocol) => protocol,
            Err(reply) => return respond(self, reply).await,
        };
        let values = |key: &str| -> Vec<String> {
            (pairs.iter())
                .filter(|(name, _)| name == key)
                .map(|(_, value)| value.clone())
                .collect()
        };
        let call = ExecCall {
            pod,
            container: values("container").pop(),
            command: values("command"),
            stdin: Vec::new(),
        };
        let stdin = values("stdin").iter().any(|value| value == "true");
        let script = self.state.lock().unwrap().exec.clone();
        let key = headers
            .get(http::header::SEC_WEBSOCKET_KEY)
            .map(|key| derive_accept_key(key.as_bytes()))
            .expect("a WebSocket key");
        let upgraded = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgraded.await else { return };
            let socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            run(socket, call, stdin, protocol == EXEC_PROTOCOLS[0], script).await;
        });
        axum::response::Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "websocket")
            .header(http::header::SEC_WEBSOCKET_ACCEPT, key)
            .header(http::header::SEC_WEBSOCKET_PROTOCOL, protocol)
            .body(axum::body::Body::empty())
            .unwrap()
    }
}

impl FakeApi {
    /// Checks an exec request as the API server does (recorded, refused,
    /// the pod's existence, the upgrade asked for): the subprotocol to
    /// answer with, or the reply.
    fn screen_exec(
        &self,
        method: &Method,
        headers: &HeaderMap,
        (path, query): (&str, &str),
        pod: &str,
    ) -> Result<&'static str, Reply> {
        let mut state = self.state.lock().unwrap();
        if let Some(reply) = screen(&mut state, method, path, query, None) {
            return Err(reply);
        }
        if !state.objects.contains_key(pod) {
            let (status, body) = not_found(pod);
            return Err(Reply::Json(status, body));
        }
        protocol(method, headers).ok_or_else(|| {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "the fake API execs only over WebSocket (v5 or v4.channel.k8s.io)",
                "reason": "BadRequest", "code": 400});
            Reply::Json(StatusCode::BAD_REQUEST, status)
        })
    }
}

/// The subprotocol to answer with: the most preferred of those offered.
fn protocol(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    let offered = headers
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    (*method == Method::GET)
        .then(|| EXEC_PROTOCOLS.into_iter().find(|p| offered.contains(p)))
        .flatten()
}

/// One exec's WebSocket: stdin read to its close (when asked for), then
/// the scripted stdout, stderr and Status; a reply without a Status holds
/// the stream open until the client closes it.
async fn run(
    socket: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    mut call: ExecCall,
    stdin: bool,
    closes_channels: bool,
    script: Option<ExecScript>,
) {
    let (mut to_client, mut from_client) = socket.split();
    if stdin {
        loop {
            match from_client.next().await {
                Some(Ok(Message::Binary(frame))) if frame.first() == Some(&0) => {
                    call.stdin.extend_from_slice(&frame[1..]);
                }
                // v5: the client closed stdin.
                Some(Ok(Message::Binary(frame))) if closes_channels && frame[..] == [255, 0] => {
                    break;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    let reply = script.map_or_else(|| ExecReply::exited(0, b"", b""), |script| script(&call));
    for (channel, bytes) in [(1u8, &reply.stdout), (2, &reply.stderr)] {
        for chunk in bytes.chunks(32 * 1024) {
            let mut frame = vec![channel];
            frame.extend_from_slice(chunk);
            if to_client.send(Message::binary(frame)).await.is_err() {
                return;
            }
        }
    }
    let Some(status) = reply.status else {
        // Hangs until the client goes away.
        while let Some(Ok(message)) = from_client.next().await {
            if message.is_close() {
                return;
            }
        }
        return;
    };
    let mut frame = vec![3];
    frame.extend(serde_json::to_vec(&status).unwrap());
    let _ = to_client.send(Message::binary(frame)).await;
    let _ = to_client.send(Message::Close(None)).await;
    // The closing handshake, bounded.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = from_client.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}
