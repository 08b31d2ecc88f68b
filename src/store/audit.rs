//! The audit trail in the store: idempotent inserts chained per namespace,
//! queries newest first with a cursor, verification of the chain, and
//! retention that keeps the chain verifiable.
//!
//! Each namespace's events form a chain: event `seq` stores
//! `hash = sha256(prev_hash, event)` where `prev_hash` is the hash of event
//! `seq - 1`. Editing a row changes its hash; deleting one leaves a gap in
//! `seq` or a `prev_hash` that matches nothing; reordering two makes their
//! `prev_hash` wrong. [`Store::verify`] walks the chain and names the first
//! row that breaks it.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{Store, StoreError};
use crate::api::{Capability, name_of};
use crate::audit::{AuditEvent, EventType};
use crate::policy::Outcome;

/// The hash before a namespace's first event.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The most events one query returns.
pub const MAX_PAGE: u32 = 1_000;
/// Rows the verifier reads per statement.
const VERIFY_CHUNK: i64 = 5_000;

/// What an insert did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Events stored now.
    pub new: usize,
    /// Events already stored (a batch shipped again), skipped.
    pub duplicates: usize,
}

/// Which decisions a query wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionFilter {
    Allowed,
    /// Denied or would_deny: what `--denied` means.
    Denied,
    /// Only would_deny (warn mode).
    WouldDeny,
}

/// Where the previous page ended: the last event's time and id. Opaque to
/// callers (`TIME_US:ID`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    time_us: i64,
    id: String,
}

impl Cursor {
    /// Its text form, for the wire.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.time_us, self.id)
    }

    /// Reads what [`Cursor::encode`] wrote.
    pub fn decode(text: &str) -> Result<Cursor, QueryError> {
        let (time, id) = text.split_once(':').ok_or(QueryError::InvalidCursor)?;
        let time_us = time.parse().map_err(|_| QueryError::InvalidCursor)?;
        if id.is_empty() || id.len() > 64 {
            return Err(QueryError::InvalidCursor);
        }
        Ok(Cursor {
            time_us,
            id: id.to_owned(),
        })
    }
}

/// A query of the audit trail; every filter is optional.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub namespace: Option<String>,
    pub session: Option<String>,
    pub decision: Option<DecisionFilter>,
    pub event_type: Option<EventType>,
    pub capability: Option<Capability>,
    pub tool: Option<String>,
    /// The source's identity (a session name, a peer key).
    pub source_identity: Option<String>,
    /// From (inclusive).
    pub since: Option<Timestamp>,
    /// Until (exclusive).
    pub until: Option<Timestamp>,
    /// At most this many events (the newest); 1 to [`MAX_PAGE`], 100 when 0.
    pub limit: u32,
    /// Continue after this cursor (a previous page's `next`).
    pub after: Option<Cursor>,
    /// In storage order instead of newest first: the namespace's events
    /// stored after this position of its chain (-1: after its head now),
    /// oldest first, including any that arrived late with an older `time`.
    /// The page's `last_seq` is where the next one continues. What
    /// `audit --follow` tails.
    pub stored_after: Option<i64>,
}

/// A query the store refuses, with what to change.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("invalid time range: since ({since}) is not before until ({until})")]
    InvalidTimeRange { since: String, until: String },
    #[error("limit {0} is over the maximum of {MAX_PAGE} events per page; page with the cursor")]
    LimitTooLarge(u32),
    #[error("invalid cursor: pass the `next` of a previous page unchanged")]
    InvalidCursor,
    #[error("following the trail in storage order takes a namespace, and no cursor")]
    InvalidFollow,
}

/// One page of events, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub events: Vec<AuditEvent>,
    /// Where the next page starts; `None` on the last one.
    pub next: Option<Cursor>,
    /// With [`AuditQuery::stored_after`]: the chain position this page
    /// read up to (the next page's `stored_after`).
    pub last_seq: Option<i64>,
}

/// What verifying a namespace's chain found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Every event from the first kept one to the head is as stored.
    Intact { events: u64 },
    /// The first event that breaks the chain.
    Broken {
        seq: i64,
        id: Option<String>,
        problem: String,
    },
}

/// What one retention pass deletes: see [`Store::prune_events`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prune {
    /// Events older than this go.
    pub older_than: Timestamp,
    /// Beyond this many events in a namespace, the oldest go...
    pub max_per_namespace: u64,
    /// ...but not one at or after this: one session's flood cannot evict
    /// the others' recent events (the chain is a namespace's, so the count
    /// can only cut a prefix of it).
    pub keep_since: Timestamp,
}

/// What retention has deleted of a namespace's chain: always its first
/// events (seq 1 to `events`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    /// The time of the last one deleted; `None` when none was, or when it
    /// was deleted before this was kept.
    pub last_time: Option<Timestamp>,
}

/// The columns of a stored event, derived from it.
struct Columns {
    time_us: i64,
    event_type: String,
    decision: String,
    denied: i16,
    capability: Option<String>,
    json: String,
}

impl Columns {
    fn of(event: &AuditEvent) -> Columns {
        Columns {
            time_us: event.time.as_microsecond(),
            event_type: name_of(&event.event_type),
            decision: name_of(&event.decision),
            denied: i16::from(event.decision != Outcome::Allowed),
            capability: event.capability.as_ref().map(name_of),
            json: serde_json::to_string(event).expect("an event always serializes"),
        }
    }
}

/// The WHERE conditions of `query`'s filters (after `WHERE 1 = 1`).
pub(super) fn filter(sql: &mut Sql, query: &AuditQuery) {
    let mut equal = |column: &str, value: Option<String>| {
        if let Some(value) = value {
            sql.push(&format!(" AND {column} = "));
            sql.bind(Arg::Text(value));
        }
    };
    equal("namespace", query.namespace.clone());
    equal("session", query.session.clone());
    equal("event_type", query.event_type.as_ref().map(name_of));
    equal("capability", query.capability.as_ref().map(name_of));
    equal("tool", query.tool.clone());
    equal("source_identity", query.source_identity.clone());
    match query.decision {
        Some(DecisionFilter::Denied) => sql.push(" AND denied = 1"),
        Some(DecisionFilter::Allowed) => sql.push(" AND denied = 0"),
        Some(DecisionFilter::WouldDeny) => {
            sql.push(" AND denied = 1 AND decision = ");
            sql.bind(Arg::Text(name_of(&Outcome::WouldDeny)));
        }
        None => {}
    }
    if let Some(since) = query.since {
        sql.push(" AND time_us >= ");
        sql.bind(Arg::Int(since.as_microsecond()));
    }
    if let Some(until) = query.until {
        sql.push(" AND time_us < ");
        sql.bind(Arg::Int(until.as_microsecond()));
    }
}

fn chain_hash(prev_hash: &str, event_json: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(event_json.as_bytes());
    format!("{:x}", hasher.finalize())
}

/// A value bound to a query.
pub(super) enum Arg {
    Text(String),
    Int(i64),
}

/// A statement with `$n` placeholders and its arguments, built together.
#[derive(Default)]
pub(super) struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    pub(super) fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// Appends a placeholder for `arg`.
    pub(super) fn bind(&mut self, arg: Arg) {
        self.args.push(arg);
        self.text.push_str(&format!("${}", self.args.len()));
    }

    pub(super) fn query(&self) -> sqlx::query::Query<'_, Any, sqlx::any::AnyArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.text.as_str()));
        for arg in &self.args {
            query = match arg {
                Arg::Text(text) => query.bind(text.as_str()),
                Arg::Int(int) => query.bind(*int),
            };
        }
        query
    }
}

impl Store {
    /// Stores `events`, each once: an event whose id is already stored is
    /// skipped, so a batch shipped twice is stored once. All or nothing.
    pub async fn insert_events(&self, events: &[AuditEvent]) -> Result<Inserted, StoreError> {
        // Namespaces in a fixed order, so two writers lock chains alike.
        let mut by_namespace: BTreeMap<&str, Vec<&AuditEvent>> = BTreeMap::new();
        let mut seen = HashSet::new();
        let mut inserted = Inserted::default();
        for event in events {
            if seen.insert(event.id.as_str()) {
                by_namespace
                    .entry(&event.namespace)
                    .or_default()
                    .push(event);
            } else {
                inserted.duplicates += 1;
            }
        }
        let mut transaction = self.pool.begin().await?;
        for (namespace, events) in by_namespace {
            let chunk = self.backend.insert_chunk();
            let (new, duplicates) = append(&mut transaction, namespace, &events, chunk).await?;
            inserted.new += new;
            inserted.duplicates += duplicates;
        }
        transaction.commit().await?;
        Ok(inserted)
    }

    /// The newest events that match `query`, and where the next page starts.
    pub async fn query_events(&self, query: &AuditQuery) -> Result<Page, StoreError> {
        let limit = match query.limit {
            0 => 100,
            limit if limit > MAX_PAGE => return Err(QueryError::LimitTooLarge(limit).into()),
            limit => limit,
        };
        if let (Some(since), Some(until)) = (query.since, query.until)
            && since >= until
        {
            return Err(QueryError::InvalidTimeRange {
                since: since.to_string(),
                until: until.to_string(),
            }
            .into());
        }
        if let Some(after) = query.stored_after {
            return self.query_stored_after(query, after, limit).await;
        }
        let mut sql = Sql::default();
        sql.push("SELECT id, event FROM audit_events WHERE 1 = 1");
        filter(&mut sql, query);
        if let Some(after) = &query.after {
            sql.push(" AND (time_us < ");
            sql.bind(Arg::Int(after.time_us));
            sql.push(" OR (time_us = ");
            sql.bind(Arg::Int(after.time_us));
            sql.push(" AND id < ");
            sql.bind(Arg::Text(after.id.clone()));
            sql.push("))");
        }
        sql.push(" ORDER BY time_us DESC, id DESC LIMIT ");
        // One more than asked: whether there is a next page.
        sql.bind(Arg::Int(i64::from(limit) + 1));
        let rows = sql.query().fetch_all(&self.pool).await?;
        let mut events = rows.iter().map(read_event).collect::<Result<Vec<_>, _>>()?;
        let next = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events.last().map(|last| Cursor {
                time_us: last.time.as_microsecond(),
                id: last.id.clone(),
            })
        } else {
            None
        };
        Ok(Page {
            events,
            next,
            last_seq: None,
        })
    }

    /// Walks `namespace`'s chain from the first kept event to its head and
    /// reports the first event that breaks it.
    pub async fn verify(&self, namespace: &str) -> Result<Verification, StoreError> {
        let chain = sqlx::query(
            "SELECT head_seq, head_hash, pruned_seq, pruned_hash FROM audit_chains WHERE namespace = $1",
        )
        .bind(namespace)
        .fetch_optional(&self.pool)
        .await?;
        let Some(chain) = chain else {
            return Ok(Verification::Intact { events: 0 });
        };
        let head_seq: i64 = chain.try_get(0)?;
        let head_hash: String = chain.try_get(1)?;
        let pruned_seq: i64 = chain.try_get(2)?;
        let mut expected_seq = pruned_seq + 1;
        let mut prev_hash: String = chain.try_get(3)?;
        let broken = |seq, id: Option<String>, problem: &str| Verification::Broken {
            seq,
            id,
            problem: problem.to_owned(),
        };
        loop {
            // Up to the head read above: events appended since are the
            // next verification's (walking into them would report the
            // head's successors as missing).
            let rows = sqlx::query(
                "SELECT seq, id, namespace, time_us, session, event_type, decision, denied, capability, tool, source_identity, event, prev_hash, hash \
                 FROM audit_events WHERE namespace = $1 AND seq >= $2 AND seq <= $4 ORDER BY seq LIMIT $3",
            )
            .bind(namespace)
            .bind(expected_seq)
            .bind(VERIFY_CHUNK)
            .bind(head_seq)
            .fetch_all(&self.pool)
            .await?;
            let done = (rows.len() as i64) < VERIFY_CHUNK;
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                let id: String = row.try_get("id")?;
                if seq != expected_seq {
                    return Ok(broken(
                        expected_seq,
                        None,
                        &format!(
                            "event {expected_seq} is missing (deleted); the next stored is {seq}"
                        ),
                    ));
                }
                let stored_prev: String = row.try_get("prev_hash")?;
                if stored_prev != prev_hash {
                    return Ok(broken(
                        seq,
                        Some(id),
                        "does not follow the event before it (reordered, or one before it deleted)",
                    ));
                }
                let json: String = row.try_get("event")?;
                let hash: String = row.try_get("hash")?;
                if chain_hash(&prev_hash, &json) != hash {
                    return Ok(broken(
                        seq,
                        Some(id),
                        "its content was edited (hash mismatch)",
                    ));
                }
                if !columns_match(row, namespace, &id, &json)? {
                    return Ok(broken(
                        seq,
                        Some(id),
                        "its indexed columns were edited (they disagree with the event)",
                    ));
                }
                prev_hash = hash;
                expected_seq += 1;
            }
            if done {
                break;
            }
        }
        let last = expected_seq - 1;
        if last != head_seq || prev_hash != head_hash {
            return Ok(broken(
                last + 1,
                None,
                &format!("events {} to {head_seq} are missing (deleted)", last + 1),
            ));
        }
        Ok(Verification::Intact {
            events: (head_seq - pruned_seq) as u64,
        })
    }

    /// What retention has deleted of `namespace`'s chain.
    pub async fn pruned(&self, namespace: &str) -> Result<Pruned, StoreError> {
        let row =
            sqlx::query("SELECT pruned_seq, pruned_time_us FROM audit_chains WHERE namespace = $1")
                .bind(namespace)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(Pruned::default());
        };
        let pruned_seq: i64 = row.try_get(0)?;
        let last_time: Option<i64> = row.try_get(1)?;
        Ok(Pruned {
            events: u64::try_from(pruned_seq).unwrap_or(0),
            last_time: last_time.and_then(|us| Timestamp::from_microsecond(us).ok()),
        })
    }

    /// Deletes, per namespace, a prefix of its chain: the events older than
    /// `prune.older_than`, and beyond `prune.max_per_namespace` the oldest,
    /// but never by count one at or after `prune.keep_since` (nor any
    /// after it in the chain). The chain stays verifiable from the first
    /// kept event. Returns how many were deleted.
    pub async fn prune_events(&self, prune: Prune) -> Result<u64, StoreError> {
        let namespaces: Vec<String> =
            sqlx::query_scalar("SELECT namespace FROM audit_chains ORDER BY namespace")
                .fetch_all(&self.pool)
                .await?;
        let mut deleted = 0;
        for namespace in namespaces {
            let mut transaction = self.pool.begin().await?;
            let chain = lock_chain(&mut transaction, &namespace).await?;
            // An event is never deleted before its time, even if it
            // arrived after newer ones: the age cuts before the first young
            // event, and the count before the first recent one (looked up
            // only when the count would cut further than the age).
            let by_age = before_first_at(&mut transaction, &namespace, prune.older_than)
                .await?
                .unwrap_or(chain.head_seq);
            let over = chain.head_seq - i64::try_from(prune.max_per_namespace).unwrap_or(i64::MAX);
            let by_count = if over > chain.pruned_seq.max(by_age) {
                let recent =
                    before_first_at(&mut transaction, &namespace, prune.keep_since).await?;
                recent.map_or(over, |recent| over.min(recent))
            } else {
                over
            };
            let cut = by_age.max(by_count).min(chain.head_seq);
            if cut > chain.pruned_seq {
                let last = sqlx::query(
                    "SELECT hash, time_us FROM audit_events WHERE namespace = $1 AND seq = $2",
                )
                .bind(&namespace)
                .bind(cut)
                .fetch_one(&mut *transaction)
                .await?;
                let hash: String = last.try_get(0)?;
                let time_us: i64 = last.try_get(1)?;
                let result =
                    sqlx::query("DELETE FROM audit_events WHERE namespace = $1 AND seq <= $2")
                        .bind(&namespace)
                        .bind(cut)
                        .execute(&mut *transaction)
                        .await?;
                sqlx::query(
                    "UPDATE audit_chains SET pruned_seq = $2, pruned_hash = $3, pruned_time_us = $4 WHERE namespace = $1",
                )
                .bind(&namespace)
                .bind(cut)
                .bind(hash)
                .bind(time_us)
                .execute(&mut *transaction)
                .await?;
                deleted += result.rows_affected();
            }
            transaction.commit().await?;
        }
        Ok(deleted)
    }
}

/// The seq before the first event of `namespace` at or after `since`;
/// `None` when there is no such event.
async fn before_first_at(
    transaction: &mut Transaction<'_, Any>,
    namespace: &str,
    since: Timestamp,
) -> Result<Option<i64>, StoreError> {
    let first: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(seq) FROM audit_events WHERE namespace = $1 AND time_us >= $2",
    )
    .bind(namespace)
    .bind(since.as_microsecond())
    .fetch_one(&mut **transaction)
    .await?;
    Ok(first.map(|seq| seq - 1))
}

/// A namespace's chain, locked for this transaction.
struct Chain {
    head_seq: i64,
    head_hash: String,
    pruned_seq: i64,
}

/// Creates `namespace`'s chain if it has none, and locks it: the UPDATE
/// takes PostgreSQL's row lock and SQLite's write lock, so appends to one
/// chain never interleave.
async fn lock_chain(
    transaction: &mut Transaction<'_, Any>,
    namespace: &str,
) -> Result<Chain, StoreError> {
    sqlx::query(
        "INSERT INTO audit_chains (namespace, head_seq, head_hash, pruned_seq, pruned_hash) \
         VALUES ($1, 0, $2, 0, $2) ON CONFLICT (namespace) DO NOTHING",
    )
    .bind(namespace)
    .bind(GENESIS)
    .execute(&mut **transaction)
    .await?;
    let row = sqlx::query(
        "UPDATE audit_chains SET head_seq = head_seq WHERE namespace = $1 \
         RETURNING head_seq, head_hash, pruned_seq",
    )
    .bind(namespace)
    .fetch_one(&mut **transaction)
    .await?;
    Ok(Chain {
        head_seq: row.try_get(0)?,
        head_hash: row.try_get(1)?,
        pruned_seq: row.try_get(2)?,
    })
}

/// Appends the events not stored yet to `namespace`'s chain. Returns how
/// many were new and how many were already there.
async fn append(
    transaction: &mut Transaction<'_, Any>,
    namespace: &str,
    events: &[&AuditEvent],
    chunk_rows: usize,
) -> Result<(usize, usize), StoreError> {
    let mut chain = lock_chain(transaction, namespace).await?;
    let mut stored = HashSet::new();
    for chunk in events.chunks(chunk_rows) {
        let mut sql = Sql::default();
        sql.push("SELECT id FROM audit_events WHERE id IN (");
        for (n, event) in chunk.iter().enumerate() {
            if n > 0 {
                sql.push(", ");
            }
            sql.bind(Arg::Text(event.id.clone()));
        }
        sql.push(")");
        for row in sql.query().fetch_all(&mut **transaction).await? {
            stored.insert(row.try_get::<String, _>(0)?);
        }
    }
    let new: Vec<&&AuditEvent> = events.iter().filter(|e| !stored.contains(&e.id)).collect();
    for chunk in new.chunks(chunk_rows) {
        let mut sql = Sql::default();
        sql.push(
            "INSERT INTO audit_events (namespace, seq, id, time_us, session, event_type, decision, denied, capability, tool, source_identity, event, prev_hash, hash) VALUES ",
        );
        for (n, event) in chunk.iter().enumerate() {
            let columns = Columns::of(event);
            chain.head_seq += 1;
            let hash = chain_hash(&chain.head_hash, &columns.json);
            sql.push(if n == 0 { "(" } else { ", (" });
            let values = [
                Arg::Text(namespace.to_owned()),
                Arg::Int(chain.head_seq),
                Arg::Text(event.id.clone()),
                Arg::Int(columns.time_us),
                Arg::Text(event.session.clone()),
                Arg::Text(columns.event_type),
                Arg::Text(columns.decision),
                Arg::Int(i64::from(columns.denied)),
            ];
            for (i, value) in values.into_iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(value);
            }
            for optional in [columns.capability, event.tool.clone()] {
                sql.push(", ");
                match optional {
                    Some(text) => sql.bind(Arg::Text(text)),
                    None => sql.push("NULL"),
                }
            }
            for value in [
                event.source.identity.clone(),
                columns.json,
                std::mem::replace(&mut chain.head_hash, hash.clone()),
                hash,
            ] {
                sql.push(", ");
                sql.bind(Arg::Text(value));
            }
            sql.push(")");
        }
        sql.query().execute(&mut **transaction).await?;
    }
    sqlx::query("UPDATE audit_chains SET head_seq = $2, head_hash = $3 WHERE namespace = $1")
        .bind(namespace)
        .bind(chain.head_seq)
        .bind(&chain.head_hash)
        .execute(&mut **transaction)
        .await?;
    Ok((new.len(), events.len() - new.len()))
}

pub(super) fn read_event(row: &AnyRow) -> Result<AuditEvent, StoreError> {
    let id: String = row.try_get("id")?;
    let json: String = row.try_get("event")?;
    serde_json::from_str(&json).map_err(|error| StoreError::Corrupt {
        id,
        error: error.to_string(),
    })
}

/// Whether a row's indexed columns say what its event says.
fn columns_match(row: &AnyRow, namespace: &str, id: &str, json: &str) -> Result<bool, StoreError> {
    let Ok(event) = serde_json::from_str::<AuditEvent>(json) else {
        return Ok(false);
    };
    let columns = Columns::of(&event);
    Ok(event.id == id
        && event.namespace == namespace
        && row.try_get::<String, _>("namespace")? == namespace
        && row.try_get::<i64, _>("time_us")? == columns.time_us
        && row.try_get::<String, _>("session")? == event.session
        && row.try_get::<String, _>("event_type")? == columns.event_type
        && row.try_get::<String, _>("decision")? == columns.decision
        && row.try_get::<i64, _>("denied")? == i64::from(columns.denied)
        && row.try_get::<Option<String>, _>("capability")? == columns.capability
        && row.try_get::<Option<String>, _>("tool")? == event.tool
        && row.try_get::<String, _>("source_identity")? == event.source.identity)
}
