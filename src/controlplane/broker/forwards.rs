//! Forwards through a gateway: a gateway session forwards what it received
//! under its Gateways' rules (`gateway_forward`), some waiting for a
//! person's approval (`gateway_queue`); the target answers
//! (`inbox_reply`) and the gateway sends the result back to the source
//! (`gateway_respond`).

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tonic::{Request, Response, Status};

use super::{
    BrokerService, Target, message_event, parse_json, session_source, store_status, stricter,
};
use crate::api::name_of;
use crate::approval::forward_approval;
use crate::audit::EventType;
use crate::controlplane::auth::Authenticator;
use crate::controlplane::discover::DiscoverPolicy;
use crate::policy::{Outcome, ToolId, decide_forward};
use crate::proto::v1alpha1::{
    ForwardRequest, ForwardResponse, PendingForward, QueueRequest, QueueResponse, ReplyRequest,
    ReplyResponse, RespondRequest, RespondResponse,
};
use crate::store::{Forward, ForwardState, RequestError, StoreError, new_request_id};

impl<D: DiscoverPolicy, A: Authenticator> BrokerService<D, A> {
    pub(super) async fn open_forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let (metadata, _, wire) = request.into_parts();
        let ForwardRequest {
            namespace,
            session,
            message_id,
            target,
            action,
            payload_json,
            ..
        } = wire;
        let forwarding = (EventType::Forward, ToolId::GatewayForward);
        let names = (namespace.as_str(), session.as_str());
        let mut call = self
            .sidecar(&metadata, names, Target::Message(&target), forwarding)
            .await?;
        let tool = call.decide().await?;
        if action.is_empty() {
            let status = Status::invalid_argument("action is required (query, execute, ...)");
            return Err(call.refuse(status).await);
        }
        let payload = call
            .or_refuse(parse_json("payload_json", &payload_json))
            .await?;
        let original = self
            .store
            .inbox_message(&namespace, &session, &message_id)
            .await
            .map_err(store_status)
            .and_then(|original| {
                original.ok_or_else(|| {
                    Status::not_found(format!(
                        "no message {message_id} in your inbox: forward a message you received"
                    ))
                })
            });
        let original = call.or_refuse(original).await?;
        let recipient = call.or_refuse(self.recipient(&namespace, &target)).await?;
        let decision = decide_forward(&call.caller, &recipient, &action);
        let outcome = stricter(tool.outcome, decision.outcome);
        if outcome == Outcome::Denied {
            let status = Status::permission_denied(format!(
                "cannot forward {action} to {target}: {}",
                decision.reason
            ));
            return Err(call.refuse(status).await);
        }
        let rule = decision.rule;
        let approval = rule.filter(|rule| rule.rule.require_approval);
        let now = Timestamp::now();
        let expires = approval.map(|rule| {
            now + SignedDuration::try_from(rule.approval_timeout).unwrap_or(SignedDuration::MAX)
        });
        let gateway = rule
            .map(|rule| rule.gateway)
            .or_else(|| {
                let gateways = call.caller.gateways.first();
                gateways.map(|rules| rules.gateway.as_str())
            })
            .unwrap_or_default();
        let forward = Forward {
            id: new_request_id(),
            namespace: namespace.clone(),
            gateway: gateway.to_owned(),
            gateway_session: session.clone(),
            rule_index: rule.map(|rule| rule.index as u32),
            source: original.source,
            source_message: message_id,
            target: target.clone(),
            action: action.clone(),
            payload,
            state: if approval.is_some() {
                ForwardState::AwaitingApproval
            } else {
                ForwardState::Delivered
            },
            created: now,
            expires,
        };
        let per_minute = rule.and_then(|rule| rule.rule.rate_limit.as_ref().map(|l| l.per_minute));
        let limits = self.discover.inbox_limits(&namespace);
        match self.store.open_forward(&forward, per_minute, limits).await {
            Ok(()) => {}
            Err(StoreError::Request(limited @ RequestError::RateLimited { .. })) => {
                // In the gateway's own trail: the limit is on its forwards.
                let mut event = message_event(
                    &call.caller,
                    (EventType::RateLimited, ToolId::GatewayForward),
                    &session,
                    Outcome::Denied,
                    call.caller.enforcement,
                    &limited.to_string(),
                );
                event.action = Some(action);
                self.record(event).await;
                return Err(Status::resource_exhausted(limited.to_string()));
            }
            Err(error) => return Err(call.refuse(store_status(error)).await),
        }
        if approval.is_some()
            && let Err(why) = self.writer.file(&forward_approval(&forward)).await
        {
            let reason = format!("its ApprovalRequest could not be created: {why}");
            if let Err(error) = self
                .store
                .close_forward(
                    &namespace,
                    &forward.id,
                    ForwardState::Expired,
                    None,
                    &reason,
                    limits,
                )
                .await
            {
                tracing::error!(%error, request = %forward.id, "cannot close a forward nobody can approve");
            }
            let status = Status::unavailable(format!("request {} {reason}; try again", forward.id));
            return Err(call.refuse(status).await);
        }
        let source = &forward.source;
        let mut reason = match expires {
            Some(expires) => format!(
                "request {} from {} ({}) waits for approval until {expires}",
                forward.id, source.identity, source.trust_level
            ),
            None => format!(
                "request {} from {} ({}) delivered",
                forward.id, source.identity, source.trust_level
            ),
        };
        if outcome == Outcome::WouldDeny {
            reason = format!("{reason} in warn mode: {}", decision.reason);
        }
        if expires.is_none() {
            self.arrivals.announce(&namespace, &target);
        }
        let mut event = call.event(outcome, recipient.enforcement, &reason);
        event.action = Some(action);
        let audit_id = self.audited(event, "forward").await?;
        Ok(Response::new(ForwardResponse {
            request_id: forward.id,
            state: name_of(&forward.state),
            decision: name_of(&outcome),
            audit_id,
            expires_at: expires.map(|at| at.to_string()).unwrap_or_default(),
        }))
    }

    pub(super) async fn reply_to_forward(
        &self,
        request: Request<ReplyRequest>,
    ) -> Result<Response<ReplyResponse>, Status> {
        let (metadata, _, wire) = request.into_parts();
        let ReplyRequest {
            namespace,
            session,
            request_id,
            result_json,
        } = wire;
        let replying = (EventType::Forward, ToolId::InboxReply);
        let names = (namespace.as_str(), session.as_str());
        let call = self.call(&metadata, names, Target::Own, replying).await?;
        let result = parse_json("result_json", &result_json)?;
        let limits = self.discover.inbox_limits(&namespace);
        let replier = session_source(&call.caller);
        let answer = self
            .store
            .reply_to_forward(&namespace, &request_id, &replier, result, limits)
            .await;
        // In the caller's trail: the request may not be theirs.
        let answer = call.or_refuse(answer.map_err(store_status)).await?;
        let reason = format!("answer to request {request_id}");
        let audit_id = call.record_sent(&answer, &reason).await?;
        Ok(Response::new(ReplyResponse {
            message_id: answer.id,
            audit_id,
        }))
    }

    pub(super) async fn respond_to_source(
        &self,
        request: Request<RespondRequest>,
    ) -> Result<Response<RespondResponse>, Status> {
        let (metadata, _, wire) = request.into_parts();
        let RespondRequest {
            namespace,
            session,
            request_id,
            result_json,
        } = wire;
        let responding = (EventType::Forward, ToolId::GatewayRespond);
        let names = (namespace.as_str(), session.as_str());
        let call = self.call(&metadata, names, Target::Own, responding).await?;
        let result = call
            .or_refuse(parse_json("result_json", &result_json))
            .await?;
        let limits = self.discover.inbox_limits(&namespace);
        let responder = session_source(&call.caller);
        let sent = self
            .store
            .respond_to_forward(&namespace, &request_id, &responder, result, limits)
            .await;
        let sent = call.or_refuse(sent.map_err(store_status)).await?;
        let reason = if sent.session == session {
            format!("result of request {request_id}, kept for its source (no inbox): Broker.Answer")
        } else {
            format!("result of request {request_id}")
        };
        let audit_id = call.record_sent(&sent, &reason).await?;
        Ok(Response::new(RespondResponse {
            message_id: sent.id,
            audit_id,
        }))
    }

    pub(super) async fn awaiting_approval(
        &self,
        request: Request<QueueRequest>,
    ) -> Result<Response<QueueResponse>, Status> {
        let (metadata, _, QueueRequest { namespace, session }) = request.into_parts();
        let queue = (EventType::ToolCall, ToolId::GatewayQueue);
        let names = (namespace.as_str(), session.as_str());
        self.call(&metadata, names, Target::Own, queue).await?;
        let waiting = self
            .store
            .awaiting_approval(&namespace, &session, Timestamp::now())
            .await
            .map_err(store_status)?;
        let requests = waiting
            .into_iter()
            .map(|forward| PendingForward {
                request_id: forward.id,
                gateway: forward.gateway,
                target: forward.target,
                action: forward.action,
                source_type: forward.source.source_type,
                source_identity: forward.source.identity,
                source_trust_level: name_of(&forward.source.trust_level),
                created_at: forward.created.to_string(),
                expires_at: forward.expires.map(|at| at.to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(QueueResponse { requests }))
    }
}
