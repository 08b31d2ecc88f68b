//! The sidecar's side of the Broker: `sessions_send` as a call of the
//! control plane's `Broker.Send` for this session, over one channel that
//! is opened on first use and again after a transport failure.

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tonic::Code;
use tonic::transport::Channel;

use super::client::{WatchTarget, bearer_of, connect_channel};
use super::engine::{Messenger, ToolError};
use crate::proto::v1alpha1::SendRequest;
use crate::proto::v1alpha1::broker_client::BrokerClient;

/// This session's way to the broker.
pub struct BrokerLink {
    target: WatchTarget,
    channel: Mutex<Option<Channel>>,
}

impl BrokerLink {
    pub fn new(target: WatchTarget) -> BrokerLink {
        BrokerLink {
            target,
            channel: Mutex::new(None),
        }
    }
}

/// What the agent is told when the broker refuses: the control plane's
/// reason for refusals it should act on, a plain "try again" otherwise.
fn tool_error(status: &tonic::Status) -> ToolError {
    match status.code() {
        Code::PermissionDenied
        | Code::NotFound
        | Code::InvalidArgument
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::AlreadyExists => ToolError::Failed(status.message().to_owned()),
        _ => ToolError::Failed(format!(
            "the control plane is unavailable ({}); try again",
            status.message()
        )),
    }
}

#[tonic::async_trait]
impl Messenger for BrokerLink {
    async fn send(&self, target: &str, message: &Value) -> Result<Value, ToolError> {
        // The token is read again for every message: the kubelet rotates it.
        let (fresh, bearer) = {
            let mut cached = self.channel.lock().await;
            match cached.as_ref() {
                Some(channel) => {
                    let bearer = bearer_of(&self.target)
                        .map_err(|error| ToolError::Failed(error.to_string()))?;
                    (channel.clone(), bearer)
                }
                None => {
                    let (channel, bearer) = connect_channel(&self.target)
                        .await
                        .map_err(|error| ToolError::Failed(error.to_string()))?;
                    *cached = Some(channel.clone());
                    (channel, bearer)
                }
            }
        };
        let mut request = tonic::Request::new(SendRequest {
            namespace: self.target.namespace.clone(),
            session: self.target.session.clone(),
            target: target.to_owned(),
            payload_json: message.to_string(),
            message_id: ulid::Ulid::new().to_string(),
        });
        request.metadata_mut().insert("authorization", bearer);
        match BrokerClient::new(fresh).send(request).await {
            Ok(sent) => {
                let sent = sent.into_inner();
                Ok(json!({
                    "target": target,
                    "messageId": sent.message_id,
                    "decision": sent.decision,
                    "auditId": sent.audit_id,
                }))
            }
            Err(status) => {
                if matches!(status.code(), Code::Unavailable | Code::Unknown) {
                    *self.channel.lock().await = None;
                }
                Err(tool_error(&status))
            }
        }
    }
}
