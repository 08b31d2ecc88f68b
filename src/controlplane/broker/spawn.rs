//! `sessions_spawn`: a session starts a child at its trust level or lower,
//! within its SecurityPolicy's limit on children, counted in the store so
//! the limit holds across replicas.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tonic::{Request, Response, Status};

use super::{BrokerService, Target};
use crate::api::{Capability, TrustLevel, from_name};
use crate::audit::EventType;
use crate::cluster::{FIELD_MANAGER, MANAGED_BY_LABEL};
use crate::controlplane::auth::Authenticator;
use crate::controlplane::discover::DiscoverPolicy;
use crate::controlplane::writes::WriteError;
use crate::policy::{
    PARENT_LABEL, Reason, Request as PolicyRequest, SpawnRefusal, SpawnRequest as ChildRequest,
    ToolId, child_session, decide,
};
use crate::proto::v1alpha1::{SpawnRequest, SpawnResponse};
use crate::store::Reservation;

impl<D: DiscoverPolicy, A: Authenticator> BrokerService<D, A> {
    pub(super) async fn spawn_child(
        &self,
        request: Request<SpawnRequest>,
    ) -> Result<Response<SpawnResponse>, Status> {
        let (metadata, _, wire) = request.into_parts();
        let SpawnRequest {
            namespace,
            session,
            name,
            trust_level,
            prompt,
            image,
        } = wire;
        let spawning = (EventType::ToolCall, ToolId::SessionsSpawn);
        let names = (namespace.as_str(), session.as_str());
        let mut call = self
            .sidecar(&metadata, names, Target::Own, spawning)
            .await?;
        // Decided as a spawn at the level asked, below, not as a bare tool.
        call.capability = Some(Capability::SessionSpawn);
        let Some(level) = from_name::<TrustLevel>(&trust_level) else {
            let status = Status::invalid_argument(format!("{trust_level:?} is not a trust level"));
            return Err(call.refuse(status).await);
        };
        let decision = decide(&call.caller, PolicyRequest::Spawn(level));
        if !decision.proceeds() {
            let status = match decision.reason {
                Reason::SpawnAboveOwnLevel { .. } => {
                    Status::permission_denied(decision.reason.to_string())
                }
                _ => Status::permission_denied(format!(
                    "tool not available: {}",
                    ToolId::SessionsSpawn
                )),
            };
            return Err(call.refuse(status).await);
        }
        let Some(parent) = self.discover.session(&namespace, &session) else {
            let status = Status::failed_precondition(format!("session {session} cannot be read"));
            return Err(call.refuse(status).await);
        };
        let children: Vec<String> = self
            .discover
            .sessions(&namespace)
            .into_iter()
            .filter(|name| {
                self.discover
                    .session(&namespace, name)
                    .is_some_and(|child| {
                        let labels = child.metadata.labels.as_ref();
                        labels.and_then(|labels| labels.get(PARENT_LABEL)) == Some(&session)
                    })
            })
            .collect();
        let policy = self.discover.spawn_policy(&namespace);
        let wanted = ChildRequest {
            name: &name,
            trust_level: level,
            prompt: &prompt,
            image: Some(image.as_str()).filter(|image| !image.is_empty()),
        };
        let made = child_session(&parent, &call.caller, wanted, &policy, children.len());
        let mut child = match made {
            Ok(child) => child,
            Err(full @ SpawnRefusal::TooManyChildren { .. }) => {
                return Err(call
                    .refuse(Status::resource_exhausted(full.to_string()))
                    .await);
            }
            Err(SpawnRefusal::Invalid(why)) => {
                return Err(call.refuse(Status::invalid_argument(why)).await);
            }
        };
        // The cache may not show children spawned a moment ago, here or on
        // another replica: the store counts them too, under the parent's lock.
        let place = (namespace.as_str(), session.as_str(), name.as_str());
        match self
            .store
            .reserve_child(place, &children, policy.max_children, Timestamp::now())
            .await
        {
            Ok(Reservation::Reserved) => {}
            Ok(Reservation::Full { children }) => {
                let full = SpawnRefusal::TooManyChildren {
                    parent: session.clone(),
                    children,
                    limit: policy.max_children,
                };
                return Err(call
                    .refuse(Status::resource_exhausted(full.to_string()))
                    .await);
            }
            Err(error) => {
                let status = Status::unavailable(format!("cannot count the children: {error}"));
                return Err(call.refuse(status).await);
            }
        }
        child
            .labels_mut()
            .insert(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned());
        match self.writer.create_session(&child).await {
            Ok(()) => {}
            Err(error @ WriteError::Exists(_)) => {
                return Err(call.refuse(Status::already_exists(error.to_string())).await);
            }
            Err(WriteError::Failed(why)) => {
                if let Err(error) = self.store.release_child(&namespace, &name).await {
                    tracing::warn!(%error, child = %name, "its place stays taken until it lapses");
                }
                let status = Status::unavailable(format!("cannot create the session: {why}"));
                return Err(call.refuse(status).await);
            }
        }
        let reason = format!("spawned {name} ({level}) under {session}");
        let event = call.event(decision.outcome, call.caller.enforcement, &reason);
        let audit_id = self.audited(event, "spawn").await?;
        Ok(Response::new(SpawnResponse { name, audit_id }))
    }
}
