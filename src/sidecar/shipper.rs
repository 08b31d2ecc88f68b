//! Ships the audit spool to the control plane: at least once, in order,
//! each sealed segment as one `Audit.Ingest` stream; a segment is removed
//! only once the control plane has committed it and answered. The control
//! plane stores each event once (by id), so a segment shipped twice (its
//! answer lost) costs nothing but the trip.
//!
//! A segment the control plane refuses for good is shipped again event by
//! event, so one event it will not take (whatever made it so) keeps no
//! other event out of the trail: only the events refused on their own go
//! to the spool's `rejected/` directory.

use std::sync::Arc;
use std::time::Duration;

use futures::stream;
use tonic::Code;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::backoff::Backoff;
use super::client::{WatchError, WatchTarget, authorized, connect_channel};
use super::spool::Spool;
use crate::proto::v1alpha1::IngestRequest;
use crate::proto::v1alpha1::audit_client::AuditClient;

/// How often the active segment is sealed and shipped: an event reaches
/// the store this long after its call at most, when the control plane is up.
pub const SHIP_EVERY: Duration = Duration::from_millis(200);
/// Events per message of an Ingest stream.
const EVENTS_PER_MESSAGE: usize = 500;
/// Backoff between failed attempts: doubling from the first (twice
/// [`SHIP_EVERY`]) to the last.
const RETRY_FIRST: Duration = Duration::from_millis(400);
const RETRY_LAST: Duration = Duration::from_secs(10);

/// Why a round of shipping stopped (logged, then retried).
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("the spool: {0}")]
    Spool(#[from] std::io::Error),
    #[error(transparent)]
    ControlPlane(#[from] WatchError),
}

/// Whether the control plane refused a batch for good: shipping it again
/// cannot succeed. Anything else (unavailable, a broken connection, an
/// expired token) is retried.
fn refused_for_good(code: Code) -> bool {
    matches!(code, Code::InvalidArgument | Code::PermissionDenied)
}

/// Ships every sealed segment, oldest first; returns how many events the
/// control plane took.
pub async fn ship_sealed(spool: &Spool, target: &WatchTarget) -> Result<usize, ShipError> {
    let segments = spool.sealed()?;
    if segments.is_empty() {
        return Ok(0);
    }
    let (channel, bearer) = connect_channel(target).await?;
    let mut ingest = Ingest {
        client: AuditClient::new(channel),
        bearer,
        target,
    };
    let mut shipped = 0;
    let mut waiting = spool.depth();
    for segment in segments {
        let events = Spool::read(&segment)?;
        waiting = waiting.saturating_sub(events.len());
        let refused = match ingest.batch(&events, waiting).await {
            Ok(()) => Vec::new(),
            Err(status) if refused_for_good(status.code()) => {
                tracing::warn!(segment = %segment.display(), code = ?status.code(), reason = %status.message(), "the control plane refused a batch of audit events; shipping them one by one");
                ingest.one_by_one(&events, waiting).await?
            }
            Err(status) => return Err(WatchError::Status(status).into()),
        };
        shipped += events.len() - refused.len();
        if refused.is_empty() {
            spool.remove(&segment, events.len())?;
            continue;
        }
        for (n, status) in &refused {
            tracing::error!(event = n, code = ?status.code(), reason = %status.message(), "the control plane refused an audit event");
        }
        let lines: Vec<String> = refused.iter().map(|(n, _)| events[*n].clone()).collect();
        let kept = spool.reject(&segment, &lines, events.len())?;
        tracing::error!(segment = %kept.display(), rejected = refused.len(), of = events.len(), "audit events refused by the control plane; kept in the spool's rejected/ directory");
    }
    Ok(shipped)
}

/// One sidecar's way to `Audit.Ingest`.
struct Ingest<'a> {
    client: AuditClient<Channel>,
    bearer: MetadataValue<Ascii>,
    target: &'a WatchTarget,
}

impl Ingest<'_> {
    /// Ships `events` as one batch (one stream), `waiting` more behind them.
    async fn batch(&mut self, events: &[String], waiting: usize) -> Result<(), tonic::Status> {
        if events.is_empty() {
            return Ok(());
        }
        let messages: Vec<IngestRequest> = events
            .chunks(EVENTS_PER_MESSAGE)
            .map(|chunk| IngestRequest {
                namespace: self.target.namespace.clone(),
                session: self.target.session.clone(),
                events: chunk.to_vec(),
                spool_depth: waiting as u64,
            })
            .collect();
        self.client
            .ingest(authorized(stream::iter(messages), self.bearer.clone()))
            .await
            .map(|_| ())
    }

    /// Ships `events` one batch each, in order: which ones (their index in
    /// `events`) the control plane refused for good, and why. Any other
    /// failure stops it: the segment stays, to be shipped again (what was
    /// stored is then a duplicate, skipped).
    async fn one_by_one(
        &mut self,
        events: &[String],
        waiting: usize,
    ) -> Result<Vec<(usize, tonic::Status)>, ShipError> {
        let mut refused = Vec::new();
        for (n, event) in events.iter().enumerate() {
            let behind = waiting + events.len() - n - 1;
            match self.batch(std::slice::from_ref(event), behind).await {
                Ok(()) => {}
                Err(status) if refused_for_good(status.code()) => refused.push((n, status)),
                Err(status) => return Err(WatchError::Status(status).into()),
            }
        }
        Ok(refused)
    }
}

/// Seals and ships every [`SHIP_EVERY`] until `shutdown` completes, with
/// backoff while the control plane is away; then ships what is left, for
/// up to `drain`.
pub async fn ship_forever(
    spool: Arc<Spool>,
    target: WatchTarget,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    tokio::pin!(shutdown);
    let mut wait = SHIP_EVERY;
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_LAST);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => break,
        }
        wait = match seal_and_ship(&spool, &target).await {
            Ok(_) => {
                backoff.reset();
                SHIP_EVERY
            }
            Err(error) => {
                let next = backoff.take();
                tracing::warn!(%error, retry_in = ?next, "cannot ship audit events; they stay in the spool");
                next
            }
        };
    }
    match tokio::time::timeout(drain, seal_and_ship(&spool, &target)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::error!(%error, "audit events left in the spool at exit: {}", spool.depth())
        }
        Err(_) => tracing::error!(
            "audit events left in the spool at exit (shipping took over {drain:?}): {}",
            spool.depth()
        ),
    }
}

async fn seal_and_ship(spool: &Spool, target: &WatchTarget) -> Result<usize, ShipError> {
    spool.seal()?;
    ship_sealed(spool, target).await
}
