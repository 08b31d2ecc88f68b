//! `PeerAdmin.CreateInvite`: a person invites a peer. The invite is signed
//! with the namespace's ingress key, and claiming it makes a Grant as the
//! operator, so the person must hold what writing that Grant would need
//! (the escalation guard's rule, asked of RBAC here): an invite is never a
//! way around it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::SignedDuration;
use tonic::{Request, Response, Status};

use super::claims::{invite_scope, invited_grant};
use super::grant_capabilities;
use crate::api::{SourceRef, SourceType, TrustLevel, check_label};
use crate::audit::{AuditEvent, EventType};
use crate::clock::Clock;
use crate::controlplane::auth::{AuthError, Authenticator, bearer};
use crate::p2p::PeerKey;
use crate::p2p::invite::{self, Invite};
use crate::policy::{Outcome, level_conferred};
use crate::proto::v1alpha1::peer_admin_server::PeerAdmin;
use crate::proto::v1alpha1::{CreateInviteRequest, CreateInviteResponse};
use crate::store::Store;

use super::keys::IngressKeys;

/// How long an invite may be claimed unless asked otherwise (WOPR's 168 h).
pub const DEFAULT_INVITE_LIFETIME: Duration = Duration::from_secs(168 * 3600);
/// The longest an invite may be claimable.
pub const MAX_INVITE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Serves `PeerAdmin` to people, with their Kubernetes credential.
pub struct PeerAdminService<A> {
    authenticator: Arc<A>,
    keys: Arc<dyn IngressKeys>,
    store: Store,
    clock: Clock,
}

impl<A: Authenticator> PeerAdminService<A> {
    pub fn new(
        authenticator: Arc<A>,
        keys: Arc<dyn IngressKeys>,
        store: Store,
        clock: Clock,
    ) -> Self {
        PeerAdminService {
            authenticator,
            keys,
            store,
            clock,
        }
    }
}

/// A random nonce for an invite (a ULID: unique, 26 characters).
fn nonce() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

#[tonic::async_trait]
impl<A: Authenticator> PeerAdmin for PeerAdminService<A> {
    async fn create_invite(
        &self,
        request: Request<CreateInviteRequest>,
    ) -> Result<Response<CreateInviteResponse>, Status> {
        let token = bearer(request.metadata())?.to_owned();
        let wire = request.into_inner();
        check_label("namespace", &wire.namespace)
            .map_err(|why| Status::invalid_argument(why.to_string()))?;
        let subject = PeerKey::parse(&wire.peer_key)
            .map_err(|why| Status::invalid_argument(format!("peer_key: {why}")))?;
        if wire.sessions.is_empty() {
            return Err(Status::invalid_argument(
                "name the sessions the invite reaches (--session S, or --session '*' for all)",
            ));
        }
        for session in wire.sessions.iter().filter(|session| *session != "*") {
            check_label("session", session)
                .map_err(|why| Status::invalid_argument(why.to_string()))?;
        }
        let capabilities =
            grant_capabilities(&wire.capabilities).map_err(Status::invalid_argument)?;
        let lifetime = match wire.expires_seconds {
            0 => DEFAULT_INVITE_LIFETIME,
            seconds => Duration::from_secs(seconds),
        };
        if lifetime > MAX_INVITE_LIFETIME {
            return Err(Status::invalid_argument(format!(
                "an invite may be claimable for {} h at most",
                MAX_INVITE_LIFETIME.as_secs() / 3600
            )));
        }
        let level = level_conferred(&capabilities);
        if level == TrustLevel::Owner {
            return Err(Status::invalid_argument(
                "an invite's Grant never confers owner: name fewer capabilities",
            ));
        }
        let username =
            self.authenticator
                .may_grant(&token, &wire.namespace, level)
                .await
                .map_err(|error| match error {
                    AuthError::Forbidden { reason, .. }
                    | AuthError::CannotOperate { reason, .. } => Status::permission_denied(reason),
                    AuthError::Unavailable(why) => Status::unavailable(why),
                    error => Status::unauthenticated(error.to_string()),
                })?;
        let key =
            self.keys.key(&wire.namespace).await.map_err(|why| {
                Status::unavailable(format!("the namespace's ingress key: {why}"))
            })?;
        let now = self.clock.now();
        let expires = now + SignedDuration::try_from(lifetime).expect("a bounded lifetime fits");
        let sessions: Vec<String> = wire
            .sessions
            .iter()
            .map(|session| format!("{}/{session}", wire.namespace))
            .collect();
        let nonce = nonce();
        let token = invite::issue(
            &key,
            &subject,
            &sessions,
            &wire.capabilities,
            expires.as_millisecond(),
            &nonce,
        );
        // What a claim would make, checked now: an invite that cannot be
        // claimed is not handed out.
        let parsed: Invite = invite::parse(&token)
            .map_err(|why| Status::internal(format!("the invite does not parse: {why}")))?;
        let (namespace, scope) = invite_scope(&parsed).map_err(Status::internal)?;
        invited_grant(&parsed, &namespace, scope).map_err(Status::internal)?;
        let source = SourceRef {
            source_type: SourceType::Person.into(),
            identity: username.clone(),
            trust_level: level,
        };
        let event = AuditEvent::new(
            now,
            EventType::Grant,
            &wire.namespace,
            "",
            source,
            Outcome::Allowed,
            crate::api::Enforcement::Enforce,
            format!(
                "{username} invited peer {} to {} with {} until {expires}",
                subject.short_id(),
                wire.sessions.join(", "),
                wire.capabilities.join(", ")
            ),
        );
        self.store
            .insert_events(&[event])
            .await
            .map_err(|error| Status::unavailable(format!("cannot record the invite: {error}")))?;
        Ok(Response::new(CreateInviteResponse {
            token,
            expires_at: expires.to_string(),
            ingress_key: key.public_key().as_str().to_owned(),
            ingress_key_id: key.public_key().short_id(),
        }))
    }
}
