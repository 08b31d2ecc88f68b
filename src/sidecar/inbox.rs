//! The session's inbox as its sidecar holds it for the agent: the messages
//! the control plane's `Broker.Inbox` stream delivered and the agent has
//! not acknowledged yet, in order. The store keeps them too: a sidecar that
//! restarts reads them all again from the start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::client::{
    FIRST_BACKOFF, MAX_BACKOFF, WatchError, WatchTarget, authorized, connect_channel,
};
use crate::inbox::InboxMessage;
use crate::proto::v1alpha1::InboxRequest;
use crate::proto::v1alpha1::broker_client::BrokerClient;

/// Messages waiting for the agent, by position.
pub struct Inbox {
    pending: Mutex<BTreeMap<i64, InboxMessage>>,
    /// Counts arrivals, for streams waiting on the next message.
    arrived: watch::Sender<u64>,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            pending: Mutex::default(),
            arrived: watch::channel(0).0,
        }
    }
}

impl Inbox {
    /// Holds `message` at `seq` (again: nothing changes).
    pub fn hold(&self, seq: i64, message: InboxMessage) {
        let new = self
            .pending
            .lock()
            .expect("the inbox lock is never poisoned")
            .insert(seq, message)
            .is_none();
        if new {
            self.arrived.send_modify(|arrived| *arrived += 1);
        }
    }

    /// Up to `limit` waiting messages after position `after`, oldest first,
    /// with their positions.
    pub fn after(&self, after: i64, limit: usize) -> Vec<(i64, InboxMessage)> {
        self.pending
            .lock()
            .expect("the inbox lock is never poisoned")
            .range(after + 1..)
            .take(limit)
            .map(|(seq, message)| (*seq, message.clone()))
            .collect()
    }

    /// Lets go of the messages `ids` (the control plane has their
    /// acknowledgement).
    pub fn release(&self, ids: &[String]) {
        self.pending
            .lock()
            .expect("the inbox lock is never poisoned")
            .retain(|_, message| !ids.contains(&message.id));
    }

    /// Changes at every new message.
    pub fn arrivals(&self) -> watch::Receiver<u64> {
        self.arrived.subscribe()
    }
}

/// Follows the session's inbox on the control plane into `inbox`, forever,
/// reconnecting with backoff from the last position seen.
pub async fn follow_forever(target: WatchTarget, inbox: Arc<Inbox>) {
    let mut after = 0;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match follow_once(&target, &inbox, &mut after).await {
            Ok(()) => {
                tracing::warn!("inbox stream ended; reconnecting");
                backoff = FIRST_BACKOFF;
            }
            Err(error) => tracing::warn!(%error, retry_in = ?backoff, "inbox stream failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One stream: holds every message it delivers; returns when it ends.
async fn follow_once(
    target: &WatchTarget,
    inbox: &Inbox,
    after: &mut i64,
) -> Result<(), WatchError> {
    let (channel, bearer) = connect_channel(target).await?;
    let request = authorized(
        InboxRequest {
            namespace: target.namespace.clone(),
            session: target.session.clone(),
            after: *after,
        },
        bearer,
    );
    let mut deliveries = BrokerClient::new(channel)
        .inbox(request)
        .await?
        .into_inner();
    while let Some(delivery) = deliveries.message().await? {
        match serde_json::from_str(&delivery.message_json) {
            Ok(message) => inbox.hold(delivery.seq, message),
            Err(error) => {
                tracing::error!(seq = delivery.seq, %error, "an inbox message cannot be read; skipped")
            }
        }
        *after = delivery.seq;
    }
    Ok(())
}
