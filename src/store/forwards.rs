//! Gateway forwards in the store: each request a gateway session forwarded,
//! from the forward (delivered to its target, or waiting for a person's
//! approval) to the answer reaching whoever first sent it. Each change of
//! state is made in one transaction with the inbox message it sends, under
//! a row lock on the forward, so every message of a forward is sent once
//! however often a step is retried, on any replica. The rate limit of a
//! rule is counted here too, under a lock on the rule, so it is exact
//! across replicas.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::inbox::{append, within_size};
use super::{InboxLimits, Store, StoreError};
use crate::api::{SourceRef, SourceType, TrustLevel};
use crate::inbox::{InboxMessage, MessageKind};

/// The columns [`read_forward`] reads, in its order.
macro_rules! columns {
    () => {
        "namespace, id, gateway, gateway_session, rule_index, source, source_message, target, \
         action, payload, state, created_us, expires_us"
    };
}

/// The window of a rule's `rateLimit.perMinute`.
const RATE_WINDOW: SignedDuration = SignedDuration::from_secs(60);

/// Where a forward is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardState {
    /// Its rule requires approval; nobody has decided yet.
    AwaitingApproval,
    /// In the target's inbox.
    Delivered,
    /// The target answered; the answer is in the gateway's inbox.
    Answered,
    /// The gateway sent the result to the source.
    Responded,
    /// A person denied it; the gateway was told.
    Denied,
    /// Nobody decided in time; the gateway was told.
    Expired,
}

impl ForwardState {
    fn as_str(self) -> &'static str {
        match self {
            ForwardState::AwaitingApproval => "awaiting_approval",
            ForwardState::Delivered => "delivered",
            ForwardState::Answered => "answered",
            ForwardState::Responded => "responded",
            ForwardState::Denied => "denied",
            ForwardState::Expired => "expired",
        }
    }

    fn parse(state: &str) -> Option<ForwardState> {
        [
            ForwardState::AwaitingApproval,
            ForwardState::Delivered,
            ForwardState::Answered,
            ForwardState::Responded,
            ForwardState::Denied,
            ForwardState::Expired,
        ]
        .into_iter()
        .find(|known| known.as_str() == state)
    }
}

/// A forwarded request.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// A lowercase ULID: the name of its ApprovalRequest, if it has one.
    pub id: String,
    pub namespace: String,
    /// The Gateway whose rule it went under.
    pub gateway: String,
    /// The session serving that Gateway (the one that forwarded it).
    pub gateway_session: String,
    /// The rule's position in the Gateway's `forwardRules`; `None` when
    /// warn mode let through a forward no rule allows.
    pub rule_index: Option<u32>,
    /// Who first sent it.
    pub source: SourceRef,
    /// The message of the gateway's inbox it came in.
    pub source_message: String,
    pub target: String,
    pub action: String,
    /// What the target is sent.
    pub payload: Value,
    pub state: ForwardState,
    pub created: Timestamp,
    /// When an approval it waits for expires.
    pub expires: Option<Timestamp>,
}

/// A new id for a forward or an elevation request: a lowercase ULID, so
/// it can name its ApprovalRequest.
pub fn new_request_id() -> String {
    ulid::Ulid::new().to_string().to_ascii_lowercase()
}

/// The id of the one message a request (a forward, an elevation) sends
/// on its own: the request's own ULID, so sending it again stores it once.
pub(super) fn request_message_id(request_id: &str) -> String {
    request_id.to_ascii_uppercase()
}

/// The source of the notice that closes a request: the person who
/// decided, or nobody (the clock).
pub(super) fn approval_source(decided_by: Option<&str>) -> SourceRef {
    SourceRef {
        source_type: SourceType::Approval.into(),
        identity: decided_by.unwrap_or_default().to_owned(),
        trust_level: TrustLevel::Owner,
    }
}

impl Forward {
    /// The id of the one message this forward sends on its own: its
    /// delivery to the target, or the notice that closes it. The request's
    /// own ULID, so sending it again stores it once.
    pub fn message_id(&self) -> String {
        request_message_id(&self.id)
    }

    /// The message that delivers it to its target.
    pub fn delivery(&self) -> InboxMessage {
        let mut message = self.message_to(
            &self.target,
            self.source.clone(),
            MessageKind::Forward,
            self.payload.clone(),
        );
        message.id = self.message_id();
        message
    }

    /// A message about this forward, to `session`.
    fn message_to(
        &self,
        session: &str,
        source: SourceRef,
        kind: MessageKind,
        payload: Value,
    ) -> InboxMessage {
        let mut message = InboxMessage::new(
            Timestamp::now(),
            &self.namespace,
            session,
            source,
            kind,
            payload,
        );
        message.action = Some(self.action.clone());
        message.request_id = Some(self.id.clone());
        message.gateway = Some(self.gateway.clone());
        message
    }
}

/// What a Gateway's status shows of its forwards.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewaySummary {
    /// Forwards waiting for approval, not expired.
    pub pending: u32,
    /// Forwards recorded under each rule (by position), oldest rule first.
    pub per_rule: Vec<(u32, u64)>,
    /// The last forward a decision settled: its id, the state it left it
    /// in (delivered when approved, denied or expired), and when.
    pub last_decision: Option<(String, ForwardState, Timestamp)>,
}

/// Why a step of a forward was refused. Each says what to do.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(
        "rule {rule} of Gateway {gateway} allows {per_minute} forwards a minute: retry in {} s",
        .retry_after.as_secs().max(1)
    )]
    RateLimited {
        gateway: String,
        rule: u32,
        per_minute: u32,
        retry_after: Duration,
    },
    #[error("no request {id} for you: name a request id from your inbox or gateway_queue")]
    NotFound { id: String },
    #[error("request {id} is {state}, so it cannot be {step}")]
    WrongState {
        id: String,
        state: &'static str,
        step: &'static str,
    },
}

impl Store {
    /// Records a new forward and, when it is `Delivered`, delivers it, all
    /// within its rule's rate limit (`per_minute`, counted over the last
    /// minute of forwards under the rule, on every replica).
    pub async fn open_forward(
        &self,
        forward: &Forward,
        per_minute: Option<u32>,
        limits: InboxLimits,
    ) -> Result<(), StoreError> {
        // Checked before anything, for a forward waiting for approval too.
        within_size(&forward.payload, limits)?;
        let mut transaction = self.pool.begin().await?;
        if let (Some(per_minute), Some(rule)) = (per_minute, forward.rule_index) {
            check_rate(&mut transaction, forward, rule, per_minute).await?;
        }
        sqlx::query(
            "INSERT INTO forwards (namespace, id, gateway, gateway_session, rule_index, source, \
             source_message, target, action, payload, state, created_us, expires_us, updated_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $12)",
        )
        .bind(&forward.namespace)
        .bind(&forward.id)
        .bind(&forward.gateway)
        .bind(&forward.gateway_session)
        .bind(forward.rule_index.map(i64::from))
        .bind(serde_json::to_string(&forward.source).expect("sources serialize"))
        .bind(&forward.source_message)
        .bind(&forward.target)
        .bind(&forward.action)
        .bind(forward.payload.to_string())
        .bind(forward.state.as_str())
        .bind(forward.created.as_microsecond())
        .bind(forward.expires.map(|at| at.as_microsecond()))
        .execute(&mut *transaction)
        .await?;
        if forward.state == ForwardState::Delivered {
            append(&mut transaction, &forward.delivery(), limits).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// The forward `id` of `namespace`, if there is one.
    pub async fn forward(&self, namespace: &str, id: &str) -> Result<Option<Forward>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM forwards WHERE namespace = $1 AND id = $2"
        ))
        .bind(namespace)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(read_forward).transpose()
    }

    /// The forwards of the gateway session `gateway_session` that wait for
    /// approval and have not expired at `now`, oldest first.
    pub async fn awaiting_approval(
        &self,
        namespace: &str,
        gateway_session: &str,
        now: Timestamp,
    ) -> Result<Vec<Forward>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM forwards WHERE namespace = $1 AND gateway_session = $2 \
             AND state = $3 AND expires_us > $4 ORDER BY id"
        ))
        .bind(namespace)
        .bind(gateway_session)
        .bind(ForwardState::AwaitingApproval.as_str())
        .bind(now.as_microsecond())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(read_forward).collect()
    }

    /// What a Gateway's status shows: its forwards waiting for approval at
    /// `now`, its forwards per rule, and the last decision on one.
    pub async fn gateway_summary(
        &self,
        namespace: &str,
        gateway: &str,
        now: Timestamp,
    ) -> Result<GatewaySummary, StoreError> {
        let pending = sqlx::query(
            "SELECT COUNT(*) FROM forwards WHERE namespace = $1 AND gateway = $2 \
             AND state = $3 AND expires_us > $4",
        )
        .bind(namespace)
        .bind(gateway)
        .bind(ForwardState::AwaitingApproval.as_str())
        .bind(now.as_microsecond())
        .fetch_one(&self.pool)
        .await?;
        let per_rule = sqlx::query(
            "SELECT rule_index, COUNT(*) FROM forwards WHERE namespace = $1 AND gateway = $2 \
             AND rule_index IS NOT NULL GROUP BY rule_index ORDER BY rule_index",
        )
        .bind(namespace)
        .bind(gateway)
        .fetch_all(&self.pool)
        .await?;
        let last = sqlx::query(
            "SELECT id, state, decided_us FROM forwards WHERE namespace = $1 AND gateway = $2 \
             AND decided_us IS NOT NULL ORDER BY decided_us DESC LIMIT 1",
        )
        .bind(namespace)
        .bind(gateway)
        .fetch_optional(&self.pool)
        .await?;
        let pending: i64 = pending.try_get(0)?;
        let per_rule = per_rule
            .iter()
            .map(|row| {
                let (rule, count): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                Ok((rule as u32, count as u64))
            })
            .collect::<Result<_, StoreError>>()?;
        let last_decision = match last {
            None => None,
            Some(row) => {
                let (id, state, at): (String, String, i64) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                let corrupt = |error: String| StoreError::Corrupt {
                    id: format!("forward {id}"),
                    error,
                };
                let state =
                    ForwardState::parse(&state).ok_or_else(|| corrupt(format!("state {state}")))?;
                let at = Timestamp::from_microsecond(at).map_err(|e| corrupt(e.to_string()))?;
                Some((id, state, at))
            }
        };
        Ok(GatewaySummary {
            pending: pending as u32,
            per_rule,
            last_decision,
        })
    }

    /// The target `replier` answers forward `id` with `result`: the answer
    /// goes to the gateway's inbox, once.
    pub async fn reply_to_forward(
        &self,
        namespace: &str,
        id: &str,
        replier: &SourceRef,
        result: Value,
        limits: InboxLimits,
    ) -> Result<InboxMessage, StoreError> {
        self.step(namespace, id, limits, |forward| {
            if forward.target != replier.identity {
                return Err(not_found(id));
            }
            expect(forward, &[ForwardState::Delivered], "answered")?;
            let answer = forward.message_to(
                &forward.gateway_session,
                replier.clone(),
                MessageKind::Result,
                result,
            );
            Ok((ForwardState::Answered, Some(Outgoing::Inbox(answer))))
        })
        .await
        .map(|sent| sent.expect("an answer is sent"))
    }

    /// The gateway session `responder` sends `result` to whoever first sent
    /// forward `id`, once: into the source's inbox when it is a session;
    /// kept with the forward for a source without an inbox (a person, a
    /// workload), who reads it with [`Store::answers`]. The message names
    /// the gateway session as its recipient then, the session the source
    /// sent to.
    pub async fn respond_to_forward(
        &self,
        namespace: &str,
        id: &str,
        responder: &SourceRef,
        result: Value,
        limits: InboxLimits,
    ) -> Result<InboxMessage, StoreError> {
        self.step(namespace, id, limits, |forward| {
            if forward.gateway_session != responder.identity {
                return Err(not_found(id));
            }
            expect(
                forward,
                &[ForwardState::Delivered, ForwardState::Answered],
                "responded to",
            )?;
            let to_a_session = SourceType::Session.is(&forward.source.source_type);
            let recipient = if to_a_session {
                &forward.source.identity
            } else {
                &forward.gateway_session
            };
            let result =
                forward.message_to(recipient, responder.clone(), MessageKind::Result, result);
            let sent = if to_a_session {
                Outgoing::Inbox(result)
            } else {
                Outgoing::Kept(result)
            };
            Ok((ForwardState::Responded, Some(sent)))
        })
        .await
        .map(|sent| sent.expect("a result is sent"))
    }

    /// The forwards the gateway session `session` made of its inbox message
    /// `message` that `source` (type and identity) sent, oldest first, each
    /// with its kept result once responded; `None` when there is none (not
    /// forwarded yet, or another source's).
    pub async fn answers(
        &self,
        namespace: &str,
        session: &str,
        message: &str,
        (source_type, identity): (&str, &str),
    ) -> Result<Option<Vec<(Forward, Option<InboxMessage>)>>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            ", result FROM forwards WHERE namespace = $1 AND gateway_session = $2 \
             AND source_message = $3 ORDER BY id"
        ))
        .bind(namespace)
        .bind(session)
        .bind(message)
        .fetch_all(&self.pool)
        .await?;
        let mut answers = Vec::new();
        for row in &rows {
            let forward = read_forward(row)?;
            if (
                forward.source.source_type.as_str(),
                forward.source.identity.as_str(),
            ) != (source_type, identity)
            {
                continue;
            }
            let result: Option<String> = row.try_get(13)?;
            let result = result
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(|error| StoreError::Corrupt {
                    id: format!("forward {}", forward.id),
                    error: error.to_string(),
                })?;
            answers.push((forward, result));
        }
        Ok((!answers.is_empty()).then_some(answers))
    }

    /// Delivers forward `id`, approved by a person; `false` when it was
    /// delivered before.
    pub async fn deliver_approved(
        &self,
        namespace: &str,
        id: &str,
        limits: InboxLimits,
    ) -> Result<bool, StoreError> {
        let sent = self
            .step(namespace, id, limits, |forward| {
                if forward.state != ForwardState::AwaitingApproval {
                    let done = [
                        ForwardState::Delivered,
                        ForwardState::Answered,
                        ForwardState::Responded,
                    ];
                    expect(forward, &done, "delivered")?;
                    return Ok((forward.state, None));
                }
                Ok((
                    ForwardState::Delivered,
                    Some(Outgoing::Inbox(forward.delivery())),
                ))
            })
            .await?;
        Ok(sent.is_some())
    }

    /// Closes forward `id`, waiting for approval, as `Denied` or `Expired`
    /// and tells its gateway why (`decided_by`: who denied it, if anyone);
    /// `false` when it was closed so before.
    pub async fn close_forward(
        &self,
        namespace: &str,
        id: &str,
        closed: ForwardState,
        decided_by: Option<&str>,
        reason: &str,
        limits: InboxLimits,
    ) -> Result<bool, StoreError> {
        let sent = self
            .step(namespace, id, limits, |forward| {
                if forward.state == closed {
                    return Ok((closed, None));
                }
                expect(forward, &[ForwardState::AwaitingApproval], "closed")?;
                let source = approval_source(decided_by);
                let notice = serde_json::json!({
                    "requestId": forward.id,
                    "state": closed.as_str(),
                    "reason": reason,
                });
                let mut message = forward.message_to(
                    &forward.gateway_session,
                    source,
                    MessageKind::Result,
                    notice,
                );
                message.id = forward.message_id();
                Ok((closed, Some(Outgoing::Inbox(message))))
            })
            .await?;
        Ok(sent.is_some())
    }

    /// Deletes the forwards and elevation requests last changed before
    /// `cut_off` (those still waiting for a person only once they expired
    /// before it); returns how many. Rate limits look back a minute, so
    /// they never miss what retention deleted.
    pub async fn prune_requests(&self, cut_off: Timestamp) -> Result<u64, StoreError> {
        let cut_off = cut_off.as_microsecond();
        let forwards = sqlx::query(
            "DELETE FROM forwards WHERE updated_us < $1 \
             AND (state <> 'awaiting_approval' OR expires_us < $1)",
        )
        .bind(cut_off)
        .execute(&self.pool)
        .await?;
        let elevations = sqlx::query(
            "DELETE FROM elevations WHERE COALESCE(granted_us, created_us) < $1 \
             AND (state <> 'awaiting_approval' OR expires_us < $1)",
        )
        .bind(cut_off)
        .execute(&self.pool)
        .await?;
        Ok(forwards.rows_affected() + elevations.rows_affected())
    }

    /// Locks forward `id`, asks `next` for its next state and the message
    /// that step sends (if any), and makes both happen together.
    async fn step(
        &self,
        namespace: &str,
        id: &str,
        limits: InboxLimits,
        next: impl FnOnce(&Forward) -> Result<(ForwardState, Option<Outgoing>), RequestError>,
    ) -> Result<Option<InboxMessage>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        // A no-op update takes the row lock on both backends (SQLite has
        // no FOR UPDATE; its writers are serialized anyway).
        let row = sqlx::query(concat!(
            "UPDATE forwards SET updated_us = updated_us WHERE namespace = $1 AND id = $2 \
             RETURNING ",
            columns!()
        ))
        .bind(namespace)
        .bind(id)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(forward) = row.as_ref().map(read_forward).transpose()? else {
            return Err(not_found(id).into());
        };
        let (state, sent) = next(&forward)?;
        let (message, kept) = match sent {
            Some(Outgoing::Inbox(message)) => {
                append(&mut transaction, &message, limits).await?;
                (Some(message), None)
            }
            Some(Outgoing::Kept(message)) => {
                within_size(&message.payload, limits)?;
                let json = serde_json::to_string(&message).expect("inbox messages serialize");
                (Some(message), Some(json))
            }
            None => (None, None),
        };
        if state != forward.state {
            let now = Timestamp::now().as_microsecond();
            let decided = (forward.state == ForwardState::AwaitingApproval).then_some(now);
            sqlx::query(
                "UPDATE forwards SET state = $3, updated_us = $4, \
                 decided_us = COALESCE($5, decided_us), result = COALESCE($6, result) \
                 WHERE namespace = $1 AND id = $2",
            )
            .bind(namespace)
            .bind(id)
            .bind(state.as_str())
            .bind(now)
            .bind(decided)
            .bind(kept)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(message)
    }
}

/// Where the message of a step goes: a session's inbox, or kept with the
/// forward for a source that has no inbox.
enum Outgoing {
    Inbox(InboxMessage),
    Kept(InboxMessage),
}

fn read_forward(row: &AnyRow) -> Result<Forward, StoreError> {
    let id: String = row.try_get(1)?;
    let corrupt = |error: String| StoreError::Corrupt {
        id: format!("forward {id}"),
        error,
    };
    let time = |micros: i64| {
        Timestamp::from_microsecond(micros).map_err(|error| corrupt(error.to_string()))
    };
    let rule_index: Option<i64> = row.try_get(4)?;
    let source: String = row.try_get(5)?;
    let payload: String = row.try_get(9)?;
    let state: String = row.try_get(10)?;
    let expires: Option<i64> = row.try_get(12)?;
    Ok(Forward {
        namespace: row.try_get(0)?,
        gateway: row.try_get(2)?,
        gateway_session: row.try_get(3)?,
        rule_index: rule_index.map(|index| index as u32),
        source: serde_json::from_str(&source).map_err(|error| corrupt(error.to_string()))?,
        source_message: row.try_get(6)?,
        target: row.try_get(7)?,
        action: row.try_get(8)?,
        payload: serde_json::from_str(&payload).map_err(|error| corrupt(error.to_string()))?,
        state: ForwardState::parse(&state).ok_or_else(|| corrupt(format!("state {state}")))?,
        created: time(row.try_get(11)?)?,
        expires: expires.map(time).transpose()?,
        id,
    })
}

fn not_found(id: &str) -> RequestError {
    RequestError::NotFound { id: id.to_owned() }
}

/// `Ok` when `forward` is in one of `states`.
fn expect(
    forward: &Forward,
    states: &[ForwardState],
    step: &'static str,
) -> Result<(), RequestError> {
    if states.contains(&forward.state) {
        Ok(())
    } else {
        Err(RequestError::WrongState {
            id: forward.id.clone(),
            state: forward.state.as_str(),
            step,
        })
    }
}

/// Refuses `forward` when its rule had `per_minute` forwards in the last
/// minute; holds the rule's lock until the transaction ends.
async fn check_rate(
    transaction: &mut Transaction<'_, Any>,
    forward: &Forward,
    rule: u32,
    per_minute: u32,
) -> Result<(), StoreError> {
    let key = (&forward.namespace, &forward.gateway, i64::from(rule));
    sqlx::query(
        "INSERT INTO forward_rule_heads (namespace, gateway, rule_index, forwards) \
         VALUES ($1, $2, $3, 0) ON CONFLICT (namespace, gateway, rule_index) DO NOTHING",
    )
    .bind(key.0)
    .bind(key.1)
    .bind(key.2)
    .execute(&mut **transaction)
    .await?;
    sqlx::query(
        "UPDATE forward_rule_heads SET forwards = forwards + 1 \
         WHERE namespace = $1 AND gateway = $2 AND rule_index = $3",
    )
    .bind(key.0)
    .bind(key.1)
    .bind(key.2)
    .execute(&mut **transaction)
    .await?;
    let window_start = forward.created - RATE_WINDOW;
    let row = sqlx::query(
        "SELECT COUNT(*), MIN(created_us) FROM forwards \
         WHERE namespace = $1 AND gateway = $2 AND rule_index = $3 AND created_us > $4",
    )
    .bind(key.0)
    .bind(key.1)
    .bind(key.2)
    .bind(window_start.as_microsecond())
    .fetch_one(&mut **transaction)
    .await?;
    let (count, oldest): (i64, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
    if count < i64::from(per_minute) {
        return Ok(());
    }
    let oldest = oldest.unwrap_or(forward.created.as_microsecond());
    let free_at = oldest + RATE_WINDOW.as_micros() as i64;
    let retry_after =
        Duration::from_micros((free_at - forward.created.as_microsecond()).max(0) as u64);
    Err(RequestError::RateLimited {
        gateway: forward.gateway.clone(),
        rule,
        per_minute,
        retry_after,
    }
    .into())
}
