//! Elevation requests in the store (`security_request`): a session asks a
//! person for more capabilities for a while. The Grant an approval makes
//! is built from this record, never from the ApprovalRequest (people could
//! write one by hand), and runs from when the approval was first carried
//! out. Each settlement (granted, denied, expired) is made in one
//! transaction with the notice that tells the session, so it is told once.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::forwards::{approval_source, request_message_id};
use super::inbox::append;
use super::{InboxLimits, RequestError, Store, StoreError};
use crate::api::Capability;
use crate::inbox::{InboxMessage, MessageKind};

/// The columns [`read_elevation`] reads, in its order.
macro_rules! columns {
    () => {
        "namespace, id, session, capabilities, duration_s, reason, state, created_us, \
         expires_us, granted_us"
    };
}

/// Where an elevation request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElevationState {
    AwaitingApproval,
    /// A person approved it; its Grant runs from `granted`.
    Granted,
    Denied,
    Expired,
}

impl ElevationState {
    fn as_str(self) -> &'static str {
        match self {
            ElevationState::AwaitingApproval => "awaiting_approval",
            ElevationState::Granted => "granted",
            ElevationState::Denied => "denied",
            ElevationState::Expired => "expired",
        }
    }

    fn parse(state: &str) -> Option<ElevationState> {
        [
            ElevationState::AwaitingApproval,
            ElevationState::Granted,
            ElevationState::Denied,
            ElevationState::Expired,
        ]
        .into_iter()
        .find(|known| known.as_str() == state)
    }
}

/// A session's request for more capabilities.
#[derive(Clone, Debug, PartialEq)]
pub struct Elevation {
    /// A lowercase ULID: the name of its ApprovalRequest.
    pub id: String,
    pub namespace: String,
    /// The session that asked (and would hold the Grant).
    pub session: String,
    pub capabilities: Vec<Capability>,
    /// How long the Grant lasts.
    pub duration: Duration,
    pub reason: String,
    pub state: ElevationState,
    pub created: Timestamp,
    /// When it expires if nobody decides.
    pub expires: Timestamp,
    /// When its approval was first carried out.
    pub granted: Option<Timestamp>,
}

impl Elevation {
    /// When the Grant of an approved request ends.
    pub fn grant_expires(&self) -> Option<Timestamp> {
        let length = SignedDuration::try_from(self.duration).unwrap_or(SignedDuration::MAX);
        self.granted.map(|granted| granted + length)
    }
}

impl Store {
    /// Records a new elevation request.
    pub async fn open_elevation(&self, elevation: &Elevation) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO elevations (namespace, id, session, capabilities, duration_s, reason, \
             state, created_us, expires_us, granted_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)",
        )
        .bind(&elevation.namespace)
        .bind(&elevation.id)
        .bind(&elevation.session)
        .bind(serde_json::to_string(&elevation.capabilities).expect("capabilities serialize"))
        .bind(elevation.duration.as_secs() as i64)
        .bind(&elevation.reason)
        .bind(elevation.state.as_str())
        .bind(elevation.created.as_microsecond())
        .bind(elevation.expires.as_microsecond())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Settles elevation request `id` as `settled` (granted, denied or
    /// expired) at `now` and tells its session why; settling it so again
    /// changes nothing. Returns the request as settled, and whether it was
    /// settled by this call.
    pub async fn settle_elevation(
        &self,
        namespace: &str,
        id: &str,
        settled: ElevationState,
        reason: &str,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<(Elevation, bool), StoreError> {
        let mut transaction = self.pool.begin().await?;
        let row = sqlx::query(concat!(
            "UPDATE elevations SET state = state WHERE namespace = $1 AND id = $2 RETURNING ",
            columns!()
        ))
        .bind(namespace)
        .bind(id)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(mut elevation) = row.as_ref().map(read_elevation).transpose()? else {
            return Err(RequestError::NotFound { id: id.to_owned() }.into());
        };
        if elevation.state == settled {
            return Ok((elevation, false));
        }
        if elevation.state != ElevationState::AwaitingApproval {
            return Err(RequestError::WrongState {
                id: id.to_owned(),
                state: elevation.state.as_str(),
                step: "settled",
            }
            .into());
        }
        elevation.state = settled;
        if settled == ElevationState::Granted {
            // Whole seconds, as the Grant's expiresAt is written.
            let second = Timestamp::from_second(now.as_second()).unwrap_or(now);
            elevation.granted = Some(second);
        }
        sqlx::query(
            "UPDATE elevations SET state = $3, granted_us = $4 WHERE namespace = $1 AND id = $2",
        )
        .bind(namespace)
        .bind(id)
        .bind(settled.as_str())
        .bind(elevation.granted.map(|at| at.as_microsecond()))
        .execute(&mut *transaction)
        .await?;
        append(&mut transaction, &notice(&elevation, reason), limits).await?;
        transaction.commit().await?;
        Ok((elevation, true))
    }
}

/// Tells the session how its request was settled. Its id is the
/// request's, so it is stored once.
fn notice(elevation: &Elevation, reason: &str) -> InboxMessage {
    let mut payload = json!({
        "requestId": elevation.id,
        "state": elevation.state.as_str(),
        "capabilities": elevation.capabilities,
        "reason": reason,
    });
    if let Some(until) = elevation.grant_expires() {
        payload["grantedUntil"] = until.to_string().into();
    }
    let mut message = InboxMessage::new(
        Timestamp::now(),
        &elevation.namespace,
        &elevation.session,
        approval_source(None),
        MessageKind::Result,
        payload,
    );
    message.id = request_message_id(&elevation.id);
    message.request_id = Some(elevation.id.clone());
    message
}

fn read_elevation(row: &AnyRow) -> Result<Elevation, StoreError> {
    let id: String = row.try_get(1)?;
    let corrupt = |error: String| StoreError::Corrupt {
        id: format!("elevation {id}"),
        error,
    };
    let time = |micros: i64| {
        Timestamp::from_microsecond(micros).map_err(|error| corrupt(error.to_string()))
    };
    let capabilities: String = row.try_get(3)?;
    let duration: i64 = row.try_get(4)?;
    let state: String = row.try_get(6)?;
    let granted: Option<i64> = row.try_get(9)?;
    Ok(Elevation {
        namespace: row.try_get(0)?,
        session: row.try_get(2)?,
        capabilities: serde_json::from_str(&capabilities)
            .map_err(|error| corrupt(error.to_string()))?,
        duration: Duration::from_secs(duration.max(0) as u64),
        reason: row.try_get(5)?,
        state: ElevationState::parse(&state).ok_or_else(|| corrupt(format!("state {state}")))?,
        created: time(row.try_get(7)?)?,
        expires: time(row.try_get(8)?)?,
        granted: granted.map(time).transpose()?,
        id,
    })
}
