//! The peer ingress beside a real control plane (tests/common/sidecar's):
//! every way a message can be wrong is refused with a precise error, an
//! expired Grant confers nothing, and an invite is claimed once.

mod common;

use std::time::Duration;

use common::NAMESPACE;
use common::peers::{TestIngress, TestPeer};
use common::sidecar::ControlPlane;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tonic::transport::Channel;
use wopr_operator::api::{Grant, GrantSubject, TrustLevel, WoprObject, parse_manifests};
use wopr_operator::controlplane::peers::{RefusalKind, Refused};
use wopr_operator::proto::v1alpha1::broker_client::BrokerClient;

const GATEWAY: &str = "p2p-gateway";
const RESEARCH: &str = "research-agent";

/// The reference sessions and Gateway (examples/), with a Grant for each
/// of `peers` (untrusted, scoped to the gateway session).
async fn reference(peers: &[&str]) -> (ControlPlane, BrokerClient<Channel>) {
    let mut control_plane =
        ControlPlane::start(&[GATEWAY, RESEARCH, "code-executor", "api-handler"]).await;
    for path in ["examples/sessions.yaml", "examples/gateway.yaml"] {
        let text = std::fs::read_to_string(path).unwrap();
        for object in parse_manifests(&text).unwrap() {
            match object {
                WoprObject::Session(mut session) => {
                    session.metadata.namespace = Some(NAMESPACE.into());
                    control_plane.put_session(*session);
                }
                WoprObject::Gateway(mut gateway) => {
                    gateway.metadata.namespace = Some(NAMESPACE.into());
                    control_plane.put_gateway(gateway);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
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
