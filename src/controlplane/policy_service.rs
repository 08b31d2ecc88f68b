//! The Policy gRPC service: authenticated, authorized policy streams, with
//! heartbeats when the sidecar asks for them, ended when the replica drains;
//! and the sidecars' reports on their sandboxes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::jiff::Timestamp;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::{IntervalStream, WatchStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Identity, authorize};
use super::discover::{DiscoverPolicy, Snapshot};
use super::isolation::{IsolationRecorder, pod_conditions};
use super::refusals::Refusals;
use crate::proto::v1alpha1::policy_server::Policy;
use crate::proto::v1alpha1::{
    Heartbeat, IsolationReport, IsolationReportAck, PolicyUpdate, WatchRequest,
    policy_update::Update,
};
use crate::shutdown::Shutdown;

/// The longest heartbeat period a sidecar may ask for, in seconds.
pub const MAX_HEARTBEAT_SECONDS: u32 = 60;

/// Serves each authenticated sidecar the policy of its own session, and
/// takes its reports on its sandbox.
pub struct PolicyService<D, A, R> {
    discover: Arc<D>,
    authenticator: Arc<A>,
    recorder: Arc<R>,
    refusals: Arc<Refusals>,
    shutdown: Shutdown,
}

impl<D, A: Authenticator, R> PolicyService<D, A, R> {
    /// A service serving what `discover` finds, checking callers with
    /// `authenticator` (counting refusals in `refusals`) and recording
    /// sandbox checks with `recorder`; every open stream ends when
    /// `shutdown` completes, so the server can drain.
    pub fn new(
        discover: Arc<D>,
        authenticator: Arc<A>,
        recorder: Arc<R>,
        refusals: Arc<Refusals>,
        shutdown: Shutdown,
    ) -> Self {
        PolicyService {
            discover,
            authenticator,
            recorder,
            refusals,
            shutdown,
        }
    }

    /// Checks the names, then that the caller is the sidecar of
    /// `namespace/session`.
    async fn authorize(
        &self,
        metadata: &MetadataMap,
        namespace: &str,
        session: &str,
    ) -> Result<Identity, Status> {
        let identity = self
            .refusals
            .sidecar(&*self.authenticator, metadata, (namespace, session))
            .await?;
        authorize(&identity, namespace, session)
            .map_err(|refused| Status::permission_denied(refused.to_string()))?;
        Ok(identity)
    }
}

/// The heartbeat period a watcher asked for (`None`: no heartbeats).
pub fn heartbeat_period(requested_seconds: u32) -> Option<Duration> {
    (requested_seconds > 0)
        .then(|| Duration::from_secs(u64::from(requested_seconds.min(MAX_HEARTBEAT_SECONDS))))
}

/// The wire form of a snapshot; a Session that is gone is NOT_FOUND.
fn update(snapshot: Snapshot) -> Result<PolicyUpdate, Status> {
    let update = match snapshot {
        Snapshot::Context(context) => Update::Context(*context),
        Snapshot::Unavailable(reason) => Update::Unavailable(reason),
        Snapshot::Gone(reason) => return Err(Status::not_found(reason)),
    };
    Ok(PolicyUpdate {
        update: Some(update),
    })
}

/// A heartbeat every `period`, the first one a period from now (after the
/// snapshot every stream starts with).
fn heartbeats(period: Duration) -> impl Stream<Item = PolicyUpdate> {
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    IntervalStream::new(interval).map(|_| PolicyUpdate {
        update: Some(Update::Heartbeat(Heartbeat {})),
    })
}

#[tonic::async_trait]
impl<D: DiscoverPolicy, A: Authenticator, R: IsolationRecorder> Policy for PolicyService<D, A, R> {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<PolicyUpdate, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        let WatchRequest {
            namespace,
            session,
            heartbeat_seconds,
        } = request;
        self.authorize(&metadata, &namespace, &session).await?;
        tracing::info!(%namespace, %session, "sidecar watching its policy");
        let not_found =
            || Status::not_found(format!("Session {namespace}/{session} does not exist"));
        let snapshots = self
            .discover
            .watch(&namespace, &session)
            .ok_or_else(not_found)?;
        let updates = WatchStream::new(snapshots).map(update);
        let updates = match heartbeat_period(heartbeat_seconds) {
            Some(period) => stream::select(updates, heartbeats(period).map(Ok)).boxed(),
            None => updates.boxed(),
        };
        // A Session that goes away ends its stream with NOT_FOUND.
        let updates = updates
            .scan(false, |ended, update| {
                let item = (!*ended).then(|| {
                    *ended = update.is_err();
                    update
                });
                futures::future::ready(item)
            })
            .take_until(self.shutdown.clone());
        Ok(Response::new(Box::pin(updates)))
    }

    async fn report_isolation(
        &self,
        request: Request<IsolationReport>,
    ) -> Result<Response<IsolationReportAck>, Status> {
        let reporter = request.remote_addr().map(|address| address.ip());
        let (metadata, _, report) = request.into_parts();
        let identity = self
            .authorize(&metadata, &report.namespace, &report.session)
            .await?;
        if identity.pod_name.is_none() {
            // A token made for the account (`kubectl create token`) is not
            // the pod's: only the pod's own may speak for its sandbox.
            return Err(Status::permission_denied(
                "a sandbox report needs the token bound to the session's pod",
            ));
        }
        let conditions = pod_conditions(&report.checks, Timestamp::now())
            .map_err(|malformed| Status::invalid_argument(malformed.to_string()))?;
        for check in &report.checks {
            tracing::info!(namespace = %report.namespace, session = %report.session, check = %check.r#type, status = %check.status, message = %check.message, "sandbox check reported");
        }
        self.recorder
            .record(&report.namespace, &report.session, reporter, conditions)
            .await
            .map_err(|error| Status::unavailable(format!("cannot record the checks: {error}")))?;
        Ok(Response::new(IsolationReportAck {}))
    }
}
