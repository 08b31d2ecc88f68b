//! The peer ingress through its real HTTPS and gRPC front, beside a real
//! control plane (tests/common/sidecar's), with peers whose signing code
//! nobody here wrote: a Node.js peer signing with Node's built-in crypto
//! exactly as WOPR's P2P plugin does, and a Python peer with the
//! `cryptography` package (tests/peers/). Each injects into a gateway
//! session and gets the gateway's answer; every way a message can be
//! wrong is refused with a precise error; an expired Grant confers
//! nothing; an invite is claimed once; keys rotate with grace; a person
//! can accept a stranger.

mod common;

use std::time::Duration;

use common::NAMESPACE;
use common::peers::{TestIngress, TestPeer, script};
use common::sidecar::{ControlPlane, as_sidecar};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tonic::transport::Channel;
use wopr_operator::api::{Grant, GrantSubject, TrustLevel};
use wopr_operator::controlplane::peers::{RefusalKind, Refused};
use wopr_operator::proto::v1alpha1::broker_client::BrokerClient;
use wopr_operator::proto::v1alpha1::{ForwardRequest, ReplyRequest, RespondRequest};

const GATEWAY: &str = "p2p-gateway";
const RESEARCH: &str = "research-agent";

/// The reference sessions and Gateway (examples/), with a Grant for each
/// of `peers` (untrusted, scoped to the gateway session).
async fn reference(peers: &[&str]) -> (ControlPlane, BrokerClient<Channel>) {
    let mut control_plane =
        ControlPlane::start(&[GATEWAY, RESEARCH, "code-executor", "api-handler"]).await;
    control_plane.put_reference(|_| {});
    for (index, key) in peers.iter().enumerate() {
        control_plane.put_grant(scoped(&format!("peer-{index}"), key, &[GATEWAY]));
    }
    let client = BrokerClient::new(control_plane.channel().await);
    (control_plane, client)
}

/// An untrusted Grant for the peer `key`, for `sessions`.
fn scoped(name: &str, key: &str, sessions: &[&str]) -> Grant {
    let mut grant = common::peer_grant(name, key, TrustLevel::Untrusted);
    grant.spec.sessions = sessions.iter().map(|s| (*s).to_owned()).collect();
    grant
}

/// Plays the gateway and the research agent for the next message in the
/// gateway's inbox: forwards it as a query, answers it, responds with
/// `{"summary": ...}` naming what the peer sent.
async fn play_gateway(control_plane: &ControlPlane, mut client: BrokerClient<Channel>) -> String {
    let message = loop {
        let pending = control_plane
            .store
            .pending_messages(NAMESPACE, GATEWAY, 0, 10)
            .await
            .unwrap();
        if let Some(queued) = pending.into_iter().next() {
            break queued.message;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let forward = ForwardRequest {
        namespace: NAMESPACE.into(),
        session: GATEWAY.into(),
        message_id: message.id.clone(),
        target: RESEARCH.into(),
        action: "query".into(),
        payload_json: json!({"question": message.payload}).to_string(),
    };
    let forwarded = client
        .forward(as_sidecar(GATEWAY, forward))
        .await
        .unwrap()
        .into_inner();
    let reply = ReplyRequest {
        namespace: NAMESPACE.into(),
        session: RESEARCH.into(),
        request_id: forwarded.request_id.clone(),
        result_json: json!({"summary": "editions"}).to_string(),
    };
    client.reply(as_sidecar(RESEARCH, reply)).await.unwrap();
    let respond = RespondRequest {
        namespace: NAMESPACE.into(),
        session: GATEWAY.into(),
        request_id: forwarded.request_id.clone(),
        result_json: json!({"summary": "editions", "asked": message.payload}).to_string(),
    };
    client.respond(as_sidecar(GATEWAY, respond)).await.unwrap();
    // The gateway's own inbox: take the message off it.
    control_plane
        .store
        .ack_messages(
            NAMESPACE,
            GATEWAY,
            std::slice::from_ref(&message.id),
            Timestamp::now(),
        )
        .await
        .ok();
    message.id
}

#[tokio::test]
async fn node_and_python_peers_inject_into_a_gateway_and_get_its_answer() {
    for language in ["node", "python"] {
        let keys = script(language, "keygen", json!({})).await;
        let public_key = keys["publicKey"].as_str().unwrap().to_owned();
        let (control_plane, client) = reference(&[&public_key]).await;
        let ingress = TestIngress::start(&control_plane, Duration::from_secs(10)).await;
        let message = json!({
            "v": 2,
            "type": "inject",
            "from": public_key,
            "ts": Timestamp::now().as_millisecond(),
            "nonce": format!("{:032x}", rand_u128()),
            "session": format!("{NAMESPACE}/{GATEWAY}"),
            "payload": format!("which editions exist? ({language}, ünïcode)"),
        });
        let post = script(
            language,
            "post",
            json!({
                "privateKey": keys["privateKey"],
                "message": message,
                "url": ingress.messages_url(),
                "caFile": common::tls::pki().ca_file,
            }),
        );
        let (answer, message_id) = tokio::join!(post, play_gateway(&control_plane, client));
        assert_eq!(answer["status"], 200, "{language}: {answer}");
        let body = &answer["body"];
        assert_eq!(body["state"], "answered", "{language}: {body}");
        assert_eq!(body["messageId"], message_id);
        let result = &body["answers"][0]["result"];
        assert_eq!(result["summary"], "editions");
        assert_eq!(
            result["asked"],
            format!("which editions exist? ({language}, ünïcode)")
        );
        // Audited in the gateway's trail, naming the peer by its short id.
        let events = common::store::all_events(&control_plane.store).await;
        let delivered = events
            .iter()
            .find(|event| event.action.as_deref() == Some("p2p_inject"))
            .expect("the delivery is audited");
        assert_eq!(delivered.session, GATEWAY);
        assert_eq!(delivered.source.source_type, "p2p");
        let short = wopr_operator::p2p::key::short_id(&public_key);
        assert!(delivered.reason.contains(&short), "{}", delivered.reason);
    }
}

fn rand_u128() -> u128 {
    ulid::Ulid::new().0
}

/// The refusal of `raw`, which must be refused.
async fn refused(ingress: &TestIngress, raw: &[u8]) -> Refused {
    ingress.ingress.receive(raw).await.expect_err("refused")
}

#[tokio::test]
async fn every_wrong_message_is_refused_precisely() {
    let peer = TestPeer::new();
    let (control_plane, _client) = reference(&[&peer.public_key()]).await;
    let ingress = TestIngress::start(&control_plane, Duration::ZERO).await;

    // A good one first: accepted (no answer yet: 202).
    let good = peer.inject(NAMESPACE, GATEWAY, json!("hello"));
    let reply = ingress.ingress.receive(&good).await.unwrap();
    assert_eq!(reply.status, 202, "{}", reply.body);

    // Replayed: the same bytes again.
    let again = refused(&ingress, &good).await;
    assert_eq!(again.kind, RefusalKind::Unauthenticated);
    assert!(again.reason.contains("seen before"), "{}", again.reason);

    // Tampered payload: the signature no longer covers the bytes.
    let tampered = String::from_utf8(peer.inject(NAMESPACE, GATEWAY, json!("hello")))
        .unwrap()
        .replace("hello", "hellp");
    let refusal = refused(&ingress, tampered.as_bytes()).await;
    assert_eq!(
        refusal.kind,
        RefusalKind::Unauthenticated,
        "{}",
        refusal.reason
    );

    // Re-ordered but equivalent: not the bytes that were signed.
    let signed: Value =
        serde_json::from_slice(&peer.inject(NAMESPACE, GATEWAY, json!("x"))).unwrap();
    let reordered = serde_json::to_vec(&signed).unwrap(); // serde_json sorts the keys
    let refusal = refused(&ingress, &reordered).await;
    assert_eq!(
        refusal.kind,
        RefusalKind::Unauthenticated,
        "{}",
        refusal.reason
    );

    // Signed by another key than `from`.
    let other = TestPeer::new();
    let text = String::from_utf8(peer.inject(NAMESPACE, GATEWAY, json!("x"))).unwrap();
    let unsigned = &text[..text.rfind(",\"sig\"").unwrap()];
    let forged = other.key.sign_json(&format!("{unsigned}}}"));
    let refusal = refused(&ingress, forged.as_bytes()).await;
    assert_eq!(
        refusal.kind,
        RefusalKind::Unauthenticated,
        "{}",
        refusal.reason
    );

    // A ts outside the window, either way.
    for off in [-6 * 60_000, 6 * 60_000] {
        let stale = peer.sign_at(
            "inject",
            &[
                ("session", json!(format!("{NAMESPACE}/{GATEWAY}"))),
                ("payload", json!("x")),
            ],
            Timestamp::now().as_millisecond() + off,
            "0123456789abcdef0123456789abcdef",
        );
        let refusal = refused(&ingress, &stale).await;
        assert_eq!(
            refusal.kind,
            RefusalKind::Unauthenticated,
            "{}",
            refusal.reason
        );
    }

    // Not JSON, not an object, over the size limit: not held against anyone.
    for (raw, kind) in [
        (b"not json".to_vec(), RefusalKind::Malformed),
        (b"[1,2]".to_vec(), RefusalKind::Malformed),
        (
            vec![b' '; wopr_operator::p2p::MAX_MESSAGE_BYTES + 1],
            RefusalKind::TooLarge,
        ),
    ] {
        assert_eq!(refused(&ingress, &raw).await.kind, kind);
    }

    // Signed and fresh, but invalid: an unknown type, a session not namespace/name.
    let unknown = peer.sign("dance", &[]);
    assert_eq!(refused(&ingress, &unknown).await.kind, RefusalKind::Invalid);
    let unqualified = peer.sign(
        "inject",
        &[("session", json!(GATEWAY)), ("payload", json!("x"))],
    );
    assert_eq!(
        refused(&ingress, &unqualified).await.kind,
        RefusalKind::Invalid
    );

    // An ungranted peer reaches nothing (autoAccept is off: a person is asked).
    let stranger = TestPeer::new();
    let refusal = refused(&ingress, &stranger.inject(NAMESPACE, GATEWAY, json!("hi"))).await;
    assert_eq!(refusal.kind, RefusalKind::Forbidden, "{}", refusal.reason);
    assert!(refusal.reason.contains("autoAccept"), "{}", refusal.reason);

    // A granted peer reaches only the sessions its Grant scopes.
    let refusal = refused(&ingress, &peer.inject(NAMESPACE, RESEARCH, json!("hi"))).await;
    assert_eq!(refusal.kind, RefusalKind::Forbidden, "{}", refusal.reason);
}

/// A discovered peer (no Grant) accepted by `p2p.autoAccept` at the
/// discovery trust (untrusted): it reaches the gateway session and gets its
/// answer, and no session that serves no Gateway.
#[tokio::test]
async fn a_discovered_peer_reaches_gateways_only() {
    let (mut control_plane, client) = reference(&[]).await;
    control_plane.put_policy(common::peers::auto_accepting_policy(NAMESPACE));
    let ingress = TestIngress::start(&control_plane, Duration::from_secs(10)).await;
    let keys = script("node", "keygen", json!({})).await;
    // As tests/e2e_p2p.rs's pod posts: the message stamped by the peer.
    let post = |session: &str| {
        script(
            "node",
            "post",
            json!({
                "privateKey": keys["privateKey"],
                "type": "inject",
                "fields": {"session": format!("{NAMESPACE}/{session}"), "payload": "which editions exist?"},
                "url": ingress.messages_url(),
                "caFile": common::tls::pki().ca_file,
            }),
        )
    };

    let (answer, message_id) = tokio::join!(post(GATEWAY), play_gateway(&control_plane, client));
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["state"], "answered", "{answer}");
    assert_eq!(answer["body"]["messageId"], message_id);

    let refusal = post(RESEARCH).await;
    assert_eq!(refusal["status"], 403, "{refusal}");
    assert_eq!(refusal["body"]["error"], "forbidden", "{refusal}");
    let reason = refusal["body"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("reaches gateway sessions only"),
        "{refusal}"
    );
}

#[tokio::test]
async fn an_expired_grant_refuses() {
    let peer = TestPeer::new();
    let (mut control_plane, _client) = reference(&[]).await;
    let mut grant = scoped("expired", &peer.public_key(), &[GATEWAY]);
    // Expired by the index's clock (which starts at common::now()).
    grant.spec.expires_at = Some(common::at(-1));
    control_plane.put_grant(grant);
    let ingress = TestIngress::start(&control_plane, Duration::ZERO).await;
    let refusal = refused(&ingress, &peer.inject(NAMESPACE, GATEWAY, json!("hi"))).await;
    assert_eq!(refusal.kind, RefusalKind::Forbidden, "{}", refusal.reason);
}

#[tokio::test]
async fn an_invite_is_claimed_once_and_an_expired_one_never() {
    let peer = TestPeer::new();
    let (control_plane, _client) = reference(&[]).await;
    let ingress = TestIngress::start(&control_plane, Duration::ZERO).await;
    let key = wopr_operator::controlplane::peers::IngressKeys::key(&*ingress.keys, NAMESPACE)
        .await
        .unwrap();
    let session = [format!("{NAMESPACE}/{GATEWAY}")];
    let later = (Timestamp::now() + SignedDuration::from_hours(1)).as_millisecond();
    let token = wopr_operator::p2p::invite::issue(
        &key,
        &peer.key.public_key(),
        &session,
        &["inject".to_owned()],
        later,
        "invite-nonce-one",
    );
    let claim = peer.sign("claim", &[("token", json!(token))]);
    let reply = ingress.ingress.receive(&claim).await.unwrap();
    assert_eq!(
        reply.body["capabilities"],
        json!(["inject", "inject.tools"])
    );
    let grant: Grant = control_plane
        .api
        .get(&format!(
            "/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/grants/{}",
            reply.body["grant"].as_str().unwrap()
        ))
        .map(|object| serde_json::from_value(object).unwrap())
        .expect("the claim made a Grant");
    assert_eq!(grant.spec.subject, GrantSubject::peer(&peer.public_key()));
    assert_eq!(grant.spec.sessions, vec![GATEWAY.to_owned()]);

    // Claimed again (a new message, the same invite): refused.
    let again = peer.sign("claim", &[("token", json!(token))]);
    let refusal = refused(&ingress, &again).await;
    assert_eq!(refusal.kind, RefusalKind::Forbidden);
    assert!(refusal.reason.contains("usable once"), "{}", refusal.reason);

    // Someone else's claim of an invite for this peer: refused.
    let thief = TestPeer::new();
    let stolen = thief.sign("claim", &[("token", json!(token))]);
    assert_eq!(
        refused(&ingress, &stolen).await.kind,
        RefusalKind::Forbidden
    );

    // An expired invite.
    let earlier = (Timestamp::now() - SignedDuration::from_secs(1)).as_millisecond();
    let expired = wopr_operator::p2p::invite::issue(
        &key,
        &peer.key.public_key(),
        &session,
        &["inject".to_owned()],
        earlier,
        "invite-nonce-two",
    );
    let refusal = refused(&ingress, &peer.sign("claim", &[("token", json!(expired))])).await;
    assert_eq!(refusal.kind, RefusalKind::Forbidden);
    assert!(refusal.reason.contains("expired"), "{}", refusal.reason);
}

/// `grant` as the API server holds it, and as the control plane's caches
/// see it (the watch, done by hand).
fn grant_in_both(control_plane: &mut ControlPlane, grant: Grant) {
    let name = grant.metadata.name.clone().unwrap();
    control_plane
        .api
        .insert(&grant_path(&name), serde_json::to_value(&grant).unwrap());
    control_plane.put_grant(grant);
}

fn grant_path(name: &str) -> String {
    format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/grants/{name}")
}

/// The Grant `name` as the API server holds it, seen by the caches too.
fn reread(control_plane: &mut ControlPlane, name: &str) -> Grant {
    let grant: Grant =
        serde_json::from_value(control_plane.api.get(&grant_path(name)).unwrap()).unwrap();
    control_plane.put_grant(grant.clone());
    grant
}

#[tokio::test]
async fn a_rotation_keeps_the_old_key_for_its_grace_and_a_compromise_ends_it_at_once() {
    let (old, new, newest) = (TestPeer::new(), TestPeer::new(), TestPeer::new());
    let (mut control_plane, _client) = reference(&[]).await;
    grant_in_both(
        &mut control_plane,
        scoped("friend", &old.public_key(), &[GATEWAY]),
    );
    let ingress = TestIngress::start(&control_plane, Duration::ZERO).await;

    let reply = ingress
        .ingress
        .receive(&old.rotate_to(&new, "scheduled"))
        .await
        .unwrap();
    assert_eq!(reply.body["grants"], json!([format!("{NAMESPACE}/friend")]));
    let grant = reread(&mut control_plane, "friend");
    assert_eq!(grant.spec.subject, GrantSubject::peer(&new.public_key()));
    let previous = &grant.spec.previous_keys[0];
    assert_eq!(previous.public_key, old.public_key());
    assert_eq!(
        previous.reason,
        Some(wopr_operator::api::RotationReason::Scheduled)
    );
    // Both keys work: the old one for the grace period.
    for peer in [&old, &new] {
        let reply = ingress
            .ingress
            .receive(&peer.inject(NAMESPACE, GATEWAY, json!("hi")))
            .await;
        assert!(reply.is_ok(), "{reply:?}");
    }
    // The old key no longer rotates anything: it names no Grant now.
    let refusal = refused(&ingress, &old.rotate_to(&newest, "scheduled")).await;
    assert_eq!(refusal.kind, RefusalKind::Forbidden, "{}", refusal.reason);

    // A rotation for compromise ends the key it leaves at once.
    ingress
        .ingress
        .receive(&new.rotate_to(&newest, "compromise"))
        .await
        .unwrap();
    reread(&mut control_plane, "friend");
    let refusal = refused(&ingress, &new.inject(NAMESPACE, GATEWAY, json!("hi"))).await;
    assert_eq!(refusal.kind, RefusalKind::Forbidden, "{}", refusal.reason);
    assert!(
        ingress
            .ingress
            .receive(&newest.inject(NAMESPACE, GATEWAY, json!("hi")))
            .await
            .is_ok()
    );
    // Refused at once, though the grace period of the first rotation runs.
    assert!(
        ingress
            .ingress
            .receive(&old.inject(NAMESPACE, GATEWAY, json!("hi")))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_stranger_is_refused_and_a_person_can_accept_it_for_one_session() {
    use common::approvals::{approval_path, decide, reconcile};
    use wopr_operator::api::{ApprovalRequest, ApprovalState, ApprovalType, Capability};
    let stranger = TestPeer::new();
    let (mut control_plane, _client) = reference(&[]).await;
    let ingress = TestIngress::start(&control_plane, Duration::ZERO).await;
    let refusal = refused(
        &ingress,
        &stranger.inject(NAMESPACE, GATEWAY, json!("let me in")),
    )
    .await;
    assert_eq!(refusal.kind, RefusalKind::Forbidden);
    let name = refusal
        .reason
        .split_whitespace()
        .find(|word| word.starts_with("peer-"))
        .expect("the refusal names the request")
        .to_owned();
    let request: ApprovalRequest =
        serde_json::from_value(control_plane.api.get(&approval_path(&name)).unwrap()).unwrap();
    assert_eq!(request.spec.request_type, ApprovalType::Peer);
    assert_eq!(request.spec.target.as_deref(), Some(GATEWAY));
    assert_eq!(request.spec.source.identity, stranger.public_key());
    // Sending again files the same request, not another.
    refused(
        &ingress,
        &stranger.inject(NAMESPACE, GATEWAY, json!("again")),
    )
    .await;

    decide(
        &control_plane,
        &name,
        ApprovalState::Approved,
        "a known peer",
    );
    reconcile(&control_plane, &name, Timestamp::now).await;
    let grant = reread(&mut control_plane, &name);
    assert_eq!(
        grant.spec.subject,
        GrantSubject::peer(&stranger.public_key())
    );
    assert_eq!(grant.spec.capabilities, vec![Capability::Inject]);
    assert_eq!(grant.spec.sessions, vec![GATEWAY.to_owned()]);
    let reply = ingress
        .ingress
        .receive(&stranger.inject(NAMESPACE, GATEWAY, json!("hi")))
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    // Only there.
    let refusal = refused(&ingress, &stranger.inject(NAMESPACE, RESEARCH, json!("hi"))).await;
    assert_eq!(refusal.kind, RefusalKind::Forbidden);
}

/// An HTTPS client trusting the test CA.
fn https() -> reqwest::Client {
    // The binary installs ring at start; a test process does it here.
    let _ = wopr_operator::tls::server::provider().install_default();
    let ca = std::fs::read(&common::tls::pki().ca_file).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_https_and_grpc_fronts_answer_as_the_ingress_decides() {
    use base64::Engine;
    use wopr_operator::proto::v1alpha1::PeerMessage;
    use wopr_operator::proto::v1alpha1::peers_client::PeersClient;
    let peer = TestPeer::new();
    let (control_plane, _client) = reference(&[&peer.public_key()]).await;
    let ingress = TestIngress::start(&control_plane, Duration::ZERO).await;
    let client = https();

    // Accepted over HTTPS: 202 (no answer yet), the message's id.
    let sent = client
        .post(ingress.messages_url())
        .body(peer.inject(NAMESPACE, GATEWAY, json!("hi")))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let body: Value = sent.json().await.unwrap();
    let message_id = body["messageId"].as_str().unwrap().to_owned();

    // Its outbox: nothing forwarded yet (404), with a signed GET.
    let outbox = peer.sign(
        "outbox",
        &[
            ("session", json!(format!("{NAMESPACE}/{GATEWAY}"))),
            ("messageId", json!(message_id)),
        ],
    );
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&outbox);
    let fetched = client
        .get(format!(
            "https://127.0.0.1:{}/v1alpha1/outbox",
            ingress.address.port()
        ))
        .header("wopr-message", encoded)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 404);
    let body: Value = fetched.json().await.unwrap();
    assert_eq!(body["error"], "not_found");

    // Declared too large: refused before the body is read.
    let refused = client
        .post(ingress.messages_url())
        .header(
            "content-length",
            (wopr_operator::p2p::MAX_MESSAGE_BYTES + 1).to_string(),
        )
        .body(vec![b' '; wopr_operator::p2p::MAX_MESSAGE_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 413);

    // The same over gRPC: a refusal is its code and reason.
    let channel = common::tls::channel(ingress.address).await;
    let mut grpc = PeersClient::new(channel);
    let reply = grpc
        .deliver(PeerMessage {
            message: peer.inject(NAMESPACE, GATEWAY, json!("over grpc")),
        })
        .await
        .unwrap()
        .into_inner();
    let reply: Value = serde_json::from_str(&reply.reply_json).unwrap();
    assert_eq!(reply["state"], "accepted");
    let status = grpc
        .deliver(PeerMessage {
            message: b"{}".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Counted per action and outcome.
    let metrics = &ingress.settings.metrics;
    assert_eq!(metrics.count("inject", "accepted"), 2);
    assert_eq!(metrics.count("outbox", "not_found"), 1);
}

/// Each namespace's ingress key, in a Secret of the operator's namespace:
/// made once when first asked for, by either of two replicas asking at
/// once (the other reads the one made); read back unchanged; a fresh one
/// once the Secret is deleted (rotation); an unreadable Secret refused with
/// what to do, never replaced behind the operator's back.
#[tokio::test]
async fn ingress_keys_live_in_secrets_of_the_operators_namespace() {
    use wopr_operator::controlplane::peers::{IngressKeys, KubeIngressKeys};
    let (client, api) = common::fake_api::FakeApi::start();
    let first = KubeIngressKeys::new(client.clone(), "wopr-system");
    let second = KubeIngressKeys::new(client.clone(), "wopr-system");
    assert!(first.existing(NAMESPACE).await.unwrap().is_none());
    let (a, b) = tokio::join!(first.key(NAMESPACE), second.key(NAMESPACE));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.public_key(), b.public_key(), "one key for both replicas");
    let path = format!("/api/v1/namespaces/wopr-system/secrets/wopr-p2p-{NAMESPACE}");
    let stored = api.get(&path).expect("the key's Secret");
    assert_eq!(
        stored["metadata"]["labels"]["wopr.dev/p2p-namespace"],
        NAMESPACE
    );
    let again = KubeIngressKeys::new(client.clone(), "wopr-system");
    assert_eq!(
        again.key(NAMESPACE).await.unwrap().public_key(),
        a.public_key()
    );
    assert!(
        again.existing("elsewhere").await.unwrap().is_none(),
        "another namespace has its own"
    );

    // Rotation: the Secret deleted, the next key is new.
    api.remove(&path);
    let rotated = again.key(NAMESPACE).await.unwrap();
    assert_ne!(rotated.public_key(), a.public_key());

    // An unreadable key: refused, naming the Secret and the remedy.
    api.modify(&path, |secret| {
        secret["data"]["ed25519.pkcs8"] = json!("bm90IGEga2V5");
    });
    let refused = again.key(NAMESPACE).await.unwrap_err();
    assert!(
        refused.contains(&format!("wopr-p2p-{NAMESPACE}")) && refused.contains("delete it"),
        "{refused}"
    );
}

/// At most `max_in_flight` messages are taken at once: with one waiting for
/// the gateway's answer, the next is refused at once (503, before its body
/// is read), counted and audited as no peer's; once the first is answered
/// (told to fetch its outbox), the next is taken.
#[tokio::test]
async fn past_its_limit_in_flight_the_front_refuses_at_once() {
    use wopr_operator::controlplane::peers::IngressSettings;
    let peer = TestPeer::new();
    let (control_plane, _client) = reference(&[&peer.public_key()]).await;
    let settings = IngressSettings {
        answer_wait: Duration::from_secs(3),
        max_in_flight: 1,
        ..IngressSettings::default()
    };
    let ingress =
        TestIngress::start_on(&control_plane, control_plane.store.clone(), settings).await;
    let client = https();
    let post = |raw: Vec<u8>| {
        client
            .post(ingress.messages_url())
            .header("content-type", "application/json")
            .body(raw)
            .send()
    };
    // The first waits for an answer nobody gives.
    let waiting = tokio::spawn(post(peer.inject(NAMESPACE, GATEWAY, json!("first"))));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = post(peer.inject(NAMESPACE, GATEWAY, json!("second")))
        .await
        .unwrap();
    assert_eq!(busy.status(), 503);
    let body: Value = busy.json().await.unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("limit of 1 messages at once"),
        "{body}"
    );
    assert_eq!(
        ingress.settings.metrics.count("unverified", "unavailable"),
        1
    );
    let first = waiting.await.unwrap().unwrap();
    assert_eq!(first.status(), 202, "told to fetch its outbox");
    let third = post(peer.inject(NAMESPACE, GATEWAY, json!("third")))
        .await
        .unwrap();
    assert_eq!(third.status(), 202);
    // The busy refusal is in the operator's trail; the second message was
    // never read, so it is not in the gateway's inbox.
    let events = common::store::all_events(&control_plane.store).await;
    assert!(
        events
            .iter()
            .any(|event| event.reason.contains("limit of 1 messages at once")),
        "{events:?}"
    );
    let queued = control_plane
        .store
        .pending_messages(NAMESPACE, GATEWAY, 0, 10)
        .await
        .unwrap();
    let payloads: Vec<&Value> = queued
        .iter()
        .map(|queued| &queued.message.payload)
        .collect();
    assert_eq!(payloads, [&json!("first"), &json!("third")]);
}
