//! The sidecar's side of the Policy watch: connect with the projected
//! token, apply every update, and reconnect with backoff when the stream
//! breaks. Any update it cannot read removes the policy (fail closed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Endpoint;

use super::policy_state::{PolicyState, Served};
use crate::controlplane::convert::decode;
use crate::proto::v1alpha1::policy_client::PolicyClient;
use crate::proto::v1alpha1::{WatchRequest, policy_update::Update};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where and as whom the sidecar watches its policy.
#[derive(Clone, Debug)]
pub struct WatchTarget {
    /// The control plane, `http://host:port` (or `host:port`).
    pub address: String,
    /// The session's namespace.
    pub namespace: String,
    /// The session.
    pub session: String,
    /// The projected service-account token (re-read at every connect: the kubelet rotates it).
    pub token_path: PathBuf,
}

/// Why the policy could not be watched (logged, then retried).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The token file cannot be read.
    #[error("cannot read the token {path}: {source}")]
    Token {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The address is not usable.
    #[error(
        "control-plane address {0:?} is invalid (TLS is not supported yet: use http:// or host:port)"
    )]
    Address(String),
    /// Connecting failed.
    #[error("cannot connect to the control plane: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The control plane refused or the stream broke.
    #[error("the control plane answered: {0}")]
    Status(#[from] tonic::Status),
}

/// The endpoint URI of `address`.
pub fn endpoint_uri(address: &str) -> Result<String, WatchError> {
    if address.starts_with("https://") {
        return Err(WatchError::Address(address.to_owned()));
    }
    Ok(if address.starts_with("http://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    })
}

/// Watches until the process ends, keeping `state` current.
pub async fn watch_forever(target: WatchTarget, state: Arc<PolicyState>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match watch_once(&target, &state).await {
            Ok(()) => {
                tracing::warn!("policy stream ended; reconnecting");
                backoff = FIRST_BACKOFF;
            }
            Err(error) => tracing::warn!(%error, retry_in = ?backoff, "policy watch failed"),
        }
        state.set_connected(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: returns when the stream ends.
pub async fn watch_once(target: &WatchTarget, state: &PolicyState) -> Result<(), WatchError> {
    let token =
        std::fs::read_to_string(&target.token_path).map_err(|source| WatchError::Token {
            path: target.token_path.display().to_string(),
            source,
        })?;
    let uri = endpoint_uri(&target.address)?;
    let channel = Endpoint::from_shared(uri.clone())
        .map_err(|_| WatchError::Address(uri))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut request = tonic::Request::new(WatchRequest {
        namespace: target.namespace.clone(),
        session: target.session.clone(),
    });
    let bearer = format!("Bearer {}", token.trim()).parse().map_err(|_| {
        WatchError::Status(tonic::Status::unauthenticated(
            "the token is not a valid header value",
        ))
    })?;
    request.metadata_mut().insert("authorization", bearer);
    let mut updates = PolicyClient::new(channel)
        .watch(request)
        .await?
        .into_inner();
    state.set_connected(true);
    while let Some(update) = updates.message().await? {
        let served = match update.update {
            Some(Update::Context(context)) => match decode(&context) {
                Ok(decoded) => Some(Served {
                    context: decoded,
                    provider: context.provider,
                }),
                Err(error) => {
                    tracing::error!(%error, "unreadable policy: denying everything");
                    None
                }
            },
            Some(Update::Unavailable(reason)) => {
                tracing::warn!(%reason, "no policy for this session: denying everything");
                None
            }
            None => None,
        };
        if let Some(served) = &served {
            tracing::info!(policy_hash = %served.context.policy_hash, "policy received");
        }
        state.update(served);
    }
    Ok(())
}
