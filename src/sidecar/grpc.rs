//! The Tools service over gRPC, served to the agent on a unix socket.

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::engine::{ToolEngine, ToolError};
use crate::contract::AUDIT_ID_METADATA;
use crate::proto::v1alpha1::tools_server::Tools;
use crate::proto::v1alpha1::{
    CallToolRequest, CallToolResponse, ListToolsRequest, ListToolsResponse, ToolInfo,
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
        ToolError::NotAvailable(_) => Status::permission_denied(message),
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
