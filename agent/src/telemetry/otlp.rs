//! OTLP export of traces and metrics over gRPC or HTTP/protobuf.
//!
//! Traces: reports become spans after the run and go into a bounded queue
//! that a task of its own drains into the SDK's `SpanExporter` (the
//! official protocol encoding and transports). A collector that is down
//! never slows probing: a full queue drops the oldest spans, counts them in
//! `vantage_telemetry_dropped{signal="traces"}` and logs at most once a
//! minute; failed batches are kept and retried with backoff, so export
//! resumes by itself when the collector returns.
//!
//! Metrics: `otlp_metrics.rs` exports the metric store periodically.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use super::names;
use super::otlp_metrics::MetricExport;
use super::store::{MetricStore, lock};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
            other => Err(format!(
                "unsupported OTLP protocol `{other}` (use grpc or http/protobuf)"
            )),
        }
    }
}

/// Where and how to export; built from flags and the standard
/// `OTEL_EXPORTER_OTLP_*` variables.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// Overrides the `OTEL_EXPORTER_OTLP_*ENDPOINT` variables (base URL).
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    pub traces: bool,
    pub metrics: bool,
    /// Spans held while the collector is slow or down.
    pub queue_spans: usize,
    pub metric_interval: Option<Duration>,
}

impl OtlpConfig {
    /// `None` when nothing asks for OTLP: no flag and no endpoint variable.
    pub fn from_env(
        endpoint: Option<String>,
        protocol: Option<String>,
    ) -> Result<Option<OtlpConfig>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let any_endpoint = endpoint.is_some()
            || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some();
        if !any_endpoint {
            return Ok(None);
        }
        let protocol = match protocol.or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL")) {
            Some(p) => p.parse()?,
            // The OpenTelemetry specification's default.
            None => Protocol::HttpProtobuf,
        };
        let enabled = |k: &str| var(k).is_none_or(|v| v != "none");
        Ok(Some(OtlpConfig {
            endpoint,
            protocol,
            traces: enabled("OTEL_TRACES_EXPORTER"),
            metrics: enabled("OTEL_METRICS_EXPORTER"),
            queue_spans: 20_000,
            metric_interval: None,
        }))
    }
}

/// Logs an export problem at most once a minute.
pub(crate) struct RateLimitedLog {
    last: Mutex<Option<Instant>>,
}

impl RateLimitedLog {
    pub(crate) fn new() -> Self {
        RateLimitedLog {
            last: Mutex::new(None),
        }
    }

    pub(crate) fn allow(&self) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = Instant::now();
        if last.is_some_and(|l| now - l < Duration::from_secs(60)) {
            return false;
        }
        *last = Some(now);
        true
    }
}

pub struct Otlp {
    spans: Option<Arc<SpanQueue>>,
    worker: Option<tokio::task::JoinHandle<()>>,
    metrics: Option<MetricExport>,
}

impl Otlp {
    /// Builds the exporters. Must be called inside the tokio runtime.
    pub fn start(
        cfg: &OtlpConfig,
        resource: Resource,
        store: Arc<MetricStore>,
    ) -> Result<Otlp, String> {
        let mut otlp = Otlp {
            spans: None,
            worker: None,
            metrics: None,
        };
        let endpoint = |path: &str| {
            cfg.endpoint.as_ref().map(|e| match cfg.protocol {
                Protocol::Grpc => e.clone(),
                Protocol::HttpProtobuf => format!("{}{path}", e.trim_end_matches('/')),
            })
        };
        if cfg.traces {
            let mut exporter = match cfg.protocol {
                Protocol::Grpc => {
                    let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                    if let Some(e) = endpoint("") {
                        b = b.with_endpoint(e);
                    }
                    b.build()
                }
                Protocol::HttpProtobuf => {
                    let mut b = opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                    if let Some(e) = endpoint("/v1/traces") {
                        b = b.with_endpoint(e);
                    }
                    b.build()
                }
            }
            .map_err(|e| format!("cannot build the OTLP span exporter: {e}"))?;
            exporter.set_resource(&resource);
            let queue = Arc::new(SpanQueue::new(cfg.queue_spans));
            otlp.worker = Some(tokio::spawn(span_worker(
                exporter,
                queue.clone(),
                store.clone(),
            )));
            otlp.spans = Some(queue);
        }
        if cfg.metrics {
            otlp.metrics = Some(MetricExport::start(cfg, &resource, store)?);
        }
        Ok(otlp)
    }

    /// Queues a run's spans; never waits. Past the queue's cap the oldest
    /// spans are dropped and counted.
    pub fn send_spans(&self, spans: Vec<SpanData>, store: &MetricStore) {
        if let Some(q) = &self.spans {
            q.push(spans, store);
        }
    }

    /// Flushes what is queued, within `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(q) = self.spans.take() {
            q.close();
        }
        if let Some(worker) = self.worker.take()
            && tokio::time::timeout(grace, worker).await.is_err()
        {
            warn!(grace = ?grace, "span export did not finish within the grace period; unsent spans are lost");
        }
        if let Some(m) = self.metrics.take() {
            m.shutdown(grace).await;
        }
    }
}

/// Spans per export request.
const BATCH: usize = 512;
/// How long a partial batch waits for company.
const LINGER: Duration = Duration::from_millis(200);

/// The spans waiting for export. Runs append under a short lock; the export
/// worker takes batches. A run wakes the worker only when its spans start
/// a batch or fill one, so a busy agent wakes it a few times a second
/// rather than once per run.
struct SpanQueue {
    state: Mutex<QueueState>,
    wake: Notify,
    cap: usize,
    log: RateLimitedLog,
}

struct QueueState {
    pending: VecDeque<SpanData>,
    /// When the oldest pending span arrived: a batch leaves when it is full
    /// or has waited `LINGER`.
    oldest: Option<Instant>,
    /// Shutting down: the worker sends what is left, once, and stops.
    closed: bool,
}

impl SpanQueue {
    fn new(cap: usize) -> SpanQueue {
        SpanQueue {
            state: Mutex::new(QueueState {
                pending: VecDeque::new(),
                oldest: None,
                closed: false,
            }),
            wake: Notify::new(),
            cap: cap.max(1),
            log: RateLimitedLog::new(),
        }
    }

    fn push(&self, spans: Vec<SpanData>, store: &MetricStore) {
        let mut st = lock(&self.state);
        if st.closed {
            drop(st);
            store.dropped("traces", spans.len() as u64);
            return;
        }
        let before = st.pending.len();
        st.pending.extend(spans);
        let wake = before == 0 || (before < BATCH && st.pending.len() >= BATCH);
        self.settle(st, store);
        if wake {
            self.wake.notify_one();
        }
    }

    /// After spans were added: starts the linger clock if it is not
    /// running, drops the oldest spans beyond the cap, and counts (and
    /// logs) them once the lock is released.
    fn settle(&self, mut st: std::sync::MutexGuard<'_, QueueState>, store: &MetricStore) {
        if st.oldest.is_none() {
            st.oldest = Some(Instant::now());
        }
        let over = st.pending.len().saturating_sub(self.cap);
        st.pending.drain(..over);
        drop(st);
        if over == 0 {
            return;
        }
        store.dropped("traces", over as u64);
        if self.log.allow() {
            warn!(
                dropped = over,
                queued = self.cap,
                "span export queue full: dropping the oldest spans (counted in vantage_telemetry_dropped)"
            );
        }
    }

    /// Puts a batch that failed back at the front, oldest first.
    fn put_back(&self, batch: Vec<SpanData>, store: &MetricStore) {
        let mut st = lock(&self.state);
        for s in batch.into_iter().rev() {
            st.pending.push_front(s);
        }
        self.settle(st, store);
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_one();
    }

    /// The next batch, once one is due and the worker may send (`retry_at`);
    /// `None` once the queue is closed and empty. The flag says whether the
    /// queue is closed.
    async fn next_batch(&self, retry_at: Instant) -> Option<(Vec<SpanData>, bool)> {
        loop {
            let due = {
                let mut st = lock(&self.state);
                let now = Instant::now();
                let due = if st.closed {
                    if st.pending.is_empty() {
                        return None;
                    }
                    now
                } else if st.pending.len() >= BATCH {
                    retry_at
                } else {
                    match st.oldest {
                        Some(t) => (t + LINGER).max(retry_at),
                        None => now + Duration::from_secs(3600),
                    }
                };
                if due <= now {
                    let n = st.pending.len().min(BATCH);
                    let batch: Vec<SpanData> = st.pending.drain(..n).collect();
                    if st.pending.is_empty() {
                        st.oldest = None;
                    }
                    return Some((batch, st.closed));
                }
                due
            };
            // `notify_one` keeps a permit when the worker is not waiting, so
            // a push between the check above and this wait is not missed.
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(due) => {}
            }
        }
    }
}

async fn span_worker(
    exporter: opentelemetry_otlp::SpanExporter,
    queue: Arc<SpanQueue>,
    store: Arc<MetricStore>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut retry_at = Instant::now();
    let log = RateLimitedLog::new();
    let mut failing = false;
    while let Some((batch, closed)) = queue.next_batch(retry_at).await {
        let keep = batch.clone();
        let result = tokio::time::timeout(Duration::from_secs(15), exporter.export(batch)).await;
        match result {
            Ok(Ok(())) => {
                if failing {
                    info!("span export recovered");
                }
                failing = false;
                backoff = Duration::from_secs(1);
            }
            Ok(Err(_)) | Err(_) => {
                store.export_failed("traces");
                let reason = match result {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                let queued = lock(&queue.state).pending.len() + keep.len();
                if log.allow() {
                    warn!(error = %reason, queued, retry_in = ?backoff, "span export failed; keeping spans and retrying");
                }
                if closed {
                    // Shutting down: one attempt only, the rest is lost.
                    store.dropped("traces", queued as u64);
                    return;
                }
                queue.put_back(keep, &store);
                failing = true;
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The agent's OTLP resource: defaults, then `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_SERVICE_NAME`, which win.
pub fn resource(location: &str, environment: Option<&str>) -> Resource {
    let mut defaults = vec![
        KeyValue::new("service.name", "vantage"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
        KeyValue::new(names::ATTR_LOCATION, location.to_string()),
    ];
    if let Some(env) = environment {
        defaults.push(KeyValue::new(
            "deployment.environment.name",
            env.to_string(),
        ));
    }
    let mut b = Resource::builder_empty()
        .with_attributes(defaults)
        .with_detector(Box::new(
            opentelemetry_sdk::resource::EnvResourceDetector::new(),
        ));
    if let Ok(name) = std::env::var("OTEL_SERVICE_NAME")
        && !name.trim().is_empty()
    {
        b = b.with_service_name(name);
    }
    b.build()
}
