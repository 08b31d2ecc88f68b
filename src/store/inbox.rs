//! Session inboxes in the store: each message is appended at the next
//! position of its recipient's inbox, kept there (pending) until the agent
//! acknowledges it, and read back in order from any position, so a
//! sidecar or a control plane that restarts delivers again what was not
//! acknowledged. Appends to one inbox are serialized by a row lock on its
//! head (as audit chains are), which is also what makes the limits exact
//! under concurrent senders.

use k8s_openapi::jiff::Timestamp;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{Store, StoreError};
use crate::api::InboxPolicy;
use crate::inbox::InboxMessage;

/// How much an inbox holds while its agent has not acknowledged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxLimits {
    /// The largest message, in bytes of its payload's JSON.
    pub max_message_bytes: u64,
    /// Pending messages at most.
    pub max_messages: u64,
    /// Pending bytes (of payloads) at most.
    pub max_bytes: u64,
}

impl From<InboxPolicy> for InboxLimits {
    fn from(policy: InboxPolicy) -> Self {
        InboxLimits {
            max_message_bytes: policy.max_message_bytes,
            max_messages: policy.max_messages,
            max_bytes: policy.max_bytes,
        }
    }
}

/// Why a message was not queued. Each says what to do.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    #[error("the message is {bytes} bytes, over the limit of {limit} per message: send less")]
    TooLarge { bytes: u64, limit: u64 },
    #[error(
        "the inbox of {inbox} is full: {pending} messages wait, the limit is {limit}; it takes more once its agent acknowledges some"
    )]
    TooManyMessages {
        inbox: String,
        pending: u64,
        limit: u64,
    },
    #[error(
        "the inbox of {inbox} is full: {pending} bytes wait and this message adds {bytes}, over the limit of {limit}; it takes more once its agent acknowledges some"
    )]
    TooManyBytes {
        inbox: String,
        pending: u64,
        bytes: u64,
        limit: u64,
    },
    #[error("message id {id} is already taken by a message for {inbox}")]
    IdTaken { id: String, inbox: String },
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued at this position.
    New(i64),
    /// Sent before (the same id): already at this position.
    AlreadyQueued(i64),
}

/// A pending message and its position in the inbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub seq: i64,
    pub message: InboxMessage,
}

/// The most pending messages one read returns.
pub const MAX_READ: u32 = 1_000;

impl Store {
    /// Appends `message` to its recipient's inbox, within `limits`.
    pub async fn enqueue(
        &self,
        message: &InboxMessage,
        limits: InboxLimits,
    ) -> Result<Enqueued, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let enqueued = append(&mut transaction, message, limits).await?;
        transaction.commit().await?;
        Ok(enqueued)
    }

    /// Up to `limit` (at most [`MAX_READ`]) pending messages of
    /// `namespace/session` after position `after` (0: from the start), in
    /// order.
    pub async fn pending_messages(
        &self,
        namespace: &str,
        session: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Queued>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, message FROM inbox_messages \
             WHERE namespace = $1 AND session = $2 AND acked_us IS NULL AND seq > $3 \
             ORDER BY seq LIMIT $4",
        )
        .bind(namespace)
        .bind(session)
        .bind(after)
        .bind(i64::from(limit.min(MAX_READ)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| read_queued(row, namespace, session))
            .collect()
    }

    /// The message `id` of `namespace/session`'s inbox, acknowledged or
    /// not, if it is still there.
    pub async fn inbox_message(
        &self,
        namespace: &str,
        session: &str,
        id: &str,
    ) -> Result<Option<InboxMessage>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, message FROM inbox_messages \
             WHERE namespace = $1 AND session = $2 AND id = $3",
        )
        .bind(namespace)
        .bind(session)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|row| read_queued(&row, namespace, session))
            .transpose()?
            .map(|queued| queued.message))
    }

    /// Marks the pending messages `ids` of `namespace/session` acknowledged
    /// at `now`; returns how many were pending. Ids of other inboxes, and
    /// ids acknowledged before, are left alone. Under the head's lock, which
    /// keeps the inbox's pending totals.
    pub async fn ack_messages(
        &self,
        namespace: &str,
        session: &str,
        ids: &[String],
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let placeholders: Vec<String> = (0..ids.len()).map(|n| format!("${}", n + 4)).collect();
        let sql = format!(
            "UPDATE inbox_messages SET acked_us = $3 \
             WHERE namespace = $1 AND session = $2 AND acked_us IS NULL AND id IN ({}) \
             RETURNING bytes",
            placeholders.join(", ")
        );
        let mut transaction = self.pool.begin().await?;
        lock_head(&mut transaction, namespace, session).await?;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(namespace)
            .bind(session)
            .bind(now.as_microsecond());
        for id in ids {
            query = query.bind(id);
        }
        let acked = query.fetch_all(&mut *transaction).await?;
        let mut bytes = 0i64;
        for row in &acked {
            bytes += row.try_get::<i64, _>(0)?;
        }
        sqlx::query(
            "UPDATE inbox_heads SET pending_messages = pending_messages - $3, \
             pending_bytes = pending_bytes - $4 WHERE namespace = $1 AND session = $2",
        )
        .bind(namespace)
        .bind(session)
        .bind(acked.len() as i64)
        .bind(bytes)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(acked.len() as u64)
    }

    /// The newest `limit` messages of `namespace/session`, acknowledged or
    /// not (retention keeps acknowledged ones for a while), newest first,
    /// each with whether it was acknowledged.
    pub async fn inbox_history(
        &self,
        namespace: &str,
        session: &str,
        limit: u32,
    ) -> Result<Vec<(InboxMessage, bool)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, message, acked_us FROM inbox_messages \
             WHERE namespace = $1 AND session = $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(namespace)
        .bind(session)
        .bind(i64::from(limit.min(MAX_READ)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let acked: Option<i64> = row.try_get(2)?;
                Ok((
                    read_queued(row, namespace, session)?.message,
                    acked.is_some(),
                ))
            })
            .collect()
    }

    /// Deletes messages acknowledged before `cut_off`; returns how many.
    pub async fn prune_acked_messages(&self, cut_off: Timestamp) -> Result<u64, StoreError> {
        let deleted =
            sqlx::query("DELETE FROM inbox_messages WHERE acked_us IS NOT NULL AND acked_us < $1")
                .bind(cut_off.as_microsecond())
                .execute(&self.pool)
                .await?;
        Ok(deleted.rows_affected())
    }
}

/// The size of a message's `payload` as its inbox counts it (what the
/// sender sent, not the envelope around it), or why it is too large for one
/// message.
pub(super) fn within_size(
    payload: &serde_json::Value,
    limits: InboxLimits,
) -> Result<u64, InboxError> {
    let bytes = payload.to_string().len() as u64;
    if bytes > limits.max_message_bytes {
        let limit = limits.max_message_bytes;
        return Err(InboxError::TooLarge { bytes, limit });
    }
    Ok(bytes)
}

/// Appends `message` to its recipient's inbox within `limits`, as part of
/// `transaction` (the caller commits it).
pub(super) async fn append(
    transaction: &mut Transaction<'_, Any>,
    message: &InboxMessage,
    limits: InboxLimits,
) -> Result<Enqueued, StoreError> {
    let json = serde_json::to_string(message).expect("inbox messages serialize");
    let bytes = within_size(&message.payload, limits)?;
    let (namespace, session) = (message.namespace.as_str(), message.session.as_str());
    let inbox = format!("{namespace}/{session}");
    let head = lock_head(transaction, namespace, session).await?;
    let existing =
        sqlx::query("SELECT namespace, session, seq, message FROM inbox_messages WHERE id = $1")
            .bind(&message.id)
            .fetch_optional(&mut **transaction)
            .await?;
    if let Some(row) = existing {
        let (owner_namespace, owner_session): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        if (owner_namespace.as_str(), owner_session.as_str()) != (namespace, session) {
            let inbox = format!("{owner_namespace}/{owner_session}");
            return Err(InboxError::IdTaken {
                id: message.id.clone(),
                inbox,
            }
            .into());
        }
        // The same id from another sender is not a resend: saying
        // "delivered" would tell it that a message it never sent is its own.
        // (The sender, not its trust level, which may have changed since.)
        let stored: InboxMessage =
            serde_json::from_str(&row.try_get::<String, _>(3)?).map_err(|error| {
                StoreError::Corrupt {
                    id: message.id.clone(),
                    error: error.to_string(),
                }
            })?;
        let sender = |m: &InboxMessage| (m.source.source_type.clone(), m.source.identity.clone());
        if sender(&stored) != sender(message) {
            return Err(InboxError::IdTaken {
                id: message.id.clone(),
                inbox,
            }
            .into());
        }
        return Ok(Enqueued::AlreadyQueued(row.try_get(2)?));
    }
    let (messages, pending_bytes) = (head.pending_messages, head.pending_bytes);
    if messages >= limits.max_messages {
        let limit = limits.max_messages;
        return Err(InboxError::TooManyMessages {
            inbox,
            pending: messages,
            limit,
        }
        .into());
    }
    if pending_bytes + bytes > limits.max_bytes {
        let limit = limits.max_bytes;
        let pending = pending_bytes;
        return Err(InboxError::TooManyBytes {
            inbox,
            pending,
            bytes,
            limit,
        }
        .into());
    }
    let seq = head.last_seq + 1;
    sqlx::query(
        "INSERT INTO inbox_messages (namespace, session, seq, id, time_us, bytes, message) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(namespace)
    .bind(session)
    .bind(seq)
    .bind(&message.id)
    .bind(message.time.as_microsecond())
    .bind(bytes as i64)
    .bind(&json)
    .execute(&mut **transaction)
    .await?;
    sqlx::query(
        "UPDATE inbox_heads SET last_seq = $3, pending_messages = pending_messages + 1, \
         pending_bytes = pending_bytes + $4 WHERE namespace = $1 AND session = $2",
    )
    .bind(namespace)
    .bind(session)
    .bind(seq)
    .bind(bytes as i64)
    .execute(&mut **transaction)
    .await?;
    Ok(Enqueued::New(seq))
}

/// The message of a row whose first columns are `seq, message`.
fn read_queued(row: &AnyRow, namespace: &str, session: &str) -> Result<Queued, StoreError> {
    let seq: i64 = row.try_get(0)?;
    let json: String = row.try_get(1)?;
    let message = serde_json::from_str(&json).map_err(|error| StoreError::Corrupt {
        id: format!("inbox {namespace}/{session} position {seq}"),
        error: error.to_string(),
    })?;
    Ok(Queued { seq, message })
}

/// An inbox's head: its last position and what is pending in it.
pub(super) struct Head {
    pub last_seq: i64,
    pub pending_messages: u64,
    pub pending_bytes: u64,
}

/// Locks the head of `namespace/session`'s inbox (creating it) and returns
/// it.
pub(super) async fn lock_head(
    transaction: &mut Transaction<'_, Any>,
    namespace: &str,
    session: &str,
) -> Result<Head, StoreError> {
    sqlx::query(
        "INSERT INTO inbox_heads (namespace, session, last_seq) VALUES ($1, $2, 0) \
         ON CONFLICT (namespace, session) DO NOTHING",
    )
    .bind(namespace)
    .bind(session)
    .execute(&mut **transaction)
    .await?;
    let row = sqlx::query(
        "UPDATE inbox_heads SET last_seq = last_seq WHERE namespace = $1 AND session = $2 \
         RETURNING last_seq, pending_messages, pending_bytes",
    )
    .bind(namespace)
    .bind(session)
    .fetch_one(&mut **transaction)
    .await?;
    let count = |index: usize| -> Result<u64, StoreError> {
        Ok(row.try_get::<i64, _>(index)?.max(0) as u64)
    };
    Ok(Head {
        last_seq: row.try_get(0)?,
        pending_messages: count(1)?,
        pending_bytes: count(2)?,
    })
}
