//! `inbox_read`, `inbox_ack` and `inbox_reply`: the messages other
//! sessions sent this one, as the sidecar holds them.

use serde_json::{Value, json};

use super::Scope;
use crate::inbox::InboxMessage;
use crate::policy::tools::arguments::{InboxRead, MessageIds, RequestAnswer};
use crate::sidecar::engine::ToolError;

/// Messages `inbox_read` shows by default, and at most.
const INBOX_READ_DEFAULT: u32 = 10;
const INBOX_READ_MAX: u32 = 100;

/// `inbox_read`: the oldest messages not acknowledged yet.
pub fn read(scope: &Scope<'_>, InboxRead { limit }: InboxRead) -> Value {
    let limit = limit.unwrap_or(INBOX_READ_DEFAULT).min(INBOX_READ_MAX);
    let messages: Vec<InboxMessage> = scope
        .inbox
        .after(0, limit as usize)
        .into_iter()
        .map(|(_, message)| message)
        .collect();
    json!({"messages": messages})
}

/// `inbox_ack`: acknowledged on the control plane, then no longer shown.
pub async fn ack(scope: &Scope<'_>, MessageIds { ids }: MessageIds) -> Result<Value, ToolError> {
    let acknowledged = scope.messenger()?.ack(&ids).await?;
    scope.inbox.release(&ids);
    Ok(json!({"acknowledged": acknowledged}))
}

/// `inbox_reply`.
pub async fn reply(scope: &Scope<'_>, answer: RequestAnswer) -> Result<Value, ToolError> {
    scope.messenger()?.reply(answer).await
}
