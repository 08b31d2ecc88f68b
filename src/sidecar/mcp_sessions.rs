//! The MCP sessions of the revisions that have them (up to 2025-11-25),
//! capped. The SDK's session manager keeps every session until it has been
//! idle for its keep-alive (5 minutes by default), and an `initialize`
//! costs about 50 KB: 20,000 of them took a sidecar from 26 MB to 1 GB. An
//! agent needs a few sessions, so at most [`MAX_SESSIONS`] live, and a new
//! one evicts the oldest; its client is answered 404 on its next request,
//! which the MCP spec tells it to meet with a new `initialize`. Sessions
//! idle for [`SESSION_KEEP_ALIVE`] end too.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionId, SessionManager,
};
use tokio::sync::Mutex;

/// Live MCP sessions at most.
pub const MAX_SESSIONS: usize = 16;
/// How long a session may stay idle (no request, no message to it).
pub const SESSION_KEEP_ALIVE: Duration = Duration::from_secs(120);

/// The SDK's in-memory session manager, holding at most `cap` sessions.
pub struct CappedSessions {
    inner: LocalSessionManager,
    cap: usize,
    /// The sessions created, oldest first (some may have ended since).
    created: Mutex<VecDeque<SessionId>>,
}

impl CappedSessions {
    /// At most `cap` sessions, each ended after `keep_alive` idle.
    pub fn new(cap: usize, keep_alive: Duration) -> CappedSessions {
        let mut inner = LocalSessionManager::default();
        inner.session_config.keep_alive = Some(keep_alive);
        CappedSessions {
            inner,
            cap,
            created: Mutex::default(),
        }
    }
}

impl Default for CappedSessions {
    fn default() -> CappedSessions {
        CappedSessions::new(MAX_SESSIONS, SESSION_KEEP_ALIVE)
    }
}

impl SessionManager for CappedSessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    /// Creates a session, first closing the oldest ones over the cap.
    /// Creations run one at a time, so the cap holds under concurrency.
    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let mut created = self.created.lock().await;
        {
            let live = self.inner.sessions.read().await;
            created.retain(|id| live.contains_key(id));
        }
        while created.len() >= self.cap.max(1) {
            let Some(oldest) = created.pop_front() else {
                break;
            };
            tracing::debug!(session = %oldest, "MCP session evicted: the newest {} are kept", self.cap);
            self.inner.close_session(&oldest).await?;
        }
        let (id, transport) = self.inner.create_session().await?;
        created.push_back(id.clone());
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_stream(id, message).await
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.resume(id, last_event_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_session_over_the_cap_evicts_the_oldest() {
        let sessions = CappedSessions::new(3, Duration::from_secs(60));
        let mut ids = Vec::new();
        for _ in 0..10 {
            let (id, _transport) = sessions.create_session().await.unwrap();
            ids.push(id);
        }
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(
                sessions.has_session(id).await.unwrap(),
                n >= 7,
                "session {n}"
            );
        }
        assert_eq!(sessions.inner.sessions.read().await.len(), 3);
        // A session closed by its client frees its place.
        sessions.close_session(&ids[9]).await.unwrap();
        let (newest, _transport) = sessions.create_session().await.unwrap();
        for id in [&ids[7], &ids[8], &newest] {
            assert!(sessions.has_session(id).await.unwrap());
        }
    }
}
