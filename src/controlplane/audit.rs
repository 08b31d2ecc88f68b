//! The Audit gRPC service: sidecars ship their events, each stored exactly
//! once; the trail is queried and verified. A sidecar (its projected token)
//! ships and queries only its own session's events, and verifies only its
//! own namespace's chain. Anyone else (a person, a workload) reads what its
//! RBAC allows: `list` on `auditevents.wopr.dev` in the namespace.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tonic::{Request, Response, Status, Streaming};

use super::auth::bearer;
use super::auth::{AuthError, Authenticator, Identity, authorize, identity_of};
use super::denials::DenialEvents;
use super::discover::DiscoverPolicy;
use super::grant_use::GrantUses;
use super::refusals::{Reason, Refusals, Trail};
use crate::api::{Enforcement, SourceRef, SourceType, TrustLevel, check_label, from_name, name_of};
use crate::audit::{AuditEvent, EventType, truncated};
use crate::policy::Outcome;
use crate::proto::v1alpha1::audit_server::Audit;
use crate::proto::v1alpha1::{
    AuditQueryRequest, AuditQueryResponse, IngestAck, IngestRequest, VerifyRequest, VerifyResponse,
};
use crate::store::{AuditQuery, Cursor, DecisionFilter, Store, StoreError, Verification};

pub use super::audit_metrics::{AuditMetrics, DecisionLabels, SessionLabels};

/// The largest event a sidecar may ship, as JSON.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// The most events one batch may hold.
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// What the Audit and Broker services record with.
pub struct AuditSetup<E> {
    pub store: Store,
    /// Where denials are published as Events.
    pub events: Arc<E>,
    pub metrics: AuditMetrics,
}

/// Stores what sidecars ship; answers queries of the trail; turns denials
/// into Events on their Sessions.
pub struct AuditService<D, A> {
    store: Store,
    /// The sessions as the control plane knows them: whose trust level a
    /// sidecar's events record.
    discover: Arc<D>,
    authenticator: Arc<A>,
    metrics: AuditMetrics,
    denials: DenialEvents,
    /// The Grants the sidecars' allowed calls relied on.
    uses: Arc<GrantUses>,
    /// Which refusals are written, and where.
    refusals: Arc<Refusals>,
}

impl<D: DiscoverPolicy, A: Authenticator> AuditService<D, A> {
    pub fn new(
        store: Store,
        discover: Arc<D>,
        metrics: AuditMetrics,
        denials: DenialEvents,
        uses: Arc<GrantUses>,
        authenticator: Arc<A>,
        refusals: Arc<Refusals>,
    ) -> Self {
        AuditService {
            store,
            discover,
            authenticator,
            metrics,
            denials,
            uses,
            refusals,
        }
    }

    /// The one mapping of store errors to gRPC statuses: a query the store
    /// refuses is the caller's to fix; anything else is worth retrying (and
    /// counted).
    fn status_of(&self, error: StoreError) -> Status {
        match error {
            StoreError::InvalidQuery(error) => Status::invalid_argument(error.to_string()),
            error => {
                self.metrics.store_errors.inc();
                Status::unavailable(format!("the audit store is unavailable: {error}"))
            }
        }
    }

    async fn identity<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        let token = bearer(request.metadata())?;
        self.authenticator
            .authenticate(token)
            .await
            .map_err(|error| Status::unauthenticated(error.to_string()))
    }

    /// Who may read `namespace`: a sidecar what `sidecar_may` allows it
    /// (its own session, its own namespace), anyone else what RBAC allows
    /// (a SubjectAccessReview of `list auditevents.wopr.dev` there; every
    /// namespace when `namespace` is empty). The names are checked first
    /// (an empty one names none). Returns the reader, for the audit events
    /// of what it asks next, and the username it authenticated as.
    async fn authorize_read<T>(
        &self,
        request: &Request<T>,
        namespace: &str,
        session: &str,
        sidecar_may: impl Fn(&Identity) -> Result<(), String>,
    ) -> Result<(SourceRef, String), Status> {
        let named: Vec<(&str, &str)> = [("namespace", namespace), ("session", session)]
            .into_iter()
            .filter(|(_, name)| !name.is_empty())
            .collect();
        self.refusals.check_names(&named)?;
        let token = bearer(request.metadata())?;
        let error = match self.authenticator.authenticate(token).await {
            Ok(identity) => {
                return match sidecar_may(&identity) {
                    Ok(()) => Ok((identity.as_source(), identity.username())),
                    Err(reason) => {
                        let status = Status::permission_denied(reason);
                        Err(self.refuse_sidecar(&identity, session, status).await)
                    }
                };
            }
            Err(error) => error,
        };
        if let AuthError::Unavailable(_) = error {
            return Err(Status::unavailable(error.to_string()));
        }
        // Not a sidecar's token: a person's or a workload's credential.
        let scope = (!namespace.is_empty()).then_some(namespace);
        match self.authenticator.may_read_audit(token, scope).await {
            Ok(username) => Ok((reader_source(&username), username)),
            Err(AuthError::Forbidden { username, reason }) => {
                // No right to read there: not that namespace's trail's to hold.
                let status = Status::permission_denied(reason);
                let source = reader_source(&username);
                let caller = (username.as_str(), Trail::Operator);
                Err(self
                    .refuse((namespace, session), caller, source, status)
                    .await)
            }
            Err(error @ AuthError::Unavailable(_)) => Err(Status::unavailable(error.to_string())),
            Err(error) => {
                self.refusals.count(Reason::Unauthenticated);
                Err(Status::unauthenticated(error.to_string()))
            }
        }
    }

    /// [`Self::refuse`] for a sidecar's request: in its own namespace, of
    /// the session it named if that can be a session's name (else of none:
    /// the reason says what it named).
    async fn refuse_sidecar(&self, identity: &Identity, session: &str, status: Status) -> Status {
        let session = if check_label("session", session).is_ok() {
            session
        } else {
            ""
        };
        let source = identity.as_source();
        let caller = identity.username();
        let target = (identity.namespace.as_str(), session);
        self.refuse(target, (&caller, Trail::Namespace), source, status)
            .await
    }

    /// Records a refused request of `caller` (its username) about
    /// `namespace/session` in `trail` (the namespace's: a sidecar's own, or
    /// one its reader may read; or the operator's), as [`Refusals`] allows,
    /// best effort since the caller is refused either way, and logs it.
    async fn refuse(
        &self,
        (namespace, session): (&str, &str),
        (caller, trail): (&str, Trail),
        source: SourceRef,
        status: Status,
    ) -> Status {
        self.metrics.refused.inc();
        tracing::warn!(%namespace, caller = %source.identity, reason = %status.message(), "audit request refused");
        let event =
            AuditEvent::refused_request(namespace, session, source, "audit", status.message());
        self.refusals.record(caller, trail, event).await;
        status
    }
}

/// A reader of the trail (a person or a workload), as the source of what
/// it asks.
fn reader_source(username: &str) -> SourceRef {
    SourceRef {
        source_type: if identity_of(username, None).is_ok() {
            SourceType::ServiceAccount
        } else {
            SourceType::Person
        }
        .into(),
        identity: username.to_owned(),
        trust_level: TrustLevel::Untrusted,
    }
}

/// The longest reason a stub of an invalid event keeps, in bytes.
const MAX_STUB_REASON: usize = 256;
/// How far past the control plane's clock a shipped event's time may be
/// (the clocks of two nodes differ a little); later is set to when it was
/// received.
pub const MAX_CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(60);

/// What one message of a shipped batch holds, checked: its events (each
/// parses, fits, and is of `namespace/session`), and a stub in place of
/// each line that is no valid event (see [`Invalid`]). An event that claims
/// another session refuses the whole batch: that is a sidecar speaking for
/// someone else, not bad data.
fn parse_batch(
    namespace: &str,
    session: &str,
    lines: &[String],
) -> Result<Vec<Result<AuditEvent, Invalid>>, Status> {
    lines
        .iter()
        .map(|line| read_line(namespace, session, line))
        .collect()
}

/// A line of a batch that is no valid event: why, and its id when one can
/// be read from it (so the stub of a batch shipped again is stored once).
struct Invalid {
    id: Option<String>,
    why: String,
}

impl Invalid {
    /// The event stored in the line's place: a denied `policy` event of
    /// the session, from its sidecar (`source`), saying how big the line
    /// was and why it is invalid (cut to [`MAX_STUB_REASON`] bytes; nothing
    /// else of what the agent controls is kept).
    fn stub(
        self,
        namespace: &str,
        session: &str,
        source: SourceRef,
        received: Timestamp,
    ) -> AuditEvent {
        let mut stub = AuditEvent::new(
            received,
            EventType::Policy,
            namespace,
            session,
            source,
            Outcome::Denied,
            Enforcement::Enforce,
            self.why,
        );
        if let Some(id) = self.id {
            stub.id = id;
        }
        stub.received = Some(received);
        stub
    }
}

/// As much of an event line as says whose it is: read from a line that
/// is no valid event.
#[derive(Default, serde::Deserialize)]
struct Claims {
    id: Option<String>,
    namespace: Option<String>,
    session: Option<String>,
}

/// Reads one line of a batch of `namespace/session`.
fn read_line(
    namespace: &str,
    session: &str,
    line: &str,
) -> Result<Result<AuditEvent, Invalid>, Status> {
    let problem = if line.len() > MAX_EVENT_BYTES {
        format!("over the limit of {MAX_EVENT_BYTES}")
    } else {
        match serde_json::from_str::<AuditEvent>(line) {
            Ok(event) if ulid::Ulid::from_string(&event.id).is_ok() => {
                let claimed = (event.namespace.as_str(), event.session.as_str());
                check_claim((namespace, session), &event.id, claimed)?;
                return Ok(Ok(event));
            }
            Ok(event) => format!("its id {:?} is not a ULID", event.id),
            Err(error) => format!("not an audit event: {error}"),
        }
    };
    let claims: Claims = serde_json::from_str(line).unwrap_or_default();
    let claimed = (
        claims.namespace.as_deref().unwrap_or(namespace),
        claims.session.as_deref().unwrap_or(session),
    );
    let id = claims.id.as_deref().unwrap_or("?");
    check_claim((namespace, session), id, claimed)?;
    let why = format!("invalid event: {} bytes, {problem}", line.len());
    Ok(Err(Invalid {
        id: claims.id.filter(|id| ulid::Ulid::from_string(id).is_ok()),
        why: truncated(&why, MAX_STUB_REASON).into_owned(),
    }))
}

/// Refuses event `id` when it claims (`claimed`) another session than the
/// sidecar's (`own`).
fn check_claim(own: (&str, &str), id: &str, claimed: (&str, &str)) -> Result<(), Status> {
    if claimed == own {
        return Ok(());
    }
    let cut = |text| truncated(text, MAX_STUB_REASON).into_owned();
    Err(Status::permission_denied(format!(
        "event {} claims session {}/{}; this sidecar ships only {}/{}",
        cut(id),
        cut(claimed.0),
        cut(claimed.1),
        own.0,
        own.1
    )))
}

/// What the control plane vouches for in an event a sidecar shipped, at
/// `received`: when it arrived; a time no later than that (plus
/// [`MAX_CLOCK_SKEW`]), since an event stamped in the future would never
/// be old enough for retention by age; and its source's trust level, which
/// the sidecar cannot raise: its session's own agent has `agent_level`
/// (the session's level as the control plane knows it), any other source
/// it claims is untrusted (the control plane cannot vouch for it). What it
/// changed is said in `corrections`.
fn admit(mut event: AuditEvent, received: Timestamp, agent_level: TrustLevel) -> AuditEvent {
    event.received = Some(received);
    event.corrections.clear();
    if event.time > received + MAX_CLOCK_SKEW {
        event.corrections.push(format!(
            "time {} is in the future: set to when it was received",
            event.time
        ));
        event.time = received;
    }
    let own_agent =
        SourceType::Agent.is(&event.source.source_type) && event.source.identity == event.session;
    let level = if own_agent {
        agent_level
    } else {
        TrustLevel::Untrusted
    };
    if event.source.trust_level != level {
        event.corrections.push(format!(
            "source trust level {} is not what the control plane knows: set to {level}",
            event.source.trust_level
        ));
        event.source.trust_level = level;
    }
    event
}

/// An optional filter of a wire query: empty for none, else what `parse`
/// makes of it.
fn filter<T>(
    what: &str,
    text: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    parse(text)
        .map(Some)
        .ok_or_else(|| Status::invalid_argument(format!("{what} {text:?} is not valid")))
}

/// A wire query as the store's.
fn query_of(request: &AuditQueryRequest) -> Result<AuditQuery, Status> {
    let text = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let time = |what: &str, text: &str| filter(what, text, |text| text.parse::<Timestamp>().ok());
    Ok(AuditQuery {
        namespace: text(&request.namespace),
        session: text(&request.session),
        decision: filter("decision", &request.decision, |name| match name {
            "allowed" => Some(DecisionFilter::Allowed),
            "denied" => Some(DecisionFilter::Denied),
            "would_deny" => Some(DecisionFilter::WouldDeny),
            _ => None,
        })?,
        event_type: filter("type", &request.r#type, from_name::<EventType>)?,
        capability: filter("capability", &request.capability, from_name)?,
        tool: text(&request.tool),
        source_identity: text(&request.source_identity),
        since: time("since (RFC 3339)", &request.since)?,
        until: time("until (RFC 3339)", &request.until)?,
        limit: request.limit,
        after: filter("cursor", &request.cursor, |cursor| {
            Cursor::decode(cursor).ok()
        })?,
        stored_after: request.stored_after,
    })
}

#[tonic::async_trait]
impl<D: DiscoverPolicy, A: Authenticator> Audit for AuditService<D, A> {
    async fn ingest(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<IngestAck>, Status> {
        let identity = self.identity(&request).await?;
        let mut stream = request.into_inner();
        let mut shipped = Vec::new();
        let mut claimed: Option<(String, String)> = None;
        let mut spool_depth = 0;
        while let Some(message) = stream.next().await {
            let message = message?;
            let session = (message.namespace.clone(), message.session.clone());
            if let Err(reason) = authorize(&identity, &message.namespace, &message.session) {
                let status = Status::permission_denied(reason.to_string());
                return Err(self
                    .refuse_sidecar(&identity, &message.session, status)
                    .await);
            }
            if claimed.get_or_insert_with(|| session.clone()) != &session {
                let status = Status::invalid_argument("one batch holds one session's events");
                return Err(self
                    .refuse_sidecar(&identity, &message.session, status)
                    .await);
            }
            spool_depth = message.spool_depth;
            let count = shipped.len() + message.events.len();
            if count > MAX_BATCH_EVENTS {
                let status = Status::invalid_argument(format!(
                    "a batch holds at most {MAX_BATCH_EVENTS} events, this one {count} or more: ship smaller batches"
                ));
                return Err(self
                    .refuse_sidecar(&identity, &message.session, status)
                    .await);
            }
            match parse_batch(&message.namespace, &message.session, &message.events) {
                Ok(lines) => shipped.extend(lines),
                Err(status) => {
                    return Err(self
                        .refuse_sidecar(&identity, &message.session, status)
                        .await);
                }
            }
        }
        let Some((namespace, session)) = claimed else {
            return Ok(Response::new(IngestAck::default()));
        };
        let received = Timestamp::now();
        let agent_level = self
            .discover
            .context(&namespace, &session)
            .map_or(TrustLevel::Untrusted, |context| context.trust_level);
        // The events as admitted, then the stubs of the invalid lines.
        let mut events = Vec::with_capacity(shipped.len());
        let mut invalid = Vec::new();
        for line in shipped {
            match line {
                Ok(event) => events.push(admit(event, received, agent_level)),
                Err(line) => invalid.push(line),
            }
        }
        let admitted = events.len();
        let source = identity.as_source();
        for line in invalid {
            events.push(line.stub(&namespace, &session, source.clone(), received));
        }
        let (shipped, stubs) = events.split_at(admitted);
        if !stubs.is_empty() {
            tracing::warn!(%namespace, %session, invalid = stubs.len(), "a sidecar shipped invalid audit events; each is stored as a stub");
        }
        let inserted = self
            .store
            .insert_events(&events)
            .await
            .map_err(|error| self.status_of(error))?;
        self.metrics.stored.inc_by(inserted.new as u64);
        self.metrics.duplicates.inc_by(inserted.duplicates as u64);
        self.metrics.invalid.inc_by(stubs.len() as u64);
        let committed = Timestamp::now();
        for event in shipped {
            let lag = committed.duration_since(event.time).as_secs_f64();
            self.metrics.shipping_lag.observe(lag.max(0.0));
            if event.decision != Outcome::Allowed {
                let labels = DecisionLabels {
                    r#type: name_of(&event.event_type),
                    decision: name_of(&event.decision),
                };
                self.metrics.denials.get_or_create(&labels).inc();
            }
        }
        let labels = SessionLabels { namespace, session };
        let depth = i64::try_from(spool_depth).unwrap_or(i64::MAX);
        self.metrics.spool_depth.get_or_create(&labels).set(depth);
        self.denials.observe_invalid(stubs);
        self.denials.observe(shipped);
        self.uses.observe(shipped);
        Ok(Response::new(IngestAck {
            stored: inserted.new as u32,
            duplicates: inserted.duplicates as u32,
        }))
    }

    async fn query(
        &self,
        request: Request<AuditQueryRequest>,
    ) -> Result<Response<AuditQueryResponse>, Status> {
        let wire = request.get_ref();
        let (namespace, session) = (wire.namespace.clone(), wire.session.clone());
        let (source, reader) = self
            .authorize_read(&request, &namespace, &session, |identity| {
                authorize(identity, &namespace, &session).map_err(|reason| {
                    format!("{reason}: a sidecar queries only its own session's events")
                })
            })
            .await?;
        // The reader may read here: a bad query of it is its trail's.
        let target = (namespace.as_str(), session.as_str());
        let caller = (reader.as_str(), Trail::Namespace);
        let request = request.into_inner();
        let query = match query_of(&request) {
            Ok(query) => query,
            Err(status) => return Err(self.refuse(target, caller, source, status).await),
        };
        let page = match self.store.query_events(&query).await {
            Ok(page) => page,
            Err(error @ StoreError::InvalidQuery(_)) => {
                let status = self.status_of(error);
                return Err(self.refuse(target, caller, source, status).await);
            }
            Err(error) => return Err(self.status_of(error)),
        };
        Ok(Response::new(AuditQueryResponse {
            events: page
                .events
                .iter()
                .map(|event| serde_json::to_string(event).expect("an event always serializes"))
                .collect(),
            next_cursor: page.next.map(|cursor| cursor.encode()).unwrap_or_default(),
            last_seq: page.last_seq.unwrap_or_default(),
        }))
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        let namespace = request.get_ref().namespace.clone();
        if namespace.is_empty() {
            return Err(Status::invalid_argument(
                "name the namespace whose chain to verify",
            ));
        }
        self.authorize_read(&request, &namespace, "", |identity| {
            if identity.namespace == namespace {
                Ok(())
            } else {
                Err(format!(
                    "service account {}/{} may not verify namespace {namespace}",
                    identity.namespace, identity.service_account
                ))
            }
        })
        .await?;
        let verified = self.store.verify(&namespace).await;
        let pruned = self.store.pruned(&namespace).await;
        let pruned = pruned.map_err(|error| self.status_of(error))?;
        let mut response = match verified.map_err(|error| self.status_of(error))? {
            Verification::Intact { events } => VerifyResponse {
                intact: true,
                events,
                ..VerifyResponse::default()
            },
            Verification::Broken { seq, id, problem } => VerifyResponse {
                intact: false,
                broken_seq: seq,
                broken_id: id.unwrap_or_default(),
                problem,
                ..VerifyResponse::default()
            },
        };
        response.pruned_events = pruned.events;
        response.last_pruned_time = pruned
            .last_time
            .map(|time| time.to_string())
            .unwrap_or_default();
        Ok(Response::new(response))
    }
}
