//! The sidecar attacked as issue 31's attacker did: an agent that tries to
//! keep an allowed call out of the audit trail, to flood the trail with
//! denials, to file elevation requests by the hundred, and to grow the
//! sidecar past its memory limit with MCP sessions. Each test reproduces
//! the attack (with the real processes where the attack needs them) and
//! shows what stops it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::one_agent;
use common::mcp;
use common::sidecar::{ControlPlane, Sidecar, socket_channel, token_for};
use common::store::all_events;
use common::{NAMESPACE, session};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};
use wopr_operator::api::{RateLimit, TrustLevel};
use wopr_operator::audit::{AuditEvent, EventType, MemorySink};
use wopr_operator::contract::AUDIT_ID_MCP_META;
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1::audit_server::{Audit, AuditServer};
use wopr_operator::proto::v1alpha1::tools_client::ToolsClient;
use wopr_operator::proto::v1alpha1::{
    AuditQueryRequest, AuditQueryResponse, CallToolRequest, IngestAck, IngestRequest,
    VerifyRequest, VerifyResponse,
};
use wopr_operator::sidecar::client::WatchTarget;
use wopr_operator::sidecar::denials::DENIALS_PER_MINUTE;
use wopr_operator::sidecar::engine::{Limits, ToolEngine, ToolError};
use wopr_operator::sidecar::mcp_sessions::MAX_SESSIONS;
use wopr_operator::sidecar::policy_state::{PolicyState, Served};
use wopr_operator::sidecar::shipper::ship_sealed;
use wopr_operator::sidecar::spool::Spool;
use wopr_operator::sidecar::workspace::Workspace;
use wopr_operator::store::Store;

/// The rate limits a sidecar runs with by default (its flags' defaults).
fn default_limits() -> Limits {
    Limits::new(RateLimit { per_minute: 600 }, RateLimit { per_minute: 300 })
}

/// An in-process engine for `agent` at `trust_level`, auditing into memory.
fn engine(trust_level: TrustLevel) -> (ToolEngine, Arc<MemorySink>, tempfile::TempDir) {
    let context = wopr_operator::policy::resolve(
        &session("agent", trust_level),
        None,
        &[],
        &[],
        Timestamp::UNIX_EPOCH,
    )
    .unwrap();
    let policy = Arc::new(PolicyState::new(Duration::from_secs(3600)));
    policy.update(Ok(Served {
        context,
        provider: None,
    }));
    let audit = Arc::new(MemorySink::default());
    let workspace = tempfile::tempdir().unwrap();
    let engine = ToolEngine::new(
        NAMESPACE,
        "agent",
        policy,
        audit.clone(),
        Workspace::new(workspace.path()),
        default_limits(),
        || Timestamp::UNIX_EPOCH,
    );
    (engine, audit, workspace)
}

/// How many calls an event records: one, or its `repeats`.
fn calls_recorded(event: &AuditEvent) -> u64 {
    serde_json::to_value(event).unwrap()["repeats"]
        .as_u64()
        .unwrap_or(1)
}

/// Item 1: an allowed call, then (within the shipping interval) a call of a
/// tool whose name is 17,000 characters long. Before the fix that event's
/// line was over the control plane's 16 KiB limit, the control plane
/// refused the whole batch, and the sidecar moved the whole segment (the
/// allowed call's event with it) to `rejected/`.
#[tokio::test]
async fn a_tool_name_of_17000_characters_keeps_no_allowed_call_out_of_the_trail() {
    let running = one_agent(TrustLevel::SemiTrusted).await;
    let (cluster, sidecar, agent) = (&running.cluster, &running.sidecar, &running.agent);

    let allowed = mcp::call(
        agent,
        "tools/call",
        json!({"name": "config_get", "arguments": {}}),
    )
    .await;
    let allowed_id = allowed["result"]["_meta"][AUDIT_ID_MCP_META]
        .as_str()
        .unwrap_or_else(|| panic!("{allowed}"))
        .to_owned();
    let long_name = "x".repeat(17_000);
    let refused = mcp::call(
        agent,
        "tools/call",
        json!({"name": long_name, "arguments": {}}),
    )
    .await;

    let store = Store::open(&cluster.store).await.unwrap();
    let mut stored = Vec::new();
    for _ in 0..100 {
        stored = all_events(&store).await;
        if stored.iter().any(|event| event.id == allowed_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stored.iter().any(|event| event.id == allowed_id),
        "the allowed call's event is in the store; stored: {:?}; sidecar:\n{}",
        stored.iter().map(|e| &e.reason).collect::<Vec<_>>(),
        sidecar.stderr().join("\n")
    );
    let denial = stored
        .iter()
        .find(|event| event.tool.as_deref().is_some_and(|t| t.starts_with("xxxx")))
        .expect("the refusal is in the store too");
    assert_eq!(denial.decision, Outcome::Denied);
    let tool = denial.tool.as_deref().unwrap();
    assert!(
        tool.len() < 200 && tool.contains("17000"),
        "the name is recorded truncated, with its length: {tool}"
    );
    let rejected = cluster.dir.path().join("agent-spool/rejected");
    assert!(
        !rejected.exists() || std::fs::read_dir(&rejected).unwrap().count() == 0,
        "nothing was refused"
    );
    let message = refused["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{refused}"));
    assert!(
        message.starts_with("tool not available: xxxx"),
        "refused as any unknown tool: {message:.200}"
    );
    assert!(
        message.len() < 400,
        "the name is not echoed whole: {} bytes",
        message.len()
    );
    // Nor by the gRPC socket, nor by the MCP refusals that echo a method
    // or a resource.
    let socket = cluster.dir.path().join("agent-a2a.sock");
    let mut tools = ToolsClient::new(socket_channel(socket));
    let refused = tools
        .call_tool(CallToolRequest {
            name: long_name.clone(),
            arguments_json: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().len() < 400, "{:.200}", refused.message());
    for (method, params) in [
        (long_name.as_str(), json!({})),
        ("resources/read", json!({"uri": long_name})),
    ] {
        let refused = mcp::call(agent, method, params).await;
        let message = refused["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{refused:.300}"));
        assert!(message.len() < 400, "{method:.20}: {message:.200}");
    }
}

/// A control plane that refuses (for good) any batch holding an event
/// whose line contains `poison`, and keeps every other batch.
#[derive(Default)]
struct Refusing {
    poison: String,
    stored: Mutex<Vec<String>>,
}

#[tonic::async_trait]
impl Audit for Refusing {
    async fn ingest(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<IngestAck>, Status> {
        let mut messages = request.into_inner();
        let mut lines = Vec::new();
        while let Some(message) = messages.next().await {
            lines.extend(message?.events);
        }
        if lines.iter().any(|line| line.contains(&self.poison)) {
            return Err(Status::invalid_argument("an event of the batch is refused"));
        }
        let stored = lines.len() as u32;
        self.stored.lock().unwrap().extend(lines);
        Ok(Response::new(IngestAck {
            stored,
            duplicates: 0,
        }))
    }

    async fn query(
        &self,
        _: Request<AuditQueryRequest>,
    ) -> Result<Response<AuditQueryResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn verify(&self, _: Request<VerifyRequest>) -> Result<Response<VerifyResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Item 1, the shipper's half: one event the control plane refuses takes
/// no other event of its segment with it. Before the fix the whole segment
/// went to `rejected/`.
#[tokio::test]
async fn one_refused_event_takes_no_other_event_of_its_segment_with_it() {
    let control_plane = Arc::new(Refusing {
        poison: "poison".into(),
        ..Refusing::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuditServer::from_arc(control_plane.clone()))
            .serve_with_incoming(wopr_operator::tls::server::incoming(
                listener,
                common::tls::server_cert(),
            )),
    );
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "token").unwrap();
    let target = WatchTarget {
        address: address.to_string(),
        tls: common::tls::client_tls(),
        namespace: NAMESPACE.into(),
        session: "agent".into(),
        token_path,
    };
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let lines: Vec<String> = ["allowed 0", "allowed 1", "poison", "allowed 3", "allowed 4"]
        .iter()
        .map(|reason| json!({"reason": reason}).to_string())
        .collect();
    for line in &lines {
        spool.append(line).unwrap();
    }
    spool.seal().unwrap();

    let shipped = ship_sealed(&spool, &target).await.unwrap();

    let good: Vec<String> = lines
        .iter()
        .filter(|line| !line.contains("poison"))
        .cloned()
        .collect();
    assert_eq!(*control_plane.stored.lock().unwrap(), good, "in order");
    assert_eq!(shipped, 4);
    let rejected: Vec<_> = std::fs::read_dir(dir.path().join("spool/rejected"))
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    assert_eq!(
        rejected,
        [format!("{}\n", lines[2])],
        "only the refused event"
    );
    assert!(spool.sealed().unwrap().is_empty());
    assert_eq!(spool.depth(), 0);
}

/// Item 4 (the sidecar's half): 5,000 denied and invalid calls from one
/// agent, as fast as it can send them. Before the fix each was an audit
/// event of its own (4,400 to 4,800 a second), enough to evict other
/// sessions' events from a namespace's trail.
#[tokio::test(start_paused = true)]
async fn five_thousand_denied_calls_are_a_few_events_that_count_every_one() {
    let (engine, audit, _workspace) = engine(TrustLevel::Untrusted);
    let write = json!({"path": "notes", "content": "x"});
    for n in 0..5_000 {
        let answer = match n % 3 {
            0 => engine.call("memory_write", &write).await,
            1 => engine.call(&format!("no-such-tool-{n}"), &json!({})).await,
            _ => engine.call("security_check", &json!({"bad": n})).await,
        };
        match n % 3 {
            0 => assert_eq!(
                answer.result,
                Err(ToolError::NotAvailable("memory_write".into()))
            ),
            1 => assert_eq!(
                answer.result,
                Err(ToolError::NotAvailable(format!("no-such-tool-{n}")))
            ),
            _ => assert!(
                matches!(answer.result, Err(ToolError::InvalidArguments(_))),
                "{:?}",
                answer.result
            ),
        }
    }
    // The window ends; the next call finds the held denials due.
    tokio::time::advance(Duration::from_secs(61)).await;
    let whoami = engine.call("security_whoami", &json!({})).await;
    assert!(whoami.result.is_ok());

    let events = audit.take();
    let denials: Vec<&AuditEvent> = events
        .iter()
        .filter(|event| event.id != whoami.audit_id)
        .collect();
    let counted: u64 = denials.iter().map(|event| calls_recorded(event)).sum();
    assert_eq!(counted, 5_000, "every denial is counted in the trail");
    // 60 one by one, then one event per kind of denial.
    assert!(
        denials.len() <= DENIALS_PER_MINUTE as usize + 3,
        "{} events for 5,000 denials",
        denials.len()
    );
}

/// Item 5 (the sidecar's half): `security_request` needs no capability,
/// and each call files an ApprovalRequest; its own limit is 3 a minute
/// whatever the per-tool default. Before the fix the 4th ran (300 a minute).
#[tokio::test(start_paused = true)]
async fn a_fourth_elevation_request_within_a_minute_is_rate_limited_and_audited() {
    let (engine, audit, _workspace) = engine(TrustLevel::SemiTrusted);
    let ask = json!({"capabilities": ["inject.tools"], "reason": "to take notes"});
    for _ in 0..3 {
        let answer = engine.call("security_request", &ask).await;
        // No broker in this test: the call runs and fails there.
        assert!(
            matches!(answer.result, Err(ToolError::Failed(_))),
            "{:?}",
            answer.result
        );
    }
    let fourth = engine.call("security_request", &ask).await;
    assert!(
        matches!(fourth.result, Err(ToolError::RateLimited(_))),
        "{:?}",
        fourth.result
    );
    let events = audit.take();
    let recorded = events
        .iter()
        .find(|event| event.id == fourth.audit_id)
        .expect("the refusal is audited");
    assert_eq!(recorded.event_type, EventType::RateLimited);
    assert_eq!(recorded.tool.as_deref(), Some("security_request"));
    // A token comes back after a third of a minute.
    tokio::time::advance(Duration::from_secs(20)).await;
    let fifth = engine.call("security_request", &ask).await;
    assert!(
        matches!(fifth.result, Err(ToolError::Failed(_))),
        "{:?}",
        fifth.result
    );
}

/// An `initialize` of a revision with sessions: the session's id.
async fn initialize(agent: &str) -> String {
    let body = mcp::request(
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "flood", "version": "1"}}),
    );
    let answer = mcp::raw_post(agent, body, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.message);
    answer.header("mcp-session-id").unwrap().to_owned()
}

/// The HTTP status of a `ping` in session `id`.
async fn ping(agent: &str, id: &str) -> u16 {
    let headers = [
        ("Mcp-Session-Id", id),
        ("MCP-Protocol-Version", "2025-06-18"),
    ];
    mcp::raw_post(agent, mcp::request("ping", json!({})), &headers)
        .await
        .status
}

/// Item 7 (the MCP half): thousands of `initialize` calls. Before the fix
/// every session stayed (for 5 minutes each): 20,000 took the sidecar from
/// 26 MB to 1 GB against a 64 Mi limit.
#[tokio::test]
async fn thousands_of_initialize_calls_keep_few_sessions_and_the_sidecar_flat() {
    let running = one_agent(TrustLevel::SemiTrusted).await;
    let (sidecar, agent) = (&running.sidecar, &running.agent);

    let first = initialize(agent).await;
    assert_eq!(ping(agent, &first).await, 200);
    // Warm up the allocator, then measure.
    for _ in 0..200 {
        initialize(agent).await;
    }
    let before = sidecar.resident_bytes();
    let mut last = Vec::new();
    for _ in 0..4_000 {
        last.push(initialize(agent).await);
    }
    let after = sidecar.resident_bytes();
    eprintln!("sidecar RSS: {before} bytes, then {after} after 4,000 more initialize calls");
    assert!(
        after < before + 16 * 1024 * 1024,
        "4,000 sessions more grew the sidecar from {before} to {after} bytes"
    );
    assert_eq!(ping(agent, &first).await, 404, "the oldest session is gone");
    for id in &last[last.len() - 8..] {
        assert_eq!(ping(agent, id).await, 200, "the newest sessions work");
    }
}

/// A session's tasks end with it: before the fix each initialized session
/// left a task (holding its client's peer) that waited for the next change
/// of the tool list, after its session was gone.
#[tokio::test]
async fn an_evicted_session_leaves_no_task_behind() {
    let mut control_plane = ControlPlane::start(&["agent"]).await;
    control_plane.put_session(session("agent", TrustLevel::SemiTrusted));
    let sidecar = Sidecar::start(
        &control_plane.address.to_string(),
        "agent",
        &token_for("agent"),
    )
    .await;
    sidecar.wait_for_policy(|policy| policy.is_some()).await;
    let agent = sidecar.mcp.to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let open_session = || async {
        let id = initialize(&agent).await;
        let headers = [
            ("Mcp-Session-Id", id.as_str()),
            ("MCP-Protocol-Version", "2025-06-18"),
        ];
        let accepted = mcp::raw_post(&agent, initialized.to_string(), &headers).await;
        assert_eq!(accepted.status, 202);
    };
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    for _ in 0..MAX_SESSIONS {
        open_session().await;
    }
    let settled = tasks();
    for _ in 0..200 {
        open_session().await;
    }
    // Evicted sessions end as their workers notice.
    let mut now = tasks();
    for _ in 0..100 {
        if now <= settled + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = tasks();
    }
    assert!(
        now <= settled + 8,
        "{settled} tasks with {MAX_SESSIONS} sessions, {now} after 200 more"
    );
}
