//! The only place that knows routes: `/healthz`, `/readyz`, `/metrics`.
//!
//! Readiness means "journeys are loaded and being scheduled", never "the
//! targets are healthy": a red target must not take the prober out of a
//! Service. Errors become short 4xx/5xx texts, never backtraces.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::StreamExt;

use crate::telemetry::MetricStore;
use crate::telemetry::prometheus::{self, CONTENT_TYPE, TEXT_CONTENT_TYPE};

#[derive(Clone)]
pub struct ServerState {
    pub metrics: Arc<MetricStore>,
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

/// Bytes of `/metrics` text per chunk of the response.
const METRICS_CHUNK: usize = 256 * 1024;
/// How long a scraper may leave a chunk unread before its scrape is cut.
const METRICS_STALL: Duration = Duration::from_secs(30);

/// OpenMetrics (with trace-id exemplars) when the scraper asks for it, as
/// Prometheus does; the classic text format otherwise (curl, older tools).
///
/// The text is encoded on a blocking thread, off the runtime's workers
/// where runs are being timed, and streamed in chunks: ten thousand
/// journeys are 75 MB of text, which is never held whole. A scraper that
/// goes away, or reads nothing for `METRICS_STALL`, ends the encoding.
async fn metrics(
    State(s): State<ServerState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let wants_om = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let store = s.metrics.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(2);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        prometheus::encode_chunks(&store, METRICS_CHUNK, &mut |chunk| {
            let chunk = if wants_om {
                chunk
            } else {
                prometheus::openmetrics_to_text(&chunk)
            };
            matches!(
                handle.block_on(tokio::time::timeout(METRICS_STALL, tx.send(chunk))),
                Ok(Ok(()))
            )
        });
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, std::convert::Infallible>);
    let ct = if wants_om {
        CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    (
        [(header::CONTENT_TYPE, ct)],
        axum::body::Body::from_stream(body),
    )
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Vantage probe agent\n\n/metrics  Prometheus / OpenMetrics\n/healthz  liveness\n/readyz   readiness\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state(ready: bool) -> ServerState {
        ServerState {
            metrics: Arc::new(MetricStore::new()),
            ready: Arc::new(AtomicBool::new(ready)),
        }
    }

    async fn get(state: ServerState, path: &str) -> (StatusCode, String, String) {
        get_accept(state, path, "*/*").await
    }

    async fn get_accept(
        state: ServerState,
        path: &str,
        accept: &str,
    ) -> (StatusCode, String, String) {
        let resp = router(state)
            .oneshot(
                Request::get(path)
                    .header(header::ACCEPT, accept)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_is_always_ok() {
        assert_eq!(get(state(false), "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn readyz_follows_the_ready_flag_not_targets() {
        assert_eq!(get(state(true), "/readyz").await.0, StatusCode::OK);
        assert_eq!(
            get(state(false), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn metrics_negotiates_openmetrics_or_classic_text() {
        let s = state(true);
        s.metrics.skipped("j");
        let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (status, ct, body) = get_accept(s.clone(), "/metrics", prometheus_accept).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        assert!(body.contains("vantage_build_info{version="), "{body}");
        assert!(
            body.contains("# TYPE vantage_schedule_skipped_ticks counter"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));

        let (_, ct, body) = get(s, "/metrics").await;
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        assert!(!body.contains("# EOF"));
        assert!(
            body.contains("# TYPE vantage_schedule_skipped_ticks_total counter"),
            "{body}"
        );
        assert!(
            body.contains("vantage_schedule_skipped_ticks_total{journey=\"j\"} 1"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn index_lists_the_endpoints_and_unknown_paths_are_404() {
        assert!(get(state(true), "/").await.2.contains("/metrics"));
        let (status, _, body) = get(state(true), "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, "not found\n");
    }
}
