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
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::names;
use super::otlp_metrics::MetricExport;
use super::store::MetricStore;

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
    spans: Option<mpsc::Sender<Vec<SpanData>>>,
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
            // Room for a burst of reports; the worker's own queue holds the rest.
            let (tx, rx) = mpsc::channel(1024);
            otlp.worker = Some(tokio::spawn(span_worker(
                exporter,
                rx,
                store.clone(),
                cfg.queue_spans,
            )));
            otlp.spans = Some(tx);
        }
        if cfg.metrics {
            otlp.metrics = Some(MetricExport::start(cfg, &resource, store)?);
        }
        Ok(otlp)
    }

    /// Queues a run's spans; never waits. A full channel counts as dropped.
    pub fn send_spans(&self, spans: Vec<SpanData>, store: &MetricStore) {
        let Some(tx) = &self.spans else { return };
        let n = spans.len() as u64;
        if tx.try_send(spans).is_err() {
            store.dropped("traces", n);
        }
    }

    /// Flushes what is queued, within `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        self.spans = None;
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

async fn span_worker(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Vec<SpanData>>,
    store: Arc<MetricStore>,
    cap: usize,
) {
    let mut pending: VecDeque<SpanData> = VecDeque::new();
    let mut backoff = Duration::from_secs(1);
    let mut retry_at = Instant::now();
    // When the oldest pending span arrived: a batch leaves when it is full
    // or has waited `LINGER`, so a busy agent sends one request per
    // `BATCH` spans instead of one per run.
    let mut oldest: Option<Instant> = None;
    let log = RateLimitedLog::new();
    let mut open = true;
    let mut failing = false;
    while open || !pending.is_empty() {
        if open {
            let due = if pending.len() >= BATCH {
                retry_at
            } else {
                match oldest {
                    Some(t) => (t + LINGER).max(retry_at),
                    None => Instant::now() + Duration::from_secs(3600),
                }
            };
            if Instant::now() < due {
                tokio::select! {
                    batch = rx.recv() => match batch {
                        Some(b) => pending.extend(b),
                        None => open = false,
                    },
                    _ = tokio::time::sleep_until(due) => {}
                }
            }
            while let Ok(b) = rx.try_recv() {
                pending.extend(b);
            }
            if oldest.is_none() && !pending.is_empty() {
                oldest = Some(Instant::now());
            }
        }
        if pending.len() > cap {
            let n = pending.len() - cap;
            pending.drain(..n);
            store.dropped("traces", n as u64);
            if log.allow() {
                warn!(
                    dropped = n,
                    queued = cap,
                    "span export queue full: dropping the oldest spans (counted in vantage_telemetry_dropped)"
                );
            }
        }
        let now = Instant::now();
        let ready = pending.len() >= BATCH || oldest.is_some_and(|t| now >= t + LINGER);
        if pending.is_empty() || (open && (now < retry_at || !ready)) {
            continue;
        }
        while !pending.is_empty() {
            let n = pending.len().min(BATCH);
            let batch: Vec<SpanData> = pending.drain(..n).collect();
            let keep = batch.clone();
            let result =
                tokio::time::timeout(Duration::from_secs(15), exporter.export(batch)).await;
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
                    if log.allow() {
                        warn!(error = %reason, queued = pending.len() + keep.len(), retry_in = ?backoff, "span export failed; keeping spans and retrying");
                    }
                    if !open {
                        // Shutting down: one attempt only, the rest is lost.
                        store.dropped("traces", (pending.len() + keep.len()) as u64);
                        return;
                    }
                    for s in keep.into_iter().rev() {
                        pending.push_front(s);
                    }
                    failing = true;
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    break;
                }
            }
        }
        if pending.is_empty() {
            oldest = None;
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
