//! `memory_read` and `memory_write`: UTF-8 files of the session's workspace.

use serde_json::{Value, json};

use super::Scope;
use crate::policy::tools::arguments::{WorkspacePath, WorkspaceWrite};
use crate::sidecar::engine::ToolError;
use crate::sidecar::workspace::WorkspaceError;

/// `memory_read`.
pub fn read(scope: &Scope<'_>, WorkspacePath { path }: WorkspacePath) -> Result<Value, ToolError> {
    let content = scope.workspace.read(&path).map_err(workspace_error)?;
    Ok(json!({"path": path, "content": content}))
}

/// `memory_write`.
pub fn write(
    scope: &Scope<'_>,
    WorkspaceWrite { path, content }: WorkspaceWrite,
) -> Result<Value, ToolError> {
    scope
        .workspace
        .write(&path, &content)
        .map_err(workspace_error)?;
    Ok(json!({"path": path, "written": content.len()}))
}

/// A path out of the workspace is the agent's mistake; anything else, the
/// tool's failure.
fn workspace_error(error: WorkspaceError) -> ToolError {
    match error {
        WorkspaceError::Escapes(_) => ToolError::InvalidArguments(error.to_string()),
        other => ToolError::Failed(other.to_string()),
    }
}
