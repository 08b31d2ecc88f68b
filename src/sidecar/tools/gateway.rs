//! `gateway_forward`, `gateway_respond` and `gateway_queue`: a gateway
//! session's forwarding, through the broker.

use serde_json::Value;

use super::Scope;
use crate::policy::tools::arguments::{ForwardMessage, RequestAnswer};
use crate::sidecar::engine::ToolError;

/// `gateway_forward`.
pub async fn forward(scope: &Scope<'_>, forward: ForwardMessage) -> Result<Value, ToolError> {
    scope.messenger()?.forward(forward).await
}

/// `gateway_respond`.
pub async fn respond(scope: &Scope<'_>, answer: RequestAnswer) -> Result<Value, ToolError> {
    scope.messenger()?.respond(answer).await
}

/// `gateway_queue`.
pub async fn queue(scope: &Scope<'_>) -> Result<Value, ToolError> {
    scope.messenger()?.queue().await
}
