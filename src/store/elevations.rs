//! Elevation requests in the store (`security_request`): a session asks a
//! person for more capabilities for a while. The Grant an approval makes
//! is built from this record, never from the ApprovalRequest (people could
//! write one by hand), and runs from when the approval was first carried
//! out. Each settlement (granted, denied, expired) is made in one
//! transaction with the notice that tells the session, so it is told once.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::forwards::{approval_source, request_message_id};
use super::inbox::append;
use super::{InboxLimits, RequestError, SessionLock, Store, StoreError, lock_session};
use crate::api::Capability;
use crate::api::from_name;
use crate::inbox::{InboxMessage, MessageKind};

/// The columns [`read_elevation`] reads, in its order.
macro_rules! columns {
    () => {
        "namespace, id, session, capabilities, duration_s, reason, state, created_us, \
         expires_us, granted_us"
    };
}

/// The row of a session each of its elevation requests locks.
const SESSION_LOCK: SessionLock = SessionLock {
    table: "elevation_sessions",
    session: "session",
    counter: "requests",
};

/// Where an elevation request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElevationState {
    AwaitingApproval,
    /// A person approved it; its Grant runs from `granted`.
    Granted,
    Denied,
    Expired,
}

impl ElevationState {
    /// Its serde name, as stored and shown (a test holds the two equal).
    fn as_str(self) -> &'static str {
        match self {
            ElevationState::AwaitingApproval => "awaiting_approval",
            ElevationState::Granted => "granted",
            ElevationState::Denied => "denied",
            ElevationState::Expired => "expired",
        }
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
    /// Whether this request asks what `other` asks: the same capabilities
    /// (in any order), reason and duration.
    fn asks_what(&self, other: &Elevation) -> bool {
        let within = |a: &[Capability], b: &[Capability]| a.iter().all(|c| b.contains(c));
        within(&self.capabilities, &other.capabilities)
            && within(&other.capabilities, &self.capabilities)
            && self.reason == other.reason
            && self.duration == other.duration
    }

    /// When the Grant of an approved request ends.
    pub fn grant_expires(&self) -> Option<Timestamp> {
        let length = SignedDuration::try_from(self.duration).unwrap_or(SignedDuration::MAX);
        self.granted.map(|granted| granted + length)
    }
}

/// What [`Store::open_elevation`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Opened {
    /// The request is recorded.
    New,
    /// The session has this open request asking the same (capabilities,
    /// reason, duration): nothing was recorded.
    Existing(Elevation),
    /// The session has `open` open requests, at or over the limit.
    Full { open: usize },
}

impl Store {
    /// Records a new elevation request, unless its session has an open
    /// request (awaiting approval, not expired at `elevation.created`)
    /// asking the same, or `max_open` open requests already. Counted under
    /// the session's lock: concurrent requests, on any replica, count each
    /// other.
    pub async fn open_elevation(
        &self,
        elevation: &Elevation,
        max_open: u32,
    ) -> Result<Opened, StoreError> {
        let (namespace, session) = (&elevation.namespace, &elevation.session);
        let mut transaction = self.pool.begin().await?;
        // The lock: concurrent requests of this session wait here.
        lock_session(&mut transaction, &SESSION_LOCK, (namespace, session)).await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM elevations WHERE namespace = $1 AND session = $2 AND state = $3 \
             AND expires_us > $4 ORDER BY created_us, id"
        ))
        .bind(namespace)
        .bind(session)
        .bind(ElevationState::AwaitingApproval.as_str())
        .bind(elevation.created.as_microsecond())
        .fetch_all(&mut *transaction)
        .await?;
        let open = rows
            .iter()
            .map(read_elevation)
            .collect::<Result<Vec<_>, _>>()?;
        let opened = match open.iter().find(|open| open.asks_what(elevation)) {
            Some(existing) => Opened::Existing(existing.clone()),
            None if open.len() >= max_open as usize => Opened::Full { open: open.len() },
            None => Opened::New,
        };
        if opened != Opened::New {
            transaction.rollback().await?;
            return Ok(opened);
        }
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
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(Opened::New)
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
        state: from_name::<ElevationState>(&state)
            .ok_or_else(|| corrupt(format!("state {state}")))?,
        created: time(row.try_get(7)?)?,
        expires: time(row.try_get(8)?)?,
        granted: granted.map(time).transpose()?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::name_of;

    #[test]
    fn as_str_is_the_serde_name() {
        use ElevationState::*;
        for state in [AwaitingApproval, Granted, Denied, Expired] {
            assert_eq!(state.as_str(), name_of(&state));
            assert_eq!(from_name::<ElevationState>(state.as_str()), Some(state));
        }
        assert_eq!(from_name::<ElevationState>("approved"), None);
    }
}
