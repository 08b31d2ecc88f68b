//! Messages and pending approvals survive crashes: real `wopr-operator`
//! processes (a controller with its store, the sessions' sidecars), agents
//! sending with `sessions_send` or forwarding with `gateway_forward`, the
//! recipient reading its inbox stream and acknowledging each message,
//! while the controller and the recipient's sidecar are SIGKILLed.
//! Afterwards every message the sender was answered for, and every
//! forward a person approved, has reached the recipient's agent and is
//! acknowledged, and none came again after its acknowledgement was
//! answered.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::harness::session_path;
use common::process::{Process, free_port};
use common::sidecar::socket_channel;
use common::{NAMESPACE, gateway, session_grant};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wopr_operator::api::{AccessPattern, Capability, ForwardRule, TrustLevel};
use wopr_operator::proto::v1alpha1::inbox_client::InboxClient;
use wopr_operator::proto::v1alpha1::tools_client::ToolsClient;
use wopr_operator::proto::v1alpha1::{AcknowledgeRequest, CallToolRequest, MessagesRequest};
use wopr_operator::store::Store;

/// How long the sender sends.
const LOAD: Duration = Duration::from_secs(12);
/// How long the recipient may take to catch up once the sender stops.
const SETTLE: Duration = Duration::from_secs(60);

/// Alice's agent: sends numbered messages to bob until `stop`; returns the
/// ids of those it was answered for.
async fn sender(socket: PathBuf, stop: CancellationToken) -> Vec<String> {
    let mut tools = ToolsClient::new(socket_channel(socket));
    let mut sent = Vec::new();
    let mut n = 0;
    while !stop.is_cancelled() {
        let call = CallToolRequest {
            name: "sessions_send".into(),
            arguments_json: json!({"target": "bob", "message": {"n": n}}).to_string(),
        };
        match tools.call_tool(call).await {
            Ok(answer) => {
                let answer: Value = serde_json::from_str(&answer.into_inner().result_json).unwrap();
                sent.push(answer["messageId"].as_str().unwrap().to_owned());
                n += 1;
            }
            // The control plane or a sidecar is away: as an agent would,
            // try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    sent
}

/// What bob's agent saw.
#[derive(Default)]
struct Received {
    /// Every delivery, in order, duplicates included.
    deliveries: Vec<String>,
    /// Ids whose acknowledgement was answered.
    acknowledged: HashSet<String>,
    /// Deliveries of a message after its acknowledgement was answered.
    after_ack: Vec<String>,
}

/// Bob's agent: reads its inbox stream and acknowledges each message
/// (until the acknowledgement is answered), reconnecting whenever its
/// sidecar goes away, until `stop`.
async fn recipient(socket: PathBuf, received: Arc<Mutex<Received>>, stop: CancellationToken) {
    let channel = socket_channel(socket);
    let mut inbox = InboxClient::new(channel);
    while !stop.is_cancelled() {
        let mut stream = match inbox.messages(MessagesRequest {}).await {
            Ok(stream) => stream.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                () = stop.cancelled() => return,
            };
            let Ok(Some(message)) = next else { break };
            {
                let mut received = received.lock().unwrap();
                if received.acknowledged.contains(&message.id) {
                    received.after_ack.push(message.id.clone());
                }
                received.deliveries.push(message.id.clone());
            }
            // Acknowledge until answered, as an agent must.
            loop {
                let ack = AcknowledgeRequest {
                    ids: vec![message.id.clone()],
                };
                if inbox.acknowledge(ack).await.is_ok() {
                    received
                        .lock()
                        .unwrap()
                        .acknowledged
                        .insert(message.id.clone());
                    break;
                }
                if stop.is_cancelled() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_kills_of_the_controller_and_the_recipients_sidecar() {
    let cluster =
        Cluster::start(&[("alice", TrustLevel::Trusted), ("bob", TrustLevel::Trusted)]).await;
    cluster.api.insert(
        &format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/grants/send"),
        serde_json::to_value(session_grant("send", "alice", &[Capability::CrossInject])).unwrap(),
    );
    let port = free_port();
    let sidecar = |name: &str| cluster.sidecar_with_flags(name, port, "127.0.0.1:0", &[]);
    let mut controller = cluster.controller(port, &[]);
    let alice = sidecar("alice");
    let mut bob = sidecar("bob");
    alice.logged("sidecar serving", "mcp").await;
    bob.logged("sidecar serving", "mcp").await;

    let socket = |name: &str| cluster.dir.path().join(format!("{name}-a2a.sock"));
    let stop_sending = CancellationToken::new();
    let stop_reading = CancellationToken::new();
    let received = Arc::new(Mutex::new(Received::default()));
    let sending = tokio::spawn(sender(socket("alice"), stop_sending.clone()));
    let reading = tokio::spawn(recipient(
        socket("bob"),
        received.clone(),
        stop_reading.clone(),
    ));

    // Kills at 2, 4.5, 7 and 9.5 s: controller, bob, controller, bob.
    let started = Instant::now();
    for (n, at) in [2.0, 4.5, 7.0, 9.5].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs_f64(at).saturating_sub(started.elapsed())).await;
        let victim: &mut Process = if n % 2 == 0 {
            &mut controller
        } else {
            &mut bob
        };
        victim.signal(libc::SIGKILL);
        victim
            .exited_within(Duration::from_secs(5))
            .await
            .expect("killed");
        tokio::time::sleep(Duration::from_millis(300)).await;
        if n % 2 == 0 {
            controller = cluster.controller(port, &[]);
        } else {
            bob = sidecar("bob");
        }
    }
    tokio::time::sleep(LOAD.saturating_sub(started.elapsed())).await;
    stop_sending.cancel();
    let sent = sending.await.unwrap();
    assert!(sent.len() >= 100, "only {} messages were sent", sent.len());

    let deadline = Instant::now() + SETTLE;
    loop {
        let all_acknowledged = {
            let received = received.lock().unwrap();
            sent.iter().all(|id| received.acknowledged.contains(id))
        };
        if all_acknowledged || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_reading.cancel();
    reading.await.unwrap();

    let received = std::mem::take(&mut *received.lock().unwrap());
    let missing: Vec<&String> = sent
        .iter()
        .filter(|id| !received.acknowledged.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} sent messages never reached bob's agent and its acknowledgement: {missing:?}",
        missing.len(),
        sent.len()
    );
    assert!(
        received.after_ack.is_empty(),
        "delivered again after an answered acknowledgement: {:?}",
        received.after_ack
    );
    eprintln!(
        "{} messages sent, {} deliveries to bob's agent",
        sent.len(),
        received.deliveries.len()
    );
    // Nothing waits in the store.
    let store = Store::open(&cluster.store).await.unwrap();
    let pending = store
        .pending_messages(NAMESPACE, "bob", 0, 1000)
        .await
        .unwrap();
    assert!(pending.is_empty(), "{} still pending", pending.len());
}

/// Calls `tool` with `arguments` through the agent socket at `socket`
/// until it is answered (sidecars and the control plane come and go).
async fn call_until_answered(socket: &std::path::Path, tool: &str, arguments: Value) -> Value {
    let mut tools = ToolsClient::new(socket_channel(socket.to_path_buf()));
    let deadline = Instant::now() + SETTLE;
    loop {
        let call = CallToolRequest {
            name: tool.into(),
            arguments_json: arguments.to_string(),
        };
        match tools.call_tool(call).await {
            Ok(answer) => return serde_json::from_str(&answer.into_inner().result_json).unwrap(),
            Err(status) => {
                assert!(
                    Instant::now() < deadline,
                    "{tool} never answered: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits until `check` holds (within [`SETTLE`]).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_approvals_survive_kills_and_each_approved_forward_arrives_once() {
    const FORWARDS: usize = 6;
    let cluster = Cluster::start(&[
        ("alice", TrustLevel::Trusted),
        ("gate", TrustLevel::SemiTrusted),
        ("exec", TrustLevel::Trusted),
    ])
    .await;
    let api = &cluster.api;
    api.insert(
        &format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/grants/send"),
        serde_json::to_value(session_grant("send", "alice", &[Capability::CrossInject])).unwrap(),
    );
    let mut gw = gateway("gw", "gate");
    // exec is trusted: a Gateway below that refuses forwards to it.
    gw.spec.trust_level = TrustLevel::Trusted;
    gw.spec.forward_rules = vec![ForwardRule {
        allow_forward_to: vec!["exec".into()],
        allow_actions: vec!["run".into()],
        require_approval: true,
        rate_limit: None,
    }];
    api.insert(
        &format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/gateways/gw"),
        serde_json::to_value(gw).unwrap(),
    );
    api.modify(&session_path("exec"), |exec| {
        exec["spec"]["access"] = json!([AccessPattern::Session("gate".into())]);
    });
    let port = free_port();
    let sidecar = |name: &str| cluster.sidecar_with_flags(name, port, "127.0.0.1:0", &[]);
    let mut controller = cluster.controller(port, &[]);
    let (alice, gate) = (sidecar("alice"), sidecar("gate"));
    let mut exec = sidecar("exec");
    for process in [&alice, &gate, &exec] {
        process.logged("sidecar serving", "mcp").await;
    }
    let socket = |name: &str| cluster.dir.path().join(format!("{name}-a2a.sock"));

    // Alice asks; the gateway's agent forwards each request to exec.
    for n in 0..FORWARDS {
        let message = json!({"target": "gate", "message": {"run": n}});
        call_until_answered(&socket("alice"), "sessions_send", message).await;
    }
    let deadline = Instant::now() + SETTLE;
    let messages = loop {
        let read = call_until_answered(&socket("gate"), "inbox_read", json!({"limit": 100})).await;
        let messages = read["messages"].as_array().unwrap().clone();
        if messages.len() == FORWARDS || Instant::now() > deadline {
            break messages;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(messages.len(), FORWARDS);
    let mut requests = Vec::new();
    for message in &messages {
        let forward = json!({"messageId": message["id"], "target": "exec", "action": "run",
                             "payload": message["payload"]});
        let forwarded = call_until_answered(&socket("gate"), "gateway_forward", forward).await;
        assert_eq!(forwarded["state"], "awaiting_approval", "{forwarded}");
        requests.push(forwarded["requestId"].as_str().unwrap().to_owned());
    }
    let approval =
        |id: &str| format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/approvalrequests/{id}");
    let state = |id: &str| {
        api.get(&approval(id))
            .and_then(|r| r["status"]["state"].as_str().map(str::to_owned))
    };
    eventually("every request shown Pending", || {
        requests
            .iter()
            .all(|id| state(id).as_deref() == Some("Pending"))
    })
    .await;

    // Exec's agent reads and acknowledges what arrives, across restarts.
    let stop_reading = CancellationToken::new();
    let received = Arc::new(Mutex::new(Received::default()));
    let reading = tokio::spawn(recipient(
        socket("exec"),
        received.clone(),
        stop_reading.clone(),
    ));

    // Kill the controller and exec's sidecar while approvals wait; a
    // person approves all but one meanwhile and denies that one.
    for victim in [&mut controller, &mut exec] {
        victim.signal(libc::SIGKILL);
        victim
            .exited_within(Duration::from_secs(5))
            .await
            .expect("killed");
    }
    for (n, id) in requests.iter().enumerate() {
        let state = if n == 0 { "Denied" } else { "Approved" };
        api.modify(&approval(id), |request| {
            request["status"] = json!({"state": state, "decidedBy": "alice@example.com",
                                       "decisionReason": "reviewed"});
        });
    }
    controller = cluster.controller(port, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Killed again mid-delivery, and restarted.
    controller.signal(libc::SIGKILL);
    controller
        .exited_within(Duration::from_secs(5))
        .await
        .expect("killed");
    controller = cluster.controller(port, &[]);
    exec = sidecar("exec");
    exec.logged("sidecar serving", "mcp").await;

    eventually("every approved request Completed", || {
        requests[1..]
            .iter()
            .all(|id| state(id).as_deref() == Some("Completed"))
    })
    .await;
    let approved: Vec<String> = requests[1..]
        .iter()
        .map(|id| id.to_ascii_uppercase())
        .collect();
    eventually(
        "every approved forward acknowledged by exec's agent",
        || {
            let received = received.lock().unwrap();
            approved.iter().all(|id| received.acknowledged.contains(id))
        },
    )
    .await;
    stop_reading.cancel();
    reading.await.unwrap();
    let received = std::mem::take(&mut *received.lock().unwrap());
    assert!(
        received.after_ack.is_empty(),
        "delivered again: {:?}",
        received.after_ack
    );
    let denied = requests[0].to_ascii_uppercase();
    assert!(
        !received.deliveries.contains(&denied),
        "the denied forward was delivered"
    );
    assert_eq!(state(&requests[0]).as_deref(), Some("Denied"));
    // The gateway was told of the denial, once.
    let store = Store::open(&cluster.store).await.unwrap();
    let told: Vec<_> = store
        .pending_messages(NAMESPACE, "gate", 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|queued| queued.message.request_id.as_deref() == Some(requests[0].as_str()))
        .collect();
    assert_eq!(told.len(), 1, "one denial notice");
    drop((alice, gate, exec, controller));
}
