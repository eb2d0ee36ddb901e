//! The only place that knows routes: `/healthz`, `/readyz`, `/metrics`.
//!
//! Readiness means "journeys are loaded and being scheduled", never "the
//! targets are healthy": a red target must not take the prober out of a
//! Service. Errors become short 4xx/5xx texts, never backtraces.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::telemetry::Prom;
use crate::telemetry::prometheus::CONTENT_TYPE;

#[derive(Clone)]
pub struct ServerState {
    pub prom: Arc<Prom>,
    /// True once journeys are scheduled; false again while shutting down.
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

async fn readyz(State(s): State<ServerState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(s): State<ServerState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.prom.encode())
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Vantage probe agent\n\n/metrics  Prometheus / OpenMetrics\n/healthz  liveness\n/readyz   readiness\n",
    )
}
