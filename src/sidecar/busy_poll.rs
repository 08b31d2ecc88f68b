//! Busy-polling after each request: the sidecar's thread keeps checking
//! its sockets for a short window instead of going to sleep, so the agent's
//! next call of a burst does not pay for waking a sleeping CPU.
//!
//! An agent calls its tools in bursts: a request, the response, a little
//! work, the next request. If the sidecar's thread sleeps in between, each
//! request first has to wake it, and on virtual machines a wake-up across
//! CPUs is an inter-processor interrupt that costs tens of microseconds
//! (`docs/performance.md` measures it). While the window is open, a spinner
//! task yields to the runtime in a loop; each yield makes the runtime check
//! its sockets without blocking, so a request that arrives is served at
//! once. The window starts again at every request and closes one window
//! after the last one; then the thread sleeps as usual.
//!
//! The cost is CPU: at most one window of spinning per request, and never
//! more than the sidecar's CPU limit. A window of zero turns it off.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tower::util::MapRequestLayer;

/// `last_request` before any request.
const NO_REQUEST: u64 = u64::MAX;

/// The window of busy-polling after each request, shared by the transports
/// (which report requests) and the spinner task.
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last request; [`NO_REQUEST`] before the first.
    last_request: AtomicU64,
    request: Notify,
}

impl BusyPoll {
    /// Busy-polling for `window` after each request; `Duration::ZERO` turns it off.
    pub fn new(window: Duration) -> Arc<BusyPoll> {
        Arc::new(BusyPoll {
            window,
            epoch: Instant::now(),
            last_request: AtomicU64::new(NO_REQUEST),
            request: Notify::new(),
        })
    }

    /// Opens (or extends) the window: a request has just arrived.
    pub fn request_arrived(&self) {
        self.last_request
            .store(self.nanos_since_epoch(), Ordering::Relaxed);
        self.request.notify_one();
    }

    /// A tower layer that opens the window at every request it passes on.
    pub fn layer<Request>(
        self: &Arc<Self>,
    ) -> MapRequestLayer<impl Fn(Request) -> Request + Clone + Send + Sync + 'static> {
        let busy_poll = self.clone();
        MapRequestLayer::new(move |request| {
            busy_poll.request_arrived();
            request
        })
    }

    /// Whether the window after the last request is still open.
    pub fn window_open(&self) -> bool {
        let last_request = self.last_request.load(Ordering::Relaxed);
        last_request != NO_REQUEST
            && Duration::from_nanos(self.nanos_since_epoch().saturating_sub(last_request))
                < self.window
    }

    /// The spinner: after each request, yields to the runtime until the
    /// window closes. Runs forever; returns at once when turned off.
    pub async fn spin(self: Arc<Self>) {
        if self.window.is_zero() {
            return;
        }
        loop {
            self.request.notified().await;
            while self.window_open() {
                // Lets the agent have this CPU if it is waiting for it...
                std::thread::yield_now();
                // ...then lets the runtime check the sockets.
                tokio::task::yield_now().await;
            }
        }
    }

    fn nanos_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(NO_REQUEST - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_opens_at_a_request() {
        let busy_poll = BusyPoll::new(Duration::from_secs(60));
        assert!(!busy_poll.window_open(), "no request yet");
        busy_poll.request_arrived();
        assert!(busy_poll.window_open());
    }

    #[test]
    fn the_window_closes_after_the_last_request() {
        let busy_poll = BusyPoll::new(Duration::from_millis(1));
        busy_poll.request_arrived();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!busy_poll.window_open());
        busy_poll.request_arrived();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!busy_poll.window_open());
    }

    #[test]
    fn a_zero_window_never_opens() {
        let busy_poll = BusyPoll::new(Duration::ZERO);
        busy_poll.request_arrived();
        assert!(!busy_poll.window_open());
    }

    #[tokio::test]
    async fn other_tasks_run_while_the_spinner_spins() {
        let busy_poll = BusyPoll::new(Duration::from_secs(60));
        let spinner = tokio::spawn(busy_poll.clone().spin());
        busy_poll.request_arrived();
        tokio::task::yield_now().await;
        // This single-threaded runtime is shared with the spinner: timers
        // fire and spawned tasks run while it spins.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(tokio::spawn(async { 7 }).await.unwrap(), 7);
        assert!(busy_poll.window_open());
        assert!(
            !spinner.is_finished(),
            "the spinner spins until the window closes"
        );
        spinner.abort();
    }

    #[tokio::test]
    async fn a_zero_window_spinner_returns_at_once() {
        BusyPoll::new(Duration::ZERO).spin().await;
    }
}
