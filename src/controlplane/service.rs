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

use super::Shutdown;
use super::auth::{Authenticator, authorize};
use super::index::ContextIndex;
use super::isolation::{IsolationRecorder, pod_conditions};
use crate::proto::v1alpha1::policy_server::Policy;
use crate::proto::v1alpha1::{
    Heartbeat, IsolationReport, IsolationReportAck, PolicyUpdate, WatchRequest,
    policy_update::Update,
};

/// The longest heartbeat period a sidecar may ask for, in seconds.
pub const MAX_HEARTBEAT_SECONDS: u32 = 60;

/// Serves each authenticated sidecar the policy of its own session, and
/// takes its reports on its sandbox.
pub struct PolicyService<A, R> {
    index: Arc<ContextIndex>,
    authenticator: Arc<A>,
    recorder: Arc<R>,
    shutdown: Shutdown,
}

impl<A: Authenticator, R> PolicyService<A, R> {
    /// A service over `index`, checking callers with `authenticator` and
    /// recording sandbox checks with `recorder`; every open stream ends when
    /// `shutdown` completes, so the server can drain.
    pub fn new(
        index: Arc<ContextIndex>,
        authenticator: Arc<A>,
        recorder: Arc<R>,
        shutdown: Shutdown,
    ) -> Self {
        PolicyService {
            index,
            authenticator,
            recorder,
            shutdown,
        }
    }

    /// Checks that the caller is the sidecar of `namespace/session`.
    async fn authorize(
        &self,
        metadata: &MetadataMap,
        namespace: &str,
        session: &str,
    ) -> Result<(), Status> {
        let token = bearer(metadata)?;
        let identity = self
            .authenticator
            .authenticate(token)
            .await
            .map_err(|error| Status::unauthenticated(error.to_string()))?;
        authorize(&identity, namespace, session).map_err(Status::permission_denied)
    }
}

/// The bearer token of a request.
fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated(
                "missing bearer token: send `authorization: Bearer <service-account token>`",
            )
        })
}

/// The heartbeat period a watcher asked for (`None`: no heartbeats).
pub fn heartbeat_period(requested_seconds: u32) -> Option<Duration> {
    (requested_seconds > 0)
        .then(|| Duration::from_secs(u64::from(requested_seconds.min(MAX_HEARTBEAT_SECONDS))))
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
impl<A: Authenticator, R: IsolationRecorder> Policy for PolicyService<A, R> {
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
        let snapshots = WatchStream::new(self.index.subscribe(&namespace, &session))
            .map(|snapshot| snapshot.to_update());
        let updates = match heartbeat_period(heartbeat_seconds) {
            Some(period) => stream::select(snapshots, heartbeats(period)).boxed(),
            None => snapshots.boxed(),
        };
        let updates = updates.take_until(self.shutdown.clone()).map(Ok);
        Ok(Response::new(Box::pin(updates)))
    }

    async fn report_isolation(
        &self,
        request: Request<IsolationReport>,
    ) -> Result<Response<IsolationReportAck>, Status> {
        let (metadata, _, report) = request.into_parts();
        self.authorize(&metadata, &report.namespace, &report.session)
            .await?;
        let conditions =
            pod_conditions(&report.checks, Timestamp::now()).map_err(Status::invalid_argument)?;
        for check in &report.checks {
            tracing::info!(namespace = %report.namespace, session = %report.session, check = %check.r#type, status = %check.status, message = %check.message, "sandbox check reported");
        }
        self.recorder
            .record(&report.namespace, &report.session, conditions)
            .await
            .map_err(|error| Status::unavailable(format!("cannot record the checks: {error}")))?;
        Ok(Response::new(IsolationReportAck {}))
    }
}
