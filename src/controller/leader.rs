//! Leader election with a Lease: every replica watches and caches, only the
//! holder of the Lease writes. Gaining the Lease triggers a full reconcile.

use futures::{Stream, stream};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::mpsc;

use super::context::Leadership;

/// Seconds a Lease is valid after its last renewal.
const LEASE_DURATION_SECONDS: u64 = 15;
/// Seconds before expiry at which the holder renews.
const LEASE_GRACE_SECONDS: u64 = 5;

/// Competes for the Lease `name` in `namespace` as `identity`. Returns the
/// leadership flag and a stream that yields each time this replica becomes
/// the leader.
pub async fn elect(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> Result<(Leadership, impl Stream<Item = ()> + use<>), kube_lease_manager::LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await?;
    let (mut changes, _task) = manager.watch().await;
    let leadership = Leadership::default();
    let (gained, gained_stream) = mpsc::unbounded_channel();
    let flag = leadership.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let leader = *changes.borrow_and_update();
            if leader != flag.is_leader() {
                tracing::info!(leader, "leadership changed");
            }
            flag.set(leader);
            if leader && gained.send(()).is_err() {
                break;
            }
        }
        flag.set(false);
        tracing::warn!("lost the lease manager; this replica no longer writes");
    });
    let gained_stream = stream::unfold(gained_stream, |mut receiver| async move {
        receiver.recv().await.map(|()| ((), receiver))
    });
    Ok((leadership, gained_stream))
}
