//! The control plane's Broker service with real tonic clients as sidecars
//! and a real store: a session sends to another's inbox (in order, once,
//! kept until acknowledged, delivered again after a reconnect); every
//! refusal is precise and audited; warn mode delivers and audits
//! `would_deny`.

mod common;

use std::time::Duration;

use common::broker::{inbox, next, send};
use common::sidecar::{
    ControlPlane, OPERATOR, OUTSIDER, READER, Sidecar, WORKLOAD, as_sidecar, token_for, with_token,
};
use common::store::all_events;
use common::*;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use wopr_operator::api::{AccessPattern, Capability, TrustLevel};
use wopr_operator::audit::{AuditEvent, EventType};
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1::broker_client::BrokerClient;
use wopr_operator::proto::v1alpha1::{
    AckRequest, AcknowledgeRequest, AgentMessage, CallToolRequest, InjectRequest, MessagesRequest,
    SendRequest,
};

/// A control plane with trusted `alice` (granted `cross.inject`) and
/// `bob`, whose default access (`trust:trusted`) admits her, plus `locked`,
/// which takes messages only from `carol`.
async fn sessions() -> (ControlPlane, BrokerClient<Channel>) {
    let mut control_plane = ControlPlane::start(&["alice", "bob", "locked", "carol"]).await;
    for name in ["alice", "bob", "carol"] {
        control_plane.put_session(session(name, TrustLevel::Trusted));
    }
    let mut locked = session("locked", TrustLevel::Trusted);
    locked.spec.access = vec![AccessPattern::Session("carol".into())];
    control_plane.put_session(locked);
    control_plane.put_grant(session_grant("send", "alice", &[Capability::CrossInject]));
    let client = BrokerClient::new(control_plane.channel().await);
    (control_plane, client)
}

async fn injections(control_plane: &ControlPlane) -> Vec<AuditEvent> {
    let mut events: Vec<AuditEvent> = all_events(&control_plane.store)
        .await
        .into_iter()
        .filter(|e| e.event_type == EventType::Injection)
        .collect();
    events.reverse();
    events
}

#[tokio::test]
async fn a_message_reaches_the_inbox_in_order_and_stays_until_acknowledged() {
    let (control_plane, mut client) = sessions().await;
    let mut answers = Vec::new();
    for n in 0..3 {
        let answer = client
            .send(send("alice", "bob", json!({"n": n})))
            .await
            .unwrap();
        answers.push(answer.into_inner());
    }
    assert!(answers.iter().all(|a| a.decision == "allowed"));

    let mut stream = inbox(&mut client, "bob", 0).await;
    for n in 0..3 {
        let (seq, message) = next(&mut stream).await;
        assert_eq!(seq, n + 1);
        assert_eq!(message.payload, json!({"n": n}));
        assert_eq!(message.id, answers[n as usize].message_id);
        assert_eq!(message.source.identity, "alice");
        assert_eq!(message.source.trust_level, TrustLevel::Trusted);
    }
    // A message sent while the stream is open arrives without a reconnect.
    client
        .send(send("alice", "bob", json!({"n": 3})))
        .await
        .unwrap();
    let (_, fourth) = next(&mut stream).await;
    assert_eq!(fourth.payload, json!({"n": 3}));

    // The agent takes the first two; a sidecar that reconnects from the
    // start gets the other two again, and only those.
    let taken = vec![answers[0].message_id.clone(), answers[1].message_id.clone()];
    let ack = AckRequest {
        namespace: NAMESPACE.into(),
        session: "bob".into(),
        message_ids: taken,
    };
    let acked = client
        .ack(as_sidecar("bob", ack))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.acknowledged, 2);
    drop(stream);
    let mut again = inbox(&mut client, "bob", 0).await;
    let payloads = [
        next(&mut again).await.1.payload,
        next(&mut again).await.1.payload,
    ];
    assert_eq!(payloads, [json!({"n": 2}), json!({"n": 3})]);

    // Each delivery is an audit event of bob, from alice, naming the tool.
    let delivered = injections(&control_plane).await;
    assert_eq!(delivered.len(), 4);
    assert!(delivered.iter().all(|e| e.session == "bob"
        && e.source.identity == "alice"
        && e.decision == Outcome::Allowed
        && e.tool.as_deref() == Some("sessions_send")));
    assert_eq!(delivered[0].id, answers[0].audit_id);
}

#[tokio::test]
async fn a_message_sent_again_with_its_id_is_queued_once() {
    let (_control_plane, mut client) = sessions().await;
    let id = ulid::Ulid::new().to_string();
    for _ in 0..2 {
        let mut request = send("alice", "bob", json!("hello"));
        request.get_mut().message_id = id.clone();
        let answer = client.send(request).await.unwrap().into_inner();
        assert_eq!(answer.message_id, id);
    }
    let mut stream = inbox(&mut client, "bob", 0).await;
    assert_eq!(next(&mut stream).await.1.id, id);
    // The inbox is in order: a copy would come before a later message.
    let later = client.send(send("alice", "bob", json!("later"))).await;
    let later = later.unwrap().into_inner().message_id;
    let nothing_more = next(&mut stream).await.1.id;
    assert_eq!(nothing_more, later, "queued once");
}

#[tokio::test]
async fn refusals_are_precise_lose_nothing_and_are_audited() {
    let (control_plane, mut client) = sessions().await;
    client
        .send(send("alice", "bob", json!("kept")))
        .await
        .unwrap();
    let mut bad_id = send("alice", "bob", json!("x"));
    bad_id.get_mut().message_id = "message-1".into();
    let mut not_json = send("alice", "bob", json!("x"));
    not_json.get_mut().payload_json = "{oops".into();
    let mut forged = send("alice", "bob", json!("x"));
    *forged.metadata_mut() = as_sidecar("carol", ()).metadata().clone();
    let cases: Vec<(tonic::Request<SendRequest>, Code, &str)> = vec![
        (
            send("carol", "bob", json!("x")),
            Code::PermissionDenied,
            "tool not available: sessions_send",
        ),
        (
            send("alice", "nobody", json!("x")),
            Code::NotFound,
            "no session nobody in namespace team-a",
        ),
        (
            send("alice", "locked", json!("x")),
            Code::PermissionDenied,
            "session locked does not take messages from alice: source not admitted by the session's access list",
        ),
        (not_json, Code::InvalidArgument, "payload_json is not JSON"),
        (
            bad_id,
            Code::InvalidArgument,
            "message_id \"message-1\" is not a ULID",
        ),
        (
            send("alice", "bob", json!("x".repeat(70_000))),
            Code::InvalidArgument,
            "over the limit of 65536 per message",
        ),
        (
            forged,
            Code::PermissionDenied,
            "may not act for session team-a/alice",
        ),
    ];
    let count = cases.len();
    for (request, code, message) in cases {
        let refused = client.send(request).await.unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(
            refused.message().contains(message),
            "{message:?} in {refused:?}"
        );
    }
    let mut wrong_token = send("alice", "bob", json!("x"));
    *wrong_token.metadata_mut() = common::sidecar::with_token("forged", ()).metadata().clone();
    assert_eq!(
        client.send(wrong_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // The message sent before is still there, alone.
    let mut stream = inbox(&mut client, "bob", 0).await;
    assert_eq!(next(&mut stream).await.1.payload, json!("kept"));
    // Every refusal of an authenticated caller is in the trail.
    let refusals = all_events(&control_plane.store)
        .await
        .into_iter()
        .filter(|e| e.decision == Outcome::Denied)
        .count();
    assert_eq!(refusals, count);
}

#[tokio::test]
async fn a_full_inbox_says_so_and_takes_more_once_acknowledged() {
    let (_control_plane, mut client) = sessions().await;
    let mut first = None;
    for n in 0..1000 {
        let answer = client.send(send("alice", "bob", json!(n))).await.unwrap();
        first.get_or_insert(answer.into_inner().message_id);
    }
    let full = client
        .send(send("alice", "bob", json!("one more")))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message()
            .contains("the inbox of team-a/bob is full: 1000 messages wait"),
        "{full:?}"
    );
    let ack = AckRequest {
        namespace: NAMESPACE.into(),
        session: "bob".into(),
        message_ids: vec![first.unwrap()],
    };
    client.ack(as_sidecar("bob", ack)).await.unwrap();
    client
        .send(send("alice", "bob", json!("one more")))
        .await
        .unwrap();
}

/// The agent's `sessions_send`: listed only with `cross.inject`, answered
/// with the message and audit ids, refusals in the control plane's words;
/// the recipient's inbox holds what was sent.
#[tokio::test]
async fn an_agent_sends_with_its_sidecars_sessions_send_tool() {
    let (control_plane, mut client) = sessions().await;
    let address = control_plane.address.to_string();
    let alice = Sidecar::start(&address, "alice", &token_for("alice")).await;
    let carol = Sidecar::start(&address, "carol", &token_for("carol")).await;
    alice.wait_for_policy(|served| served.is_some()).await;
    carol.wait_for_policy(|served| served.is_some()).await;
    let listed = |sidecar: &Sidecar| {
        let mut tools = sidecar.engine.list().into_iter().map(|id| id.tool().name);
        tools.any(|name| name == "sessions_send")
    };
    assert!(
        listed(&alice) && !listed(&carol),
        "only alice holds cross.inject"
    );

    let call = |target: &str| CallToolRequest {
        name: "sessions_send".into(),
        arguments_json: json!({"target": target, "message": {"ask": "status?"}}).to_string(),
    };
    let sent = alice.tools().await.call_tool(call("bob")).await.unwrap();
    let sent: Value = serde_json::from_str(&sent.into_inner().result_json).unwrap();
    assert_eq!(sent["decision"], "allowed");
    let mut stream = inbox(&mut client, "bob", 0).await;
    let (_, message) = next(&mut stream).await;
    assert_eq!(message.id, sent["messageId"].as_str().unwrap());
    assert_eq!(message.payload, json!({"ask": "status?"}));
    assert_eq!(message.source.identity, "alice");

    let refused = alice
        .tools()
        .await
        .call_tool(call("locked"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "the tool ran and failed"
    );
    assert!(
        refused
            .message()
            .contains("session locked does not take messages from alice"),
        "{refused:?}"
    );
    let refused = carol
        .tools()
        .await
        .call_tool(call("bob"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(refused.message(), "tool not available: sessions_send");
}

/// The agent's inbox stream on `sidecar`'s socket.
async fn agent_inbox(sidecar: &Sidecar) -> tonic::Streaming<AgentMessage> {
    sidecar
        .inbox()
        .await
        .messages(MessagesRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The next message of an agent's inbox stream (within 5 s).
async fn next_for_agent(stream: &mut tonic::Streaming<AgentMessage>) -> AgentMessage {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a message within 5 s")
        .unwrap()
        .expect("the stream goes on")
}

/// The recipient's agent reads its inbox as a gRPC stream and with the
/// `inbox_read` tool, acknowledges through either, and a new sidecar (a
/// restart) delivers again exactly what was not acknowledged.
#[tokio::test]
async fn the_agent_reads_and_acknowledges_its_inbox() {
    let (control_plane, mut client) = sessions().await;
    let address = control_plane.address.to_string();
    let bob = Sidecar::start(&address, "bob", &token_for("bob")).await;
    bob.wait_for_policy(|served| served.is_some()).await;
    let mut stream = agent_inbox(&bob).await;
    let mut sent = Vec::new();
    for n in 0..3 {
        let answer = client.send(send("alice", "bob", json!(n))).await.unwrap();
        sent.push(answer.into_inner().message_id);
    }
    for id in &sent {
        let received = next_for_agent(&mut stream).await;
        assert_eq!(&received.id, id, "in order");
    }

    // The same messages through the tool, oldest first.
    let read = |limit: u32| CallToolRequest {
        name: "inbox_read".into(),
        arguments_json: json!({"limit": limit}).to_string(),
    };
    let listed = bob.tools().await.call_tool(read(2)).await.unwrap();
    let listed: Value = serde_json::from_str(&listed.into_inner().result_json).unwrap();
    let ids: Vec<&str> = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [sent[0].as_str(), sent[1].as_str()]);

    // The first through the stream's service, the second with the tool.
    let acked = bob
        .inbox()
        .await
        .acknowledge(AcknowledgeRequest {
            ids: vec![sent[0].clone()],
        })
        .await
        .unwrap();
    assert_eq!(acked.into_inner().acknowledged, 1);
    let ack = CallToolRequest {
        name: "inbox_ack".into(),
        arguments_json: json!({"ids": [sent[1]]}).to_string(),
    };
    bob.tools().await.call_tool(ack).await.unwrap();
    let audited: Vec<String> = bob
        .audit
        .take()
        .into_iter()
        .filter_map(|e| e.tool)
        .filter(|tool| tool.starts_with("inbox_"))
        .collect();
    assert_eq!(audited, ["inbox_read", "inbox_ack", "inbox_ack"]);

    // A sidecar that starts again (a restart) has only the third.
    drop(stream);
    drop(bob);
    let again = Sidecar::start(&address, "bob", &token_for("bob")).await;
    again.wait_for_policy(|served| served.is_some()).await;
    let mut stream = agent_inbox(&again).await;
    let redelivered = next_for_agent(&mut stream).await;
    assert_eq!(redelivered.id, sent[2]);
    // In order: an acknowledged message delivered again would come
    // before a message sent now.
    let later = client.send(send("alice", "bob", json!(3))).await;
    let later = later.unwrap().into_inner().message_id;
    let nothing_more = next_for_agent(&mut stream).await;
    assert_eq!(nothing_more.id, later, "only what was not acknowledged");
}

/// `sessions_list` shows the other sessions whose access list admits the
/// caller; `sessions_history` their messages, newest first, and nothing of
/// a session that does not admit it.
#[tokio::test]
async fn an_agent_lists_the_sessions_it_may_reach_and_their_history() {
    let (control_plane, mut client) = sessions().await;
    for n in 0..3 {
        client.send(send("alice", "bob", json!(n))).await.unwrap();
    }
    let address = control_plane.address.to_string();
    let alice = Sidecar::start(&address, "alice", &token_for("alice")).await;
    alice.wait_for_policy(|served| served.is_some()).await;
    let call = |name: &str, arguments: Value| CallToolRequest {
        name: name.into(),
        arguments_json: arguments.to_string(),
    };
    let answer = |response: tonic::Response<wopr_operator::proto::v1alpha1::CallToolResponse>| {
        serde_json::from_str::<Value>(&response.into_inner().result_json).unwrap()
    };
    let listed = alice
        .tools()
        .await
        .call_tool(call("sessions_list", json!({})))
        .await
        .unwrap();
    assert_eq!(
        answer(listed)["sessions"],
        json!([
            {"name": "bob", "trustLevel": "trusted", "gateway": false},
            {"name": "carol", "trustLevel": "trusted", "gateway": false},
        ]),
        "not herself, not locked (it admits carol only)"
    );
    let history = alice
        .tools()
        .await
        .call_tool(call(
            "sessions_history",
            json!({"session": "bob", "limit": 2}),
        ))
        .await
        .unwrap();
    let history = answer(history);
    let payloads: Vec<&Value> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["payload"])
        .collect();
    assert_eq!(payloads, [&json!(2), &json!(1)], "newest first");
    assert_eq!(history["messages"][0]["acknowledged"], false);
    let refused = alice
        .tools()
        .await
        .call_tool(call("sessions_history", json!({"session": "locked"})))
        .await
        .unwrap_err();
    assert!(
        refused
            .message()
            .contains("session locked is not one you may reach"),
        "{refused:?}"
    );
}

/// The namespace's SecurityPolicy sets what an inbox holds.
#[tokio::test]
async fn the_security_policy_sets_the_inbox_limits() {
    let (mut control_plane, mut client) = sessions().await;
    control_plane.put_policy(security_policy(
        json!({"inbox": {"maxMessages": 2, "maxMessageBytes": 200}}),
    ));
    let large = client
        .send(send("alice", "bob", json!("x".repeat(300))))
        .await
        .unwrap_err();
    assert_eq!(large.code(), Code::InvalidArgument);
    assert!(
        large
            .message()
            .contains("over the limit of 200 per message"),
        "{large:?}"
    );
    for n in 0..2 {
        client.send(send("alice", "bob", json!(n))).await.unwrap();
    }
    let full = client
        .send(send("alice", "bob", json!(2)))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message().contains("2 messages wait, the limit is 2"),
        "{full:?}"
    );
}

#[tokio::test]
async fn warn_mode_delivers_and_audits_would_deny() {
    let (mut control_plane, mut client) = sessions().await;
    control_plane.put_policy(security_policy(json!({"enforcement": "warn"})));
    // carol holds no cross.inject, and locked does not admit alice: warn
    // mode delivers both, as would_deny.
    let answer = client
        .send(send("carol", "bob", json!("x")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.decision, "would_deny");
    let answer = client
        .send(send("alice", "locked", json!("y")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.decision, "would_deny");
    let audited = injections(&control_plane).await;
    assert_eq!(audited.len(), 2);
    assert!(
        audited.iter().all(|e| e.decision == Outcome::WouldDeny),
        "{audited:#?}"
    );
    assert!(
        audited[1].reason.contains("source not admitted"),
        "{}",
        audited[1].reason
    );
}

/// A control plane with the semi-trusted session `helper` and the owner
/// session `lead`, for messages from people and workloads (`Broker.Inject`).
async fn operated() -> (ControlPlane, BrokerClient<Channel>) {
    let mut control_plane = ControlPlane::start(&[]).await;
    control_plane.put_session(session("helper", TrustLevel::SemiTrusted));
    control_plane.put_session(session("lead", TrustLevel::Owner));
    let client = BrokerClient::new(control_plane.channel().await);
    (control_plane, client)
}

/// The message `text` to `session`, sent with the credential `token`.
fn inject(token: &str, session: &str, text: &str) -> tonic::Request<InjectRequest> {
    with_token(
        token,
        InjectRequest {
            namespace: NAMESPACE.into(),
            session: session.into(),
            payload_json: json!({"text": text}).to_string(),
        },
    )
}

/// The sources of the messages waiting for `session`.
async fn waiting(control_plane: &ControlPlane, session: &str) -> Vec<(String, TrustLevel)> {
    control_plane
        .store
        .pending_messages(NAMESPACE, session, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|queued| {
            let source = queued.message.source;
            (source.identity, source.trust_level)
        })
        .collect()
}

/// A person's message arrives as the session's operator, so it takes
/// `use` on the session's trust level as well as `create sessions/inject`:
/// alice (`edit`: up to semi-trusted) may command `helper` but not the
/// owner session `lead`; olivia, who holds owner, may.
#[tokio::test]
async fn a_persons_message_takes_use_on_the_sessions_trust_level() {
    let (control_plane, mut client) = operated().await;
    let refused = client
        .inject(inject(READER, "lead", "delete everything"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let expected = "alice may not operate session team-a/lead (trust level owner): that needs use on trustlevels.wopr.dev named owner in namespace team-a: bind the ClusterRole wopr-trust-owner there";
    assert_eq!(refused.message(), expected);
    assert!(waiting(&control_plane, "lead").await.is_empty());
    let audited = injections(&control_plane).await;
    assert_eq!(audited.len(), 1);
    let refusal = &audited[0];
    assert_eq!(
        (
            refusal.session.as_str(),
            refusal.source.source_type.as_str(),
            refusal.source.identity.as_str(),
            refusal.decision,
            refusal.action.as_deref(),
            refusal.reason.as_str(),
        ),
        (
            "lead",
            "person",
            "alice",
            Outcome::Denied,
            Some("session_inject"),
            expected
        )
    );
    assert_eq!(
        refusal.source.trust_level,
        TrustLevel::Untrusted,
        "a refused person is recorded as untrusted, not as the session's operator"
    );

    // Her own level she may operate: delivered, as the operator.
    let sent = client
        .inject(inject(READER, "helper", "summarize"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        waiting(&control_plane, "helper").await,
        [("alice".to_owned(), TrustLevel::Owner)]
    );
    let delivered = injections(&control_plane).await.pop().unwrap();
    assert_eq!(delivered.id, sent.audit_id);
    assert_eq!(delivered.decision, Outcome::Allowed);
    assert_eq!(
        delivered.reason,
        "delivered: alice may create sessions/inject and use trust level semi-trusted"
    );

    // A person who holds owner may operate the owner session.
    client
        .inject(inject(OPERATOR, "lead", "ship it"))
        .await
        .unwrap();
    assert_eq!(
        waiting(&control_plane, "lead").await,
        [("olivia".to_owned(), TrustLevel::Owner)]
    );
}

/// A workload holds no right on trust levels: its Grant and the
/// session's access list place it, for the owner session too.
#[tokio::test]
async fn a_workloads_message_takes_no_trust_level_right() {
    let (mut control_plane, mut client) = operated().await;
    control_plane.put_grant(workload_grant(
        "task-bot",
        ("ci", "task-bot"),
        TrustLevel::Trusted,
        &["lead"],
    ));
    client
        .inject(inject(WORKLOAD, "lead", "nightly report"))
        .await
        .unwrap();
    assert_eq!(
        waiting(&control_plane, "lead").await,
        [("ci/task-bot".to_owned(), TrustLevel::Trusted)]
    );
    // No Grant for helper: refused as before, for want of standing.
    let refused = client
        .inject(inject(WORKLOAD, "helper", "nightly report"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().starts_with(
            "no Grant gives serviceaccount ci/task-bot standing towards session helper"
        ),
        "{refused:?}"
    );
}

/// The Grant `task-bot` (the workload's, towards `lead`), in the API and
/// the control plane's caches; its path.
fn stored_task_bot_grant(control_plane: &mut ControlPlane) -> String {
    let grant = workload_grant(
        "task-bot",
        ("ci", "task-bot"),
        TrustLevel::Trusted,
        &["lead"],
    );
    let path = format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/grants/task-bot");
    control_plane
        .api
        .insert(&path, serde_json::to_value(&grant).unwrap());
    control_plane.put_grant(grant);
    path
}

/// The `lastUsedAt` the control plane writes to the Grant at `path`,
/// once it has (in the background, after the decision).
async fn recorded_use(control_plane: &ControlPlane, path: &str) -> k8s_openapi::jiff::Timestamp {
    for _ in 0..200 {
        if let Some(at) = control_plane.api.get(path).unwrap()["status"]["lastUsedAt"].as_str() {
            return at.parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no lastUsedAt written to {path}");
}

/// A delivered message is a use of the Grants the workload stands on:
/// the control plane records it in the Grant's status (a merge patch of
/// `lastUsedAt` alone), once a minute however many messages there are.
#[tokio::test]
async fn a_workloads_delivered_message_records_its_grants_use() {
    let (mut control_plane, mut client) = operated().await;
    let path = stored_task_bot_grant(&mut control_plane);
    control_plane.api.take_requests();
    let before = k8s_openapi::jiff::Timestamp::now();
    for text in ["one", "two", "three"] {
        client.inject(inject(WORKLOAD, "lead", text)).await.unwrap();
    }
    let status_path = format!("{path}/status");
    let recorded = recorded_use(&control_plane, &path).await;
    assert!(
        recorded.as_second() >= before.as_second(),
        "{recorded} {before}"
    );
    let patches: Vec<_> = control_plane
        .api
        .take_requests()
        .into_iter()
        .filter(|request| request.path == status_path)
        .collect();
    assert_eq!(patches.len(), 1, "three messages, one write: {patches:?}");
    assert!(
        patches[0]
            .query
            .split('&')
            .any(|param| param == "fieldManager=wopr-operator"),
        "the operator's one field manager: {}",
        patches[0].query
    );
    assert_eq!(
        patches[0].body.as_ref().unwrap()["status"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["lastUsedAt"]
    );
}

/// A refused message uses nothing. Shown by what comes after it: a use is
/// written at most once a minute, with the time of the decision, so had
/// the refusal recorded one, the delivered message after it (a second
/// later) would write nothing and `lastUsedAt` would be the refusal's.
#[tokio::test]
async fn a_refused_message_records_no_use() {
    let (mut control_plane, mut client) = operated().await;
    let path = stored_task_bot_grant(&mut control_plane);

    client
        .inject(inject(WORKLOAD, "helper", "nightly report"))
        .await
        .unwrap_err();
    let refused_at = k8s_openapi::jiff::Timestamp::now();
    // Into the next second: lastUsedAt is written to the second.
    while k8s_openapi::jiff::Timestamp::now().as_second() == refused_at.as_second() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client
        .inject(inject(WORKLOAD, "lead", "nightly report"))
        .await
        .unwrap();
    let recorded = recorded_use(&control_plane, &path).await;
    assert!(
        recorded.as_second() > refused_at.as_second(),
        "lastUsedAt {recorded} is not after the refusal ({refused_at}): the refusal recorded a use"
    );
}

/// Whether a session exists is told only to a caller who may send it
/// messages: the others are refused as for a session that exists.
#[tokio::test]
async fn a_missing_session_is_reported_only_to_who_may_send_to_it() {
    let (control_plane, mut client) = operated().await;
    let missing = client
        .inject(inject(READER, "ghost", "hi"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), "no session ghost in namespace team-a");

    // mallory may send to another namespace only (and holds owner there).
    let refusal = |session: &str| {
        format!(
            "mallory may not create sessions/inject of wopr.dev/{session}: bind the ClusterRole wopr-session-injector (or edit/admin) in namespace team-a"
        )
    };
    for session in ["ghost", "lead"] {
        let refused = client
            .inject(inject(OUTSIDER, session, "hi"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{session}");
        assert_eq!(refused.message(), refusal(session));
    }
    let unknown = client
        .inject(inject("not-a-token", "ghost", "hi"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);

    let audited = injections(&control_plane).await;
    let seen: Vec<(&str, &str, Outcome)> = audited
        .iter()
        .map(|e| (e.session.as_str(), e.source.identity.as_str(), e.decision))
        .collect();
    assert_eq!(
        seen,
        [
            ("ghost", "alice", Outcome::Denied),
            ("ghost", "mallory", Outcome::Denied),
            ("lead", "mallory", Outcome::Denied),
        ]
    );
}
