//! `wopr-operator sidecar-ready`: the `a2a` container's postStart hook.
//!
//! A native sidecar without a startup probe counts as started when its
//! postStart hook returns, and only then does the kubelet start the agent
//! (KEP-753). So this command is what orders the pod: it returns as soon as
//! the sidecar's gRPC health says the agent may start (overall status
//! SERVING: the sockets are open and, when the sandbox requires it, its
//! isolation is verified). A startup probe would do the same at the
//! kubelet's next probe tick, up to a second later.
//!
//! It watches the health service instead of polling it, so it wakes the
//! moment the status changes. It gives up after `--timeout-seconds`: the
//! kubelet then kills and restarts the sidecar, and the hook's message
//! appears in a FailedPostStartHook event.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use clap::Args;

use crate::contract;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How often to retry while the sidecar's health port is not open yet.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// Flags of `wopr-operator sidecar-ready`.
#[derive(Args, Debug, Clone)]
pub struct ReadyArgs {
    /// The sidecar's gRPC health endpoint.
    #[arg(
        long,
        env = "WOPR_READY_HEALTH_ADDRESS",
        default_value = contract::LOOPBACK_HEALTH_ADDRESS
    )]
    pub health_address: SocketAddr,
    /// Give up after this many seconds.
    #[arg(long, env = "WOPR_READY_TIMEOUT_SECONDS", default_value_t = 120)]
    pub timeout_seconds: u64,
}

/// Why the agent may not start.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// The deadline passed.
    #[error(
        "the sidecar did not let the agent start within {0:?} (last status: {1}); see the Session's NetworkIsolated and PidsLimited conditions"
    )]
    TimedOut(Duration, String),
}

/// Returns once the sidecar at `args.health_address` lets the agent start.
pub async fn wait(args: &ReadyArgs) -> Result<(), NotReady> {
    let timeout = Duration::from_secs(args.timeout_seconds);
    let last = Mutex::new(String::from("not listening yet"));
    let watched = async {
        while !watch_until_serving(args.health_address, &last).await {
            tokio::time::sleep(CONNECT_RETRY).await;
        }
    };
    tokio::time::timeout(timeout, watched)
        .await
        .map_err(|_| NotReady::TimedOut(timeout, last.lock().expect("never poisoned").clone()))
}

/// Watches the overall health status; true once it is SERVING, false when
/// the watch could not start or broke. Records each status in `last`.
async fn watch_until_serving(address: SocketAddr, last: &Mutex<String>) -> bool {
    let record = |what: String| *last.lock().expect("never poisoned") = what;
    let channel = match Endpoint::from_shared(format!("http://{address}"))
        .expect("a socket address is a valid URI")
        .connect()
        .await
    {
        Ok(channel) => channel,
        Err(error) => {
            record(format!("cannot connect: {error}"));
            return false;
        }
    };
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let mut statuses = match HealthClient::new(channel).watch(request).await {
        Ok(statuses) => statuses.into_inner(),
        Err(status) => {
            record(status.message().to_owned());
            return false;
        }
    };
    while let Ok(Some(response)) = statuses.message().await {
        if response.status() == ServingStatus::Serving {
            return true;
        }
        record(response.status().as_str_name().to_owned());
    }
    false
}
