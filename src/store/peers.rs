//! The peer ingress in the store: what must hold across every replica of
//! the control plane, so that a peer cannot get more by sending to
//! another one. Each of a peer's messages takes the row lock of its head
//! (`peer_heads`), then, in one transaction:
//!
//! - a ban still running refuses it, recording nothing;
//! - its nonce is recorded, and a nonce seen before refuses it (a replay).
//!   Nonces are kept while a message carrying them could still be inside
//!   the replay window, and never forgotten sooner: a peer whose cache is
//!   full is refused until its oldest nonces age out;
//! - its action's counts over the last minute and hour (WOPR's limits)
//!   refuse it past either, and ban the peer;
//! - the namespace's `p2p.rateLimits.perPeer` refuses it past its minute.
//!
//! A delivery to a session counts against the namespace's
//! `p2p.rateLimits.perSession` under the lock of the session's inbox head,
//! in the transaction that queues it. Each invite is claimed once.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sqlx::{Any, Row, Transaction};

use super::inbox::{Enqueued, InboxLimits, append, lock_head};
use super::{Store, StoreError};
use crate::inbox::InboxMessage;

/// How long a nonce is kept after it was seen: a message is accepted
/// while its `ts` is within 5 minutes of the receiver's clock, so a
/// message seen now may be accepted up to 10 minutes after its nonce was
/// first seen.
pub const NONCE_KEPT: Duration = Duration::from_secs(600);

/// The most nonces one peer has kept at once. Its limits let far fewer
/// messages through in [`NONCE_KEPT`]; a peer past this is refused, never
/// forgotten.
pub const MAX_NONCES_PER_PEER: u64 = 2_000;

/// The longest window a count looks back over (an hour).
const LONGEST_WINDOW: SignedDuration = SignedDuration::from_hours(1);
const MINUTE: SignedDuration = SignedDuration::from_mins(1);

/// How many messages of one action a peer may send, and how long crossing
/// that bans it for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimit {
    pub per_minute: u32,
    pub per_hour: u32,
    pub ban: Duration,
}

/// One message of a peer, to count.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// The peer's public key.
    pub peer: &'a str,
    pub nonce: &'a str,
    /// What it asks (`inject`, `claim`, ..., `invalid`).
    pub action: &'a str,
    pub limit: PeerLimit,
    /// The namespace it names (empty when none).
    pub namespace: &'a str,
    /// That namespace's `p2p.rateLimits.perPeer.perMinute`.
    pub namespace_per_minute: Option<u32>,
    pub at: Timestamp,
}

/// Why a peer's message was refused by what the store counts. Each says
/// what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    #[error("the peer is banned until {until}: {reason}")]
    Banned { until: Timestamp, reason: String },
    #[error(
        "nonce {nonce} was seen before: a message is accepted once; sign each with a new nonce"
    )]
    Replayed { nonce: String },
    #[error(
        "the peer has {limit} nonces in the replay window, the most kept: retry in a few minutes"
    )]
    ReplayCacheFull { limit: u64 },
    #[error(
        "{count} {action} messages in the last {window}, over the limit of {limit}: the peer is banned until {until}"
    )]
    Limited {
        action: String,
        window: &'static str,
        count: u64,
        limit: u32,
        until: Timestamp,
    },
    #[error(
        "namespace {namespace} takes {per_minute} messages a minute from one peer (p2p.rateLimits.perPeer): retry in {} s",
        .retry_after.as_secs().max(1)
    )]
    NamespaceLimited {
        namespace: String,
        per_minute: u32,
        retry_after: Duration,
    },
    #[error(
        "session {session} takes {per_minute} messages a minute from peers (p2p.rateLimits.perSession): retry in {} s",
        .retry_after.as_secs().max(1)
    )]
    SessionLimited {
        session: String,
        per_minute: u32,
        retry_after: Duration,
    },
    #[error("the invite was claimed before, at {at}: an invite is usable once")]
    InviteClaimed { at: Timestamp },
}

/// An invite being claimed.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    pub nonce: &'a str,
    /// The key that signed the invite.
    pub issuer: &'a str,
    pub namespace: &'a str,
    /// The peer claiming it.
    pub claimed_by: &'a str,
    /// The Grant the claim makes.
    pub grant_name: &'a str,
    pub at: Timestamp,
    pub expires: Timestamp,
}

impl Store {
    /// Counts `attempt` as [the module](self) says; a refusal is
    /// `StoreError::Peer`. A ban the attempt earns is kept; a message
    /// refused for a running ban, a replay or a full cache records nothing.
    pub async fn admit_peer(&self, attempt: &Attempt<'_>) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        match admit(&mut transaction, attempt).await {
            Ok(()) => {
                transaction.commit().await?;
                Ok(())
            }
            Err(StoreError::Peer(refusal @ PeerRefusal::Limited { .. })) => {
                transaction.commit().await?;
                Err(refusal.into())
            }
            Err(error) => Err(error),
        }
    }

    /// Queues `message`, from a peer, in its session's inbox within
    /// `limits` and the namespace's `per_session` limit (messages from
    /// peers a minute), counted exactly under the inbox's lock.
    pub async fn deliver_peer_message(
        &self,
        message: &InboxMessage,
        limits: InboxLimits,
        per_session: Option<u32>,
    ) -> Result<Enqueued, StoreError> {
        let (namespace, session) = (message.namespace.as_str(), message.session.as_str());
        let mut transaction = self.pool.begin().await?;
        lock_head(&mut transaction, namespace, session).await?;
        if let Some(per_minute) = per_session {
            let since = message.time - MINUTE;
            let (count, oldest) = count_since(
                &mut transaction,
                "SELECT COUNT(*), MIN(at_us) FROM peer_deliveries \
                 WHERE namespace = $1 AND session = $2 AND at_us > $3",
                (namespace, session),
                since,
            )
            .await?;
            if count >= u64::from(per_minute) {
                return Err(PeerRefusal::SessionLimited {
                    session: format!("{namespace}/{session}"),
                    per_minute,
                    retry_after: free_in(oldest, message.time),
                }
                .into());
            }
        }
        let enqueued = append(&mut transaction, message, limits).await?;
        if matches!(enqueued, Enqueued::New(_)) {
            sqlx::query(
                "INSERT INTO peer_deliveries (namespace, session, at_us) VALUES ($1, $2, $3)",
            )
            .bind(namespace)
            .bind(session)
            .bind(message.time.as_microsecond())
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(enqueued)
    }

    /// Records that `claim`'s invite is claimed; `StoreError::Peer` with
    /// [`PeerRefusal::InviteClaimed`] when it was before.
    pub async fn claim_invite(&self, claim: &Claim<'_>) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO peer_invites \
             (nonce, issuer, namespace, claimed_by, grant_name, claimed_us, expires_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(claim.nonce)
        .bind(claim.issuer)
        .bind(claim.namespace)
        .bind(claim.claimed_by)
        .bind(claim.grant_name)
        .bind(claim.at.as_microsecond())
        .bind(claim.expires.as_microsecond())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(());
        }
        let row = sqlx::query("SELECT claimed_us FROM peer_invites WHERE nonce = $1")
            .bind(claim.nonce)
            .fetch_one(&self.pool)
            .await?;
        let at = timestamp(row.try_get(0)?);
        Err(PeerRefusal::InviteClaimed { at }.into())
    }

    /// Forgets what no window looks at any more at `now`: nonces past
    /// [`NONCE_KEPT`], counts and deliveries past an hour, bans that
    /// ended, and invites that expired (a claim of one is refused for its
    /// expiry first). Returns how many rows went.
    pub async fn prune_peers(&self, now: Timestamp) -> Result<u64, StoreError> {
        let kept = SignedDuration::try_from(NONCE_KEPT).expect("ten minutes fit");
        let statements: [(&str, Timestamp); 5] = [
            ("DELETE FROM peer_nonces WHERE seen_us < $1", now - kept),
            (
                "DELETE FROM peer_attempts WHERE at_us < $1",
                now - LONGEST_WINDOW,
            ),
            (
                "DELETE FROM peer_deliveries WHERE at_us < $1",
                now - LONGEST_WINDOW,
            ),
            (
                "DELETE FROM peer_heads WHERE banned_until_us IS NULL OR banned_until_us < $1",
                now,
            ),
            ("DELETE FROM peer_invites WHERE expires_us < $1", now),
        ];
        let mut deleted = 0;
        for (sql, cut_off) in statements {
            deleted += sqlx::query(sql)
                .bind(cut_off.as_microsecond())
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(deleted)
    }
}

/// [`Store::admit_peer`]'s steps, in its transaction.
async fn admit(
    transaction: &mut Transaction<'_, Any>,
    attempt: &Attempt<'_>,
) -> Result<(), StoreError> {
    let now = attempt.at;
    if let Some((until, reason)) = lock_peer(transaction, attempt.peer).await?
        && until > now
    {
        return Err(PeerRefusal::Banned { until, reason }.into());
    }
    let inserted = sqlx::query(
        "INSERT INTO peer_nonces (peer, nonce, seen_us) VALUES ($1, $2, $3) \
         ON CONFLICT (peer, nonce) DO NOTHING",
    )
    .bind(attempt.peer)
    .bind(attempt.nonce)
    .bind(now.as_microsecond())
    .execute(&mut **transaction)
    .await?;
    if inserted.rows_affected() == 0 {
        let nonce = attempt.nonce.to_owned();
        return Err(PeerRefusal::Replayed { nonce }.into());
    }
    let kept_since = now - SignedDuration::try_from(NONCE_KEPT).expect("ten minutes fit");
    let (nonces, _) = count_since(
        transaction,
        "SELECT COUNT(*), MIN(seen_us) FROM peer_nonces \
         WHERE peer = $1 AND nonce <> $2 AND seen_us > $3",
        (attempt.peer, attempt.nonce),
        kept_since,
    )
    .await?;
    if nonces >= MAX_NONCES_PER_PEER {
        let limit = MAX_NONCES_PER_PEER;
        return Err(PeerRefusal::ReplayCacheFull { limit }.into());
    }
    let limit = attempt.limit;
    for (window, length, most) in [
        ("minute", MINUTE, limit.per_minute),
        ("hour", LONGEST_WINDOW, limit.per_hour),
    ] {
        let (count, _) = count_since(
            transaction,
            "SELECT COUNT(*), MIN(at_us) FROM peer_attempts \
             WHERE peer = $1 AND action = $2 AND at_us > $3",
            (attempt.peer, attempt.action),
            now - length,
        )
        .await?;
        if count >= u64::from(most) {
            let until = now + SignedDuration::try_from(limit.ban).unwrap_or(SignedDuration::MAX);
            let refusal = PeerRefusal::Limited {
                action: attempt.action.to_owned(),
                window,
                count: count + 1,
                limit: most,
                until,
            };
            ban(transaction, attempt.peer, until, &refusal.to_string()).await?;
            return Err(refusal.into());
        }
    }
    if let Some(per_minute) = attempt.namespace_per_minute {
        let (count, oldest) = count_since(
            transaction,
            "SELECT COUNT(*), MIN(at_us) FROM peer_attempts \
             WHERE peer = $1 AND namespace = $2 AND at_us > $3",
            (attempt.peer, attempt.namespace),
            now - MINUTE,
        )
        .await?;
        if count >= u64::from(per_minute) {
            return Err(PeerRefusal::NamespaceLimited {
                namespace: attempt.namespace.to_owned(),
                per_minute,
                retry_after: free_in(oldest, now),
            }
            .into());
        }
    }
    sqlx::query(
        "INSERT INTO peer_attempts (peer, action, namespace, at_us) VALUES ($1, $2, $3, $4)",
    )
    .bind(attempt.peer)
    .bind(attempt.action)
    .bind(attempt.namespace)
    .bind(now.as_microsecond())
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Locks `peer`'s head (adding it when missing) until the transaction
/// ends; its ban, if one was recorded.
async fn lock_peer(
    transaction: &mut Transaction<'_, Any>,
    peer: &str,
) -> Result<Option<(Timestamp, String)>, StoreError> {
    sqlx::query(
        "INSERT INTO peer_heads (peer, messages) VALUES ($1, 0) ON CONFLICT (peer) DO NOTHING",
    )
    .bind(peer)
    .execute(&mut **transaction)
    .await?;
    let row = sqlx::query(
        "UPDATE peer_heads SET messages = messages + 1 WHERE peer = $1 \
         RETURNING banned_until_us, ban_reason",
    )
    .bind(peer)
    .fetch_one(&mut **transaction)
    .await?;
    let until: Option<i64> = row.try_get(0)?;
    let reason: Option<String> = row.try_get(1)?;
    Ok(until.map(|until| (timestamp(until), reason.unwrap_or_default())))
}

/// Bans `peer` until `until`, for `reason`.
async fn ban(
    transaction: &mut Transaction<'_, Any>,
    peer: &str,
    until: Timestamp,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE peer_heads SET banned_until_us = $2, ban_reason = $3 WHERE peer = $1")
        .bind(peer)
        .bind(until.as_microsecond())
        .bind(reason)
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

/// The count and oldest time `sql` (two text parameters, then a time)
/// finds since `since`.
async fn count_since(
    transaction: &mut Transaction<'_, Any>,
    sql: &'static str,
    (first, second): (&str, &str),
    since: Timestamp,
) -> Result<(u64, Option<i64>), StoreError> {
    let row = sqlx::query(sql)
        .bind(first)
        .bind(second)
        .bind(since.as_microsecond())
        .fetch_one(&mut **transaction)
        .await?;
    let (count, oldest): (i64, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
    Ok((count.max(0) as u64, oldest))
}

/// When a minute's window that began at `oldest` frees a place, from `now`.
fn free_in(oldest: Option<i64>, now: Timestamp) -> Duration {
    let now = now.as_microsecond();
    let free_at = oldest.unwrap_or(now) + MINUTE.as_micros() as i64;
    Duration::from_micros((free_at - now).max(0) as u64)
}

fn timestamp(microseconds: i64) -> Timestamp {
    Timestamp::from_microsecond(microseconds).unwrap_or(Timestamp::MAX)
}
