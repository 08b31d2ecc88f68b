//! What a session's inbox holds: messages for it from a source (another
//! session, a peer, a gateway forwarding a request, the answer to a
//! forward), kept in the store in the order they arrived until the agent
//! acknowledges them. The broker puts them there; the sidecar delivers them.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::SourceRef;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Injected by a source (`sessions_send`, a peer, an API caller).
    Message,
    /// A request a gateway forwarded under one of its rules.
    Forward,
    /// The answer to a forwarded request, back to where it came from.
    Result,
}

/// One message in a session's inbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboxMessage {
    /// A ULID; a message sent again with the same id is stored once.
    pub id: String,
    /// When it was sent.
    pub time: Timestamp,
    /// The recipient's namespace.
    pub namespace: String,
    /// The recipient session.
    pub session: String,
    /// Who sent it.
    pub source: SourceRef,
    pub kind: MessageKind,
    /// The action of a forward, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The request a forward or a result belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The Gateway a forward, or the answer to one, went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// What the sender sent, as JSON.
    pub payload: Value,
}

impl InboxMessage {
    /// A new message with a fresh id, stamped `time`.
    pub fn new(
        time: Timestamp,
        namespace: &str,
        session: &str,
        source: SourceRef,
        kind: MessageKind,
        payload: Value,
    ) -> InboxMessage {
        InboxMessage {
            id: ulid::Ulid::new().to_string(),
            time,
            namespace: namespace.to_owned(),
            session: session.to_owned(),
            source,
            kind,
            action: None,
            request_id: None,
            gateway: None,
            payload,
        }
    }
}
