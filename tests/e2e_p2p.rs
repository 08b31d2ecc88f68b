//! End to end against a real cluster (`KUBECONFIG`): a WOPR peer in a real
//! pod reaches a gateway session through the peer ingress's Service and
//! gets the gateway's answer, and cannot reach a session that serves no
//! Gateway.
//!
//! The controller runs in-process on this machine with the peer ingress on
//! (`--p2p-listen`), serving the operator's own CA's certificate, which
//! names the ingress's Service. In the test's own namespace, the Service
//! `wopr-operator-p2p` (the chart's name and port) leads to this machine
//! through an EndpointSlice, as the chart's leads to the controller's
//! pods. The peer is Node.js signing as WOPR does (tests/peers/
//! wopr_peer.mjs), trusting the bundle the operator publishes
//! (`wopr-ca-bundle`). It has no Grant: the namespace's SecurityPolicy
//! accepts discovered peers (`p2p.autoAccept`) at untrusted, so it reaches
//! the reference gateway (examples/) and not research-agent. The test plays
//! both sessions' sidecars (their projected tokens, the control plane's
//! Broker): the gateway forwards the peer's question, research-agent
//! answers, the gateway responds, and the answer reaches the peer.
//!
//! The pod must reach this machine: set `WOPR_E2E_CONTROL_PLANE=IP:PORT`
//! to an IP address of it the cluster's pods can reach (the controller
//! listens on `0.0.0.0:PORT`, the peer ingress on `0.0.0.0:PORT+2`), and
//! optionally `WOPR_E2E_NODE_IMAGE` (default `docker.io/library/node:20-alpine`).
//!
//! Run: `WOPR_E2E_CONTROL_PLANE=192.168.1.10:9443 KUBECONFIG=~/.kube/config cargo test --test e2e_p2p -- --ignored --nocapture`

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::e2e::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client};
use serde_json::{Value, json};
use wopr_operator::api::WoprObject;
use wopr_operator::operator::args::{ControllerArgs, TlsArgs};
use wopr_operator::p2p::IngressKey;
use wopr_operator::policy::tools::arguments::{ForwardMessage, RequestAnswer};
use wopr_operator::sidecar::broker::BrokerLink;
use wopr_operator::sidecar::client::WatchTarget;
use wopr_operator::sidecar::inbox::{Inbox, follow_forever};
use wopr_operator::sidecar::tools::Messenger;
use wopr_operator::tls::client::{Bundle, ClientTls};

const GATEWAY: &str = "p2p-gateway";
const RESEARCH: &str = "research-agent";
/// The chart's name and port for the peer ingress's Service.
const SERVICE: &str = "wopr-operator-p2p";
const SERVICE_PORT: i32 = 8444;
const CA_SECRET: &str = "wopr-operator-ca";
const PEER: &str = "e2e-peer";
/// How long the pod may take to be scheduled, pull its image and post.
const POD_TIMEOUT: Duration = Duration::from_secs(180);

/// The reference gateway and research-agent Sessions and the Gateway, as
/// examples/ ship them.
fn reference_objects() -> Vec<WoprObject> {
    common::reference_objects()
        .into_iter()
        .filter(|object| match object {
            WoprObject::Session(session) => {
                [GATEWAY, RESEARCH].contains(&session.metadata.name.as_deref().unwrap())
            }
            WoprObject::Gateway(_) => true,
            _ => false,
        })
        .collect()
}

async fn apply_reference(client: &Client, namespace: &str) {
    for object in reference_objects() {
        match object {
            WoprObject::Session(session) => apply(client, namespace, &*session).await,
            WoprObject::Gateway(gateway) => apply(client, namespace, &gateway).await,
            other => unreachable!("{other:?}"),
        }
    }
    let policy = common::peers::auto_accepting_policy(namespace);
    apply(client, namespace, &policy).await;
}

/// The peer ingress's Service, leading to `ip:port` (this machine).
async fn apply_ingress_service(client: &Client, namespace: &str, ip: &str, port: u16) {
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE},
        "spec": {"ports": [{"name": "p2p", "port": SERVICE_PORT, "protocol": "TCP"}]},
    }))
    .unwrap();
    apply(client, namespace, &service).await;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{SERVICE}-host"),
                     "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "p2p", "port": port, "protocol": "TCP"}],
    }))
    .unwrap();
    apply(client, namespace, &slice).await;
}

/// The peer's pod: two posts through the Service, one to the gateway, one
/// to research-agent, each signed when it is sent; the answers in its log,
/// one JSON line each.
fn peer_pod() -> Pod {
    let image = std::env::var("WOPR_E2E_NODE_IMAGE")
        .unwrap_or_else(|_| "docker.io/library/node:20-alpine".into());
    let script = "node /peer/wopr_peer.mjs post < /peer/gateway.json; \
                  node /peer/wopr_peer.mjs post < /peer/research.json";
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": PEER},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "peer", "image": image,
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "peer", "mountPath": "/peer"},
                                 {"name": "ca", "mountPath": "/ca"}],
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "peer", "configMap": {"name": PEER}},
                        {"name": "ca", "configMap": {"name": "wopr-ca-bundle"}}],
        },
    }))
    .unwrap()
}

/// The peer's script and its two inputs.
fn peer_config(namespace: &str, key: &IngressKey) -> ConfigMap {
    let private_key = base64::engine::general_purpose::STANDARD.encode(key.to_pkcs8_der());
    let input = |session: &str| {
        json!({
            "privateKey": private_key,
            "type": "inject",
            "fields": {"session": format!("{namespace}/{session}"),
                       "payload": "which editions exist?"},
            "url": format!("https://{SERVICE}.{namespace}.svc:{SERVICE_PORT}/v1alpha1/messages"),
            "caFile": "/ca/ca.crt",
        })
        .to_string()
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": PEER},
        "data": {
            "wopr_peer.mjs": include_str!("peers/wopr_peer.mjs"),
            "gateway.json": input(GATEWAY),
            "research.json": input(RESEARCH),
        },
    }))
    .unwrap()
}

/// The broker link of `session`'s sidecar: its projected token, the
/// operator's CA bundle.
async fn sidecar_of(
    client: &Client,
    namespace: &str,
    session: &str,
    (control_plane, dir): (&str, &Path),
) -> WatchTarget {
    let account = format!("wopr-{session}");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    eventually(&format!("service account {account}"), || async {
        accounts.get_opt(&account).await.unwrap()
    })
    .await;
    let token_path = dir.join(format!("{session}.token"));
    std::fs::write(&token_path, token_of(client, namespace, &account).await).unwrap();
    WatchTarget {
        address: control_plane.into(),
        tls: ClientTls::Verify {
            bundle: Bundle::File(dir.join("ca.crt")),
            server_name: None,
        },
        namespace: namespace.into(),
        session: session.into(),
        token_path,
    }
}

/// Plays the gateway and research-agent for the first message of the
/// gateway's inbox, as their agents would through their sidecars; returns
/// the message's id.
async fn play_gateway(gateway: WatchTarget, research: WatchTarget) -> String {
    let inbox = Arc::new(Inbox::default());
    let following = tokio::spawn(follow_forever(gateway.clone(), inbox.clone()));
    let deadline = tokio::time::Instant::now() + POD_TIMEOUT;
    let message = loop {
        if let Some((_, message)) = inbox.after(0, 1).into_iter().next() {
            break message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message reached the gateway's inbox"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    following.abort();
    assert_eq!(message.source.source_type, "p2p", "{message:?}");
    let gateway = BrokerLink::new(gateway);
    let research = BrokerLink::new(research);
    let forwarded = gateway
        .forward(ForwardMessage {
            message_id: message.id.clone(),
            target: RESEARCH.into(),
            action: "query".into(),
            payload: json!({"question": message.payload}),
        })
        .await
        .expect("the gateway forwards the peer's question");
    let request_id = forwarded["requestId"].as_str().unwrap().to_owned();
    research
        .reply(RequestAnswer {
            request_id: request_id.clone(),
            result: json!({"summary": "editions"}),
        })
        .await
        .expect("research-agent answers");
    gateway
        .respond(RequestAnswer {
            request_id,
            result: json!({"summary": "editions", "asked": message.payload}),
        })
        .await
        .expect("the gateway responds to the peer");
    gateway.ack(std::slice::from_ref(&message.id)).await.ok();
    message.id
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG and WOPR_E2E_CONTROL_PLANE"]
async fn a_peer_reaches_a_gateway_through_the_ingress_service_and_no_other_session() {
    let (control_plane, port) = pod_reachable_control_plane();
    let port: u16 = port.parse().expect("WOPR_E2E_CONTROL_PLANE's port");
    let ip = control_plane.rsplit_once(':').unwrap().0.to_owned();
    with_namespace(|client, namespace| async move {
        let controller = Controller::start(ControllerArgs {
            control_plane_address: control_plane.clone(),
            operator_namespace: namespace.clone(),
            p2p_listen: Some(format!("0.0.0.0:{}", port + 2).parse().unwrap()),
            p2p_answer_wait_seconds: 60,
            tls: TlsArgs {
                tls_ca_secret: CA_SECRET.into(),
                tls_service_name: "wopr-operator".into(),
                ..TlsArgs::default()
            },
            ..controller_args(&namespace, &format!("0.0.0.0:{port}"))
        });
        apply_reference(&client, &namespace).await;
        apply_ingress_service(&client, &namespace, &ip, port + 2).await;

        // The operator's CA, as published where the Sessions are.
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let bundle = eventually("the wopr-ca-bundle ConfigMap", || async {
            config_maps.get_opt("wopr-ca-bundle").await.unwrap()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &bundle.data.unwrap()["ca.crt"]).unwrap();
        let sidecars = (control_plane.as_str(), dir.path());
        let gateway = sidecar_of(&client, &namespace, GATEWAY, sidecars).await;
        let research = sidecar_of(&client, &namespace, RESEARCH, sidecars).await;

        let key = IngressKey::generate();
        apply(&client, &namespace, &peer_config(&namespace, &key)).await;
        let playing = tokio::spawn(play_gateway(gateway, research));
        apply(&client, &namespace, &peer_pod()).await;
        let message_id = playing.await.expect("the gateway's play");

        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let logs = logs_until(
            &pods,
            (PEER, "peer"),
            POD_TIMEOUT,
            "the peer's two answers",
            |logs| logs.lines().filter(|l| l.starts_with('{')).count() >= 2,
        )
        .await;
        println!("{logs}");
        let answers: Vec<Value> = logs
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let answered = &answers[0];
        assert_eq!(answered["status"], 200, "{answered}");
        assert_eq!(answered["body"]["state"], "answered", "{answered}");
        assert_eq!(answered["body"]["messageId"], message_id);
        let result = &answered["body"]["answers"][0]["result"];
        assert_eq!(result["summary"], "editions", "{answered}");
        assert_eq!(result["asked"], "which editions exist?", "{answered}");

        let refused = &answers[1];
        assert_eq!(refused["status"], 403, "{refused}");
        assert_eq!(refused["body"]["error"], "forbidden", "{refused}");
        let reason = refused["body"]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("reaches gateway sessions only"),
            "{refused}"
        );
        controller.stop().await;
    })
    .await;
}

/// What the peer's pod reads is what an offline test posts (tests/peers.rs
/// `a_discovered_peer_reaches_gateways_only`): a stamped inject of the
/// namespace's session, to the Service's name, trusting the mounted bundle.
#[test]
fn the_peers_inputs_name_the_service_and_a_key_node_reads() {
    let key = IngressKey::generate();
    let config = peer_config("team-a", &key);
    let data = config.data.unwrap();
    let input: Value = serde_json::from_str(&data["gateway.json"]).unwrap();
    assert_eq!(
        input["url"],
        "https://wopr-operator-p2p.team-a.svc:8444/v1alpha1/messages"
    );
    assert_eq!(input["fields"]["session"], "team-a/p2p-gateway");
    assert_eq!(input["caFile"], "/ca/ca.crt");
    let der = base64::engine::general_purpose::STANDARD
        .decode(input["privateKey"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        IngressKey::from_pkcs8_der(&der).unwrap().public_key(),
        key.public_key()
    );
    let research: Value = serde_json::from_str(&data["research.json"]).unwrap();
    assert_eq!(research["fields"]["session"], "team-a/research-agent");
    // The pod's mounts hold what the inputs name.
    let pod = peer_pod();
    let container = &pod.spec.unwrap().containers[0];
    let mounts: Vec<PathBuf> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|mount| PathBuf::from(&mount.mount_path))
        .collect();
    assert!(mounts.contains(&PathBuf::from("/ca")));
    assert!(mounts.contains(&PathBuf::from("/peer")));
    assert_eq!(reference_objects().len(), 3);
}
