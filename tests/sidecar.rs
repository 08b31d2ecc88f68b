//! In-process: a control plane fed from fixtures, real sidecars, real tonic
//! clients on the unix socket, and the MCP endpoint with bad input.

mod common;

use std::time::Duration;

use common::sidecar::{ControlPlane, Sidecar, SidecarOptions, calls_per_minute, token_for};
use common::*;
use serde_json::{Value, json};
use tonic::Code;
use wopr_operator::api::{Capability, TrustLevel};
use wopr_operator::audit::EventType;
use wopr_operator::contract::AUDIT_ID_METADATA;
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1::policy_client::PolicyClient;
use wopr_operator::proto::v1alpha1::{CallToolRequest, ListToolsRequest, WatchRequest};

async fn tool_names(sidecar: &Sidecar) -> Vec<String> {
    let listed = sidecar
        .tools()
        .await
        .list_tools(ListToolsRequest {})
        .await
        .unwrap()
        .into_inner();
    listed.tools.into_iter().map(|tool| tool.name).collect()
}

async fn call(sidecar: &Sidecar, name: &str, arguments: Value) -> Result<Value, tonic::Status> {
    let request = CallToolRequest {
        name: name.into(),
        arguments_json: arguments.to_string(),
    };
    let response = sidecar.tools().await.call_tool(request).await?;
    Ok(serde_json::from_str(&response.into_inner().result_json).unwrap())
}

fn has_policy(served: Option<&wopr_operator::sidecar::policy_state::Served>) -> bool {
    served.is_some()
}

#[tokio::test]
async fn the_tool_list_matches_the_policy_of_each_trust_level() {
    let names = ["u", "s", "t", "o"];
    let mut control_plane = ControlPlane::start(&names).await;
    let expected: [(&str, TrustLevel, &[&str]); 4] = [
        (
            "u",
            TrustLevel::Untrusted,
            &[
                "security_whoami",
                "security_check",
                "security_request",
                "inbox_read",
                "inbox_ack",
                "inbox_reply",
            ],
        ),
        (
            "s",
            TrustLevel::SemiTrusted,
            &[
                "security_whoami",
                "security_check",
                "security_request",
                "memory_read",
                "memory_write",
                "config_get",
                "inbox_read",
                "inbox_ack",
                "inbox_reply",
            ],
        ),
        (
            "t",
            TrustLevel::Trusted,
            &[
                "security_whoami",
                "security_check",
                "security_request",
                "sessions_list",
                "sessions_history",
                "sessions_spawn",
                "memory_read",
                "memory_write",
                "config_get",
                "inbox_read",
                "inbox_ack",
                "inbox_reply",
            ],
        ),
        (
            "o",
            TrustLevel::Owner,
            &[
                "security_whoami",
                "security_check",
                "security_request",
                "sessions_list",
                "sessions_history",
                "sessions_send",
                "sessions_spawn",
                "http_fetch",
                "exec_command",
                "memory_read",
                "memory_write",
                "config_get",
                "inbox_read",
                "inbox_ack",
                "inbox_reply",
            ],
        ),
    ];
    for (name, level, tools) in expected {
        control_plane.put_session(session(name, level));
        let sidecar =
            Sidecar::start(&control_plane.address.to_string(), name, &token_for(name)).await;
        sidecar.wait_for_policy(has_policy).await;
        assert_eq!(tool_names(&sidecar).await, tools, "{level}");
        let whoami = call(&sidecar, "security_whoami", json!({})).await.unwrap();
        assert_eq!(whoami["trustLevel"], json!(level));
    }
}

#[tokio::test]
async fn revoking_a_grant_denies_the_next_call() {
    let mut control_plane = ControlPlane::start(&["research"]).await;
    // semi-trusted holds only `inject` here, so memory tools need the grant.
    control_plane.put_policy(security_policy(
        json!({"trustLevels": {"semi-trusted": {"capabilities": ["inject"]}}}),
    ));
    control_plane.put_session(session("research", TrustLevel::SemiTrusted));
    let grant = session_grant("memory", "research", &[Capability::InjectTools]);
    control_plane.put_grant(grant.clone());

    let sidecar = Sidecar::start(
        &control_plane.address.to_string(),
        "research",
        &token_for("research"),
    )
    .await;
    sidecar
        .wait_for_policy(|p| p.is_some_and(|p| p.context.capabilities.has(Capability::InjectTools)))
        .await;
    std::fs::write(sidecar.workspace.join("notes.md"), "remember").unwrap();
    let read = call(&sidecar, "memory_read", json!({"path": "notes.md"}))
        .await
        .unwrap();
    assert_eq!(read["content"], "remember");

    control_plane.delete_grant(grant);
    sidecar
        .wait_for_policy(|p| {
            p.is_some_and(|p| !p.context.capabilities.has(Capability::InjectTools))
        })
        .await;
    let denied = call(&sidecar, "memory_read", json!({"path": "notes.md"}))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        !tool_names(&sidecar)
            .await
            .contains(&"memory_read".to_string())
    );
    let audit = sidecar.audit.take();
    let last = audit
        .iter()
        .rev()
        .find(|e| e.tool.as_deref() == Some("memory_read"))
        .unwrap();
    assert_eq!(last.decision, Outcome::Denied);
}

/// The sidecar writes the workspace and reads it back; the file is on disk
/// in the directory the pod mounts read-only into the agent.
#[tokio::test]
async fn memory_write_then_memory_read_round_trips_through_the_workspace() {
    let mut control_plane = ControlPlane::start(&["scribe"]).await;
    control_plane.put_session(session("scribe", TrustLevel::Trusted));
    let sidecar = Sidecar::start(
        &control_plane.address.to_string(),
        "scribe",
        &token_for("scribe"),
    )
    .await;
    sidecar.wait_for_policy(has_policy).await;
    std::fs::create_dir(sidecar.workspace.join("notes")).unwrap();
    for content in ["the build is green", "the build is red: a flaky test"] {
        let written = call(
            &sidecar,
            "memory_write",
            json!({"path": "notes/status.md", "content": content}),
        )
        .await
        .unwrap();
        assert_eq!(
            written,
            json!({"path": "notes/status.md", "written": content.len()})
        );
        let read = call(&sidecar, "memory_read", json!({"path": "notes/status.md"}))
            .await
            .unwrap();
        assert_eq!(read["content"], content, "a write replaces the file");
        assert_eq!(
            std::fs::read_to_string(sidecar.workspace.join("notes/status.md")).unwrap(),
            content
        );
    }
    let audit = sidecar.audit.take();
    for tool in ["memory_write", "memory_read"] {
        let event = audit
            .iter()
            .find(|e| e.tool.as_deref() == Some(tool))
            .unwrap_or_else(|| panic!("{tool} audited"));
        assert_eq!(event.decision, Outcome::Allowed);
        assert_eq!(event.capability, Some(Capability::InjectTools));
    }
}

/// `security_whoami` says the prompt the pod gave the agent, with a policy
/// and without one; null when there is none.
#[tokio::test]
async fn whoami_says_the_prompt_the_agent_was_given() {
    let prompt = "You triage issues.\nNever close one yourself.";
    let with_prompt = || SidecarOptions {
        prompt: Some(prompt.into()),
        ..SidecarOptions::in_memory()
    };
    let mut control_plane = ControlPlane::start(&["triage", "plain"]).await;
    control_plane.put_session(session("triage", TrustLevel::SemiTrusted));
    control_plane.put_session(session("plain", TrustLevel::SemiTrusted));
    let address = control_plane.address.to_string();
    let sidecar =
        Sidecar::start_with(&address, "triage", &token_for("triage"), with_prompt()).await;
    sidecar.wait_for_policy(has_policy).await;
    let whoami = call(&sidecar, "security_whoami", json!({})).await.unwrap();
    assert_eq!(whoami["prompt"], prompt);
    assert_eq!(whoami["trustLevel"], "semi-trusted");

    // Nothing listens on port 1: no policy, and still the prompt.
    let lonely = Sidecar::start_with("127.0.0.1:1", "triage", "token", with_prompt()).await;
    let whoami = call(&lonely, "security_whoami", json!({})).await.unwrap();
    assert_eq!(whoami["policy"], Value::Null);
    assert_eq!(whoami["prompt"], prompt);

    let plain = Sidecar::start(&address, "plain", &token_for("plain")).await;
    plain.wait_for_policy(has_policy).await;
    let whoami = call(&plain, "security_whoami", json!({})).await.unwrap();
    assert_eq!(whoami["prompt"], Value::Null);
}

#[tokio::test]
async fn a_sidecar_without_policy_denies_all_but_whoami() {
    // Nothing listens on port 1: the policy never arrives.
    let sidecar = Sidecar::start("127.0.0.1:1", "lonely", "token").await;
    assert_eq!(tool_names(&sidecar).await, ["security_whoami"]);
    let denied = call(&sidecar, "memory_read", json!({"path": "x"}))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(denied.message(), "tool not available: memory_read");
    let whoami = call(&sidecar, "security_whoami", json!({})).await.unwrap();
    assert_eq!(whoami["policy"], Value::Null);
    let audit = sidecar.audit.take();
    assert!(
        audit
            .iter()
            .any(|e| e.decision == Outcome::Denied && e.reason.contains("fail closed"))
    );
}

#[tokio::test]
async fn denied_and_unknown_tools_look_the_same() {
    let mut control_plane = ControlPlane::start(&["u"]).await;
    control_plane.put_session(session("u", TrustLevel::Untrusted));
    let sidecar = Sidecar::start(&control_plane.address.to_string(), "u", &token_for("u")).await;
    sidecar.wait_for_policy(has_policy).await;
    let denied = call(&sidecar, "memory_read", json!({"path": "x"}))
        .await
        .unwrap_err();
    let unknown = call(&sidecar, "memory_raed", json!({"path": "x"}))
        .await
        .unwrap_err();
    let unimplemented = call(&sidecar, "sessions_send", json!({}))
        .await
        .unwrap_err();
    for status in [&denied, &unknown, &unimplemented] {
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().starts_with("tool not available: "));
    }
}

#[tokio::test]
async fn wrong_missing_or_foreign_tokens_are_refused() {
    let mut control_plane = ControlPlane::start(&["a", "b"]).await;
    control_plane.put_session(session("a", TrustLevel::Trusted));
    control_plane.put_session(session("b", TrustLevel::Trusted));
    let mut client = PolicyClient::new(control_plane.channel().await);
    let watch = |token: Option<&str>| {
        let mut request = tonic::Request::new(WatchRequest {
            namespace: NAMESPACE.into(),
            session: "a".into(),
            heartbeat_seconds: 0,
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    assert_eq!(
        client.watch(watch(None)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        client
            .watch(watch(Some("forged")))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let foreign = client
        .watch(watch(Some(&token_for("b"))))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::PermissionDenied);
    assert!(foreign.message().contains("may not act for session"));
    let mut own = client
        .watch(watch(Some(&token_for("a"))))
        .await
        .unwrap()
        .into_inner();
    let first = own.message().await.unwrap().unwrap();
    assert!(matches!(
        first.update,
        Some(wopr_operator::proto::v1alpha1::policy_update::Update::Context(_))
    ));

    // A sidecar with a foreign token never gets a policy: once it has
    // the control plane's answer to its watch (its log says it was
    // refused), it still has none.
    let (logs, _capture) = common::logs::Logs::capture();
    let sidecar = Sidecar::start(&control_plane.address.to_string(), "a", &token_for("b")).await;
    logs.wait_for(&["policy watch failed", "may not act for session"])
        .await;
    assert!(sidecar.state.current().is_err());
}

#[tokio::test]
async fn warn_mode_allows_and_audits_would_deny() {
    let mut control_plane = ControlPlane::start(&["u"]).await;
    control_plane.put_policy(security_policy(json!({"enforcement": "warn"})));
    control_plane.put_session(session("u", TrustLevel::Untrusted));
    let sidecar = Sidecar::start(&control_plane.address.to_string(), "u", &token_for("u")).await;
    sidecar.wait_for_policy(has_policy).await;
    assert!(
        tool_names(&sidecar)
            .await
            .contains(&"config_get".to_string())
    );
    let config = call(&sidecar, "config_get", json!({})).await.unwrap();
    assert_eq!(config["effective"]["trustLevel"], "untrusted");
    let event = sidecar
        .audit
        .take()
        .into_iter()
        .find(|e| e.tool.as_deref() == Some("config_get"))
        .unwrap();
    assert_eq!(event.decision, Outcome::WouldDeny);
    assert_eq!(event.enforcement, wopr_operator::api::Enforcement::Warn);
}

/// Every CallTool answer, allowed or refused, names the audit event that
/// recorded it in its metadata.
#[tokio::test]
async fn every_grpc_answer_names_its_audit_event() {
    let mut control_plane = ControlPlane::start(&["s"]).await;
    control_plane.put_session(session("s", TrustLevel::SemiTrusted));
    let sidecar = Sidecar::start(&control_plane.address.to_string(), "s", &token_for("s")).await;
    sidecar.wait_for_policy(has_policy).await;
    sidecar.audit.take();
    let audit_id = |metadata: &tonic::metadata::MetadataMap| {
        metadata
            .get(AUDIT_ID_METADATA)
            .expect("an audit id")
            .to_str()
            .unwrap()
            .to_owned()
    };
    for tool in ["security_whoami", "exec_command", "no_such_tool"] {
        let request = CallToolRequest {
            name: tool.into(),
            arguments_json: "{}".into(),
        };
        let named = match sidecar.tools().await.call_tool(request).await {
            Ok(answer) => audit_id(answer.metadata()),
            Err(refused) => audit_id(refused.metadata()),
        };
        let recorded = sidecar.audit.take();
        assert_eq!(recorded.len(), 1, "{tool}");
        assert_eq!(named, recorded[0].id, "{tool}");
    }
}

#[tokio::test]
async fn rate_limits_refuse_and_audit() {
    let mut control_plane = ControlPlane::start(&["t"]).await;
    control_plane.put_session(session("t", TrustLevel::Trusted));
    let options = SidecarOptions {
        limits: calls_per_minute(100, 2),
        ..SidecarOptions::in_memory()
    };
    let address = control_plane.address.to_string();
    let sidecar = Sidecar::start_with(&address, "t", &token_for("t"), options).await;
    sidecar.wait_for_policy(has_policy).await;
    for _ in 0..2 {
        call(&sidecar, "security_check", json!({"capability": "inject"}))
            .await
            .unwrap();
    }
    let limited = call(&sidecar, "security_check", json!({"capability": "inject"}))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let limited_event = sidecar
        .audit
        .take()
        .into_iter()
        .find(|e| e.event_type == EventType::RateLimited)
        .expect("a rate_limited audit event");
    assert!(
        limited_event.policy_hash.is_some(),
        "it names the policy in force"
    );
    // Other tools have their own budget.
    call(&sidecar, "security_whoami", json!({})).await.unwrap();
}

#[tokio::test]
async fn security_check_answers_per_capability() {
    let mut control_plane = ControlPlane::start(&["s"]).await;
    control_plane.put_session(session("s", TrustLevel::SemiTrusted));
    let sidecar = Sidecar::start(&control_plane.address.to_string(), "s", &token_for("s")).await;
    sidecar.wait_for_policy(has_policy).await;
    assert_eq!(
        call(
            &sidecar,
            "security_check",
            json!({"capability": "inject.tools"})
        )
        .await
        .unwrap()["allowed"],
        true
    );
    let network = call(
        &sidecar,
        "security_check",
        json!({"capability": "inject.network"}),
    )
    .await
    .unwrap();
    assert_eq!(network["allowed"], false);
    assert_eq!(network["reason"], "capability inject.network not granted");
    let bad = call(
        &sidecar,
        "security_check",
        json!({"capability": "teleport"}),
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

mod mcp {
    use super::*;
    use common::mcp::{open_single_exchange, raw_post, request, single_exchange};
    use tokio::io::AsyncReadExt;

    /// A request of the single-exchange revision: no session needed.
    async fn post(sidecar: &Sidecar, body: impl Into<String>) -> (u16, Value) {
        let answer = single_exchange(&sidecar.mcp.to_string(), body.into(), &[]).await;
        (answer.status, answer.message)
    }

    /// A liveness check of the single-exchange revision (it has no `ping`).
    async fn assert_serving(sidecar: &Sidecar, after: &str) {
        let (status, listed) = post(sidecar, request("tools/list", json!({}))).await;
        assert_eq!(status, 200, "after {after}: {listed}");
        assert!(
            listed["result"]["tools"].is_array(),
            "after {after}: {listed}"
        );
    }

    async fn ready_sidecar() -> (ControlPlane, Sidecar) {
        let mut control_plane = ControlPlane::start(&["s"]).await;
        control_plane.put_session(session("s", TrustLevel::SemiTrusted));
        let sidecar =
            Sidecar::start(&control_plane.address.to_string(), "s", &token_for("s")).await;
        sidecar.wait_for_policy(has_policy).await;
        (control_plane, sidecar)
    }

    fn tool_names(listed: &Value) -> Vec<&str> {
        listed["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{listed}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn speaks_mcp_with_a_session() {
        let (_cp, sidecar) = ready_sidecar().await;
        let initialize = request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        );
        let init = raw_post(&sidecar.mcp.to_string(), initialize, &[]).await;
        assert_eq!(init.status, 200);
        assert_eq!(init.message["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(
            init.message["result"]["capabilities"]["tools"]["listChanged"],
            true
        );
        assert_eq!(init.message["id"], 7);
        let session = init.header("mcp-session-id").expect("a session").to_owned();
        let in_session = [
            ("Mcp-Session-Id", session.as_str()),
            ("MCP-Protocol-Version", "2025-06-18"),
        ];
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let accepted = raw_post(
            &sidecar.mcp.to_string(),
            initialized.to_string(),
            &in_session,
        )
        .await;
        assert_eq!(accepted.status, 202);
        let listed = raw_post(
            &sidecar.mcp.to_string(),
            request("tools/list", json!({})),
            &in_session,
        )
        .await;
        assert_eq!(
            tool_names(&listed.message),
            [
                "security_whoami",
                "security_check",
                "security_request",
                "memory_read",
                "memory_write",
                "config_get",
                "inbox_read",
                "inbox_ack",
                "inbox_reply"
            ]
        );
        assert_eq!(
            listed.message["result"]["tools"][3]["inputSchema"]["required"],
            json!(["path"])
        );
        sidecar.audit.take();
        let unknown = raw_post(
            &sidecar.mcp.to_string(),
            request("tools/destroy", json!({})),
            &in_session,
        )
        .await;
        assert_eq!(
            unknown.status, 200,
            "revisions with sessions answer errors in band"
        );
        assert_eq!(unknown.message["error"]["code"], -32601);
        assert_eq!(sidecar.audit.take().len(), 1, "audited once");
        let without_session = raw_post(
            &sidecar.mcp.to_string(),
            request("tools/list", json!({})),
            &[],
        )
        .await;
        assert_eq!(
            without_session.status, 400,
            "a revision with sessions needs one"
        );
    }

    #[tokio::test]
    async fn speaks_mcp_in_single_exchanges() {
        let (_cp, sidecar) = ready_sidecar().await;
        let (status, listed) = post(&sidecar, request("tools/list", json!({}))).await;
        assert_eq!(status, 200);
        assert_eq!(tool_names(&listed).len(), 9);
        let (_, called) = post(
            &sidecar,
            request(
                "tools/call",
                json!({"name": "security_whoami", "arguments": {}}),
            ),
        )
        .await;
        assert_eq!(called["result"]["isError"], false, "{called}");
        assert_eq!(
            called["result"]["structuredContent"]["trustLevel"],
            "semi-trusted"
        );
        let (_, denied) = post(
            &sidecar,
            request(
                "tools/call",
                json!({"name": "exec_command", "arguments": {"command": "id"}}),
            ),
        )
        .await;
        assert_eq!(denied["error"]["code"], -32602);
        assert_eq!(
            denied["error"]["message"],
            "tool not available: exec_command"
        );
        assert_serving(&sidecar, "a denied call").await;
    }

    /// Every `tools/call` answer, allowed or refused, names the audit event
    /// that recorded it.
    #[tokio::test]
    async fn every_answer_names_its_audit_event() {
        let (_cp, sidecar) = ready_sidecar().await;
        sidecar.audit.take();
        for (tool, where_the_meta_is) in [
            ("security_whoami", "/result/_meta"),
            ("exec_command", "/error/data"),
        ] {
            let call = json!({"name": tool, "arguments": {}});
            let (_, answer) = post(&sidecar, request("tools/call", call)).await;
            let named = answer
                .pointer(&format!("{where_the_meta_is}/wopr.dev~1auditId"))
                .unwrap_or_else(|| panic!("{tool}: no audit id in {answer}"));
            let recorded = sidecar.audit.take();
            assert_eq!(recorded.len(), 1, "{tool}");
            assert_eq!(named, &json!(recorded[0].id), "{tool}");
        }
    }

    #[tokio::test]
    async fn bad_input_gets_the_right_error_and_an_audit_line() {
        let (_cp, sidecar) = ready_sidecar().await;
        sidecar.audit.take();
        let huge_arguments = json!({"path": "a", "content": "x".repeat(2 * 1024 * 1024)});
        let cases: Vec<(&str, String, u16, i64)> = vec![
            (
                "malformed JSON",
                "{\"jsonrpc\": \"2.0\", \"id\": 1, ".into(),
                400,
                -32700,
            ),
            (
                "wrong version",
                json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}).to_string(),
                400,
                -32600,
            ),
            (
                "batch",
                json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]).to_string(),
                400,
                -32600,
            ),
            (
                "unknown method",
                request("tools/destroy", json!({})),
                404,
                -32601,
            ),
            (
                "not an object",
                json!("tools/list").to_string(),
                400,
                -32600,
            ),
            (
                "a version that is not a string",
                json!({"jsonrpc": 2, "id": 1, "method": "tools/list"}).to_string(),
                400,
                -32600,
            ),
            (
                "tool call params that are not an object",
                request("tools/call", json!(["security_whoami"])),
                200,
                -32602,
            ),
            (
                "a tool name that is not a string",
                request("tools/call", json!({"name": 7})),
                200,
                -32602,
            ),
            (
                "no tool name",
                request("tools/call", json!({"arguments": {}})),
                200,
                -32602,
            ),
            (
                "path traversal",
                request(
                    "tools/call",
                    json!({"name": "memory_read", "arguments": {"path": "../../etc/passwd"}}),
                ),
                200,
                -32602,
            ),
            (
                "absolute path",
                request(
                    "tools/call",
                    json!({"name": "memory_read", "arguments": {"path": "/etc/passwd"}}),
                ),
                200,
                -32602,
            ),
            (
                "huge arguments",
                request(
                    "tools/call",
                    json!({"name": "memory_write", "arguments": huge_arguments}),
                ),
                413,
                -32600,
            ),
        ];
        for (name, body, status, code) in cases {
            let (got_status, reply) = post(&sidecar, body).await;
            assert_eq!(got_status, status, "{name}: {reply}");
            assert_eq!(reply["error"]["code"], code, "{name}: {reply}");
            let audited = sidecar.audit.take();
            assert_eq!(audited.len(), 1, "{name}: one audit line each: {audited:?}");
            // The sidecar keeps serving.
            assert_serving(&sidecar, name).await;
        }
        let list = request("tools/list", json!({}));
        let foreign = single_exchange(
            &sidecar.mcp.to_string(),
            list.clone(),
            &[("Origin", "https://evil.example")],
        )
        .await;
        assert_eq!(foreign.status, 403, "foreign origins are refused");
        assert!(!sidecar.audit.take().is_empty(), "and audited");
        let local = single_exchange(
            &sidecar.mcp.to_string(),
            list,
            &[("Origin", "http://localhost:3000")],
        )
        .await;
        assert_eq!(local.status, 200);
        let rebound = single_exchange(
            &sidecar.mcp.to_string(),
            request("tools/list", json!({})),
            &[("Host", "evil.example")],
        )
        .await;
        assert_eq!(
            rebound.status, 403,
            "foreign hosts (DNS rebinding) are refused"
        );
        assert_eq!(sidecar.audit.take().len(), 1, "and audited");
    }

    /// The inbox as a resource: listed, readable (as the audited
    /// `inbox_read`), and a 2026-07-28 listen stream subscribed to it is
    /// told when a message arrives.
    #[tokio::test]
    async fn the_inbox_is_a_resource_whose_subscribers_hear_of_arrivals() {
        let (_cp, sidecar) = ready_sidecar().await;
        let (_, listed) = post(&sidecar, request("resources/list", json!({}))).await;
        assert_eq!(listed["result"]["resources"][0]["uri"], "wopr://inbox");
        let listen = request(
            "subscriptions/listen",
            json!({"notifications": {"toolsListChanged": true, "resourceSubscriptions": ["wopr://inbox"]}}),
        );
        let mut stream = open_single_exchange(&sidecar.mcp.to_string(), listen).await;
        let mut seen = String::new();
        let mut chunk = [0; 4096];
        // The acknowledgement first: the subscription is in place.
        while !seen.contains("notifications/subscriptions/acknowledged") {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("the acknowledgement")
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk[..read]));
        }
        assert!(
            seen.contains("wopr://inbox"),
            "the inbox is accepted: {seen}"
        );
        let message = wopr_operator::inbox::InboxMessage::new(
            now(),
            NAMESPACE,
            "s",
            wopr_operator::api::SourceRef {
                source_type: "session".into(),
                identity: "peer".into(),
                trust_level: TrustLevel::Trusted,
            },
            wopr_operator::inbox::MessageKind::Message,
            json!({"hello": 1}),
        );
        sidecar.engine.inbox().hold(1, message);
        while !seen.contains("notifications/resources/updated") {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("notifications/resources/updated within 5 s")
                .unwrap();
            assert!(read > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&chunk[..read]));
        }
        let (_, read) = post(
            &sidecar,
            request("resources/read", json!({"uri": "wopr://inbox"})),
        )
        .await;
        let text = read["result"]["contents"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{read}"));
        let messages: Value = serde_json::from_str(text).unwrap();
        assert_eq!(messages["messages"][0]["payload"], json!({"hello": 1}));
        let (_, unknown) = post(
            &sidecar,
            request("resources/read", json!({"uri": "file:///etc/passwd"})),
        )
        .await;
        assert!(
            unknown["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no resource"),
            "{unknown}"
        );
    }

    #[tokio::test]
    async fn a_shutdown_ends_open_streams_and_the_server_returns() {
        let (_cp, mut sidecar) = ready_sidecar().await;
        let listen = request(
            "subscriptions/listen",
            json!({"notifications": {"toolsListChanged": true}}),
        );
        let mut stream = open_single_exchange(&sidecar.mcp.to_string(), listen).await;
        let mut head = [0; 512];
        let read = stream.read(&mut head).await.unwrap();
        let head = String::from_utf8_lossy(&head[..read]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/event-stream"), "a stream: {head}");

        sidecar.shutdown.take().unwrap().send(()).unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest))
            .await
            .expect("the stream ends promptly")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), &mut sidecar.server)
            .await
            .expect("the servers return")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn the_control_plane_serves_health_and_reflection() {
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    // Reflection only when asked (off by default: tests/adversarial_access.rs).
    let settings = wopr_operator::controlplane::Settings {
        reflection: true,
        ..Default::default()
    };
    let control_plane = ControlPlane::start_with(&[], settings).await;
    let channel = control_plane.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "wopr.v1alpha1.Policy"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        services.contains(&"wopr.v1alpha1.Policy".to_string()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_string()),
        "{services:?}"
    );
}

/// A raw Policy watch of session `a` with its own token.
async fn watch_a(
    control_plane: &ControlPlane,
    heartbeat_seconds: u32,
) -> tonic::Streaming<wopr_operator::proto::v1alpha1::PolicyUpdate> {
    let mut client = PolicyClient::new(control_plane.channel().await);
    let mut request = tonic::Request::new(WatchRequest {
        namespace: NAMESPACE.into(),
        session: "a".into(),
        heartbeat_seconds,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token_for("a")).parse().unwrap(),
    );
    client.watch(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn heartbeats_follow_the_policy_only_when_asked_for() {
    use wopr_operator::proto::v1alpha1::policy_update::Update;
    let mut control_plane = ControlPlane::start(&["a"]).await;
    control_plane.put_session(session("a", TrustLevel::Trusted));

    let mut with = watch_a(&control_plane, 1).await;
    let first = with.message().await.unwrap().unwrap().update;
    assert!(matches!(first, Some(Update::Context(_))), "{first:?}");
    let second = with.message().await.unwrap().unwrap().update;
    assert!(matches!(second, Some(Update::Heartbeat(_))), "{second:?}");

    let mut without = watch_a(&control_plane, 0).await;
    assert!(matches!(
        without.message().await.unwrap().unwrap().update,
        Some(Update::Context(_))
    ));
    // A stream opened after it has had its first heartbeat (periods are
    // whole seconds, one the shortest): any heartbeat of `without` would
    // have been due by then. Then a change of policy: the next message of
    // `without` is the new policy, no heartbeat before it.
    let mut later = watch_a(&control_plane, 1).await;
    later.message().await.unwrap().unwrap();
    let heartbeat = later.message().await.unwrap().unwrap().update;
    assert!(
        matches!(heartbeat, Some(Update::Heartbeat(_))),
        "{heartbeat:?}"
    );
    control_plane.put_session(session("a", TrustLevel::SemiTrusted));
    let nothing = without.message().await.unwrap().unwrap().update;
    assert!(
        matches!(nothing, Some(Update::Context(_))),
        "no heartbeat unless asked: {nothing:?}"
    );
}

#[tokio::test]
async fn draining_ends_every_policy_stream_and_the_server_returns() {
    let mut control_plane = ControlPlane::start(&["a"]).await;
    control_plane.put_session(session("a", TrustLevel::Trusted));
    let mut first = watch_a(&control_plane, 0).await;
    let mut second = watch_a(&control_plane, 1).await;
    first.message().await.unwrap().unwrap();
    second.message().await.unwrap().unwrap();

    control_plane.shutdown.take().unwrap().send(()).unwrap();
    for stream in [&mut first, &mut second] {
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match stream.message().await {
                    Ok(Some(_heartbeat)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the stream ends promptly");
        assert!(matches!(ended, Ok(None)), "a clean end: {ended:?}");
    }
    tokio::time::timeout(Duration::from_secs(2), &mut control_plane.server)
        .await
        .expect("the server drains")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_stale_policy_denies_everything_but_whoami_and_says_why() {
    let mut control_plane = ControlPlane::start(&["s"]).await;
    control_plane.put_session(session("s", TrustLevel::SemiTrusted));
    let options = SidecarOptions {
        max_policy_age: Duration::from_secs(1),
        ..SidecarOptions::in_memory()
    };
    let address = control_plane.address.to_string();
    let sidecar = Sidecar::start_with(&address, "s", &token_for("s"), options).await;
    sidecar.wait_for_policy(has_policy).await;
    call(&sidecar, "config_get", json!({})).await.unwrap();

    // The control plane goes away for good; the sidecar keeps retrying,
    // and its policy goes stale past the bound.
    control_plane.server.abort();
    drop(control_plane);
    sidecar.wait_for_policy(|served| served.is_none()).await;

    assert_eq!(tool_names(&sidecar).await, ["security_whoami"]);
    for tool in ["config_get", "memory_write", "security_check"] {
        let denied = call(
            &sidecar,
            tool,
            json!({"path": "x", "content": "y", "capability": "inject"}),
        )
        .await
        .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{tool}");
    }
    let whoami = call(&sidecar, "security_whoami", json!({})).await.unwrap();
    assert!(whoami["policy"].is_null());
    let reason = whoami["reason"].as_str().unwrap();
    assert!(reason.contains("longer than the 1s bound"), "{reason}");
    let events = sidecar.audit.take();
    let denial = events
        .iter()
        .rev()
        .find(|event| event.tool.as_deref() == Some("config_get"))
        .unwrap();
    assert_eq!(denial.decision, Outcome::Denied);
    assert!(denial.reason.contains("fail closed"), "{}", denial.reason);
}

mod sandbox_checks {
    use std::sync::Arc;

    use tonic_health::ServingStatus;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_server::Health;
    use tonic_health::server::{HealthReporter, HealthService};
    use wopr_operator::api::NetworkMode;
    use wopr_operator::proto::v1alpha1::policy_client::PolicyClient;
    use wopr_operator::proto::v1alpha1::{IsolationCheck, IsolationReport};
    use wopr_operator::sidecar::client::{WatchTarget, report_isolation};
    use wopr_operator::sidecar::isolation::network::ProbeTarget;
    use wopr_operator::sidecar::isolation::pids::CgroupFiles;
    use wopr_operator::sidecar::isolation::{IsolationConfig, verify_forever};

    use super::*;

    /// A cgroup view whose own pids.max is `limit`.
    fn cgroup(dir: &std::path::Path, limit: &str) -> CgroupFiles {
        std::fs::write(dir.join("membership"), "0::/\n").unwrap();
        std::fs::write(dir.join("pids.max"), limit).unwrap();
        CgroupFiles {
            proc_self_cgroup: dir.join("membership"),
            mount: dir.to_path_buf(),
        }
    }

    async fn overall(health: &HealthReporter) -> Wire {
        let service = HealthService::from_health_reporter(health.clone());
        let request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        service.check(request).await.unwrap().into_inner().status()
    }

    fn statuses(conditions: &[k8s_openapi::api::core::v1::PodCondition]) -> Vec<(String, String)> {
        conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect()
    }

    #[tokio::test]
    async fn checks_are_reported_and_hold_the_agent_back_until_they_pass() {
        let mut control_plane = ControlPlane::start(&["s"]).await;
        control_plane.put_session(session("s", TrustLevel::SemiTrusted));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), token_for("s")).unwrap();
        let target = WatchTarget {
            address: control_plane.address.to_string(),
            tls: common::tls::client_tls(),
            namespace: NAMESPACE.into(),
            session: "s".into(),
            token_path: dir.path().join("token"),
        };
        // The API server is reachable from the "sandbox": isolation fails.
        let api_server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = IsolationConfig {
            network: Some(NetworkMode::None),
            egress_allowed: Vec::new(),
            probes: vec![ProbeTarget {
                name: "apiserver".into(),
                address: api_server.local_addr().unwrap(),
            }],
            probe_timeout: Duration::from_millis(200),
            cgroup: cgroup(dir.path(), "100"),
            required: true,
        };
        let health = HealthReporter::new();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let verifier = tokio::spawn(verify_forever(config, health.clone(), move |checks| {
            let target = target.clone();
            async move { report_isolation(&target, checks).await }
        }));

        let reports = control_plane.reports.clone();
        let first = wait_for_report(&reports, 1).await;
        assert_eq!((first.0.as_str(), first.1.as_str()), (NAMESPACE, "s"));
        assert_eq!(
            statuses(&first.2),
            [
                ("wopr.dev/NetworkIsolated".to_owned(), "False".to_owned()),
                ("wopr.dev/PidsLimited".to_owned(), "True".to_owned())
            ]
        );
        let message = first.2[0].message.clone().unwrap();
        assert!(
            message.starts_with("reachable from the sandbox: apiserver"),
            "{message}"
        );
        assert_eq!(overall(&health).await, Wire::NotServing);

        // The network plugin catches up: the next check passes.
        drop(api_server);
        let second = wait_for_report(&reports, 2).await;
        assert_eq!(second.2[0].status, "True");
        // The sidecar lets the agent start once the control plane has
        // acknowledged the report, which is just after it recorded it.
        let mut status = overall(&health).await;
        for _ in 0..500 {
            if status == Wire::Serving {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            status = overall(&health).await;
        }
        assert_eq!(status, Wire::Serving);
        verifier.abort();
    }

    async fn wait_for_report(
        reports: &Arc<common::sidecar::MemoryRecorder>,
        count: usize,
    ) -> (
        String,
        String,
        Vec<k8s_openapi::api::core::v1::PodCondition>,
    ) {
        for _ in 0..500 {
            if let Some(report) = reports.0.lock().unwrap().get(count - 1) {
                return report.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no report {count}");
    }

    #[tokio::test]
    async fn reports_are_authenticated_authorized_and_validated() {
        let mut control_plane = ControlPlane::start(&["a", "b"]).await;
        control_plane.put_session(session("a", TrustLevel::Trusted));
        let mut client = PolicyClient::new(control_plane.channel().await);
        let report = |token: Option<&str>, status: &str| {
            let mut request = tonic::Request::new(IsolationReport {
                namespace: NAMESPACE.into(),
                session: "a".into(),
                checks: vec![IsolationCheck {
                    r#type: "PidsLimited".into(),
                    status: status.into(),
                    reason: "Limited".into(),
                    message: "pids.max = 10".into(),
                }],
            });
            if let Some(token) = token {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            request
        };
        let code = |result: Result<_, tonic::Status>| result.map(|_| ()).unwrap_err().code();
        assert_eq!(
            code(client.report_isolation(report(None, "True")).await),
            Code::Unauthenticated
        );
        assert_eq!(
            code(
                client
                    .report_isolation(report(Some(&token_for("b")), "True"))
                    .await
            ),
            Code::PermissionDenied,
            "a sidecar reports for its own session only"
        );
        assert_eq!(
            code(
                client
                    .report_isolation(report(Some(&token_for("a")), "Yes"))
                    .await
            ),
            Code::InvalidArgument
        );
        assert!(control_plane.reports.0.lock().unwrap().is_empty());
        client
            .report_isolation(report(Some(&token_for("a")), "True"))
            .await
            .unwrap();
        assert_eq!(control_plane.reports.0.lock().unwrap().len(), 1);
    }
}
