//! The sidecar's audit spool and shipper against a real control plane and
//! store: what is spooled is stored once, whatever is lost on the way (an
//! answer, the control plane itself); what the control plane refuses is
//! kept aside, never dropped; at shutdown the spool is shipped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::NAMESPACE;
use common::sidecar::{ControlPlane, token_for};
use common::store::{all_events, event};
use wopr_operator::audit::AuditEvent;
use wopr_operator::policy::Outcome;
use wopr_operator::sidecar::client::WatchTarget;
use wopr_operator::sidecar::shipper::{ship_forever, ship_sealed};
use wopr_operator::sidecar::spool::Spool;
use wopr_operator::store::Verification;

struct Setup {
    spool: Arc<Spool>,
    target: WatchTarget,
    dir: tempfile::TempDir,
}

/// A spool for `session`'s sidecar, shipping to `address` with its token.
fn setup(session: &str, address: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, token_for(session)).unwrap();
    Setup {
        spool: Arc::new(Spool::open(&dir.path().join("spool")).unwrap()),
        target: WatchTarget {
            address: address.to_owned(),
            tls: common::tls::client_tls(),
            namespace: NAMESPACE.into(),
            session: session.into(),
            token_path,
        },
        dir,
    }
}

fn spool_events(spool: &Spool, events: &[AuditEvent]) {
    for event in events {
        spool
            .append(&serde_json::to_string(event).unwrap())
            .unwrap();
    }
    spool.seal().unwrap();
}

fn events(session: &str, from: i64, count: i64) -> Vec<AuditEvent> {
    (from..from + count)
        .map(|n| event(NAMESPACE, session, Outcome::Allowed, n))
        .collect()
}

async fn stored_ids(control_plane: &ControlPlane) -> Vec<String> {
    let mut ids: Vec<String> = all_events(&control_plane.store)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    ids.sort();
    ids
}

fn sorted_ids(events: &[AuditEvent]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn spooled_events_are_stored_once_even_when_shipped_twice() {
    let control_plane = ControlPlane::start(&["research"]).await;
    let setup = setup("research", &control_plane.address.to_string());
    let first = events("research", 0, 700);
    spool_events(&setup.spool, &first);
    assert_eq!(ship_sealed(&setup.spool, &setup.target).await.unwrap(), 700);
    assert!(
        setup.spool.sealed().unwrap().is_empty(),
        "shipped segments go"
    );
    // An answer lost: the same events again, with new ones.
    let second = events("research", 700, 10);
    spool_events(
        &setup.spool,
        &[first[..100].to_vec(), second.clone()].concat(),
    );
    assert_eq!(ship_sealed(&setup.spool, &setup.target).await.unwrap(), 110);
    assert_eq!(
        stored_ids(&control_plane).await,
        sorted_ids(&[first, second].concat())
    );
    assert_eq!(
        control_plane.store.verify(NAMESPACE).await.unwrap(),
        Verification::Intact { events: 710 }
    );
}

#[tokio::test]
async fn the_spool_holds_events_while_the_control_plane_is_away() {
    // Nothing listens here yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let setup = setup("research", &format!("127.0.0.1:{port}"));
    let waiting = events("research", 0, 20);
    spool_events(&setup.spool, &waiting);
    assert!(ship_sealed(&setup.spool, &setup.target).await.is_err());
    assert_eq!(setup.spool.depth(), 20, "nothing dropped");
    // The control plane comes (back) at another address.
    let control_plane = ControlPlane::start(&["research"]).await;
    let target = WatchTarget {
        address: control_plane.address.to_string(),
        ..setup.target.clone()
    };
    // Seven more, in the segment still being written: they wait.
    for event in events("research", 20, 7) {
        setup
            .spool
            .append(&serde_json::to_string(&event).unwrap())
            .unwrap();
    }
    assert_eq!(ship_sealed(&setup.spool, &target).await.unwrap(), 20);
    assert_eq!(stored_ids(&control_plane).await, sorted_ids(&waiting));

    // The sidecar said what waits; the control plane exports it, and how
    // late the events came.
    let mut registry = prometheus_client::registry::Registry::default();
    control_plane.audit_metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let depth =
        format!("wopr_audit_spool_depth{{namespace=\"{NAMESPACE}\",session=\"research\"}} 7");
    assert!(text.contains(&depth), "{depth} in:\n{text}");
    assert!(
        text.contains("wopr_audit_shipping_lag_seconds_count 20"),
        "{text}"
    );
}

#[tokio::test]
async fn a_refused_segment_is_kept_aside_and_the_rest_still_ships() {
    let control_plane = ControlPlane::start(&["research", "other"]).await;
    let setup = setup("research", &control_plane.address.to_string());
    // A segment with an event of another session: refused for good.
    spool_events(&setup.spool, &events("other", 0, 1));
    let good = events("research", 1, 5);
    spool_events(&setup.spool, &good);
    assert_eq!(ship_sealed(&setup.spool, &setup.target).await.unwrap(), 5);
    let mut ids = stored_ids(&control_plane).await;
    // The refusals themselves (of the segment, then of the event shipped
    // alone) are events of the trail.
    let all = all_events(&control_plane.store).await;
    let refusals: Vec<&String> = all
        .iter()
        .filter(|e| e.reason.starts_with("audit request refused"))
        .map(|e| &e.id)
        .collect();
    assert!(!refusals.is_empty(), "the refusal is audited");
    ids.retain(|id| !refusals.contains(&id));
    assert_eq!(ids, sorted_ids(&good));
    let rejected: Vec<_> = std::fs::read_dir(setup.dir.path().join("spool/rejected"))
        .unwrap()
        .map(|entry| Spool::read(&entry.unwrap().path()).unwrap())
        .collect();
    assert_eq!(rejected.len(), 1, "the refused segment's events are kept");
    assert_eq!(rejected[0].len(), 1, "only the refused one");
    assert!(setup.spool.sealed().unwrap().is_empty());
}

#[tokio::test]
async fn at_shutdown_the_spool_is_shipped() {
    let control_plane = ControlPlane::start(&["research"]).await;
    let setup = setup("research", &control_plane.address.to_string());
    let last = events("research", 0, 30);
    // Spooled but not sealed: the active segment, as when the agent's last
    // calls were answered just before SIGTERM.
    for event in &last {
        setup
            .spool
            .append(&serde_json::to_string(event).unwrap())
            .unwrap();
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        ship_forever(
            setup.spool.clone(),
            setup.target.clone(),
            std::future::ready(()),
            Duration::from_secs(5),
        ),
    )
    .await
    .expect("the shipper returns within its drain");
    assert_eq!(stored_ids(&control_plane).await, sorted_ids(&last));
    assert_eq!(setup.spool.depth(), 0);
}
