//! Carrying out what people decided, in the store: closing a request's
//! forward or elevation, delivering an approved forward, making an
//! approved elevation's Grant, each exactly once.

use kube::ResourceExt;

use super::Approval;
use crate::api::ApprovalType;
use crate::approval::{elevation_grant, peer_grant};
use crate::audit::EventType;
use crate::cluster::create_once;
use crate::controller::error::Error;
use crate::policy::Outcome;
use crate::store::{ElevationState, ForwardState, RequestError, StoreError};

/// Why an approved request was not carried out, and never will be: the
/// store refused its forward or elevation.
#[derive(Debug, thiserror::Error)]
pub enum NotCarried {
    /// The approved forward could not be delivered.
    #[error("nothing delivered: {0}")]
    Delivery(#[source] RequestError),
    /// The approved elevation could not be granted.
    #[error("no Grant made: {0}")]
    Grant(#[source] RequestError),
    /// The approved peer request names no session.
    #[error("no Grant made: the request names no session")]
    Peer,
}

impl Approval<'_> {
    /// Closes the request's forward or elevation in the store (telling
    /// its requester); whether this call closed it. A request the broker
    /// never filed has nothing to close.
    pub(super) async fn close(
        &self,
        forward: ForwardState,
        elevation: ElevationState,
        decided_by: Option<&str>,
        reason: &str,
    ) -> Result<bool, Error> {
        let (store, namespace, name) = (&self.ctx.store, self.namespace, self.name.as_str());
        let closed = match self.request.spec.request_type {
            ApprovalType::Forward => ignore_unknown(
                store
                    .close_forward(namespace, name, forward, decided_by, reason, self.limits)
                    .await,
            )?,
            ApprovalType::Elevation => ignore_unknown(
                store
                    .settle_elevation(namespace, name, elevation, reason, self.now, self.limits)
                    .await,
            )?
            .map(|(_, settled)| settled),
            // Nothing waits in the store: the request is the whole of it.
            ApprovalType::Peer => Some(true),
        };
        Ok(closed == Some(true))
    }

    /// Carries out an approved request once: delivers its forward, or
    /// makes its elevation's Grant; whether this call did. `Err` says why
    /// nothing was done (and never will be).
    pub(super) async fn carry(&self) -> Result<Result<bool, NotCarried>, Error> {
        let status = self.request.status.clone().unwrap_or_default();
        let decided_by = status.decided_by.as_deref();
        let approved = format!("approved by {}", decided_by.unwrap_or("someone"));
        let (store, namespace, name) = (&self.ctx.store, self.namespace, self.name.as_str());
        match self.request.spec.request_type {
            ApprovalType::Forward => {
                let delivered = match store.deliver_approved(namespace, name, self.limits).await {
                    Ok(delivered) => delivered,
                    Err(StoreError::Request(error)) => return Ok(Err(NotCarried::Delivery(error))),
                    Err(error) => return Err(error.into()),
                };
                if delivered {
                    let target = self.request.spec.target.as_deref().unwrap_or_default();
                    let reason = format!("{approved}: delivered to {target}");
                    self.record(decided_by, Outcome::Allowed, EventType::Approval, &reason)
                        .await?;
                }
                Ok(Ok(delivered))
            }
            ApprovalType::Elevation => {
                let granted = store
                    .settle_elevation(
                        namespace,
                        name,
                        ElevationState::Granted,
                        &approved,
                        self.now,
                        self.limits,
                    )
                    .await;
                let (elevation, first) = match granted {
                    Ok(granted) => granted,
                    Err(StoreError::Request(error)) => return Ok(Err(NotCarried::Grant(error))),
                    Err(error) => return Err(error.into()),
                };
                let grant = elevation_grant(&elevation);
                create_once(&self.ctx.client, &grant).await?;
                if first {
                    let until = elevation.grant_expires().map(|at| at.to_string());
                    let capabilities: Vec<&str> =
                        elevation.capabilities.iter().map(|c| c.as_str()).collect();
                    let reason = format!(
                        "{approved}: Grant {} gives {} until {}",
                        grant.name_any(),
                        capabilities.join(", "),
                        until.unwrap_or_default()
                    );
                    self.record(decided_by, Outcome::Allowed, EventType::Grant, &reason)
                        .await?;
                }
                Ok(Ok(first))
            }
            ApprovalType::Peer => {
                let Some(grant) = peer_grant(self.request) else {
                    return Ok(Err(NotCarried::Peer));
                };
                let first = create_once(&self.ctx.client, &grant).await?;
                if first {
                    let reason = format!(
                        "{approved}: Grant {} gives peer {} inject towards {}",
                        grant.name_any(),
                        crate::p2p::key::short_id(&self.request.spec.source.identity),
                        self.request.spec.target.as_deref().unwrap_or_default()
                    );
                    self.record(decided_by, Outcome::Allowed, EventType::Grant, &reason)
                        .await?;
                }
                Ok(Ok(first))
            }
        }
    }
}

/// A store step's result, with "no such forward" (an ApprovalRequest the
/// broker never filed) as `None`: there is nothing to tell anyone.
fn ignore_unknown<T>(result: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(StoreError::Request(RequestError::NotFound { .. })) => Ok(None),
        Err(error) => Err(error),
    }
}
