//! A flood through the peer ingress: 50 peers sending at ten times their
//! limit at once, each within the same minute. Each gets exactly its limit
//! through (WOPR's 10 injects a minute) and is banned past it; a quiet
//! peer sending to another session meanwhile is not slowed by any of it.

mod common;

use std::time::Duration;

use common::NAMESPACE;
use common::peers::{TestIngress, TestPeer};
use common::sidecar::ControlPlane;
use serde_json::json;
use wopr_operator::api::{AccessPattern, TrustLevel};
use wopr_operator::controlplane::peers::RefusalKind;

const GATEWAY: &str = "p2p-gateway";
const QUIET: &str = "quiet-session";
const PEERS: usize = 50;
/// WOPR's inject limit a minute.
const LIMIT: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_peers_at_ten_times_their_limit_each_get_their_limit_and_a_ban() {
    let mut control_plane = ControlPlane::start(&[GATEWAY, QUIET]).await;
    for name in [GATEWAY, QUIET] {
        let mut session = common::session(name, TrustLevel::SemiTrusted);
        session.spec.access = vec![AccessPattern::SourceType("p2p".into())];
        control_plane.put_session(session);
    }
    let flooders: Vec<TestPeer> = (0..PEERS).map(|_| TestPeer::new()).collect();
    let quiet = TestPeer::new();
    for (index, peer) in flooders.iter().enumerate() {
        let mut grant = common::peer_grant(
            &format!("flooder-{index}"),
            &peer.public_key(),
            TrustLevel::SemiTrusted,
        );
        grant.spec.sessions = vec![GATEWAY.into()];
        control_plane.put_grant(grant);
    }
    let mut grant = common::peer_grant("quiet", &quiet.public_key(), TrustLevel::SemiTrusted);
    grant.spec.sessions = vec![QUIET.into()];
    control_plane.put_grant(grant);
    let ingress = TestIngress::start(&control_plane, Duration::ZERO).await;

    let floods = flooders.into_iter().map(|peer| {
        let ingress = ingress.ingress.clone();
        tokio::spawn(async move {
            let messages: Vec<Vec<u8>> = (0..10 * LIMIT)
                .map(|i| peer.inject(NAMESPACE, GATEWAY, json!(format!("flood {i}"))))
                .collect();
            let mut outcomes = Vec::new();
            for message in messages {
                outcomes.push(ingress.receive(&message).await);
            }
            outcomes
        })
    });
    let floods = futures::future::join_all(floods);
    let quietly = async {
        let mut outcomes = Vec::new();
        for i in 0..5 {
            let message = quiet.inject(NAMESPACE, QUIET, json!(format!("quiet {i}")));
            outcomes.push(ingress.ingress.receive(&message).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        outcomes
    };
    let (floods, quietly) = tokio::join!(floods, quietly);

    for (index, outcomes) in floods.into_iter().enumerate() {
        let outcomes = outcomes.unwrap();
        let accepted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert!(
            (LIMIT - 1..=LIMIT + 1).contains(&accepted),
            "peer {index}: {accepted} accepted; first refusal: {:?}",
            outcomes.iter().find_map(|outcome| outcome.as_ref().err())
        );
        let refusals: Vec<_> = outcomes
            .iter()
            .filter_map(|outcome| outcome.as_ref().err())
            .collect();
        assert!(
            refusals
                .iter()
                .all(|refused| refused.kind == RefusalKind::Limited)
        );
        assert!(
            refusals[0].reason.contains("over the limit of 10"),
            "{}",
            refusals[0].reason
        );
        assert!(
            refusals.last().unwrap().reason.contains("banned until"),
            "{}",
            refusals.last().unwrap().reason
        );
    }
    for outcome in &quietly {
        assert!(outcome.is_ok(), "the quiet peer: {outcome:?}");
    }
    let delivered = control_plane
        .store
        .pending_messages(NAMESPACE, GATEWAY, 0, 1000)
        .await
        .unwrap();
    assert_eq!(delivered.len(), PEERS * LIMIT);
}
