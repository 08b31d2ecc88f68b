//! How a forward is written to and read from its row.

use k8s_openapi::jiff::Timestamp;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{Forward, ForwardState};
use crate::api::from_name;
use crate::store::StoreError;

/// The columns [`read_forward`] reads, in its order.
macro_rules! columns {
    () => {
        "namespace, id, gateway, gateway_session, rule_index, source, source_message, target, \
         action, payload, state, created_us, expires_us"
    };
}
pub(super) use columns;

/// The forward a row of [`columns`] holds.
pub(super) fn read_forward(row: &AnyRow) -> Result<Forward, StoreError> {
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
        state: from_name::<ForwardState>(&state)
            .ok_or_else(|| corrupt(format!("state {state}")))?,
        created: time(row.try_get(11)?)?,
        expires: expires.map(time).transpose()?,
        id,
    })
}

/// Writes the row of a new `forward`.
pub(super) async fn insert(
    transaction: &mut Transaction<'_, Any>,
    forward: &Forward,
) -> Result<(), StoreError> {
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
    .execute(&mut **transaction)
    .await?;
    Ok(())
}
