//! `Broker.Inject`: a person or a workload sends a session a message with
//! its own Kubernetes credential. RBAC decides whether it may call at all
//! (`create` on `sessions/inject`), as it decides `pods/exec`.
//!
//! - A person who may is the session's operator: the message is from
//!   `user:<name>` at the owner's level, and the session's access list
//!   (which governs agents, peers and workloads) does not apply. So RBAC
//!   must also let the person operate a session at its trust level (`use`
//!   on `trustlevels.wopr.dev` named by it, what writing the Session at
//!   that level needs): `edit` alone does not command an owner Session.
//! - A workload (a service account) arrives as its Grants say: no Grant, no
//!   standing, no message; with one, the session's access list and the
//!   workload's capabilities decide, as for any other source. A message
//!   delivered (allowed, not merely let through in warn mode) is a use of
//!   every Grant its standing comes from.
//!
//! Every outcome is an audit event of the session.
//!
//! Neither has an inbox: when a gateway session forwards their message and
//! answers it (`gateway_respond`), the result is kept with the request, and
//! `Broker.Answer` gives it to the message's sender alone, on the same
//! credential and rights as sending.

use k8s_openapi::jiff::Timestamp;
use tonic::{Request, Response, Status};

use super::{BrokerService, parse_json, store_status};
use crate::api::{Capability, Enforcement, SourceRef, SourceType, TrustLevel, name_of};
use crate::audit::{AuditEvent, EventType};
use crate::controlplane::auth::bearer;
use crate::controlplane::auth::{AuthError, Authenticator, identity_of};
use crate::controlplane::discover::DiscoverPolicy;
use crate::controlplane::refusals::{Reason as Refusal, Trail};
use crate::inbox::{InboxMessage, MessageKind};
use crate::policy::{
    Decision, EffectiveContext, Outcome, Reason, Request as PolicyRequest, Source, decide,
};
use crate::proto::v1alpha1::{
    AnswerRequest, AnswerResponse, ForwardedRequest, InjectRequest, InjectResponse,
};

/// The action audit events name for a message from outside the sessions.
pub const INJECT_ACTION: &str = "session_inject";

/// A person as the source of a message, at `trust_level`: the owner's
/// once RBAC has let them operate the session, untrusted while refused (a
/// refusal is no reason to record a caller as the session's operator).
fn person(username: &str, trust_level: TrustLevel) -> SourceRef {
    SourceRef {
        source_type: SourceType::Person.into(),
        identity: username.to_owned(),
        trust_level,
    }
}

/// A workload as the source of a message, at `trust_level`.
fn workload(account: &str, trust_level: TrustLevel) -> SourceRef {
    SourceRef {
        source_type: SourceType::ServiceAccount.into(),
        identity: account.to_owned(),
        trust_level,
    }
}

/// What was decided about a message, for its audit event.
struct Verdict {
    outcome: Outcome,
    enforcement: Enforcement,
    capability: Option<Capability>,
    reason: String,
}

/// The audit event of a message from outside to `namespace/session`.
fn injection_event(
    (namespace, session): (&str, &str),
    source: SourceRef,
    verdict: Verdict,
) -> AuditEvent {
    let mut event = AuditEvent::new(
        Timestamp::now(),
        EventType::Injection,
        namespace,
        session,
        source,
        verdict.outcome,
        verdict.enforcement,
        verdict.reason,
    );
    event.action = Some(INJECT_ACTION.to_owned());
    event.capability = verdict.capability;
    event
}

impl<D: DiscoverPolicy, A: Authenticator> BrokerService<D, A> {
    /// Records `status` as the refusal of `source`'s message, that of
    /// `caller` (its username), in `trail` (best effort: the caller is
    /// refused either way).
    async fn refuse_injection(
        &self,
        target: (&str, &str),
        (caller, trail): (&str, Trail),
        source: SourceRef,
        status: Status,
    ) -> Status {
        let verdict = Verdict {
            outcome: Outcome::Denied,
            enforcement: Enforcement::Enforce,
            capability: None,
            reason: status.message().to_owned(),
        };
        let event = injection_event(target, source, verdict);
        self.record_refusal(caller, trail, event).await;
        status
    }

    /// Where a workload's message stands: its source, the session's
    /// decision and the Grants the workload's standing comes from, or the
    /// refusal.
    fn admit_workload(
        &self,
        (namespace, session): (&str, &str),
        recipient: &EffectiveContext,
        account: (&str, &str),
    ) -> Result<(SourceRef, Decision, Vec<String>), (SourceRef, Status)> {
        let name = format!("{}/{}", account.0, account.1);
        let standing = match self.discover.workload(namespace, session, account) {
            Ok(Some(standing)) => standing,
            Ok(None) => {
                return Err((
                    workload(&name, TrustLevel::Untrusted),
                    Status::permission_denied(format!(
                        "no Grant gives serviceaccount {name} standing towards session {session}: kubectl wopr security grant serviceaccount:{name} --profile untrusted --sessions {session}"
                    )),
                ));
            }
            Err(why) => {
                let status = Status::unavailable(format!("cannot know {name}'s grants: {why}"));
                return Err((workload(&name, TrustLevel::Untrusted), status));
            }
        };
        let source = Source {
            source_type: SourceType::ServiceAccount,
            identity: &name,
            trust_level: standing.trust_level,
            capabilities: standing.capabilities,
        };
        let decision = decide(recipient, PolicyRequest::Inject(&source));
        let source_ref = workload(&name, standing.trust_level);
        if decision.outcome == Outcome::Denied {
            let status = Status::permission_denied(format!(
                "session {session} does not take messages from serviceaccount {name}: {}",
                decision.reason
            ));
            return Err((source_ref, status));
        }
        Ok((source_ref, decision, standing.grants))
    }

    pub(super) async fn inject_as_caller(
        &self,
        request: Request<InjectRequest>,
    ) -> Result<Response<InjectResponse>, Status> {
        let wire = request.get_ref();
        self.refusals
            .check_names(&[("namespace", &wire.namespace), ("session", &wire.session)])?;
        let token = bearer(request.metadata())?.to_owned();
        let InjectRequest {
            namespace,
            session,
            payload_json,
        } = request.into_inner();
        let target = (namespace.as_str(), session.as_str());
        // Looked up first for the level a person needs; why a session
        // cannot take the message is told only to a caller who may inject.
        let recipient = self.recipient(&namespace, &session);
        let level = recipient
            .as_ref()
            .ok()
            .map(|recipient| recipient.trust_level);
        let caller = match self
            .authenticator
            .may_inject(&token, &namespace, &session, level)
            .await
        {
            Ok(username) => username,
            // No right in the namespace: not its trail's to hold.
            Err(AuthError::Forbidden { username, reason }) => {
                let status = Status::permission_denied(reason);
                let source = person(&username, TrustLevel::Untrusted);
                let caller = (username.as_str(), Trail::Operator);
                return Err(self.refuse_injection(target, caller, source, status).await);
            }
            Err(AuthError::CannotOperate { username, reason }) => {
                let status = Status::permission_denied(reason);
                let source = person(&username, TrustLevel::Untrusted);
                let caller = (username.as_str(), Trail::Namespace);
                return Err(self.refuse_injection(target, caller, source, status).await);
            }
            Err(error) => return Err(self.unauthorized(error)),
        };
        let refused_caller = (caller.as_str(), Trail::Namespace);
        let account = identity_of(&caller, None).ok();
        let provisional = match &account {
            Some(account) => workload(
                &format!("{}/{}", account.namespace, account.service_account),
                TrustLevel::Untrusted,
            ),
            None => person(&caller, TrustLevel::Untrusted),
        };
        let recipient = match recipient {
            Ok(recipient) => recipient,
            Err(status) => {
                return Err(self
                    .refuse_injection(target, refused_caller, provisional, status)
                    .await);
            }
        };
        let (source, decision, grants) = match &account {
            None => {
                let decision = Decision {
                    outcome: Outcome::Allowed,
                    capability: None,
                    reason: Reason::Permitted,
                };
                (person(&caller, TrustLevel::Owner), decision, Vec::new())
            }
            Some(account) => {
                let account = (account.namespace.as_str(), account.service_account.as_str());
                match self.admit_workload(target, &recipient, account) {
                    Ok(admitted) => admitted,
                    Err((source, status)) => {
                        return Err(self
                            .refuse_injection(target, refused_caller, source, status)
                            .await);
                    }
                }
            }
        };
        let payload = match parse_json("payload_json", &payload_json) {
            Ok(payload) => payload,
            Err(status) => {
                return Err(self
                    .refuse_injection(target, refused_caller, source, status)
                    .await);
            }
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
            return Err(self
                .refuse_injection(target, refused_caller, source, store_status(error))
                .await);
        }
        self.arrivals.announce(&namespace, &session);
        if decision.outcome == Outcome::Allowed {
            self.uses.used(&namespace, &grants);
        }
        let reason = match (&account, decision.outcome) {
            (None, _) => format!(
                "delivered: {caller} may create sessions/inject and use trust level {}",
                recipient.trust_level
            ),
            (Some(_), Outcome::WouldDeny) => format!("delivered in warn mode: {}", decision.reason),
            (Some(_), _) => "delivered".to_owned(),
        };
        let verdict = Verdict {
            outcome: decision.outcome,
            enforcement: recipient.enforcement,
            capability: decision.capability,
            reason,
        };
        let event = injection_event(target, source, verdict);
        let audit_id = self.audited(event, "message's audit event").await?;
        Ok(Response::new(InjectResponse {
            message_id: message.id,
            audit_id,
        }))
    }

    /// `Broker.Answer`: the requests a gateway session made of a message
    /// the caller injected, with their results; only for the message's
    /// sender, who must still be allowed to send the session messages.
    pub(super) async fn answer_caller(
        &self,
        request: Request<AnswerRequest>,
    ) -> Result<Response<AnswerResponse>, Status> {
        let wire = request.get_ref();
        self.refusals
            .check_names(&[("namespace", &wire.namespace), ("session", &wire.session)])?;
        let token = bearer(request.metadata())?.to_owned();
        let AnswerRequest {
            namespace,
            session,
            message_id,
        } = request.into_inner();
        let level = self
            .recipient(&namespace, &session)
            .ok()
            .map(|recipient| recipient.trust_level);
        let caller =
            self.authenticator
                .may_inject(&token, &namespace, &session, level)
                .await
                .map_err(|error| match error {
                    AuthError::Forbidden { reason, .. }
                    | AuthError::CannotOperate { reason, .. } => Status::permission_denied(reason),
                    error => self.unauthorized(error),
                })?;
        let (source_type, identity) = match identity_of(&caller, None) {
            Ok(account) => (
                SourceType::ServiceAccount.as_str(),
                format!("{}/{}", account.namespace, account.service_account),
            ),
            Err(_) => (SourceType::Person.as_str(), caller),
        };
        let answers = self
            .store
            .answers(&namespace, &session, &message_id, (source_type, &identity))
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "session {session} forwarded no message {message_id} of yours (yet): name a message_id Inject returned you"
                ))
            })?;
        let requests = answers
            .into_iter()
            .map(|(forward, result)| ForwardedRequest {
                request_id: forward.id,
                state: name_of(&forward.state),
                result_json: result
                    .map(|result| serde_json::to_string(&result).expect("inbox messages serialize"))
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(AnswerResponse { requests }))
    }
}

impl<D, A> BrokerService<D, A> {
    /// The status of a credential that was not reviewed, or not accepted
    /// (counted).
    fn unauthorized(&self, error: AuthError) -> Status {
        match error {
            AuthError::Unavailable(_) => Status::unavailable(error.to_string()),
            error => {
                self.refusals.count(Refusal::Unauthenticated);
                Status::unauthenticated(error.to_string())
            }
        }
    }
}
