//! ApprovalRequests, as the control plane files them and the controller
//! carries them out: the object a forward or an elevation waiting for a
//! person becomes, the Grant an approved elevation makes, and the one step
//! an ApprovalRequest needs next. Pure; the I/O is the
//! roles'.
//!
//! A request's life: filed without a status (shown `Pending` by the
//! controller); a person sets `Approved` or `Denied` with `decidedBy` (the
//! chart's ValidatingAdmissionPolicy makes sure that is who they are);
//! the controller then carries out an approval once and marks it
//! `Completed`, tells the requester of a denial, and closes a request
//! nobody decided in time as `Expired`. What is delivered comes from the
//! store, never from the object, whose spec people with the right to
//! create ApprovalRequests could write.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{
    ApprovalRequest, ApprovalRequestSpec, ApprovalState, ApprovalType, Capability, Grant,
    GrantSpec, GrantSubject, MAX_PAYLOAD_BYTES, SourceRef,
};
use crate::cluster::managed_meta;
use crate::store::{Elevation, Forward};

/// The label naming the Gateway of a forward's ApprovalRequest.
pub const GATEWAY_LABEL: &str = "wopr.dev/gateway";
/// The label naming the session a request is for.
pub const TARGET_LABEL: &str = "wopr.dev/target";
/// The label naming the ApprovalRequest a Grant was made for.
pub const APPROVAL_LABEL: &str = "wopr.dev/approval-request";

/// How long an elevation request waits for a person (a Gateway's default
/// `approvalTimeout`).
pub const ELEVATION_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an elevation lasts when the session does not say.
pub const DEFAULT_ELEVATION: Duration = Duration::from_secs(3600);
/// The shortest and the longest elevation a session may ask for.
pub const MIN_ELEVATION: Duration = Duration::from_secs(60);
pub const MAX_ELEVATION: Duration = Duration::from_secs(24 * 3600);
/// The most capabilities one request asks for (the CRD's bound).
pub const MAX_REQUESTED_CAPABILITIES: usize = 16;
/// The longest reason (the CRD's bound).
pub const MAX_REASON_BYTES: usize = 4096;

/// Why an elevation request would never be carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElevationRefusal {
    #[error("name at least one capability")]
    NoCapability,
    #[error("ask for at most {MAX_REQUESTED_CAPABILITIES} capabilities at once")]
    TooManyCapabilities,
    #[error("`*` is the owner's alone: name the capabilities you need")]
    Wildcard,
    #[error("give a reason (at most {MAX_REASON_BYTES} bytes): a person reads it")]
    Reason,
    #[error(
        "the duration must be between {} and {} seconds",
        MIN_ELEVATION.as_secs(),
        MAX_ELEVATION.as_secs()
    )]
    Duration,
}

/// Why an elevation request would never be carried out, if it would not.
pub fn check_elevation(
    capabilities: &[Capability],
    reason: &str,
    duration: Duration,
) -> Result<(), ElevationRefusal> {
    if capabilities.is_empty() {
        return Err(ElevationRefusal::NoCapability);
    }
    if capabilities.len() > MAX_REQUESTED_CAPABILITIES {
        return Err(ElevationRefusal::TooManyCapabilities);
    }
    if capabilities.contains(&Capability::All) {
        return Err(ElevationRefusal::Wildcard);
    }
    if reason.trim().is_empty() || reason.len() > MAX_REASON_BYTES {
        return Err(ElevationRefusal::Reason);
    }
    if !(MIN_ELEVATION..=MAX_ELEVATION).contains(&duration) {
        return Err(ElevationRefusal::Duration);
    }
    Ok(())
}

/// The ApprovalRequest of an elevation request, named by its id.
pub fn elevation_approval(elevation: &Elevation, source: SourceRef) -> ApprovalRequest {
    let labels = [(TARGET_LABEL, elevation.session.as_str())];
    ApprovalRequest {
        metadata: managed_meta(&elevation.id, &elevation.namespace, &labels),
        spec: ApprovalRequestSpec {
            request_type: ApprovalType::Elevation,
            gateway: None,
            source,
            target: Some(elevation.session.clone()),
            action: None,
            payload: None,
            requested_capabilities: elevation.capabilities.clone(),
            reason: Some(elevation.reason.clone()),
            duration: Some(elevation.duration.into()),
            expires_at: Time(elevation.expires),
        },
        status: None,
    }
}

/// The Grant an approved elevation makes: the capabilities asked for, to
/// the session that asked, from when the approval was carried out; named
/// `elevation-<id>`.
pub fn elevation_grant(elevation: &Elevation) -> Grant {
    let labels = [(APPROVAL_LABEL, elevation.id.as_str())];
    let name = format!("elevation-{}", elevation.id);
    Grant {
        metadata: managed_meta(&name, &elevation.namespace, &labels),
        spec: GrantSpec {
            subject: GrantSubject::session(&elevation.session),
            profile: None,
            capabilities: elevation.capabilities.clone(),
            sessions: Vec::new(),
            not_before: None,
            expires_at: elevation.grant_expires().map(Time),
            previous_keys: Vec::new(),
        },
        status: None,
    }
}

/// How long a peer's request to be accepted waits for a person.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The ApprovalRequest of a peer without a Grant that sent `session` a
/// message while `p2p.autoAccept` is off: one per peer and session (named
/// by a digest of both, so the peer's next messages file it again as the
/// same request), expiring after [`PEER_TIMEOUT`].
pub fn peer_approval(
    namespace: &str,
    session: &str,
    source: SourceRef,
    reason: String,
    now: Timestamp,
) -> ApprovalRequest {
    let digest = crate::policy::stable_hash(&[namespace, session, &source.identity]);
    let name = format!("peer-{digest}");
    let labels = [(TARGET_LABEL, session)];
    let expires =
        now + k8s_openapi::jiff::SignedDuration::try_from(PEER_TIMEOUT).expect("a day fits");
    ApprovalRequest {
        metadata: managed_meta(&name, namespace, &labels),
        spec: ApprovalRequestSpec {
            request_type: ApprovalType::Peer,
            gateway: None,
            source,
            target: Some(session.to_owned()),
            action: None,
            payload: None,
            requested_capabilities: vec![Capability::Inject],
            reason: Some(reason),
            duration: None,
            expires_at: Time(expires),
        },
        status: None,
    }
}

/// The Grant an approved peer request makes: `inject` towards its one
/// session, for the peer's key, named after the request. Never more than
/// that, whatever the object says: a person who could write such a
/// request could write this Grant too (untrusted, one capability), and
/// anything more is a Grant a person writes, through the escalation guard.
pub fn peer_grant(request: &ApprovalRequest) -> Option<Grant> {
    let namespace = request.metadata.namespace.as_deref()?;
    let name = request.metadata.name.as_deref()?;
    let session = request.spec.target.as_deref()?;
    let labels = [(APPROVAL_LABEL, name)];
    Some(Grant {
        metadata: managed_meta(name, namespace, &labels),
        spec: GrantSpec {
            subject: GrantSubject::peer(&request.spec.source.identity),
            profile: None,
            capabilities: vec![Capability::Inject],
            sessions: vec![session.to_owned()],
            not_before: None,
            expires_at: None,
            previous_keys: Vec::new(),
        },
        status: None,
    })
}

/// The ApprovalRequest of a forward that waits for approval: named by the
/// request id, expiring with it. A payload over the object's bound is cut
/// (what is delivered is the stored one) and says so.
pub fn forward_approval(forward: &Forward) -> ApprovalRequest {
    let mut payload = forward.payload.to_string();
    if payload.len() > MAX_PAYLOAD_BYTES {
        let mut cut = MAX_PAYLOAD_BYTES - 64;
        while !payload.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.truncate(cut);
        payload.push_str(" … (cut: the whole payload is in the store)");
    }
    let labels = [
        (GATEWAY_LABEL, forward.gateway.as_str()),
        (TARGET_LABEL, forward.target.as_str()),
    ];
    ApprovalRequest {
        metadata: managed_meta(&forward.id, &forward.namespace, &labels),
        spec: ApprovalRequestSpec {
            request_type: ApprovalType::Forward,
            gateway: Some(forward.gateway.clone()),
            source: forward.source.clone(),
            target: Some(forward.target.clone()),
            action: Some(forward.action.clone()),
            payload: Some(payload),
            requested_capabilities: Vec::new(),
            reason: None,
            duration: None,
            expires_at: Time(forward.expires.unwrap_or(forward.created)),
        },
        status: None,
    }
}

/// What an ApprovalRequest needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// New: show it as Pending, and look again when it expires.
    MarkPending { expires: Timestamp },
    /// Waiting for a person until it expires.
    WaitUntil(Timestamp),
    /// Nobody decided in time: close it as Expired and tell the requester.
    Expire,
    /// A person approved it: carry it out once, then mark it Completed.
    Carry,
    /// A person denied it: tell the requester (once).
    Refuse,
    /// Nothing more happens to it.
    Done,
}

/// The step `request` needs at `now`. A decision counts if it is made
/// before the controller closes the request, even a little after
/// `expiresAt`: a person did decide.
pub fn next_step(request: &ApprovalRequest, now: Timestamp) -> Step {
    let expires = request.spec.expires_at.0;
    let state = request.status.as_ref().and_then(|status| status.state);
    match state {
        None | Some(ApprovalState::Pending) if now >= expires => Step::Expire,
        None => Step::MarkPending { expires },
        Some(ApprovalState::Pending) => Step::WaitUntil(expires),
        Some(ApprovalState::Approved) => Step::Carry,
        Some(ApprovalState::Denied) => Step::Refuse,
        Some(ApprovalState::Expired | ApprovalState::Completed) => Step::Done,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::SignedDuration;
    use serde_json::json;

    use super::*;
    use crate::api::{ApprovalRequestStatus, SourceRef, SourceType, TrustLevel};
    use crate::store::{ForwardState, new_request_id};

    fn now() -> Timestamp {
        "2026-11-29T12:00:00Z".parse().unwrap()
    }

    fn forward(payload: serde_json::Value) -> Forward {
        Forward {
            id: new_request_id(),
            namespace: "team".into(),
            gateway: "p2p".into(),
            gateway_session: "gate".into(),
            rule_index: Some(1),
            source: SourceRef {
                source_type: SourceType::Session.into(),
                identity: "stranger".into(),
                trust_level: TrustLevel::Untrusted,
            },
            source_message: "01J".into(),
            target: "executor".into(),
            action: "execute".into(),
            payload,
            state: ForwardState::AwaitingApproval,
            created: now(),
            expires: Some(now() + SignedDuration::from_mins(5)),
        }
    }

    #[test]
    fn a_forward_becomes_a_request_named_by_its_id() {
        let forward = forward(json!({"cmd": "ls"}));
        let request = forward_approval(&forward);
        assert_eq!(request.metadata.name.as_deref(), Some(forward.id.as_str()));
        assert_eq!(request.spec.request_type, ApprovalType::Forward);
        assert_eq!(request.spec.target.as_deref(), Some("executor"));
        assert_eq!(request.spec.payload.as_deref(), Some(r#"{"cmd":"ls"}"#));
        assert_eq!(request.spec.source.identity, "stranger");
        assert_eq!(request.spec.expires_at.0, forward.expires.unwrap());
        assert_eq!(request.metadata.labels.unwrap()[GATEWAY_LABEL], "p2p");
    }

    #[test]
    fn a_payload_over_the_bound_is_cut_and_says_so() {
        let big = "é".repeat(MAX_PAYLOAD_BYTES);
        let request = forward_approval(&forward(json!(big)));
        let payload = request.spec.payload.unwrap();
        assert!(payload.len() <= MAX_PAYLOAD_BYTES, "{}", payload.len());
        assert!(payload.ends_with("(cut: the whole payload is in the store)"));
    }

    #[test]
    fn each_state_has_one_next_step() {
        let mut request = forward_approval(&forward(json!(1)));
        let expires = request.spec.expires_at.0;
        assert_eq!(next_step(&request, now()), Step::MarkPending { expires });
        assert_eq!(next_step(&request, expires), Step::Expire);
        let mut with_state = |state| {
            request.status = Some(ApprovalRequestStatus {
                state: Some(state),
                ..ApprovalRequestStatus::default()
            });
            (
                next_step(&request, now()),
                next_step(&request, expires + SignedDuration::from_secs(1)),
            )
        };
        assert_eq!(
            with_state(ApprovalState::Pending),
            (Step::WaitUntil(expires), Step::Expire)
        );
        assert_eq!(
            with_state(ApprovalState::Approved),
            (Step::Carry, Step::Carry)
        );
        assert_eq!(
            with_state(ApprovalState::Denied),
            (Step::Refuse, Step::Refuse)
        );
        assert_eq!(with_state(ApprovalState::Expired), (Step::Done, Step::Done));
        assert_eq!(
            with_state(ApprovalState::Completed),
            (Step::Done, Step::Done)
        );
    }
}
