//! The admin HTTP server: `/metrics` (Prometheus text format), `/healthz`
//! (the process is up) and `/readyz` (every cache has synced).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::api::{NETWORK_ISOLATED, PIDS_LIMITED, Session, SessionPhase};
use crate::cache::Caches;
use crate::controller::metrics::{CheckLabels, Metrics, PhaseLabels};

/// What the admin endpoints read.
pub struct AdminState {
    /// Every metric.
    pub registry: Registry,
    /// The controller's metrics (the sessions gauge is refreshed per scrape).
    pub metrics: Metrics,
    /// The Session cache.
    pub sessions: Store<DeserializeGuard<Session>>,
    /// Set once every cache has synced.
    pub ready: Arc<AtomicBool>,
}

/// The admin routes.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Sets `ready` once every cache has its first full list.
pub async fn mark_ready_when_synced(caches: Caches, ready: Arc<AtomicBool>) {
    let synced = futures::future::join4(
        caches.stores.policies.wait_until_ready(),
        caches.stores.grants.wait_until_ready(),
        caches.stores.gateways.wait_until_ready(),
        caches.sessions.wait_until_ready(),
    )
    .await;
    if matches!(synced, (Ok(()), Ok(()), Ok(()), Ok(()))) {
        ready.store(true, Ordering::Release);
        tracing::info!("caches synced");
    }
}

/// Serves the admin routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    refresh_session_phases(&state);
    refresh_sandbox_checks(&state);
    crate::openmetrics::response(&state.registry)
}

/// Sets the sessions gauge from the cache: one series per phase.
fn refresh_session_phases(state: &AdminState) {
    let phases = [
        Some(SessionPhase::Pending),
        Some(SessionPhase::Ready),
        Some(SessionPhase::Failed),
        Some(SessionPhase::Terminating),
        None,
    ];
    let sessions = state.sessions.state();
    for phase in phases {
        let count = sessions
            .iter()
            .filter(|session| {
                session
                    .0
                    .as_ref()
                    .ok()
                    .and_then(|s| s.status.as_ref())
                    .and_then(|s| s.phase)
                    == phase
            })
            .count();
        let label = phase.map_or("Unknown".to_owned(), |phase| format!("{phase:?}"));
        state
            .metrics
            .sessions
            .get_or_create(&PhaseLabels { phase: label })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// Sets the sandbox-check gauge from the cache: one series per check and status.
fn refresh_sandbox_checks(state: &AdminState) {
    let sessions = state.sessions.state();
    for check in [NETWORK_ISOLATED, PIDS_LIMITED] {
        for status in ["True", "False", "Unknown"] {
            let count = sessions
                .iter()
                .filter_map(|session| session.0.as_ref().ok()?.status.as_ref())
                .filter(|session| {
                    session
                        .conditions
                        .iter()
                        .any(|c| c.type_ == check && c.status == status)
                })
                .count();
            state
                .metrics
                .sandbox_checks
                .get_or_create(&CheckLabels {
                    check: check.to_owned(),
                    status: status.to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}
