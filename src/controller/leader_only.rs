//! Only the leader reconciles: on every other replica a reconcile waits
//! for the next change and writes nothing (gaining leadership reconciles
//! everything again, `run.rs`). Written once, around each controller's
//! reconcile, instead of as the first lines of each.

use std::future::Future;
use std::sync::Arc;

use futures::future::{Either, Ready, ready};
use kube::runtime::controller::Action;

use super::error::Error;
use crate::cluster::lease::Leadership;

/// A controller's context, which knows whether this replica leads.
pub trait Led {
    /// This replica's leadership.
    fn leadership(&self) -> &Leadership;
}

/// A reconcile that may not have run: the wait of a replica that does not
/// lead, or the reconcile's own future.
pub type LeaderOnly<Fut> = Either<Ready<Result<Action, Error>>, Fut>;

/// `reconcile`, run only while this replica leads.
pub fn on_the_leader<K, C, Fut>(
    reconcile: impl Fn(Arc<K>, Arc<C>) -> Fut,
) -> impl FnMut(Arc<K>, Arc<C>) -> LeaderOnly<Fut>
where
    C: Led,
    Fut: Future<Output = Result<Action, Error>>,
{
    move |object, ctx| {
        if ctx.leadership().is_leader() {
            Either::Right(reconcile(object, ctx))
        } else {
            Either::Left(ready(Ok(Action::await_change())))
        }
    }
}
