//! Attacks on the controller process (which serves the control plane):
//! what a sidecar's token lets its holder ship must not grow the
//! controller. Issue 31, item 2: 10,000 denials of distinct, long,
//! made-up tool names grew it from 58 MB to 190 MB in 7 s (the denial
//! aggregation was keyed by the name), and an OOM-killed controller makes
//! every sidecar in the cluster fail closed. Item 6: a sniffed sidecar
//! token let its holder report the sandbox isolated.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::NAMESPACE;
use common::cluster::{Cluster, control_plane_port};
use common::harness::pod_path;
use common::sidecar::{as_sidecar, ingest_message, ship};
use http::Uri;
use hyper_util::rt::TokioIo;
use k8s_openapi::jiff::Timestamp;
use tokio::net::TcpSocket;
use tonic::transport::Channel;
use tower::service_fn;
use wopr_operator::api::{Enforcement, SourceRef, TrustLevel};
use wopr_operator::audit::{AuditEvent, EventType};
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1::audit_client::AuditClient;
use wopr_operator::proto::v1alpha1::policy_client::PolicyClient;
use wopr_operator::proto::v1alpha1::{IsolationCheck, IsolationReport};
use wopr_operator::tls::client::endpoint;

const SESSION: &str = "flood";
/// Each made-up name: long, but its event stays under the 16 KiB limit.
const NAME_BYTES: usize = 12_000;
/// Events per Ingest message: 200 × 12 KB stays under gRPC's 4 MiB.
const PER_MESSAGE: usize = 200;

/// A denied call of a tool nobody declared, named `name`.
fn denied_call(name: String) -> String {
    let source = SourceRef {
        source_type: "session".into(),
        identity: SESSION.into(),
        trust_level: TrustLevel::Untrusted,
    };
    let mut event = AuditEvent::new(
        Timestamp::now(),
        EventType::ToolCall,
        NAMESPACE,
        SESSION,
        source,
        Outcome::Denied,
        Enforcement::Enforce,
        "no capability provides this tool".into(),
    );
    event.tool = Some(name);
    serde_json::to_string(&event).unwrap()
}

/// Ships `count` denials of distinct made-up tools, numbered from `first`,
/// as the session's sidecar does; returns how many the control plane stored.
async fn flood(client: &mut AuditClient<Channel>, first: usize, count: usize) -> u32 {
    let events: Vec<String> = (first..first + count)
        .map(|n| denied_call(format!("{n:08}{}", "x".repeat(NAME_BYTES))))
        .collect();
    let mut stored = 0;
    for chunk in events.chunks(PER_MESSAGE * 5) {
        let messages = chunk
            .chunks(PER_MESSAGE)
            .map(|events| ingest_message(SESSION, events.to_vec()))
            .collect();
        let (new, _) = ship(client, SESSION, messages)
            .await
            .expect("the batch is stored");
        stored += new;
    }
    stored
}

#[tokio::test]
async fn a_flood_of_made_up_tool_names_keeps_the_controllers_memory_flat() {
    let cluster = Cluster::start(&[(SESSION, TrustLevel::Untrusted)]).await;
    let controller = cluster.controller(0, &["--leader-election=false"]);
    let port = control_plane_port(&controller).await;
    let mut client = AuditClient::new(common::tls::channel(format!("127.0.0.1:{port}")).await);
    // Warm up: the store's pool, tonic's buffers, the first Events.
    assert_eq!(flood(&mut client, 0, 2_000).await, 2_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = controller.resident_bytes();

    // Every denial is stored all the same: the trail has them.
    assert_eq!(flood(&mut client, 2_000, 20_000).await, 20_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = controller.resident_bytes();

    eprintln!(
        "controller resident memory: {} MB before the flood, {} MB after",
        before / (1024 * 1024),
        after / (1024 * 1024)
    );
    // Keyed by name, 20,000 names of 12 KB are 240 MB of keys alone.
    let grown = after.saturating_sub(before);
    assert!(
        grown < 48 * 1024 * 1024,
        "the controller grew from {} MB to {} MB while 20,000 made-up tools were denied",
        before / (1024 * 1024),
        after / (1024 * 1024)
    );
}

/// A Policy client whose connections come from `source` (another address
/// on loopback stands for another pod).
async fn policy_client_from(source: &str, port: u16) -> PolicyClient<Channel> {
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    let channel = endpoint(&format!("127.0.0.1:{port}"), &common::tls::client_tls())
        .unwrap()
        .connect_with_connector(service_fn(move |uri: Uri| async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind(source)?;
            let port = uri.port_u16().unwrap_or(80);
            let stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }))
        .await
        .unwrap();
    PolicyClient::new(channel)
}

/// The NetworkIsolated condition of `session`'s pod, as (status, reason).
fn network_isolated(cluster: &Cluster, session: &str) -> Option<(String, String)> {
    let pod = cluster.api.get(&pod_path(session))?;
    let condition = pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "wopr.dev/NetworkIsolated")?
        .clone();
    Some((
        condition["status"].as_str()?.to_owned(),
        condition["reason"].as_str()?.to_owned(),
    ))
}

#[tokio::test]
async fn a_stolen_sidecar_token_cannot_report_the_sandbox_isolated() {
    let cluster = Cluster::start(&[("guarded", TrustLevel::Untrusted)]).await;
    let controller = cluster.controller(0, &["--leader-election=false"]);
    let port = control_plane_port(&controller).await;
    cluster.pod_started_at("guarded", "127.0.0.1").await;
    let report = || {
        as_sidecar(
            "guarded",
            IsolationReport {
                namespace: NAMESPACE.into(),
                session: "guarded".into(),
                checks: vec![IsolationCheck {
                    r#type: "NetworkIsolated".into(),
                    status: "True".into(),
                    reason: "Blocked".into(),
                    message: "blocked: apiserver".into(),
                }],
            },
        )
    };

    // A token of the session's account not bound to its pod (`kubectl
    // create token wopr-guarded`, by whoever may) is refused outright.
    let account = format!("system:serviceaccount:{NAMESPACE}:wopr-guarded");
    cluster.api.review_tokens(HashMap::from([
        (
            "token-guarded".to_owned(),
            (account.clone(), Some("wopr-guarded".to_owned())),
        ),
        ("token-unbound".to_owned(), (account, None)),
    ]));
    let mut unbound = policy_client_from("127.0.0.1", port).await;
    let mut request = report();
    request
        .metadata_mut()
        .insert("authorization", "Bearer token-unbound".parse().unwrap());
    let refused = unbound.report_isolation(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(network_isolated(&cluster, "guarded"), None);

    // The token's thief, in another pod (at another address).
    let mut thief = policy_client_from("127.0.0.2", port).await;
    thief.report_isolation(report()).await.unwrap();
    assert_eq!(
        network_isolated(&cluster, "guarded"),
        Some(("Unknown".into(), "UnverifiedReporter".into())),
        "a claim from outside the pod proves nothing"
    );

    // The sidecar, from the pod's own address.
    let mut sidecar = policy_client_from("127.0.0.1", port).await;
    sidecar.report_isolation(report()).await.unwrap();
    assert_eq!(
        network_isolated(&cluster, "guarded"),
        Some(("True".into(), "Blocked".into()))
    );
}
