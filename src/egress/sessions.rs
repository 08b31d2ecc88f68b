//! Which session a call is for, and its policy, by token passthrough: the
//! caller's bearer token opens the control plane's `Policy.Watch` for the
//! session it names, so the control plane checks the token exactly as for
//! the sidecar (TokenReview → pod → Session) and pushes every change (a
//! revoked grant reaches the egress service as it reaches the sidecar). The
//! egress service holds no TokenReview right of its own.
//!
//! One watch per session, shared by its calls, opened by the first call
//! with a token and kept for as long as it is fresh: a call with the same
//! token (by its SHA-256) rides on it; a call with another token opens a
//! watch of its own and, once the control plane serves it, replaces the
//! session's. A watch lives at most [`SessionSettings::max_age`] (then the
//! next call verifies anew), and a session whose watch ended or went stale
//! is denied until a new one serves a policy: fail closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::policy::{SessionPolicy, session_policy};
use crate::proto::v1alpha1::policy_client::PolicyClient;
use crate::proto::v1alpha1::{PolicyUpdate, WatchRequest, policy_update::Update};
use crate::tls::client::{ClientTls, endpoint};

/// A stream of policy updates.
pub type Updates = BoxStream<'static, Result<PolicyUpdate, Status>>;

/// Opens policy watches with a caller's token.
pub trait PolicySource: Send + Sync + 'static {
    /// `Policy.Watch` for `namespace/session`, authenticated with `token`;
    /// the control plane's refusal is the error.
    fn watch(
        &self,
        token: &str,
        namespace: &str,
        session: &str,
        heartbeat_seconds: u32,
    ) -> impl Future<Output = Result<Updates, Status>> + Send;
}

/// The control plane, reached as the sidecar reaches it (TLS verified
/// against its CA bundle, read anew at each connect).
pub struct ControlPlane {
    /// `https://host:port` or `host:port` (`http://` with plaintext).
    pub address: String,
    /// How it is verified.
    pub tls: ClientTls,
}

impl PolicySource for ControlPlane {
    async fn watch(
        &self,
        token: &str,
        namespace: &str,
        session: &str,
        heartbeat_seconds: u32,
    ) -> Result<Updates, Status> {
        let unreachable =
            |why: String| Status::unavailable(format!("cannot reach the control plane: {why}"));
        let channel = endpoint(&self.address, &self.tls)
            .map_err(|error| unreachable(error.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|error| unreachable(crate::cluster::root_cause(&error)))?;
        let mut request = tonic::Request::new(WatchRequest {
            namespace: namespace.to_owned(),
            session: session.to_owned(),
            heartbeat_seconds,
        });
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::unauthenticated("the token is not a valid header value"))?;
        request.metadata_mut().insert("authorization", bearer);
        let updates = PolicyClient::new(channel)
            .watch(request)
            .await?
            .into_inner();
        Ok(updates.boxed())
    }
}

/// How sessions' watches are kept.
#[derive(Clone, Copy, Debug)]
pub struct SessionSettings {
    /// The heartbeat period asked of the control plane; a watch silent for
    /// three of them is stale.
    pub heartbeat: Duration,
    /// How long a call waits for a new watch's first update.
    pub first_update: Duration,
    /// How long a verified watch serves before the next call verifies anew.
    pub max_age: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            heartbeat: Duration::from_secs(3),
            first_update: Duration::from_secs(5),
            max_age: Duration::from_secs(300),
        }
    }
}

/// What a watch has said so far.
#[derive(Clone, Debug)]
enum WatchState {
    /// Nothing yet.
    Waiting,
    /// The policy in force, and when the control plane last spoke.
    Policy {
        policy: Arc<SessionPolicy>,
        last_message: Instant,
    },
    /// The control plane serves no policy for the session (or one that
    /// cannot be read): deny.
    Unavailable(String),
    /// The control plane refused the watch.
    Refused(Status),
    /// The watch is over (broken, ended, or past its age).
    Ended(String),
}

/// A session's watch, as shared by its calls.
struct Entry {
    token: [u8; 32],
    state: watch::Receiver<WatchState>,
    _task: AbortOnDrop,
}

impl Entry {
    fn alive(&self) -> bool {
        !matches!(
            *self.state.borrow(),
            WatchState::Ended(_) | WatchState::Refused(_)
        )
    }
}

/// The sessions calls are for, each with its watch.
pub struct Sessions<P> {
    source: Arc<P>,
    settings: SessionSettings,
    watches: Mutex<HashMap<(String, String), Entry>>,
}

/// The bearer token of a call: `authorization: Bearer <token>`, else
/// unauthenticated (nothing is asked of anyone).
pub fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|token| !token.is_empty() && !token.contains(char::is_whitespace))
        .ok_or_else(|| {
            Status::unauthenticated(
                "missing or malformed bearer token: send `authorization: Bearer <projected service-account token>`",
            )
        })
}

impl<P: PolicySource> Sessions<P> {
    /// Sessions whose watches `source` opens.
    pub fn new(source: Arc<P>, settings: SessionSettings) -> Self {
        Sessions {
            source,
            settings,
            watches: Mutex::new(HashMap::new()),
        }
    }

    /// The policy of `namespace/session` if `token` is its sidecar's: the
    /// control plane's refusal (same code) when it is not, unavailable when
    /// no fresh policy is known.
    pub async fn policy(
        &self,
        token: &str,
        namespace: &str,
        session: &str,
    ) -> Result<Arc<SessionPolicy>, Status> {
        let key = (namespace.to_owned(), session.to_owned());
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // A stale watch is not ridden on: this call verifies anew (and is
        // refused unless the control plane answers).
        let shared = {
            let watches = self.lock();
            watches
                .get(&key)
                .filter(|entry| entry.token == digest && entry.alive())
                .map(|entry| entry.state.clone())
                .filter(|state| !self.stale(&state.borrow()))
        };
        if let Some(state) = shared {
            return self.judge(&state.borrow());
        }
        let (state, task) = self.open(token, namespace, session);
        let mut waiting = state.clone();
        let first = tokio::time::timeout(
            self.settings.first_update,
            waiting.wait_for(|state| !matches!(state, WatchState::Waiting)),
        )
        .await;
        let verdict = match first {
            Err(_) => Err(Status::unavailable(format!(
                "the control plane served no policy for {namespace}/{session} within {:?}",
                self.settings.first_update
            ))),
            Ok(Err(_)) => Err(Status::unavailable("the policy watch ended")),
            Ok(Ok(state)) => self.judge(&state),
        };
        // A watch the control plane serves (a policy, or word that it has
        // none) proves the token: it becomes the session's.
        let proven = matches!(
            *state.borrow(),
            WatchState::Policy { .. } | WatchState::Unavailable(_)
        );
        if proven {
            let mut watches = self.lock();
            watches.retain(|_, entry| entry.alive());
            watches.insert(
                key,
                Entry {
                    token: digest,
                    state,
                    _task: task,
                },
            );
        }
        verdict
    }

    /// The sessions with a watch open now.
    pub fn watched(&self) -> usize {
        self.lock().values().filter(|entry| entry.alive()).count()
    }

    /// A policy the control plane has been silent on for three heartbeats.
    fn stale(&self, state: &WatchState) -> bool {
        matches!(state, WatchState::Policy { last_message, .. }
            if last_message.elapsed() > 3 * self.settings.heartbeat)
    }

    fn judge(&self, state: &WatchState) -> Result<Arc<SessionPolicy>, Status> {
        match state {
            WatchState::Policy { policy, .. } => Ok(policy.clone()),
            WatchState::Unavailable(reason) => Err(Status::failed_precondition(format!(
                "no policy for the session: {reason}"
            ))),
            WatchState::Refused(status) => Err(passed_on(status)),
            WatchState::Ended(why) => Err(Status::unavailable(format!(
                "the policy watch ended: {why}"
            ))),
            WatchState::Waiting => Err(Status::unavailable("no policy yet")),
        }
    }

    fn open(
        &self,
        token: &str,
        namespace: &str,
        session: &str,
    ) -> (watch::Receiver<WatchState>, AbortOnDrop) {
        let (sender, receiver) = watch::channel(WatchState::Waiting);
        let source = self.source.clone();
        let (token, namespace, session) =
            (token.to_owned(), namespace.to_owned(), session.to_owned());
        let heartbeat = u32::try_from(self.settings.heartbeat.as_secs().max(1)).unwrap_or(60);
        let max_age = self.settings.max_age;
        let task = tokio::spawn(async move {
            let followed = follow(&*source, &token, &namespace, &session, heartbeat, &sender);
            let why = match tokio::time::timeout(max_age, followed).await {
                Ok(why) => why,
                Err(_) => "past its age: the next call verifies anew".to_owned(),
            };
            sender.send_if_modified(|state| {
                if matches!(state, WatchState::Refused(_)) {
                    return false;
                }
                *state = WatchState::Ended(why);
                true
            });
        });
        (receiver, AbortOnDrop(task))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Entry>> {
        self.watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The control plane's refusal as the caller gets it: the same code for
/// a refused token or session, unavailable for anything else.
fn passed_on(status: &Status) -> Status {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::NotFound | Code::InvalidArgument => {
            Status::new(status.code(), status.message())
        }
        _ => Status::unavailable(format!(
            "the control plane could not be asked: {}",
            status.message()
        )),
    }
}

/// Follows one watch into `state` until it ends; returns why it ended.
async fn follow(
    source: &impl PolicySource,
    token: &str,
    namespace: &str,
    session: &str,
    heartbeat_seconds: u32,
    state: &watch::Sender<WatchState>,
) -> String {
    let mut updates = match source
        .watch(token, namespace, session, heartbeat_seconds)
        .await
    {
        Ok(updates) => updates,
        Err(status) => {
            state.send_replace(WatchState::Refused(status));
            return "refused".to_owned();
        }
    };
    let mut seen = false;
    while let Some(next) = updates.next().await {
        let update = match next {
            Ok(update) => update.update,
            Err(status) if !seen => {
                state.send_replace(WatchState::Refused(status));
                return "refused".to_owned();
            }
            Err(status) => return format!("the stream broke: {}", status.message()),
        };
        let next = match update {
            Some(Update::Context(context)) => match session_policy(&context) {
                Ok(policy) if policy.namespace == namespace && policy.session == session => {
                    WatchState::Policy {
                        policy: Arc::new(policy),
                        last_message: Instant::now(),
                    }
                }
                Ok(_) => WatchState::Unavailable("the policy served is another session's".into()),
                Err(error) => WatchState::Unavailable(format!("unreadable policy: {error}")),
            },
            Some(Update::Unavailable(reason)) => WatchState::Unavailable(reason),
            Some(Update::Heartbeat(_)) if seen => {
                state.send_modify(|state| {
                    if let WatchState::Policy { last_message, .. } = state {
                        *last_message = Instant::now();
                    }
                });
                continue;
            }
            Some(Update::Heartbeat(_)) => return "a heartbeat before any policy".to_owned(),
            None => return "an update of an unknown kind".to_owned(),
        };
        seen = true;
        state.send_replace(next);
    }
    "the control plane ended the stream".to_owned()
}

/// Stops a task when dropped: a session's watch goes with its entry.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
