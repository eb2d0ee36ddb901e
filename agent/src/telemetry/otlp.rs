//! OTLP export of traces and metrics over gRPC or HTTP/protobuf.
//!
//! Traces: each finished run's spans are encoded once (`spans.rs`) and
//! go into a bounded queue that a task of its own drains, a batch per
//! export request, through [`Transport`]. A collector that is down never
//! slows probing: a full queue drops the oldest runs' spans, counts them in
//! `vantage_telemetry_dropped{signal="traces"}` and logs at most once a
//! minute; a failed request is kept, encoded, at the head of the queue and
//! retried with backoff, so export resumes by itself when the collector
//! returns.
//!
//! Metrics: `otlp_metrics.rs` exports the metric store periodically.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope as PbScope;
use opentelemetry_proto::tonic::resource::v1::Resource as PbResource;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::Resource;
use prost::Message;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use super::names;
use super::otlp_metrics::MetricExport;
use super::spans;
use super::store::{MetricStore, lock};
use super::transport::{Signal, Transport, note_refused};
use crate::report::JourneyReport;

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

/// The instrumentation scope of every span and metric Vantage exports.
pub(crate) fn pb_scope() -> PbScope {
    PbScope {
        name: "vantage".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

pub(crate) fn pb_resource(resource: &Resource) -> PbResource {
    PbResource {
        attributes: ResourceAttributesWithSchema::from(resource).attributes.0,
        ..Default::default()
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
        if cfg.traces {
            let transport = Transport::new(cfg, Signal::Traces)?;
            let queue = Arc::new(SpanQueue::new(cfg.queue_spans));
            let header = BatchHeader {
                resource: pb_resource(&resource).encode_to_vec(),
                scope: pb_scope().encode_to_vec(),
            };
            otlp.worker = Some(tokio::spawn(span_worker(
                transport,
                header,
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

    /// Encodes a run's spans and queues them; never waits. Past the queue's
    /// cap the oldest runs' spans are dropped and counted.
    pub fn send_spans(&self, r: &JourneyReport, store: &MetricStore) {
        if let Some(q) = &self.spans {
            q.push(Pending::run(r), store);
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

/// What waits for export: one run's encoded spans, or a request that failed
/// and is retried as it is.
enum Pending {
    Run { spans: u32, bytes: Vec<u8> },
    Failed { spans: u32, body: Bytes },
}

impl Pending {
    /// A finished run's spans, encoded.
    fn run(r: &JourneyReport) -> Pending {
        // About 300 bytes a span: one allocation for most runs.
        let mut bytes = Vec::with_capacity(384 * (1 + 2 * r.steps.len()));
        let spans = spans::encode_run(r, &mut bytes);
        Pending::Run { spans, bytes }
    }

    fn spans(&self) -> usize {
        match self {
            Pending::Run { spans, .. } | Pending::Failed { spans, .. } => *spans as usize,
        }
    }
}

/// The encoded resource and scope every span request starts with.
struct BatchHeader {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

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
    pending: VecDeque<Pending>,
    /// Spans in `pending`.
    spans: usize,
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
                spans: 0,
                oldest: None,
                closed: false,
            }),
            wake: Notify::new(),
            cap: cap.max(1),
            log: RateLimitedLog::new(),
        }
    }

    fn push(&self, run: Pending, store: &MetricStore) {
        let mut st = lock(&self.state);
        if st.closed {
            drop(st);
            store.dropped("traces", run.spans() as u64);
            return;
        }
        let before = st.spans;
        st.spans += run.spans();
        st.pending.push_back(run);
        let wake = before == 0 || (before < BATCH && st.spans >= BATCH);
        self.settle(st, store);
        if wake {
            self.wake.notify_one();
        }
    }

    /// After spans were added: starts the linger clock if it is not
    /// running, drops the oldest entries while the queue is over its cap
    /// (a run's spans go together; the newest entry always stays), and
    /// counts (and logs) the dropped spans once the lock is released.
    fn settle(&self, mut st: std::sync::MutexGuard<'_, QueueState>, store: &MetricStore) {
        if st.oldest.is_none() {
            st.oldest = Some(Instant::now());
        }
        let mut over = 0;
        while st.spans > self.cap && st.pending.len() > 1 {
            let Some(gone) = st.pending.pop_front() else {
                break;
            };
            st.spans -= gone.spans();
            over += gone.spans();
        }
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

    /// Puts a request that failed back at the front, to be retried first.
    fn put_back(&self, spans: u32, body: Bytes, store: &MetricStore) {
        let mut st = lock(&self.state);
        st.spans += spans as usize;
        st.pending.push_front(Pending::Failed { spans, body });
        self.settle(st, store);
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_one();
    }

    /// The next request, once one is due and the worker may send
    /// (`retry_at`), with its span count; `None` once the queue is closed
    /// and empty. The flag says whether the queue is closed.
    async fn next_batch(
        &self,
        retry_at: Instant,
        header: &BatchHeader,
    ) -> Option<(Bytes, u32, bool)> {
        loop {
            let due = {
                let mut st = lock(&self.state);
                let now = Instant::now();
                let due = if st.closed {
                    if st.pending.is_empty() {
                        return None;
                    }
                    now
                } else if st.spans >= BATCH
                    || matches!(st.pending.front(), Some(Pending::Failed { .. }))
                {
                    retry_at
                } else {
                    match st.oldest {
                        Some(t) => (t + LINGER).max(retry_at),
                        None => now + Duration::from_secs(3600),
                    }
                };
                if due <= now {
                    let taken = Self::take(&mut st);
                    let closed = st.closed;
                    drop(st);
                    return Some(match taken {
                        Taken::Failed(spans, body) => (body, spans, closed),
                        Taken::Runs(spans, runs) => {
                            let body = spans::request(
                                &header.resource,
                                &header.scope,
                                runs.iter().map(Vec::as_slice),
                            );
                            (Bytes::from(body), spans, closed)
                        }
                    });
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

    /// A failed request alone, or runs up to a batch of spans (at least one
    /// run, however large).
    fn take(st: &mut QueueState) -> Taken {
        let taken = match st.pending.pop_front() {
            Some(Pending::Failed { spans, body }) => {
                st.spans -= spans as usize;
                Taken::Failed(spans, body)
            }
            Some(Pending::Run { spans, bytes }) => {
                st.spans -= spans as usize;
                let mut total = spans;
                let mut runs = vec![bytes];
                while let Some(Pending::Run { spans, .. }) = st.pending.front() {
                    if total as usize + *spans as usize > BATCH {
                        break;
                    }
                    if let Some(Pending::Run { spans, bytes }) = st.pending.pop_front() {
                        st.spans -= spans as usize;
                        total += spans;
                        runs.push(bytes);
                    }
                }
                Taken::Runs(total, runs)
            }
            None => Taken::Runs(0, Vec::new()),
        };
        if st.pending.is_empty() {
            st.oldest = None;
        }
        taken
    }
}

enum Taken {
    Failed(u32, Bytes),
    Runs(u32, Vec<Vec<u8>>),
}

async fn span_worker(
    mut transport: Transport,
    header: BatchHeader,
    queue: Arc<SpanQueue>,
    store: Arc<MetricStore>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut retry_at = Instant::now();
    let log = RateLimitedLog::new();
    let refused_log = RateLimitedLog::new();
    let mut failing = false;
    while let Some((body, spans, closed)) = queue.next_batch(retry_at, &header).await {
        // `Bytes` is shared, not copied: the same request is kept for a retry.
        match transport.send(body.clone()).await {
            Ok(refused) => {
                note_refused(refused, Signal::Traces, &store, &refused_log);
                if failing {
                    info!("span export recovered");
                }
                failing = false;
                backoff = Duration::from_secs(1);
            }
            Err(reason) => {
                store.export_failed("traces");
                let queued = lock(&queue.state).spans + spans as usize;
                if log.allow() {
                    warn!(error = %reason, queued, retry_in = ?backoff, "span export failed; keeping spans and retrying");
                }
                if closed {
                    // Shutting down: one attempt only, the rest is lost.
                    store.dropped("traces", queued as u64);
                    return;
                }
                queue.put_back(spans, body, &store);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::store::tests::http_run;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn run(spans: u32) -> Pending {
        Pending::Run {
            spans,
            bytes: vec![0; spans as usize],
        }
    }

    fn header() -> BatchHeader {
        BatchHeader {
            resource: pb_resource(&Resource::builder_empty().build()).encode_to_vec(),
            scope: pb_scope().encode_to_vec(),
        }
    }

    #[test]
    fn past_the_cap_the_oldest_runs_go_whole_and_are_counted() {
        let store = MetricStore::new();
        let q = SpanQueue::new(5);
        q.push(run(3), &store);
        q.push(run(3), &store);
        // 6 > 5: the first run goes.
        assert_eq!(lock(&q.state).spans, 3);
        assert_eq!(store.totals().dropped_traces, 3);
        // One run larger than the cap stays: the newest entry always does.
        q.push(run(8), &store);
        let st = lock(&q.state);
        assert_eq!((st.spans, st.pending.len()), (8, 1));
        drop(st);
        assert_eq!(store.totals().dropped_traces, 6);
    }

    #[test]
    fn a_failed_request_is_retried_alone_and_first_then_runs_fill_a_batch() {
        let store = MetricStore::new();
        let q = SpanQueue::new(100_000);
        for _ in 0..300 {
            q.push(run(3), &store);
        }
        q.put_back(7, Bytes::from_static(b"failed"), &store);
        let mut st = lock(&q.state);
        assert_eq!(st.spans, 907);
        match SpanQueue::take(&mut st) {
            Taken::Failed(7, body) => assert_eq!(&body[..], b"failed"),
            _ => panic!("the failed request first"),
        }
        // 170 runs of 3 spans fit in a batch of 512; the 171st does not.
        match SpanQueue::take(&mut st) {
            Taken::Runs(n, runs) => assert_eq!((n, runs.len()), (510, 170)),
            _ => panic!("runs"),
        }
        match SpanQueue::take(&mut st) {
            Taken::Runs(n, runs) => assert_eq!((n, runs.len()), (390, 130)),
            _ => panic!("runs"),
        }
        assert_eq!(st.spans, 0);
        assert!(st.oldest.is_none());
    }

    #[tokio::test]
    async fn a_batch_is_one_request_holding_every_run_in_order() {
        let store = MetricStore::new();
        let q = SpanQueue::new(100);
        let names = ["a", "b", "c"];
        for n in names {
            q.push(Pending::run(&http_run(n, None, 200, 1)), &store);
        }
        q.close();
        let (body, spans, closed) = q
            .next_batch(Instant::now(), &header())
            .await
            .expect("a batch");
        assert!(closed);
        assert_eq!(spans, 9);
        let req = ExportTraceServiceRequest::decode(body).expect("valid request");
        let ss = &req.resource_spans[0].scope_spans[0];
        assert_eq!(ss.scope.as_ref().map(|s| s.name.as_str()), Some("vantage"));
        let roots: Vec<&str> = ss
            .spans
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(roots, ["journey a", "journey b", "journey c"]);
        assert_eq!(ss.spans.len(), 9);
        assert!(q.next_batch(Instant::now(), &header()).await.is_none());
    }
}
