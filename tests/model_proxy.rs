//! The sidecar's model proxy (issue 25): a real sidecar, watching a real
//! control plane, relaying to a fake egress service
//! (tests/common/fake_models.rs) over TLS. The official `openai` and
//! `anthropic` Python SDKs, unmodified (`pip install -r
//! tests/models/requirements.txt`, done by hack/test.sh), are pointed at it
//! only by their base-URL and key variables; raw HTTP covers what no SDK
//! sends (oversized bodies, unknown routes, a client walking away).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::fake_models::{
    self, DRIP, FakeModels, HANG, INPUT_TOKENS, OUTPUT_TOKENS, POLICY_HASH, PROVIDER,
};
use common::sdk::python;
use common::sidecar::{ControlPlane, Sidecar, SidecarOptions, token_for};
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wopr_operator::api::TrustLevel;
use wopr_operator::audit::{AuditEvent, EventType};
use wopr_operator::contract::PLACEHOLDER_API_KEY;
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1::Dialect;
use wopr_operator::sidecar::models::MAX_BODY_BYTES;

const SESSION: &str = "writer";

/// A control plane serving [`SESSION`]'s policy, a fake egress service
/// expecting `egress_token`, and the session's sidecar relaying to
/// `egress` (the fake's address when `None`).
struct Setup {
    _control_plane: ControlPlane,
    fake: FakeModels,
    sidecar: Sidecar,
}

impl Setup {
    async fn start() -> Setup {
        Setup::with(
            &token_for(SESSION),
            |fake| Some(fake.address.to_string()),
            true,
        )
        .await
    }

    async fn with(
        egress_token: &str,
        egress: impl FnOnce(&FakeModels) -> Option<String>,
        with_policy: bool,
    ) -> Setup {
        let mut control_plane = ControlPlane::start(&[SESSION]).await;
        if with_policy {
            control_plane.put_session(session(SESSION, TrustLevel::Trusted));
        }
        let fake = FakeModels::start(SESSION, egress_token).await;
        let options = SidecarOptions {
            egress: egress(&fake),
            ..SidecarOptions::in_memory()
        };
        let address = control_plane.address.to_string();
        let sidecar = Sidecar::start_with(&address, SESSION, &token_for(SESSION), options).await;
        if with_policy {
            sidecar.wait_for_policy(|policy| policy.is_some()).await;
        }
        Setup {
            _control_plane: control_plane,
            fake,
            sidecar,
        }
    }

    /// Waits (up to 5 s) for `count` model_call events, and returns them.
    async fn model_calls(&self, count: usize) -> Vec<AuditEvent> {
        let mut events = Vec::new();
        for _ in 0..500 {
            events.extend(
                self.sidecar
                    .audit
                    .take()
                    .into_iter()
                    .filter(|event| event.event_type == EventType::ModelCall),
            );
            if events.len() >= count {
                assert_eq!(events.len(), count, "{events:#?}");
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} model_call events, not {count}: {events:#?}",
            events.len()
        );
    }
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`): the
/// status and the body.
async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, Value) {
    let mut connection = TcpStream::connect(address).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n");
    for header in headers {
        request.push_str(&format!("{header}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    connection.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    connection.read_to_end(&mut answer).await.unwrap();
    parse_response(&answer)
}

fn parse_response(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn completion(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string()
}

/// What the SDKs' requests must have been, at the fake egress service:
/// the sidecar's token, the session, the dialect, no agent credential.
fn assert_relayed(fake: &FakeModels, dialect: Dialect, count: usize) {
    let seen = fake.seen();
    assert_eq!(seen.len(), count, "{seen:#?}");
    for call in &seen {
        assert_eq!(
            call.bearer.as_deref(),
            Some(format!("Bearer {}", token_for(SESSION)).as_str())
        );
        assert_eq!(call.request.namespace, NAMESPACE);
        assert_eq!(call.request.session, SESSION);
        assert_eq!(call.request.dialect, i32::from(dialect));
        let relayed = format!("{:?}", call.request.headers);
        assert!(
            !relayed.contains(PLACEHOLDER_API_KEY) && !relayed.contains("placeholder"),
            "no agent credential is relayed: {relayed}"
        );
        assert!(
            call.request
                .headers
                .keys()
                .all(|name| ["anthropic-version", "anthropic-beta"].contains(&name.as_str())),
            "{relayed}"
        );
    }
}

/// Each outcome is the session's `model_call` event, with its figures.
fn assert_outcomes(events: &[AuditEvent], model: &str) {
    for (event, streamed) in events.iter().zip([false, true]) {
        assert_eq!(event.decision, Outcome::Allowed, "{event:#?}");
        assert_eq!(event.session, SESSION);
        assert_eq!(event.policy_hash.as_deref(), Some(POLICY_HASH));
        assert_eq!(event.reason, format!("answered by {PROVIDER}:{model}"));
        let figures = event.model.as_ref().expect("the call's figures");
        assert_eq!(figures.provider, PROVIDER);
        assert_eq!(figures.model, model);
        assert_eq!(
            (figures.input_tokens, figures.output_tokens),
            (INPUT_TOKENS, OUTPUT_TOKENS)
        );
        assert_eq!(figures.streamed, streamed);
        assert_eq!(figures.fallback, [format!("down-provider:{model} (503)")]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_sdk_calls_a_model_with_tools_whole_and_streamed() {
    let setup = Setup::start().await;
    let model = "gpt-4o-mini";
    let stdout = python("openai_client.py", "chat", setup.sidecar.models, model).await;
    for expected in [
        r#"whole: get_weather {"city": "Paris"} finish=tool_calls tokens=42+17"#,
        r#"streamed: get_weather {"city": "Paris"} text='Let me check.'"#,
        "openai sdk: ok",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    assert_relayed(&setup.fake, Dialect::OpenaiChat, 2);
    assert_outcomes(&setup.model_calls(2).await, model);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_anthropic_sdk_calls_a_model_with_tools_whole_and_streamed() {
    let setup = Setup::start().await;
    let model = "claude-3-5-haiku-latest";
    let stdout = python("anthropic_client.py", "chat", setup.sidecar.models, model).await;
    for expected in [
        r#"whole: get_weather {"city": "Paris"} stop=tool_use tokens=42+17"#,
        r#"streamed: get_weather {"city": "Paris"} text='Let me check.' stop=tool_use"#,
        "anthropic sdk: ok",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    // This SDK sends its key as `authorization`; others as `x-api-key`:
    // neither leaves the pod, anthropic-beta does.
    let (status, _) = http(
        setup.sidecar.models,
        "POST",
        "/v1/messages",
        &[
            "anthropic-version: 2023-06-01",
            "anthropic-beta: tools-2024-04-04",
            "x-api-key: sk-ant-agent-placeholder",
            "authorization: Bearer sk-ant-agent-placeholder",
        ],
        &completion(model, false),
    )
    .await;
    assert_eq!(status, 200);
    assert_relayed(&setup.fake, Dialect::AnthropicMessages, 3);
    let seen = setup.fake.seen();
    assert!(
        seen.iter()
            .all(|call| call.request.headers.contains_key("anthropic-version")),
        "anthropic-version is relayed"
    );
    assert_eq!(
        seen[2]
            .request
            .headers
            .get("anthropic-beta")
            .map(String::as_str),
        Some("tools-2024-04-04")
    );
    assert_outcomes(&setup.model_calls(3).await, model);
}

#[tokio::test(flavor = "multi_thread")]
async fn both_sdks_list_the_models_in_their_own_format() {
    let setup = Setup::start().await;
    let models = setup.sidecar.models;
    let openai = python("openai_client.py", "models", models, "").await;
    assert!(
        openai.contains("models: gpt-4o-mini/wopr claude-3-5-haiku-latest/wopr\n"),
        "{openai}"
    );
    let anthropic = python("anthropic_client.py", "models", models, "").await;
    assert!(
        anthropic.contains(
            "models: gpt-4o-mini/gpt-4o-mini claude-3-5-haiku-latest/claude-3-5-haiku-latest\n"
        ),
        "{anthropic}"
    );
    assert_eq!(
        fake_models::links().len(),
        3,
        "the link of any model lists none"
    );
    // Raw, the formats are exactly the APIs'.
    let (status, list) = http(models, "GET", "/v1/models", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    assert_eq!(
        list["data"][0],
        serde_json::json!({"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "wopr"})
    );
    let (_, list) = http(
        models,
        "GET",
        "/v1/models",
        &["anthropic-version: 2023-06-01"],
        "",
    )
    .await;
    assert_eq!(list["has_more"], false);
    assert_eq!(list["first_id"], "gpt-4o-mini");
    assert_eq!(list["last_id"], "claude-3-5-haiku-latest");
    assert_eq!(list["data"][1]["created_at"], "1970-01-01T00:00:00Z");
    assert_eq!(list["data"][1]["type"], "model");
}

/// Over the limit by Content-Length: refused at once, before a byte of
/// the body is sent. Chunked (no length): refused as the limit is passed,
/// while the client is still sending.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_is_refused_before_it_is_buffered_whole() {
    let setup = Setup::start().await;
    let models = setup.sidecar.models;

    let mut declared = TcpStream::connect(models).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {models}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        MAX_BODY_BYTES + 1
    );
    declared.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), declared.read(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    let (status, error) = parse_response(&answer[..read]);
    assert_eq!(status, 413);
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["code"], "request_too_large");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("over the limit of {MAX_BODY_BYTES} bytes")),
        "{message}"
    );

    let mut chunked = TcpStream::connect(models).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {models}\r\nanthropic-version: 2023-06-01\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    chunked.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = chunked.into_split();
    let piece = vec![b' '; 64 * 1024];
    let sent = tokio::spawn(async move {
        let mut sent = 0;
        // Up to twice the limit, never the end of the body.
        while sent < 2 * MAX_BODY_BYTES {
            let frame = [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat();
            if writer.write_all(&frame).await.is_err() {
                break;
            }
            sent += piece.len();
        }
        sent
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer)).await;
    let (status, error) = parse_response(&answer);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "request_too_large");
    sent.abort();

    let events = setup.model_calls(2).await;
    for event in &events {
        assert_eq!(event.decision, Outcome::Denied);
        assert!(event.reason.contains("over the limit"), "{}", event.reason);
    }
    assert!(
        setup.fake.seen().is_empty(),
        "nothing reached the egress service"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn other_routes_are_404_in_the_openai_format_and_audited() {
    let setup = Setup::start().await;
    let models = setup.sidecar.models;
    for (method, path) in [
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/models"),
        ("POST", "/"),
    ] {
        let (status, error) = http(models, method, path, &[], "{}").await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(error["error"]["type"], "not_found_error", "{method} {path}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("no route {method} {path}")),
            "{message}"
        );
    }
    let audited = setup.sidecar.audit.take();
    let refused: Vec<_> = audited
        .iter()
        .filter(|event| event.reason.starts_with("model proxy: no route"))
        .collect();
    assert_eq!(refused.len(), 4, "{audited:#?}");
    assert!(
        refused
            .iter()
            .all(|event| event.decision == Outcome::Denied)
    );
    assert!(setup.fake.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_egress_service_down_or_absent_is_503_in_the_dialect_and_an_event() {
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let down = Setup::with(&token_for(SESSION), |_| Some(closed.to_string()), true).await;
    let models = down.sidecar.models;
    let (status, error) = http(
        models,
        "POST",
        "/v1/chat/completions",
        &[],
        &completion("m", false),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(error["error"]["type"], "server_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the egress service cannot be reached"),
        "{error}"
    );
    let (status, error) = http(
        models,
        "POST",
        "/v1/messages",
        &["anthropic-version: 2023-06-01"],
        &completion("m", false),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "api_error");
    for event in down.model_calls(2).await {
        assert_eq!(event.decision, Outcome::Denied);
        assert!(
            event.reason.contains("cannot be reached"),
            "{}",
            event.reason
        );
        assert_eq!(event.model.unwrap().model, "m", "what is known is recorded");
        assert!(event.policy_hash.is_some(), "under the sidecar's policy");
    }

    let absent = Setup::with(&token_for(SESSION), |_| None, true).await;
    let (status, error) = http(
        absent.sidecar.models,
        "POST",
        "/v1/chat/completions",
        &[],
        &completion("m", false),
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no egress service is configured"),
        "{error}"
    );
    assert_eq!(absent.model_calls(1).await[0].decision, Outcome::Denied);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_the_egress_service_refuses_is_401_and_an_event() {
    let setup = Setup::with("another-token", |fake| Some(fake.address.to_string()), true).await;
    let (status, error) = http(
        setup.sidecar.models,
        "POST",
        "/v1/messages",
        &[
            "anthropic-version: 2023-06-01",
            "x-api-key: sk-agent-placeholder",
        ],
        &completion("m", false),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(error["error"]["type"], "authentication_error");
    let event = &setup.model_calls(1).await[0];
    assert_eq!(event.decision, Outcome::Denied);
    assert!(
        event.reason.contains("a wrong or missing token"),
        "{}",
        event.reason
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_policy_model_calls_are_refused_too() {
    let setup = Setup::with(
        &token_for(SESSION),
        |fake| Some(fake.address.to_string()),
        false,
    )
    .await;
    let (status, error) = http(
        setup.sidecar.models,
        "POST",
        "/v1/chat/completions",
        &[],
        &completion("m", false),
    )
    .await;
    assert_eq!(status, 503);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("fail closed"), "{message}");
    let event = &setup.model_calls(1).await[0];
    assert_eq!(event.decision, Outcome::Denied);
    assert!(event.reason.contains("fail closed"), "{}", event.reason);
    assert!(
        setup.fake.seen().is_empty(),
        "nothing reached the egress service"
    );
}

/// The agent going away, mid-stream or before any answer, cancels the
/// call at the egress service, and the call is recorded as the agent's doing.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_cancels_the_call_at_the_egress_service() {
    let setup = Setup::start().await;
    let models = setup.sidecar.models;

    let mut streaming = TcpStream::connect(models).await.unwrap();
    let body = completion(DRIP, true);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {models}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    streaming.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("still thinking") {
        let mut buffer = [0; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), streaming.read(&mut buffer))
            .await
            .expect("the stream flows")
            .unwrap();
        assert!(read > 0, "the stream ended early");
        answer.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    assert!(
        text.contains("x-fake-egress: yes"),
        "the head's headers: {text}"
    );
    drop(streaming);
    setup.fake.wait_for_cancelled(1).await;

    let mut waiting = TcpStream::connect(models).await.unwrap();
    let body = completion(HANG, false);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {models}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    waiting.write_all(request.as_bytes()).await.unwrap();
    for _ in 0..500 {
        if setup.fake.seen().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(waiting);
    setup.fake.wait_for_cancelled(2).await;

    let events = setup.model_calls(2).await;
    for (event, (model, streamed)) in events.iter().zip([(DRIP, true), (HANG, false)]) {
        assert_eq!(event.decision, Outcome::Allowed);
        assert!(
            event.reason.contains("the agent disconnected"),
            "{}",
            event.reason
        );
        let figures = event.model.as_ref().unwrap();
        assert_eq!(figures.model, model);
        assert_eq!(figures.streamed, streamed);
        assert_eq!(
            (figures.input_tokens, figures.output_tokens),
            (0, 0),
            "unknown"
        );
    }
}

/// A sidecar shutting down ends the model calls still open (recorded as
/// such, cancelled at the egress service): its drain waits on none.
#[tokio::test(flavor = "multi_thread")]
async fn shutting_down_ends_open_calls_and_records_them() {
    let mut setup = Setup::start().await;
    let models = setup.sidecar.models;
    let mut streaming = TcpStream::connect(models).await.unwrap();
    let body = completion(DRIP, true);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {models}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    streaming.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = [0; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), streaming.read(&mut buffer))
        .await
        .expect("the stream flows")
        .unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    let _ = setup.sidecar.shutdown.take().unwrap().send(());
    let served = tokio::time::timeout(Duration::from_secs(5), &mut setup.sidecar.server)
        .await
        .expect("the drain does not wait on the open call");
    served.unwrap().unwrap();
    setup.fake.wait_for_cancelled(1).await;
    let event = &setup.model_calls(1).await[0];
    assert!(event.reason.contains("shut down"), "{}", event.reason);
    drop(streaming);
}
