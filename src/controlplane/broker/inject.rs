//! `Broker.Inject`: a person or a workload sends a session a message with
//! its own Kubernetes credential. RBAC decides (`create` on
//! `sessions/inject`), as it decides `pods/exec`: whoever may do that is
//! the session's operator, so the message is from the user at the owner's
//! level, and the session's access list (which governs agents and peers)
//! does not apply. Every outcome is an audit event of the session.

use k8s_openapi::jiff::Timestamp;
use tonic::{Request, Response, Status};

use super::{BrokerService, parse_json, store_status};
use crate::api::{Enforcement, SourceRef, TrustLevel};
use crate::audit::{AuditEvent, EventType};
use crate::controlplane::auth::{AuthError, Authenticator};
use crate::controlplane::discover::DiscoverPolicy;
use crate::controlplane::service::bearer;
use crate::inbox::{InboxMessage, MessageKind};
use crate::policy::Outcome;
use crate::proto::v1alpha1::{InjectRequest, InjectResponse};

/// The action audit events name for a person's message.
pub const INJECT_ACTION: &str = "session_inject";

/// A person or a workload as the source of a message.
fn user_source(username: &str) -> SourceRef {
    SourceRef {
        source_type: "user".into(),
        identity: username.to_owned(),
        trust_level: TrustLevel::Owner,
    }
}

impl<D: DiscoverPolicy, A: Authenticator> BrokerService<D, A> {
    /// Records the outcome of a person's message to `namespace/session`.
    fn inject_event(
        namespace: &str,
        session: &str,
        source: SourceRef,
        (decision, enforcement): (Outcome, Enforcement),
        reason: &str,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(
            Timestamp::now(),
            EventType::Injection,
            namespace,
            session,
            source,
            decision,
            enforcement,
            reason.to_owned(),
        );
        event.action = Some(INJECT_ACTION.to_owned());
        event
    }

    pub(super) async fn inject_as_user(
        &self,
        request: Request<InjectRequest>,
    ) -> Result<Response<InjectResponse>, Status> {
        let token = bearer(request.metadata())?.to_owned();
        let InjectRequest {
            namespace,
            session,
            payload_json,
        } = request.into_inner();
        let refused = |source: SourceRef, status: Status| async {
            let denied = (Outcome::Denied, Enforcement::Enforce);
            let event = Self::inject_event(&namespace, &session, source, denied, status.message());
            self.record(event).await;
            status
        };
        let username = match self
            .authenticator
            .may_inject(&token, &namespace, &session)
            .await
        {
            Ok(username) => username,
            Err(AuthError::Forbidden { username, reason }) => {
                let status = Status::permission_denied(reason);
                return Err(refused(user_source(&username), status).await);
            }
            Err(error @ AuthError::Unavailable(_)) => {
                return Err(Status::unavailable(error.to_string()));
            }
            Err(error) => return Err(Status::unauthenticated(error.to_string())),
        };
        let source = user_source(&username);
        let recipient = match self.recipient(&namespace, &session) {
            Ok(recipient) => recipient,
            Err(status) => return Err(refused(source, status).await),
        };
        let payload = match parse_json("payload_json", &payload_json) {
            Ok(payload) => payload,
            Err(status) => return Err(refused(source, status).await),
        };
        let message = InboxMessage::new(
            Timestamp::now(),
            &namespace,
            &session,
            source.clone(),
            MessageKind::Message,
            payload,
        );
        let limits = self.discover.inbox_limits(&namespace);
        if let Err(error) = self.store.enqueue(&message, limits).await {
            return Err(refused(source, store_status(error)).await);
        }
        self.arrivals.announce(&namespace, &session);
        let allowed = (Outcome::Allowed, recipient.enforcement);
        let reason = format!("delivered: {username} may create sessions/inject");
        let event = Self::inject_event(&namespace, &session, source, allowed, &reason);
        let audit_id = self.audit(event).await.map_err(|error| {
            Status::unavailable(format!(
                "the message is queued but not yet audited: {error}"
            ))
        })?;
        Ok(Response::new(InjectResponse {
            message_id: message.id,
            audit_id,
        }))
    }
}
