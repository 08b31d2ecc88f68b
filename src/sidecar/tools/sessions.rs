//! `sessions_list`, `sessions_history`, `sessions_send` and
//! `sessions_spawn`: the other sessions, through the broker.

use serde_json::Value;

use super::Scope;
use crate::policy::tools::arguments::{HistoryQuery, SessionMessage, SpawnChild};
use crate::sidecar::engine::ToolError;

/// `sessions_list`.
pub async fn list(scope: &Scope<'_>) -> Result<Value, ToolError> {
    scope.messenger()?.list().await
}

/// `sessions_history`.
pub async fn history(
    scope: &Scope<'_>,
    HistoryQuery { session, limit }: HistoryQuery,
) -> Result<Value, ToolError> {
    scope
        .messenger()?
        .history(&session, limit.unwrap_or(0))
        .await
}

/// `sessions_send`.
pub async fn send(
    scope: &Scope<'_>,
    SessionMessage { target, message }: SessionMessage,
) -> Result<Value, ToolError> {
    scope.messenger()?.send(&target, &message).await
}

/// `sessions_spawn`.
pub async fn spawn(scope: &Scope<'_>, child: SpawnChild) -> Result<Value, ToolError> {
    scope.messenger()?.spawn(child).await
}
