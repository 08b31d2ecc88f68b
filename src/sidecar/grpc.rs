//! The Tools and Inbox services over gRPC, served to the agent on a unix
//! socket.

use std::sync::Arc;

use std::pin::Pin;

use futures::{Stream, StreamExt, stream};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::engine::{ToolEngine, ToolError};
use super::inbox::Inbox as HeldInbox;
use crate::contract::AUDIT_ID_METADATA;
use crate::proto::v1alpha1::inbox_server::Inbox;
use crate::proto::v1alpha1::tools_server::Tools;
use crate::proto::v1alpha1::{
    AcknowledgeRequest, AcknowledgeResponse, AgentMessage, CallToolRequest, CallToolResponse,
    ListToolsRequest, ListToolsResponse, MessagesRequest, ToolInfo,
};

/// The gRPC face of the tool engine.
pub struct ToolsService {
    engine: Arc<ToolEngine>,
}

impl ToolsService {
    /// A service over `engine`.
    pub fn new(engine: Arc<ToolEngine>) -> ToolsService {
        ToolsService { engine }
    }
}

/// The gRPC status of a tool error.
pub fn status_of(error: &ToolError) -> Status {
    let message = error.to_string();
    match error {
        ToolError::NotAvailable(_) | ToolError::Refused(_) => Status::permission_denied(message),
        ToolError::RateLimited(_) => Status::resource_exhausted(message),
        ToolError::InvalidArguments(_) => Status::invalid_argument(message),
        ToolError::Failed(_) => Status::failed_precondition(message),
    }
}

#[tonic::async_trait]
impl Tools for ToolsService {
    async fn list_tools(
        &self,
        _: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        let tools = self
            .engine
            .list()
            .into_iter()
            .map(|tool| ToolInfo {
                name: tool.tool().name.to_owned(),
                description: tool.tool().description.to_owned(),
                input_schema_json: tool.input_schema().to_string(),
            })
            .collect();
        Ok(Response::new(ListToolsResponse { tools }))
    }

    async fn call_tool(
        &self,
        request: Request<CallToolRequest>,
    ) -> Result<Response<CallToolResponse>, Status> {
        let CallToolRequest {
            name,
            arguments_json,
        } = request.into_inner();
        let arguments = if arguments_json.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&arguments_json).map_err(|error| {
                self.engine
                    .audit_bad_request(format!("tool {name}: arguments are not JSON: {error}"));
                Status::invalid_argument(format!("arguments_json is not JSON: {error}"))
            })?
        };
        let answer = self.engine.call(&name, &arguments).await;
        let audit_id =
            MetadataValue::try_from(answer.audit_id.as_str()).expect("a ULID is valid metadata");
        match answer.result {
            Ok(result) => {
                let mut response = Response::new(CallToolResponse {
                    result_json: result.to_string(),
                });
                response.metadata_mut().insert(AUDIT_ID_METADATA, audit_id);
                Ok(response)
            }
            Err(error) => {
                let mut status = status_of(&error);
                status.metadata_mut().insert(AUDIT_ID_METADATA, audit_id);
                Err(status)
            }
        }
    }
}

/// The inbox's gRPC face: a stream of waiting messages, and acknowledgements
/// through the engine (so they are audited and rate-limited like tools).
pub struct InboxService {
    engine: Arc<ToolEngine>,
    /// Ends every open stream (at shutdown).
    streams_end: CancellationToken,
}

impl InboxService {
    pub fn new(engine: Arc<ToolEngine>, streams_end: CancellationToken) -> InboxService {
        InboxService {
            engine,
            streams_end,
        }
    }
}

/// Where one agent's stream stands.
struct Following {
    inbox: Arc<HeldInbox>,
    arrivals: watch::Receiver<u64>,
    after: i64,
}

impl Following {
    /// The next waiting message after the last one sent, waiting for it.
    async fn next(mut self) -> Option<(Result<AgentMessage, Status>, Following)> {
        loop {
            self.arrivals.borrow_and_update();
            if let Some((seq, message)) = self.inbox.after(self.after, 1).pop() {
                self.after = seq;
                let sent = AgentMessage {
                    id: message.id.clone(),
                    message_json: serde_json::to_string(&message)
                        .expect("inbox messages serialize"),
                };
                return Some((Ok(sent), self));
            }
            self.arrivals.changed().await.ok()?;
        }
    }
}

#[tonic::async_trait]
impl Inbox for InboxService {
    type MessagesStream = Pin<Box<dyn Stream<Item = Result<AgentMessage, Status>> + Send>>;

    async fn messages(
        &self,
        _: Request<MessagesRequest>,
    ) -> Result<Response<Self::MessagesStream>, Status> {
        let inbox = self.engine.inbox().clone();
        let following = Following {
            arrivals: inbox.arrivals(),
            inbox,
            after: 0,
        };
        let messages = stream::unfold(following, Following::next)
            .take_until(self.streams_end.clone().cancelled_owned());
        Ok(Response::new(Box::pin(messages)))
    }

    async fn acknowledge(
        &self,
        request: Request<AcknowledgeRequest>,
    ) -> Result<Response<AcknowledgeResponse>, Status> {
        let ids = request.into_inner().ids;
        let answer = self.engine.call("inbox_ack", &json!({"ids": ids})).await;
        let acknowledged = answer.result.map_err(|error| status_of(&error))?;
        Ok(Response::new(AcknowledgeResponse {
            acknowledged: acknowledged["acknowledged"].as_u64().unwrap_or_default(),
        }))
    }
}
