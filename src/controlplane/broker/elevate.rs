//! Elevation requests (`security_request`): a session asks a person for
//! more capabilities for a while. The request is stored, an
//! ApprovalRequest filed for a person to decide; asking again what an open
//! request asks is answered with that request.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tonic::{Request, Response, Status};

use super::{BrokerService, Target, session_source, store_status};
use crate::api::Capability;
use crate::approval::{ELEVATION_TIMEOUT, check_elevation, elevation_approval};
use crate::audit::EventType;
use crate::controlplane::auth::Authenticator;
use crate::controlplane::discover::DiscoverPolicy;
use crate::policy::{Outcome, ToolId};
use crate::proto::v1alpha1::{ElevateRequest, ElevateResponse};
use crate::store::{Elevation, ElevationState, Opened, new_request_id};

impl<D: DiscoverPolicy, A: Authenticator> BrokerService<D, A> {
    pub(super) async fn request_elevation(
        &self,
        request: Request<ElevateRequest>,
    ) -> Result<Response<ElevateResponse>, Status> {
        let (metadata, _, wire) = request.into_parts();
        let ElevateRequest {
            namespace,
            session,
            capabilities,
            reason,
            duration_seconds,
        } = wire;
        let asking = (EventType::Approval, ToolId::SecurityRequest);
        let names = (namespace.as_str(), session.as_str());
        let call = self.call(&metadata, names, Target::Own, asking).await?;
        let capabilities = capabilities
            .iter()
            .map(|name| name.parse())
            .collect::<Result<Vec<Capability>, _>>()
            .map_err(|unknown| Status::invalid_argument(unknown.to_string()));
        let capabilities = call.or_refuse(capabilities).await?;
        let duration = Duration::from_secs(duration_seconds);
        if let Err(why) = check_elevation(&capabilities, &reason, duration) {
            let status = Status::invalid_argument(format!("cannot ask for that: {why}"));
            return Err(call.refuse(status).await);
        }
        let now = Timestamp::now();
        let timeout =
            SignedDuration::try_from(ELEVATION_TIMEOUT).expect("the elevation timeout is small");
        let elevation = Elevation {
            id: new_request_id(),
            namespace: namespace.clone(),
            session: session.clone(),
            capabilities,
            duration,
            reason,
            state: ElevationState::AwaitingApproval,
            created: now,
            expires: now + timeout,
            granted: None,
        };
        let opened = self
            .store
            .open_elevation(&elevation, self.max_open_elevations)
            .await;
        // The request that answers, and why.
        let (answer, reason) = match opened {
            // Asked again (an agent retrying, or looping): the open
            // request is the answer; nothing new for a person to read.
            Ok(Opened::Existing(existing)) => {
                let reason = format!(
                    "asked again what request {} asks: answered with it; it waits for a person until {}",
                    existing.id, existing.expires
                );
                (existing, reason)
            }
            Ok(Opened::New) => {
                let approval = elevation_approval(&elevation, session_source(&call.caller));
                if let Err(why) = self.writer.file(&approval).await {
                    let reason = format!("its ApprovalRequest could not be created: {why}");
                    let limits = self.discover.inbox_limits(&namespace);
                    let closed = self
                        .store
                        .settle_elevation(
                            &namespace,
                            &elevation.id,
                            ElevationState::Expired,
                            &reason,
                            now,
                            limits,
                        )
                        .await;
                    if let Err(error) = closed {
                        tracing::error!(%error, request = %elevation.id, "cannot close an elevation nobody can approve");
                    }
                    let status = Status::unavailable(format!(
                        "request {} {reason}; try again",
                        elevation.id
                    ));
                    return Err(call.refuse(status).await);
                }
                let asked: Vec<&str> = elevation.capabilities.iter().map(|c| c.as_str()).collect();
                let reason = format!(
                    "asked for {} for {} s (request {}): {}; waits for a person until {}",
                    asked.join(", "),
                    duration.as_secs(),
                    elevation.id,
                    elevation.reason,
                    elevation.expires
                );
                (elevation, reason)
            }
            Ok(Opened::Full { open }) => {
                let status = Status::resource_exhausted(format!(
                    "session {session} has {open} open elevation requests, the limit is {}: wait for a person to decide one (or for it to expire at most {} s after it was made)",
                    self.max_open_elevations,
                    ELEVATION_TIMEOUT.as_secs()
                ));
                return Err(call.refuse(status).await);
            }
            Err(error) => return Err(call.refuse(store_status(error)).await),
        };
        let event = call.event(Outcome::Allowed, call.caller.enforcement, &reason);
        let audit_id = self.audited(event, "request").await?;
        Ok(Response::new(ElevateResponse {
            request_id: answer.id,
            expires_at: answer.expires.to_string(),
            audit_id,
        }))
    }
}
