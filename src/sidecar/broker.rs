//! The sidecar's side of the Broker: `sessions_send`, `inbox_ack`,
//! `sessions_list` and `sessions_history` as calls of the control plane's
//! `Broker` for this session, over one channel that is opened on first use and again after a
//! transport failure.

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::client::{WatchError, WatchTarget, authorized, bearer_of, connect_channel};
use super::engine::{Messenger, ToolError};
use crate::proto::v1alpha1::broker_client::BrokerClient;
use crate::proto::v1alpha1::{AckRequest, HistoryRequest, ListRequest, SendRequest};

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

impl BrokerLink {
    /// A client on the cached channel (opened now if there is none) and
    /// the current token.
    async fn client(&self) -> Result<(BrokerClient<Channel>, MetadataValue<Ascii>), ToolError> {
        let failed = |error: WatchError| ToolError::Failed(error.to_string());
        let mut cached = self.channel.lock().await;
        let (channel, bearer) = match cached.as_ref() {
            // The token is read again for every call: the kubelet rotates it.
            Some(channel) => (channel.clone(), bearer_of(&self.target).map_err(failed)?),
            None => connect_channel(&self.target).await.map_err(failed)?,
        };
        *cached = Some(channel.clone());
        Ok((BrokerClient::new(channel), bearer))
    }

    /// `status` as the agent's error; a transport failure also drops the
    /// channel, so the next call opens a new one.
    async fn failed(&self, status: tonic::Status) -> ToolError {
        if matches!(status.code(), Code::Unavailable | Code::Unknown) {
            *self.channel.lock().await = None;
        }
        tool_error(&status)
    }
}

#[tonic::async_trait]
impl Messenger for BrokerLink {
    async fn send(&self, target: &str, message: &Value) -> Result<Value, ToolError> {
        let (mut client, bearer) = self.client().await?;
        let request = authorized(
            SendRequest {
                namespace: self.target.namespace.clone(),
                session: self.target.session.clone(),
                target: target.to_owned(),
                payload_json: message.to_string(),
                message_id: ulid::Ulid::new().to_string(),
            },
            bearer,
        );
        match client.send(request).await {
            Ok(sent) => {
                let sent = sent.into_inner();
                Ok(json!({
                    "target": target,
                    "messageId": sent.message_id,
                    "decision": sent.decision,
                    "auditId": sent.audit_id,
                }))
            }
            Err(status) => Err(self.failed(status).await),
        }
    }

    async fn ack(&self, ids: &[String]) -> Result<u64, ToolError> {
        let (mut client, bearer) = self.client().await?;
        let request = authorized(
            AckRequest {
                namespace: self.target.namespace.clone(),
                session: self.target.session.clone(),
                message_ids: ids.to_vec(),
            },
            bearer,
        );
        match client.ack(request).await {
            Ok(acked) => Ok(acked.into_inner().acknowledged),
            Err(status) => Err(self.failed(status).await),
        }
    }

    async fn list(&self) -> Result<Value, ToolError> {
        let (mut client, bearer) = self.client().await?;
        let request = authorized(
            ListRequest {
                namespace: self.target.namespace.clone(),
                session: self.target.session.clone(),
            },
            bearer,
        );
        match client.list(request).await {
            Ok(listed) => {
                let sessions: Vec<Value> = listed
                    .into_inner()
                    .sessions
                    .into_iter()
                    .map(|s| json!({"name": s.name, "trustLevel": s.trust_level, "gateway": s.gateway}))
                    .collect();
                Ok(json!({"sessions": sessions}))
            }
            Err(status) => Err(self.failed(status).await),
        }
    }

    async fn history(&self, target: &str, limit: u32) -> Result<Value, ToolError> {
        let (mut client, bearer) = self.client().await?;
        let request = authorized(
            HistoryRequest {
                namespace: self.target.namespace.clone(),
                session: self.target.session.clone(),
                target: target.to_owned(),
                limit,
            },
            bearer,
        );
        match client.history(request).await {
            Ok(history) => {
                let messages = history
                    .into_inner()
                    .messages_json
                    .iter()
                    .map(|json| serde_json::from_str(json))
                    .collect::<Result<Vec<Value>, _>>()
                    .map_err(|error| {
                        ToolError::Failed(format!("the broker's answer cannot be read: {error}"))
                    })?;
                Ok(json!({"session": target, "messages": messages}))
            }
            Err(status) => Err(self.failed(status).await),
        }
    }
}
