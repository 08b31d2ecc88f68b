//! What an attacker tried and could not do (issue 31, "what held"), kept
//! as attacks on the real processes: the agent's MCP endpoint refuses what
//! a web page or a broken client sends, unknown and unlisted tools are
//! denied alike, and SQL in a query's filters is only ever data.

mod common;

use std::time::Duration;

use common::NAMESPACE;
use common::cluster::{control_plane_port, one_agent};
use common::mcp::{SINGLE_EXCHANGE, call, raw_post, request, single_exchange};
use common::process::Process;
use common::sidecar::as_sidecar;
use serde_json::{Value, json};
use wopr_operator::api::TrustLevel;
use wopr_operator::proto::v1alpha1::audit_client::AuditClient;
use wopr_operator::proto::v1alpha1::{AuditQueryRequest, VerifyRequest};

/// How many audit lines the sidecar printed for requests refused at the door.
fn refusals(sidecar: &Process) -> usize {
    sidecar
        .stdout()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| {
            event["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("MCP:"))
        })
        .count()
}

/// What is sent (why it is wrong, the body, headers) and the HTTP status refusing it.
type Refused = (&'static str, String, Vec<(&'static str, &'static str)>, u16);

#[tokio::test]
async fn the_agents_endpoint_refuses_what_a_web_page_or_a_broken_client_sends() {
    let running = one_agent(TrustLevel::Untrusted).await;
    let (sidecar, agent) = (&running.sidecar, &running.agent);
    let list = request("tools/list", json!({}));
    let too_big = request(
        "tools/call",
        json!({"name": "memory_write", "arguments": {"path": "a", "content": "x".repeat(2 << 20)}}),
    );
    let cases: Vec<Refused> = vec![
        // DNS rebinding: a page served from evil.example resolving to 127.0.0.1.
        (
            "a foreign Host",
            list.clone(),
            vec![("Host", "evil.example")],
            403,
        ),
        // A page in the agent's browser posting cross-origin.
        (
            "a foreign Origin",
            list.clone(),
            vec![("Origin", "https://evil.example")],
            403,
        ),
        ("a body over the limit", too_big, vec![], 413),
        (
            "malformed JSON",
            "{\"jsonrpc\": \"2.0\", ".into(),
            vec![],
            400,
        ),
        (
            "a batch",
            json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]).to_string(),
            vec![],
            400,
        ),
        (
            "a protocol version nobody speaks",
            list.clone(),
            vec![("MCP-Protocol-Version", "1999-01-01")],
            400,
        ),
    ];
    for (what, body, headers, status) in cases {
        let before = refusals(sidecar);
        let answer = raw_post(agent, body, &headers).await;
        assert_eq!(answer.status, status, "{what}: {}", answer.message);
        // Every refusal is audited (the line reaches stdout a moment later).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while refusals(sidecar) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not audited"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // And the endpoint keeps serving a well-formed request.
    let answer = single_exchange(agent, list, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.message);
    assert_eq!(
        answer
            .header("mcp-protocol-version")
            .unwrap_or(SINGLE_EXCHANGE),
        SINGLE_EXCHANGE
    );
}

#[tokio::test]
async fn unknown_and_unlisted_tools_are_denied_alike() {
    let running = one_agent(TrustLevel::Untrusted).await;
    let agent = &running.agent;
    // `config_set` exists but is not an untrusted session's; the other
    // does not exist. The answers differ only by the name asked for.
    let error_of = async |tool: &str| {
        let answer = call(agent, "tools/call", json!({"name": tool, "arguments": {}})).await;
        let error = answer["error"].clone();

        (
            error["code"].clone(),
            error["message"].as_str().unwrap().replace(tool, "TOOL"),
        )
    };
    let unlisted = error_of("config_set").await;
    let unknown = error_of("launch_missiles").await;
    assert_eq!(unlisted, unknown);
    assert_eq!(unlisted.1, "tool not available: TOOL");
}

#[tokio::test]
async fn sql_in_a_querys_filters_is_only_data() {
    let running = one_agent(TrustLevel::Untrusted).await;
    let (controller, agent) = (&running.controller, &running.agent);
    let call_answer = call(
        agent,
        "tools/call",
        json!({"name": "security_whoami", "arguments": {}}),
    )
    .await;
    assert!(call_answer.get("error").is_none(), "{call_answer}");
    let port = control_plane_port(controller).await;
    let mut audit = AuditClient::new(common::tls::channel(format!("127.0.0.1:{port}")).await);
    let query = |tool: &str, source: &str| {
        as_sidecar(
            "agent",
            AuditQueryRequest {
                namespace: NAMESPACE.into(),
                session: "agent".into(),
                tool: tool.into(),
                source_identity: source.into(),
                ..AuditQueryRequest::default()
            },
        )
    };
    // The whoami call reaches the store within the shipping interval.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let page = audit.query(query("", "")).await.unwrap().into_inner();
        if !page.events.is_empty() {
            break page.events.len();
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing shipped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (tool, source) in [
        ("' OR '1'='1", ""),
        ("", "x' OR 1=1 --"),
        ("security_whoami'; DROP TABLE audit_events; --", ""),
        ("%", "%"),
    ] {
        let page = audit.query(query(tool, source)).await.unwrap().into_inner();
        assert!(
            page.events.is_empty(),
            "{tool:?} {source:?} matched {:?}",
            page.events
        );
    }
    let page = audit.query(query("", "")).await.unwrap().into_inner();
    assert!(page.events.len() >= stored, "the trail is all there");
    let verified = audit
        .verify(as_sidecar(
            "agent",
            VerifyRequest {
                namespace: NAMESPACE.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact, "{verified:?}");
}
