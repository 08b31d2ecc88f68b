//! The steps of a forward after it is opened: the target answers, the
//! gateway responds, a person approves or denies, the clock expires it.
//! Each is made in one transaction with the inbox message it sends, under
//! a row lock on the forward, so every message of a forward is sent once
//! however often a step is retried, on any replica.

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::rows::{columns, read_forward};
use super::{Forward, ForwardState, RequestError, approval_source};
use crate::api::{SourceRef, SourceType};
use crate::inbox::{InboxMessage, MessageKind};
use crate::store::inbox::{append, within_size};
use crate::store::{InboxLimits, Store, StoreError};

impl Store {
    /// The target `replier` answers forward `id` with `result`: the answer
    /// goes to the gateway's inbox, once.
    pub async fn reply_to_forward(
        &self,
        namespace: &str,
        id: &str,
        replier: &SourceRef,
        result: Value,
        limits: InboxLimits,
    ) -> Result<InboxMessage, StoreError> {
        self.step(namespace, id, limits, |forward| {
            if forward.target != replier.identity {
                return Err(not_found(id));
            }
            expect(forward, &[ForwardState::Delivered], "answered")?;
            let answer = forward.message_to(
                &forward.gateway_session,
                replier.clone(),
                MessageKind::Result,
                result,
            );
            Ok((ForwardState::Answered, Some(Outgoing::Inbox(answer))))
        })
        .await
        .map(|sent| sent.expect("an answer is sent"))
    }

    /// The gateway session `responder` sends `result` to whoever first sent
    /// forward `id`, once: into the source's inbox when it is a session;
    /// kept with the forward for a source without an inbox (a person, a
    /// workload), who reads it with [`Store::answers`]. The message names
    /// the gateway session as its recipient then, the session the source
    /// sent to.
    pub async fn respond_to_forward(
        &self,
        namespace: &str,
        id: &str,
        responder: &SourceRef,
        result: Value,
        limits: InboxLimits,
    ) -> Result<InboxMessage, StoreError> {
        self.step(namespace, id, limits, |forward| {
            if forward.gateway_session != responder.identity {
                return Err(not_found(id));
            }
            expect(
                forward,
                &[ForwardState::Delivered, ForwardState::Answered],
                "responded to",
            )?;
            let to_a_session = SourceType::Session.is(&forward.source.source_type);
            let recipient = if to_a_session {
                &forward.source.identity
            } else {
                &forward.gateway_session
            };
            let result =
                forward.message_to(recipient, responder.clone(), MessageKind::Result, result);
            let sent = if to_a_session {
                Outgoing::Inbox(result)
            } else {
                Outgoing::Kept(result)
            };
            Ok((ForwardState::Responded, Some(sent)))
        })
        .await
        .map(|sent| sent.expect("a result is sent"))
    }

    /// Delivers forward `id`, approved by a person; `false` when it was
    /// delivered before.
    pub async fn deliver_approved(
        &self,
        namespace: &str,
        id: &str,
        limits: InboxLimits,
    ) -> Result<bool, StoreError> {
        let sent = self
            .step(namespace, id, limits, |forward| {
                if forward.state != ForwardState::AwaitingApproval {
                    let done = [
                        ForwardState::Delivered,
                        ForwardState::Answered,
                        ForwardState::Responded,
                    ];
                    expect(forward, &done, "delivered")?;
                    return Ok((forward.state, None));
                }
                Ok((
                    ForwardState::Delivered,
                    Some(Outgoing::Inbox(forward.delivery())),
                ))
            })
            .await?;
        Ok(sent.is_some())
    }

    /// Closes forward `id`, waiting for approval, as `Denied` or `Expired`
    /// and tells its gateway why (`decided_by`: who denied it, if anyone);
    /// `false` when it was closed so before.
    pub async fn close_forward(
        &self,
        namespace: &str,
        id: &str,
        closed: ForwardState,
        decided_by: Option<&str>,
        reason: &str,
        limits: InboxLimits,
    ) -> Result<bool, StoreError> {
        let sent = self
            .step(namespace, id, limits, |forward| {
                if forward.state == closed {
                    return Ok((closed, None));
                }
                expect(forward, &[ForwardState::AwaitingApproval], "closed")?;
                let source = approval_source(decided_by);
                let notice = serde_json::json!({
                    "requestId": forward.id,
                    "state": closed.as_str(),
                    "reason": reason,
                });
                let mut message = forward.message_to(
                    &forward.gateway_session,
                    source,
                    MessageKind::Result,
                    notice,
                );
                message.id = forward.message_id();
                Ok((closed, Some(Outgoing::Inbox(message))))
            })
            .await?;
        Ok(sent.is_some())
    }

    /// Locks forward `id`, asks `next` for its next state and the message
    /// that step sends (if any), and makes both happen together.
    async fn step(
        &self,
        namespace: &str,
        id: &str,
        limits: InboxLimits,
        next: impl FnOnce(&Forward) -> Result<(ForwardState, Option<Outgoing>), RequestError>,
    ) -> Result<Option<InboxMessage>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        // A no-op update takes the row lock on both backends (SQLite has
        // no FOR UPDATE; its writers are serialized anyway).
        let row = sqlx::query(concat!(
            "UPDATE forwards SET updated_us = updated_us WHERE namespace = $1 AND id = $2 \
             RETURNING ",
            columns!()
        ))
        .bind(namespace)
        .bind(id)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(forward) = row.as_ref().map(read_forward).transpose()? else {
            return Err(not_found(id).into());
        };
        let (state, sent) = next(&forward)?;
        let (message, kept) = match sent {
            Some(Outgoing::Inbox(message)) => {
                append(&mut transaction, &message, limits).await?;
                (Some(message), None)
            }
            Some(Outgoing::Kept(message)) => {
                within_size(&message.payload, limits)?;
                let json = serde_json::to_string(&message).expect("inbox messages serialize");
                (Some(message), Some(json))
            }
            None => (None, None),
        };
        if state != forward.state {
            let now = Timestamp::now().as_microsecond();
            let decided = (forward.state == ForwardState::AwaitingApproval).then_some(now);
            sqlx::query(
                "UPDATE forwards SET state = $3, updated_us = $4, \
                 decided_us = COALESCE($5, decided_us), result = COALESCE($6, result) \
                 WHERE namespace = $1 AND id = $2",
            )
            .bind(namespace)
            .bind(id)
            .bind(state.as_str())
            .bind(now)
            .bind(decided)
            .bind(kept)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(message)
    }
}

/// Where the message of a step goes: a session's inbox, or kept with the
/// forward for a source that has no inbox.
enum Outgoing {
    Inbox(InboxMessage),
    Kept(InboxMessage),
}

fn not_found(id: &str) -> RequestError {
    RequestError::NotFound { id: id.to_owned() }
}

/// `Ok` when `forward` is in one of `states`.
fn expect(
    forward: &Forward,
    states: &[ForwardState],
    step: &'static str,
) -> Result<(), RequestError> {
    if states.contains(&forward.state) {
        Ok(())
    } else {
        Err(RequestError::WrongState {
            id: forward.id.clone(),
            state: forward.state.as_str(),
            step,
        })
    }
}
