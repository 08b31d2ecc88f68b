//! The session's inbox as its sidecar holds it for the agent: the messages
//! the control plane's `Broker.Inbox` stream delivered and the agent has
//! not acknowledged yet, in order. The store keeps them too: a sidecar that
//! restarts reads them all again from the start.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::backoff::Backoff;
use super::client::{WatchError, WatchTarget, authorized, connect_channel};
use crate::inbox::InboxMessage;
use crate::proto::v1alpha1::InboxRequest;
use crate::proto::v1alpha1::broker_client::BrokerClient;

/// How many acknowledged ids an inbox remembers, to drop their late
/// deliveries: far more than the control plane reads ahead on a stream.
const REMEMBERED_ACKS: usize = 4_096;

/// Messages waiting for the agent, by position.
pub struct Inbox {
    state: Mutex<Held>,
    /// Counts arrivals, for streams waiting on the next message.
    arrived: watch::Sender<u64>,
}

#[derive(Default)]
struct Held {
    pending: BTreeMap<i64, InboxMessage>,
    /// Ids acknowledged through this sidecar, newest last. A stream that
    /// read its page before an acknowledgement (the agent knew the message
    /// from the sidecar before this one) may still deliver it: it is not
    /// held again.
    acknowledged: HashSet<String>,
    order: VecDeque<String>,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            state: Mutex::default(),
            arrived: watch::channel(0).0,
        }
    }
}

impl Inbox {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().expect("the inbox lock is never poisoned")
    }

    /// Holds `message` at `seq` (again, or once acknowledged: nothing
    /// changes).
    pub fn hold(&self, seq: i64, message: InboxMessage) {
        let mut held = self.held();
        if held.acknowledged.contains(&message.id) {
            return;
        }
        let new = held.pending.insert(seq, message).is_none();
        drop(held);
        if new {
            self.arrived.send_modify(|arrived| *arrived += 1);
        }
    }

    /// Up to `limit` waiting messages after position `after`, oldest first,
    /// with their positions.
    pub fn after(&self, after: i64, limit: usize) -> Vec<(i64, InboxMessage)> {
        self.held()
            .pending
            .range(after + 1..)
            .take(limit)
            .map(|(seq, message)| (*seq, message.clone()))
            .collect()
    }

    /// Lets go of the messages `ids` (the control plane has their
    /// acknowledgement), and of any late delivery of them.
    pub fn release(&self, ids: &[String]) {
        let mut held = self.held();
        held.pending.retain(|_, message| !ids.contains(&message.id));
        for id in ids {
            if held.acknowledged.insert(id.clone()) {
                held.order.push_back(id.clone());
            }
        }
        while held.order.len() > REMEMBERED_ACKS {
            if let Some(oldest) = held.order.pop_front() {
                held.acknowledged.remove(&oldest);
            }
        }
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
    let mut backoff = Backoff::streams();
    loop {
        match follow_once(&target, &inbox, &mut after).await {
            Ok(()) => {
                tracing::warn!("inbox stream ended; reconnecting");
                backoff.reset();
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff.retry_in(), "inbox stream failed")
            }
        }
        backoff.wait().await;
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

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    use super::*;
    use crate::api::{SourceRef, SourceType, TrustLevel};
    use crate::inbox::MessageKind;

    fn message(n: u32) -> InboxMessage {
        let source = SourceRef {
            source_type: SourceType::Session.into(),
            identity: "alice".into(),
            trust_level: TrustLevel::Trusted,
        };
        let time = Timestamp::UNIX_EPOCH;
        InboxMessage::new(time, "ns", "bob", source, MessageKind::Message, json!(n))
    }

    #[test]
    fn a_late_delivery_of_an_acknowledged_message_is_not_held_again() {
        let inbox = Inbox::default();
        let arrivals = inbox.arrivals();
        let (first, second) = (message(1), message(2));
        // The agent acknowledges a message it got from the sidecar before
        // this one, before this one's stream delivers it.
        inbox.release(std::slice::from_ref(&first.id));
        inbox.hold(1, first);
        inbox.hold(2, second.clone());
        let held: Vec<String> = inbox.after(0, 10).into_iter().map(|(_, m)| m.id).collect();
        assert_eq!(held, [second.id]);
        assert_eq!(*arrivals.borrow(), 1, "one arrival, not two");
    }

    #[test]
    fn it_remembers_a_bounded_number_of_acknowledgements() {
        let inbox = Inbox::default();
        let ids: Vec<String> = (0..REMEMBERED_ACKS + 10).map(|n| n.to_string()).collect();
        inbox.release(&ids);
        let held = inbox.held();
        assert_eq!(held.acknowledged.len(), REMEMBERED_ACKS);
        assert!(!held.acknowledged.contains("0"), "the oldest are forgotten");
    }
}
