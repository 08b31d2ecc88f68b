//! Leader election with a Lease: every replica watches and caches, only the
//! holder of the Lease writes. Gaining the Lease triggers a full reconcile;
//! shutting down stops writing and releases the Lease at once, so another
//! replica takes over without waiting for it to expire.

use std::future::Future;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::WatchStream;

/// Seconds a Lease is valid after its last renewal.
const LEASE_DURATION_SECONDS: u64 = 15;
/// Seconds before expiry at which the holder renews.
const LEASE_GRACE_SECONDS: u64 = 5;

/// Whether this replica holds the leader Lease. Only the leader writes.
#[derive(Clone)]
pub struct Leadership(Arc<watch::Sender<bool>>);

impl Default for Leadership {
    fn default() -> Self {
        Leadership(Arc::new(watch::Sender::new(false)))
    }
}

impl Leadership {
    /// A flag that says "leader" from the start (leader election off).
    pub fn always() -> Leadership {
        let leadership = Leadership::default();
        leadership.set(true);
        leadership
    }

    /// Whether this replica may write now.
    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// Records a change of leadership.
    pub fn set(&self, leader: bool) {
        self.0.send_if_modified(|current| {
            let changed = *current != leader;
            *current = leader;
            changed
        });
    }

    /// Yields each time this replica becomes the leader (one stream per
    /// consumer: each controller reconciles everything then).
    pub fn gained(&self) -> impl Stream<Item = ()> + Send + use<> {
        WatchStream::from_changes(self.0.subscribe())
            .filter(|leader| std::future::ready(*leader))
            .map(|_| ())
    }
}

/// Competes for the Lease `name` in `namespace` as `identity` until
/// `shutdown` completes; then stops writing and releases the Lease. Returns
/// the leadership and the task that ends once the Lease is released.
pub async fn elect(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(Leadership, JoinHandle<()>), kube_lease_manager::LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await?;
    let (mut changes, manager_task) = manager.watch().await;
    let leadership = Leadership::default();
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
    Ok((leadership, released))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_consumer_hears_of_every_gained_leadership() {
        let leadership = Leadership::default();
        let mut first = Box::pin(leadership.gained());
        let mut second = Box::pin(leadership.gained());
        leadership.set(true);
        assert_eq!(first.next().await, Some(()));
        assert_eq!(second.next().await, Some(()));
        leadership.set(false);
        leadership.set(true);
        assert_eq!(first.next().await, Some(()));
        assert!(leadership.is_leader());
    }
}
