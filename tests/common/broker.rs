//! Calls of the control plane's Broker as a session's sidecar would make
//! them, for the broker and gateway tests.

use std::time::Duration;

use serde_json::Value;
use tonic::transport::Channel;
use wopr_operator::inbox::InboxMessage;
use wopr_operator::proto::v1alpha1::broker_client::BrokerClient;
use wopr_operator::proto::v1alpha1::{InboxDelivery, InboxRequest, SendRequest};

use super::NAMESPACE;
use super::sidecar::as_sidecar;

/// `from`'s Send of `payload` to `to`.
pub fn send(from: &str, to: &str, payload: Value) -> tonic::Request<SendRequest> {
    as_sidecar(
        from,
        SendRequest {
            namespace: NAMESPACE.into(),
            session: from.into(),
            target: to.into(),
            payload_json: payload.to_string(),
            message_id: String::new(),
        },
    )
}

/// `session`'s inbox from position `after`.
pub async fn inbox(
    client: &mut BrokerClient<Channel>,
    session: &str,
    after: i64,
) -> tonic::Streaming<InboxDelivery> {
    let request = InboxRequest {
        namespace: NAMESPACE.into(),
        session: session.into(),
        after,
    };
    client
        .inbox(as_sidecar(session, request))
        .await
        .unwrap()
        .into_inner()
}

/// The next delivery of `stream` (within 5 s), as a message.
pub async fn next(stream: &mut tonic::Streaming<InboxDelivery>) -> (i64, InboxMessage) {
    let delivery = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a delivery within 5 s")
        .unwrap()
        .expect("the stream goes on");
    (
        delivery.seq,
        serde_json::from_str(&delivery.message_json).unwrap(),
    )
}
