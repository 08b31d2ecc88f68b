//! The rate limit of a Gateway's forward rule (`rateLimit.perMinute`),
//! counted under a lock on the rule so it is exact across replicas.

use std::time::Duration;

use k8s_openapi::jiff::SignedDuration;
use sqlx::{Any, Row, Transaction};

use super::{Forward, RequestError};
use crate::store::StoreError;

/// The window of a rule's `rateLimit.perMinute`.
const RATE_WINDOW: SignedDuration = SignedDuration::from_secs(60);

/// Refuses `forward` when its rule had `per_minute` forwards in the last
/// minute; holds the rule's lock until the transaction ends.
pub(super) async fn check_rate(
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
