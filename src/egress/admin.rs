//! The egress service's admin HTTP server: `/metrics` (Prometheus text
//! format), `/healthz` (the process is up) and `/readyz` (it serves calls).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The admin routes over `registry`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // Stateless: ready once it listens (a session it cannot vouch for
        // is refused per call, not by the probe).
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(metrics))
        .with_state(registry)
}

/// Serves the admin routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    crate::openmetrics::response(&registry)
}
