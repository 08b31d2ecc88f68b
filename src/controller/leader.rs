//! Leader election with a Lease: every replica watches and caches, only the
//! holder of the Lease writes. Gaining the Lease triggers a full reconcile;
//! shutting down stops writing and releases the Lease at once, so another
//! replica takes over without waiting for it to expire.

use std::future::Future;

use futures::Stream;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::context::Leadership;

/// Seconds a Lease is valid after its last renewal.
const LEASE_DURATION_SECONDS: u64 = 15;
/// Seconds before expiry at which the holder renews.
const LEASE_GRACE_SECONDS: u64 = 5;

/// This replica's part in the election.
pub struct Election {
    /// Whether this replica may write now.
    pub leadership: Leadership,
    /// Yields each time this replica becomes the leader.
    pub gained: Box<dyn Stream<Item = ()> + Send + Unpin>,
    /// Completes once the Lease is released after `shutdown`.
    pub released: JoinHandle<()>,
}

/// Competes for the Lease `name` in `namespace` as `identity` until
/// `shutdown` completes; then stops writing and releases the Lease.
pub async fn elect(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Election, kube_lease_manager::LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await?;
    let (mut changes, manager_task) = manager.watch().await;
    let leadership = Leadership::default();
    let (gained, gained_stream) = mpsc::unbounded_channel();
    let flag = leadership.clone();
    let released = tokio::spawn(async move {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        tracing::warn!("lost the lease manager; this replica no longer writes");
                        break;
                    }
                    let leader = *changes.borrow_and_update();
                    if leader != flag.is_leader() {
                        tracing::info!(leader, "leadership changed");
                    }
                    flag.set(leader);
                    if leader {
                        let _ = gained.send(());
                    }
                }
                () = &mut shutdown => break,
            }
        }
        let was_leader = flag.is_leader();
        flag.set(false);
        // Closing the channel makes the manager release the Lease and return.
        drop(changes);
        match manager_task.await {
            Ok(Ok(_)) if was_leader => tracing::info!("released the lease"),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not release the lease; it expires on its own")
            }
            Err(error) => tracing::warn!(%error, "the lease manager failed"),
        }
    });
    Ok(Election {
        leadership,
        gained: Box::new(UnboundedReceiverStream::new(gained_stream)),
        released,
    })
}
