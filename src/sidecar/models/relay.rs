//! The egress service's reply, relayed as the agent's HTTP response body:
//! each `chunk` is written as it arrives (server-sent events stay events),
//! and the call is recorded once, whichever way it ends: by the `outcome`,
//! by the reply breaking off, or by the agent going away. The agent going
//! away drops the body, which drops the gRPC stream, which cancels the
//! call at the egress service and, through it, upstream. The sidecar
//! shutting down ends every reply still open, so its drain does not wait
//! on them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use futures::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Streaming;

use super::Call;
use crate::proto::v1alpha1::model_reply::Reply;
use crate::proto::v1alpha1::{ModelOutcome, ModelReply};

/// Why a relayed reply did not end as the protocol says.
#[derive(Debug, thiserror::Error)]
pub enum BrokenReply {
    /// The gRPC stream failed.
    #[error("the reply from the egress service broke off: {0}")]
    Status(#[from] tonic::Status),
    /// The egress service sent something out of order.
    #[error("the egress service sent {0} after the head")]
    OutOfOrder(&'static str),
    /// It ended without an outcome.
    #[error("the egress service ended the reply without an outcome")]
    NoOutcome,
    /// The sidecar is shutting down.
    #[error("the sidecar shut down before the reply ended")]
    ShuttingDown,
}

/// The body of a relayed reply.
pub struct ReplyBody {
    replies: Streaming<ModelReply>,
    /// The call to record; `None` once recorded. Dropped unrecorded (the
    /// agent went away), it records itself as ended by the agent.
    call: Option<Call>,
    /// Completes when the sidecar shuts down.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl ReplyBody {
    /// The body of `replies` (the head already read), recording `call`,
    /// ended when `shutdown` is cancelled.
    pub fn new(
        replies: Streaming<ModelReply>,
        call: Call,
        shutdown: CancellationToken,
    ) -> ReplyBody {
        ReplyBody {
            replies,
            call: Some(call),
            shutdown: Box::pin(shutdown.cancelled_owned()),
        }
    }

    fn finish(&mut self, ended: Ended) {
        if let Some(mut call) = self.call.take() {
            call.record(ended);
        }
    }
}

/// How a call ended, for its event.
pub enum Ended {
    /// The egress service's outcome: its decision and figures.
    Outcome(ModelOutcome),
    /// The reply broke off (or broke the protocol) before its outcome: why.
    Broken(String),
    /// The agent went away before the outcome.
    Disconnected,
}

impl Stream for ReplyBody {
    type Item = Result<Bytes, BrokenReply>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.call.is_none() {
            return Poll::Ready(None);
        }
        let next = match Pin::new(&mut self.replies).poll_next(cx) {
            Poll::Pending if self.shutdown.as_mut().poll(cx).is_ready() => None,
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => Some(next),
        };
        let broken = match next {
            None => BrokenReply::ShuttingDown,
            Some(next) => match next {
                Some(Ok(ModelReply {
                    reply: Some(Reply::Chunk(chunk)),
                })) => return Poll::Ready(Some(Ok(chunk.into()))),
                Some(Ok(ModelReply {
                    reply: Some(Reply::Outcome(outcome)),
                })) => {
                    self.finish(Ended::Outcome(outcome));
                    return Poll::Ready(None);
                }
                Some(Ok(ModelReply {
                    reply: Some(Reply::Head(_)),
                })) => BrokenReply::OutOfOrder("a second head"),
                Some(Ok(ModelReply { reply: None })) => BrokenReply::OutOfOrder("an unknown reply"),
                Some(Err(status)) => BrokenReply::Status(status),
                None => BrokenReply::NoOutcome,
            },
        };
        // Failing the body (not ending it) tells the agent its answer is
        // incomplete: the connection is closed mid-body.
        tracing::warn!(reason = %broken, "model reply broke off");
        self.finish(Ended::Broken(broken.to_string()));
        Poll::Ready(Some(Err(broken)))
    }
}
