//! The one shutdown every part of a process waits for: a future that any
//! number of tasks can hold and that completes once, when the process is
//! asked to stop (SIGTERM in the binary, a channel in tests).

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// Completes when the process starts shutting down. Cheap to clone.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// A [`Shutdown`] that completes with `signal`.
pub fn on(signal: impl Future<Output = ()> + Send + 'static) -> Shutdown {
    signal.boxed().shared()
}
