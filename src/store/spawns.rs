//! The children agents spawn, counted so a parent's limit holds across
//! concurrent calls and replicas. The control plane's cache shows the
//! children that exist; a child spawned moments ago may not be in it yet.
//! So each spawn locks its parent's row and counts the cached children
//! together with those it recorded in the last [`UNSEEN_FOR`]: two spawns
//! at once, on any replica, count each other.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use sqlx::Row;

use super::{SessionLock, Store, StoreError, lock_session};

/// The row of a parent each of its spawns locks.
const PARENT_LOCK: SessionLock = SessionLock {
    table: "spawn_parents",
    session: "parent",
    counter: "spawns",
};

/// How long a new child may take to reach every replica's cache; its
/// record counts until then, and is pruned after.
pub const UNSEEN_FOR: Duration = Duration::from_secs(300);

/// What [`Store::reserve_child`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// The child's place is taken for it.
    Reserved,
    /// The parent has this many children already, at or over its limit.
    Full { children: usize },
}

impl Store {
    /// Reserves a place for `child` among the children of `parent` in
    /// `namespace`, given the children the cache sees (`cached`) and the
    /// limit.
    pub async fn reserve_child(
        &self,
        (namespace, parent, child): (&str, &str, &str),
        cached: &[String],
        limit: u32,
        now: Timestamp,
    ) -> Result<Reservation, StoreError> {
        let mut transaction = self.pool.begin().await?;
        // The lock: concurrent spawns of this parent wait here.
        lock_session(&mut transaction, &PARENT_LOCK, (namespace, parent)).await?;
        let seen_by_now = now.as_microsecond() - UNSEEN_FOR.as_micros() as i64;
        sqlx::query(
            "DELETE FROM spawned_children WHERE namespace = $1 AND parent = $2 AND created_us <= $3",
        )
        .bind(namespace)
        .bind(parent)
        .bind(seen_by_now)
        .execute(&mut *transaction)
        .await?;
        let rows =
            sqlx::query("SELECT child FROM spawned_children WHERE namespace = $1 AND parent = $2")
                .bind(namespace)
                .bind(parent)
                .fetch_all(&mut *transaction)
                .await?;
        let mut children: BTreeSet<String> = cached.iter().cloned().collect();
        for row in rows {
            children.insert(row.try_get(0)?);
        }
        if children.len() >= limit as usize {
            transaction.rollback().await?;
            return Ok(Reservation::Full {
                children: children.len(),
            });
        }
        sqlx::query(
            "INSERT INTO spawned_children (namespace, child, parent, created_us) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (namespace, child) DO NOTHING",
        )
        .bind(namespace)
        .bind(child)
        .bind(parent)
        .bind(now.as_microsecond())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(Reservation::Reserved)
    }

    /// Gives back the place of a child that was not created after all.
    pub async fn release_child(&self, namespace: &str, child: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM spawned_children WHERE namespace = $1 AND child = $2")
            .bind(namespace)
            .bind(child)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
