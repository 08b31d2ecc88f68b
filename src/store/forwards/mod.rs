//! Gateway forwards in the store: each request a gateway session forwarded,
//! from the forward (delivered to its target, or waiting for a person's
//! approval) to the answer reaching whoever first sent it. Opening one and
//! reading them is here; the steps of its life are in [`steps`], its row
//! in [`rows`], and the rate limit of a rule in [`rate`].

mod rate;
mod rows;
mod steps;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use super::inbox::{append, within_size};
use super::{InboxLimits, Store, StoreError};
use crate::api::{SourceRef, SourceType, TrustLevel, from_name};
use crate::inbox::{InboxMessage, MessageKind};
use rows::{columns, read_forward};

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
    /// Its serde name, as stored and shown (a test holds the two equal).
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
            rate::check_rate(&mut transaction, forward, rule, per_minute).await?;
        }
        rows::insert(&mut transaction, forward).await?;
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
                let state = from_name::<ForwardState>(&state)
                    .ok_or_else(|| corrupt(format!("state {state}")))?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::name_of;

    #[test]
    fn as_str_is_the_serde_name() {
        use ForwardState::*;
        for state in [
            AwaitingApproval,
            Delivered,
            Answered,
            Responded,
            Denied,
            Expired,
        ] {
            assert_eq!(state.as_str(), name_of(&state));
            assert_eq!(from_name::<ForwardState>(state.as_str()), Some(state));
        }
        assert_eq!(from_name::<ForwardState>("approved"), None);
    }
}
