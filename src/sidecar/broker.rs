//! The sidecar's side of the Broker: the message tools (`sessions_send`,
//! `sessions_list`, `sessions_history`, `inbox_ack`, `inbox_reply`) and
//! the gateway tools (`gateway_forward`, `gateway_respond`,
//! `gateway_queue`) and `exec_command` as calls of the control plane's `Broker` for this
//! session, over one channel that is opened on first use and again after a
//! transport failure.

use std::future::Future;

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::client::{WatchError, WatchTarget, authorized, bearer_of, connect_channel};
use super::engine::ToolError;
use super::tools::Messenger;
use crate::api::Capability;
use crate::api::name_of;
use crate::policy::tools::arguments::{CommandRun, ForwardMessage, RequestAnswer, SpawnChild};
use crate::proto::v1alpha1::broker_client::BrokerClient;
use crate::proto::v1alpha1::{
    AckRequest, ElevateRequest, ExecRequest, ExecResponse, ForwardRequest, HistoryRequest,
    ListRequest, QueueRequest, ReplyRequest, RespondRequest, SendRequest, SpawnRequest,
};

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
        | Code::DeadlineExceeded
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

    /// Calls the broker with `request` (for this session, with the
    /// current token) by `rpc`; a refusal as the agent's error. A transport
    /// failure also drops the channel, so the next call opens a new one.
    async fn call<Q, R, F, Fut>(&self, request: Q, rpc: F) -> Result<R, ToolError>
    where
        F: FnOnce(BrokerClient<Channel>, tonic::Request<Q>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let (client, bearer) = self.client().await?;
        match rpc(client, authorized(request, bearer)).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                if matches!(status.code(), Code::Unavailable | Code::Unknown) {
                    *self.channel.lock().await = None;
                }
                Err(tool_error(&status))
            }
        }
    }

    fn namespace(&self) -> String {
        self.target.namespace.clone()
    }

    fn session(&self) -> String {
        self.target.session.clone()
    }
}

/// JSON strings the broker answered with, as values.
fn parse_all(json: &[String]) -> Result<Vec<Value>, ToolError> {
    json.iter()
        .map(|json| serde_json::from_str(json))
        .collect::<Result<Vec<Value>, _>>()
        .map_err(|error| ToolError::Failed(format!("the broker's answer cannot be read: {error}")))
}

#[tonic::async_trait]
impl Messenger for BrokerLink {
    async fn send(&self, target: &str, message: &Value) -> Result<Value, ToolError> {
        let request = SendRequest {
            namespace: self.namespace(),
            session: self.session(),
            target: target.to_owned(),
            payload_json: message.to_string(),
            message_id: ulid::Ulid::new().to_string(),
        };
        let sent = self
            .call(request, |mut client, request| async move {
                client.send(request).await
            })
            .await?;
        Ok(json!({
            "target": target,
            "messageId": sent.message_id,
            "decision": sent.decision,
            "auditId": sent.audit_id,
        }))
    }

    async fn ack(&self, ids: &[String]) -> Result<u64, ToolError> {
        let request = AckRequest {
            namespace: self.namespace(),
            session: self.session(),
            message_ids: ids.to_vec(),
        };
        let acked = self
            .call(request, |mut client, request| async move {
                client.ack(request).await
            })
            .await?;
        Ok(acked.acknowledged)
    }

    async fn list(&self) -> Result<Value, ToolError> {
        let request = ListRequest {
            namespace: self.namespace(),
            session: self.session(),
        };
        let listed = self
            .call(request, |mut client, request| async move {
                client.list(request).await
            })
            .await?;
        let sessions: Vec<Value> = listed
            .sessions
            .into_iter()
            .map(|s| json!({"name": s.name, "trustLevel": s.trust_level, "gateway": s.gateway}))
            .collect();
        Ok(json!({"sessions": sessions}))
    }

    async fn history(&self, target: &str, limit: u32) -> Result<Value, ToolError> {
        let request = HistoryRequest {
            namespace: self.namespace(),
            session: self.session(),
            target: target.to_owned(),
            limit,
        };
        let history = self
            .call(request, |mut client, request| async move {
                client.history(request).await
            })
            .await?;
        let messages = parse_all(&history.messages_json)?;
        Ok(json!({"session": target, "messages": messages}))
    }

    async fn forward(&self, forward: ForwardMessage) -> Result<Value, ToolError> {
        let request = ForwardRequest {
            namespace: self.namespace(),
            session: self.session(),
            message_id: forward.message_id,
            target: forward.target.clone(),
            action: forward.action,
            payload_json: forward.payload.to_string(),
        };
        let forwarded = self
            .call(request, |mut client, request| async move {
                client.forward(request).await
            })
            .await?;
        let mut answer = json!({
            "requestId": forwarded.request_id,
            "target": forward.target,
            "state": forwarded.state,
            "decision": forwarded.decision,
            "auditId": forwarded.audit_id,
        });
        if !forwarded.expires_at.is_empty() {
            answer["expiresAt"] = forwarded.expires_at.into();
        }
        Ok(answer)
    }

    async fn reply(&self, answer: RequestAnswer) -> Result<Value, ToolError> {
        let request = ReplyRequest {
            namespace: self.namespace(),
            session: self.session(),
            request_id: answer.request_id.clone(),
            result_json: answer.result.to_string(),
        };
        let replied = self
            .call(request, |mut client, request| async move {
                client.reply(request).await
            })
            .await?;
        Ok(json!({
            "requestId": answer.request_id,
            "messageId": replied.message_id,
            "auditId": replied.audit_id,
        }))
    }

    async fn respond(&self, answer: RequestAnswer) -> Result<Value, ToolError> {
        let request = RespondRequest {
            namespace: self.namespace(),
            session: self.session(),
            request_id: answer.request_id.clone(),
            result_json: answer.result.to_string(),
        };
        let responded = self
            .call(request, |mut client, request| async move {
                client.respond(request).await
            })
            .await?;
        Ok(json!({
            "requestId": answer.request_id,
            "messageId": responded.message_id,
            "auditId": responded.audit_id,
        }))
    }

    async fn queue(&self) -> Result<Value, ToolError> {
        let request = QueueRequest {
            namespace: self.namespace(),
            session: self.session(),
        };
        let queue = self
            .call(request, |mut client, request| async move {
                client.queue(request).await
            })
            .await?;
        let requests: Vec<Value> = queue
            .requests
            .into_iter()
            .map(|pending| {
                json!({
                    "requestId": pending.request_id,
                    "gateway": pending.gateway,
                    "target": pending.target,
                    "action": pending.action,
                    "source": {
                        "type": pending.source_type,
                        "identity": pending.source_identity,
                        "trustLevel": pending.source_trust_level,
                    },
                    "createdAt": pending.created_at,
                    "expiresAt": pending.expires_at,
                })
            })
            .collect();
        Ok(json!({"requests": requests}))
    }

    async fn elevate(
        &self,
        capabilities: &[Capability],
        reason: &str,
        duration: std::time::Duration,
    ) -> Result<Value, ToolError> {
        let request = ElevateRequest {
            namespace: self.namespace(),
            session: self.session(),
            capabilities: capabilities.iter().map(|c| c.as_str().to_owned()).collect(),
            reason: reason.to_owned(),
            duration_seconds: duration.as_secs(),
        };
        let asked = self
            .call(request, |mut client, request| async move {
                client.elevate(request).await
            })
            .await?;
        Ok(json!({
            "requestId": asked.request_id,
            "state": "awaiting_approval",
            "expiresAt": asked.expires_at,
            "auditId": asked.audit_id,
            "next": "a person decides; the outcome arrives in your inbox",
        }))
    }

    async fn exec(&self, run: CommandRun) -> Result<ExecResponse, ToolError> {
        let request = ExecRequest {
            namespace: self.namespace(),
            session: self.session(),
            cwd: run.cwd().to_owned(),
            timeout_seconds: run.timeout_seconds(),
            command: run.command,
            args: run.args,
            stdin: run.stdin,
        };
        let mut ended = self
            .call(request, |mut client, request| async move {
                client.exec(request).await
            })
            .await?;
        match ended.message().await {
            Ok(Some(ended)) => Ok(ended),
            Ok(None) => Err(ToolError::Failed(
                "the control plane ended the command's stream without its end".into(),
            )),
            Err(status) => Err(tool_error(&status)),
        }
    }

    async fn spawn(&self, child: SpawnChild) -> Result<Value, ToolError> {
        let request = SpawnRequest {
            namespace: self.namespace(),
            session: self.session(),
            name: child.name,
            trust_level: name_of(&child.trust_level),
            prompt: child.prompt,
            image: child.image.unwrap_or_default(),
        };
        let spawned = self
            .call(request, |mut client, request| async move {
                client.spawn(request).await
            })
            .await?;
        Ok(json!({"name": spawned.name, "auditId": spawned.audit_id}))
    }
}
