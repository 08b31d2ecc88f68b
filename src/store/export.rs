//! Reading the audit trail in storage order: for an exporter, from a
//! durable cursor (per namespace, the last chain position, `seq`, its
//! receiver accepted), and for `audit --follow`, from a position. A chain's positions are assigned under its lock and
//! committed in order, so "every event after the cursor" never skips one
//! that commits later (an event arriving late, with an older `time`, still
//! gets the next position).

use sqlx::Row;

use super::audit::{Arg, Sql, filter, read_event};
use super::{AuditQuery, Page, QueryError, Store, StoreError};
use crate::audit::AuditEvent;

/// A stored event and its position in its namespace's chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Chained {
    /// Position in `event.namespace`'s chain, from 1.
    pub seq: i64,
    pub event: AuditEvent,
}

impl Store {
    /// [`AuditQuery::stored_after`]: up to `limit` of the namespace's
    /// events after chain position `after`, up to its head as read first
    /// (every position up to it is committed: positions are taken under
    /// the chain's lock), oldest first.
    pub(super) async fn query_stored_after(
        &self,
        query: &AuditQuery,
        after: i64,
        limit: u32,
    ) -> Result<Page, StoreError> {
        let Some(namespace) = &query.namespace else {
            return Err(QueryError::InvalidFollow.into());
        };
        if query.after.is_some() {
            return Err(QueryError::InvalidFollow.into());
        }
        let head: Option<i64> =
            sqlx::query_scalar("SELECT head_seq FROM audit_chains WHERE namespace = $1")
                .bind(namespace)
                .fetch_optional(&self.pool)
                .await?;
        let head = head.unwrap_or(0);
        let after = if after < 0 { head } else { after };
        let mut sql = Sql::default();
        sql.push("SELECT seq, id, event FROM audit_events WHERE 1 = 1");
        filter(&mut sql, query);
        sql.push(" AND seq > ");
        sql.bind(Arg::Int(after));
        sql.push(" AND seq <= ");
        sql.bind(Arg::Int(head));
        sql.push(" ORDER BY seq LIMIT ");
        sql.bind(Arg::Int(i64::from(limit)));
        let rows = sql.query().fetch_all(&self.pool).await?;
        let events = rows.iter().map(read_event).collect::<Result<Vec<_>, _>>()?;
        // A full page ends at its last event; a short one read up to the head.
        let last_seq = match rows.last() {
            Some(last) if rows.len() == limit as usize => last.try_get("seq")?,
            _ => head.max(after),
        };
        Ok(Page {
            events,
            next: None,
            last_seq: Some(last_seq),
        })
    }

    /// Up to `limit` events `exporter` has not had accepted yet, each
    /// namespace's in chain order, namespaces by name.
    pub async fn unexported(&self, exporter: &str, limit: u32) -> Result<Vec<Chained>, StoreError> {
        let behind = sqlx::query(
            "SELECT c.namespace, COALESCE(x.seq, 0) FROM audit_chains c \
             LEFT JOIN audit_export_cursors x ON x.exporter = $1 AND x.namespace = c.namespace \
             WHERE c.head_seq > COALESCE(x.seq, 0) ORDER BY c.namespace",
        )
        .bind(exporter)
        .fetch_all(&self.pool)
        .await?;
        let mut batch = Vec::new();
        for row in behind {
            let left = i64::from(limit) - batch.len() as i64;
            if left <= 0 {
                break;
            }
            let namespace: String = row.try_get(0)?;
            let after: i64 = row.try_get(1)?;
            let rows = sqlx::query(
                "SELECT seq, id, event FROM audit_events WHERE namespace = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3",
            )
            .bind(&namespace)
            .bind(after)
            .bind(left)
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                batch.push(Chained {
                    seq: row.try_get("seq")?,
                    event: read_event(row)?,
                });
            }
        }
        Ok(batch)
    }

    /// Records that `exporter`'s receiver accepted `batch` (what
    /// [`Store::unexported`] returned): each namespace's cursor moves to the
    /// batch's last position there, never back.
    pub async fn mark_exported(&self, exporter: &str, batch: &[Chained]) -> Result<(), StoreError> {
        let mut last = std::collections::BTreeMap::new();
        for chained in batch {
            let seq = last.entry(chained.event.namespace.as_str()).or_insert(0);
            *seq = chained.seq.max(*seq);
        }
        let mut transaction = self.pool.begin().await?;
        for (namespace, seq) in last {
            sqlx::query(
                "INSERT INTO audit_export_cursors (exporter, namespace, seq) VALUES ($1, $2, $3) \
                 ON CONFLICT (exporter, namespace) DO UPDATE SET seq = excluded.seq \
                 WHERE audit_export_cursors.seq < excluded.seq",
            )
            .bind(exporter)
            .bind(namespace)
            .bind(seq)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// How many stored events `exporter` has not had accepted yet (its lag).
    pub async fn export_lag(&self, exporter: &str) -> Result<u64, StoreError> {
        let lag: Option<i64> = sqlx::query_scalar(
            // Retention may have deleted events never exported: they are not lag.
            // CAST: PostgreSQL's SUM of BIGINT is NUMERIC.
            "SELECT CAST(SUM(c.head_seq - CASE WHEN c.pruned_seq > COALESCE(x.seq, 0) \
             THEN c.pruned_seq ELSE COALESCE(x.seq, 0) END) AS BIGINT) FROM audit_chains c \
             LEFT JOIN audit_export_cursors x ON x.exporter = $1 AND x.namespace = c.namespace \
             WHERE c.head_seq > COALESCE(x.seq, 0)",
        )
        .bind(exporter)
        .fetch_one(&self.pool)
        .await?;
        Ok(lag.map_or(0, |lag| u64::try_from(lag).unwrap_or(0)))
    }
}
