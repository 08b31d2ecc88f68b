//! The Fetch gRPC service: authenticates each call by token passthrough
//! as the Models service does (one watch per session, shared with it),
//! decides it again from the session's policy it holds itself (the
//! sidecar's decision is never trusted: `policy::decide`, then
//! `tools.rules`), fetches through the guard ([`super::Fetcher`]) and
//! records every outcome in its own audit trail.

use std::sync::Arc;

use serde_json::json;
use tonic::{Request, Response, Status};

use super::{Fetched, Fetcher, Stopped};
use crate::api::{Capability, Enforcement, SourceRef, TrustLevel, name_of};
use crate::audit::{AuditEvent, AuditSink, EventType, FetchRecord};
use crate::clock::Clock;
use crate::egress::policy::SessionPolicy;
use crate::egress::sessions::{PolicySource, Sessions, bearer};
use crate::policy::tools::argument_rules;
use crate::policy::{Outcome, ToolCall, ToolId, decide};
use crate::proto::v1alpha1::fetch_server::Fetch;
use crate::proto::v1alpha1::{FetchCall, FetchHeader, FetchReply, FetchResult};

/// The Fetch service.
pub struct FetchService<P> {
    inner: Arc<Inner<P>>,
}

struct Inner<P> {
    sessions: Arc<Sessions<P>>,
    fetcher: Fetcher,
    audit: Arc<dyn AuditSink>,
    clock: Clock,
}

impl<P: PolicySource> FetchService<P> {
    /// A service learning sessions' policies from `sessions` (the Models
    /// service's), fetching with `fetcher`, recording every decision in
    /// `audit`.
    pub fn new(
        sessions: Arc<Sessions<P>>,
        fetcher: Fetcher,
        audit: Arc<dyn AuditSink>,
        clock: Clock,
    ) -> Self {
        FetchService {
            inner: Arc::new(Inner {
                sessions,
                fetcher,
                audit,
                clock,
            }),
        }
    }
}

/// What a call came to before its reply is written.
struct Verdict {
    decision: Outcome,
    reason: String,
    fetched: Option<Fetched>,
}

#[tonic::async_trait]
impl<P: PolicySource> Fetch for FetchService<P> {
    async fn fetch(&self, request: Request<FetchCall>) -> Result<Response<FetchReply>, Status> {
        let (metadata, _, call) = request.into_parts();
        let verified = match bearer(&metadata) {
            Err(status) => Err(status),
            Ok(_) if call.namespace.is_empty() || call.session.is_empty() => Err(
                Status::invalid_argument("namespace and session are required"),
            ),
            Ok(token) => {
                self.inner
                    .sessions
                    .policy(token, &call.namespace, &call.session)
                    .await
            }
        };
        let policy = verified.inspect_err(|status| self.inner.unattributed(&call, status))?;
        let arguments = json!({
            "url": call.url,
            "method": (!call.method.is_empty()).then_some(&call.method),
            "headers": call.headers,
            "body": (!call.body.is_empty()).then_some(&call.body),
        });
        let parsed = match ToolCall::parse(ToolId::HttpFetch, arguments) {
            Ok(ToolCall::HttpFetch(request)) => request,
            Ok(_) => return Err(Status::internal("http_fetch parsed as another tool")),
            Err(invalid) => {
                let status = Status::invalid_argument(format!("invalid arguments: {invalid}"));
                self.inner.unattributed(&call, &status);
                return Err(status);
            }
        };
        let verdict = self.inner.decide_and_fetch(&policy, parsed).await;
        let reply = self.inner.finish(&policy, &call, verdict);
        Ok(Response::new(reply))
    }
}

impl<P: PolicySource> Inner<P> {
    /// Decides the call as the sidecar should have, then fetches it.
    async fn decide_and_fetch(
        &self,
        policy: &SessionPolicy,
        request: crate::policy::tools::arguments::FetchRequest,
    ) -> Verdict {
        let context = &policy.context;
        let refused = |reason: String| Verdict {
            decision: Outcome::Denied,
            reason,
            fetched: None,
        };
        let decision = decide(context, crate::policy::Request::Tool(ToolId::HttpFetch));
        if !decision.proceeds() {
            return refused(format!(
                "refused by the egress service: {}",
                decision.reason
            ));
        }
        let mut would_deny = Vec::new();
        if decision.outcome == Outcome::WouldDeny {
            would_deny.push(decision.reason.to_string());
        }
        let call = ToolCall::HttpFetch(request);
        if let Err(breach) = argument_rules::check(&call, &context.rules) {
            match context.enforcement {
                Enforcement::Enforce => return refused(breach.to_string()),
                Enforcement::Warn => would_deny.push(breach.to_string()),
            }
        }
        let ToolCall::HttpFetch(request) = call else {
            return refused("http_fetch parsed as another tool".into());
        };
        let fetched = self
            .fetcher
            .fetch(&request, &context.rules, context.enforcement)
            .await;
        would_deny.extend(fetched.would_deny.iter().cloned());
        let (decision, reason) = match &fetched.result {
            Ok(answer) => (
                Outcome::Allowed,
                format!(
                    "fetched: HTTP {}, {} bytes",
                    answer.status,
                    answer.body.len()
                ),
            ),
            Err(Stopped::Refused(why)) => (Outcome::Denied, why.clone()),
            Err(Stopped::Failed(why)) => (Outcome::Allowed, why.clone()),
        };
        let (decision, reason) = match (decision, would_deny.is_empty()) {
            (Outcome::Allowed, false) => (
                Outcome::WouldDeny,
                format!("{reason}; warn mode let through: {}", would_deny.join("; ")),
            ),
            other => (other.0, reason),
        };
        Verdict {
            decision,
            reason,
            fetched: Some(fetched),
        }
    }

    /// The reply, recorded in the audit trail.
    fn finish(&self, policy: &SessionPolicy, call: &FetchCall, verdict: Verdict) -> FetchReply {
        let mut reply = FetchReply {
            result: FetchResult::Refused.into(),
            decision: name_of(&verdict.decision),
            reason: verdict.reason,
            host: FetchRecord::host_of(&call.url),
            final_url: call.url.clone(),
            enforcement: name_of(&policy.enforcement),
            policy_hash: policy.policy_hash.clone(),
            ..FetchReply::default()
        };
        if let Some(fetched) = verdict.fetched {
            reply.final_url = fetched.final_url;
            reply.address = fetched.address.map(|a| a.to_string()).unwrap_or_default();
            reply.redirects = fetched.redirects;
            match fetched.result {
                Ok(answer) => {
                    reply.result = FetchResult::Fetched.into();
                    reply.status = u32::from(answer.status);
                    reply.headers = answer
                        .headers
                        .iter()
                        .map(|(name, value)| FetchHeader {
                            name: name.to_string(),
                            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                        })
                        .collect();
                    reply.body = answer.body;
                }
                Err(Stopped::Refused(_)) => reply.result = FetchResult::Refused.into(),
                Err(Stopped::Failed(_)) => reply.result = FetchResult::Failed.into(),
            }
        }
        let mut event = self.event(
            &policy.namespace,
            &policy.session,
            policy.trust_level,
            verdict.decision,
            policy.enforcement,
            reply.reason.clone(),
        );
        event.policy_hash = Some(policy.policy_hash.clone());
        event.fetch = Some(FetchRecord::of(call, &reply));
        self.audit.record(&event.bounded());
        reply
    }

    /// Records a call refused before any session could be vouched for,
    /// or with arguments that do not parse.
    fn unattributed(&self, call: &FetchCall, status: &Status) {
        let mut event = self.event(
            &call.namespace,
            &call.session,
            TrustLevel::Untrusted,
            Outcome::Denied,
            Enforcement::Enforce,
            format!(
                "http_fetch refused ({:?}): {}",
                status.code(),
                status.message()
            ),
        );
        event.fetch = Some(FetchRecord::of(call, &FetchReply::default()));
        self.audit.record(&event.bounded());
    }

    fn event(
        &self,
        namespace: &str,
        session: &str,
        trust_level: TrustLevel,
        decision: Outcome,
        enforcement: Enforcement,
        reason: String,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(
            self.clock.now(),
            EventType::ToolCall,
            namespace,
            session,
            SourceRef {
                source_type: "session".into(),
                identity: session.to_owned(),
                trust_level,
            },
            decision,
            enforcement,
            reason,
        );
        event.tool = Some(ToolId::HttpFetch.tool().name.to_owned());
        event.capability = Some(Capability::InjectNetwork);
        event
    }
}
