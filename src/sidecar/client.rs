//! The sidecar's side of the Policy watch: connect over TLS (the control
//! plane verified against the CA bundle, see [`crate::tls::client`]) with
//! the projected token, apply every update, and reconnect with backoff
//! when the stream breaks. Any update it cannot read removes the policy,
//! and a control plane it cannot verify serves none (fail closed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::backoff::Backoff;
use super::policy_state::{NoPolicy, PolicyState, Served, Withdrawal};
use crate::cluster::root_cause;
use crate::proto::v1alpha1::policy_client::PolicyClient;
use crate::proto::v1alpha1::{
    IsolationCheck, IsolationReport, WatchRequest, policy_update::Update,
};
use crate::tls::client::{ClientTls, ClientTlsError, endpoint};
use crate::wire::decode;

/// Where and as whom the sidecar watches its policy.
#[derive(Clone, Debug)]
pub struct WatchTarget {
    /// The control plane, `https://host:port` or `host:port` (with
    /// [`ClientTls::Plaintext`], `http://host:port`).
    pub address: String,
    /// How the connection is secured and the control plane verified.
    pub tls: ClientTls,
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
    /// The address, the transport or the CA bundle is not usable.
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
    /// Connecting failed: unreachable, or (TLS) a certificate of another
    /// name, expired, or of an unknown CA; the cause says which.
    #[error("cannot connect to the control plane: {}", root_cause(.0))]
    Connect(#[from] tonic::transport::Error),
    /// The control plane refused or the stream broke.
    #[error("the control plane answered: {0}")]
    Status(#[from] tonic::Status),
}

/// The heartbeat period to ask for: a third of the staleness bound (at
/// least a second), so two heartbeats may be lost before the policy goes stale.
pub fn heartbeat_seconds(max_stale: Duration) -> u32 {
    u32::try_from((max_stale / 3).as_secs())
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Watches until the process ends, keeping `state` current. A failed
/// attempt changes nothing in `state`: the policy goes stale on its own
/// once the control plane has been silent past the bound.
pub async fn watch_forever(target: WatchTarget, state: Arc<PolicyState>) {
    let mut backoff = Backoff::streams();
    let mut reported_stale = false;
    loop {
        match watch_once(&target, &state).await {
            Ok(()) => {
                tracing::warn!("policy stream ended; reconnecting");
                backoff.reset();
            }
            Err(WatchError::Status(status)) if status.code() == tonic::Code::NotFound => {
                // The Session is gone (or unknown to this replica): deny now.
                tracing::warn!(message = status.message(), retry_in = ?backoff.retry_in(), "no such session: denying everything");
                state.update(Err(Withdrawal::Said(status.message().to_owned())));
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff.retry_in(), "policy watch failed")
            }
        }
        match state.current() {
            Err(stale @ NoPolicy::Stale { .. }) if !reported_stale => {
                tracing::error!(reason = %stale, "denying every tool but security_whoami until the control plane is back");
                reported_stale = true;
            }
            Ok(_) => reported_stale = false,
            Err(_) => {}
        }
        backoff.wait().await;
    }
}

/// One connection: returns when the stream ends.
pub async fn watch_once(target: &WatchTarget, state: &PolicyState) -> Result<(), WatchError> {
    let (mut client, request) = connect(
        target,
        WatchRequest {
            namespace: target.namespace.clone(),
            session: target.session.clone(),
            heartbeat_seconds: heartbeat_seconds(state.max_stale()),
        },
    )
    .await?;
    let mut updates = client.watch(request).await?.into_inner();
    // A heartbeat vouches only for a policy received on the same stream.
    let mut policy_seen = false;
    while let Some(update) = updates.message().await? {
        let policy = match update.update {
            Some(Update::Heartbeat(_)) if policy_seen => {
                state.heartbeat();
                continue;
            }
            Some(Update::Heartbeat(_)) => {
                return Err(WatchError::Status(tonic::Status::internal(
                    "the control plane sent a heartbeat before any policy",
                )));
            }
            Some(Update::Context(context)) => decode(&context)
                .map(|decoded| Served {
                    context: decoded,
                    provider: context.provider,
                })
                .map_err(|error| {
                    tracing::error!(%error, "unreadable policy: denying everything");
                    Withdrawal::Unreadable(error)
                }),
            Some(Update::Unavailable(reason)) => {
                tracing::warn!(%reason, "no policy for this session: denying everything");
                Err(Withdrawal::Said(reason))
            }
            None => {
                tracing::error!("unknown update from the control plane: denying everything");
                Err(Withdrawal::UnknownUpdate)
            }
        };
        if let Ok(served) = &policy {
            tracing::info!(policy_hash = %served.context.policy_hash, "policy received");
        }
        policy_seen = true;
        state.update(policy);
    }
    Ok(())
}

/// Reports the sandbox checks of the session to the control plane.
pub async fn report_isolation(
    target: &WatchTarget,
    checks: Vec<IsolationCheck>,
) -> Result<(), WatchError> {
    let (mut client, request) = connect(
        target,
        IsolationReport {
            namespace: target.namespace.clone(),
            session: target.session.clone(),
            checks,
        },
    )
    .await?;
    client.report_isolation(request).await?;
    Ok(())
}

/// A client of the control plane and `message` as a request carrying the
/// projected token.
async fn connect<T>(
    target: &WatchTarget,
    message: T,
) -> Result<(PolicyClient<Channel>, tonic::Request<T>), WatchError> {
    let (channel, bearer) = connect_channel(target).await?;
    Ok((PolicyClient::new(channel), authorized(message, bearer)))
}

/// `message` as a request carrying `bearer` (see [`bearer_of`]).
pub fn authorized<T>(message: T, bearer: MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", bearer);
    request
}

/// A channel to the control plane, and the `authorization` value to send
/// on it: the projected token, read anew each time (the kubelet rotates it).
pub async fn connect_channel(
    target: &WatchTarget,
) -> Result<(Channel, MetadataValue<Ascii>), WatchError> {
    let bearer = bearer_of(target)?;
    let channel = endpoint(&target.address, &target.tls)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok((channel, bearer))
}

/// The `authorization` header of the projected token, read anew.
pub fn bearer_of(target: &WatchTarget) -> Result<MetadataValue<Ascii>, WatchError> {
    let token =
        std::fs::read_to_string(&target.token_path).map_err(|source| WatchError::Token {
            path: target.token_path.display().to_string(),
            source,
        })?;
    format!("Bearer {}", token.trim()).parse().map_err(|_| {
        WatchError::Status(tonic::Status::unauthenticated(
            "the token is not a valid header value",
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::sidecar::policy_state::served;

    /// The control plane's address accepts connections and drops them at
    /// once, so every reconnect attempt gets as far as it can and fails.
    #[tokio::test(start_paused = true)]
    async fn failing_reconnects_do_not_keep_a_policy_in_force() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = attempts.clone();
        tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(connection);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, "token").unwrap();
        let bound = Duration::from_secs(30);
        let state = Arc::new(PolicyState::new(bound));
        state.update(Ok(served()));
        let watcher = tokio::spawn(watch_forever(
            WatchTarget {
                address: format!("http://{address}"),
                tls: ClientTls::Plaintext,
                namespace: "ns".into(),
                session: "s".into(),
                token_path,
            },
            state.clone(),
        ));
        for _ in 0..35 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let made = attempts.load(Ordering::SeqCst);
        assert!(made >= 4, "the sidecar kept retrying ({made} attempts)");
        assert!(
            matches!(state.current(), Err(NoPolicy::Stale { .. })),
            "35 s of failed reconnects, bound 30 s: {:?}",
            state.current().map(|_| "still in force")
        );
        watcher.abort();
    }

    #[test]
    fn heartbeats_are_asked_for_a_third_of_the_bound() {
        assert_eq!(heartbeat_seconds(Duration::from_secs(30)), 10);
        assert_eq!(heartbeat_seconds(Duration::from_secs(2)), 1);
        assert_eq!(heartbeat_seconds(Duration::ZERO), 1);
    }
}
