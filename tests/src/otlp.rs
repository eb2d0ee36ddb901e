//! A real OTLP receiver (collector stand-in) for tests.
//!
//! [`Receiver::grpc`] serves the OTLP/gRPC `TraceService`, `MetricsService`
//! and `LogsService` with tonic; [`Receiver::http`] serves OTLP/HTTP with
//! protobuf bodies on `POST /v1/traces`, `/v1/metrics` and `/v1/logs`.
//! Both bind `127.0.0.1:0`. [`Receiver::endpoint`] (`http://127.0.0.1:PORT`)
//! is the gRPC endpoint and the value for `OTEL_EXPORTER_OTLP_ENDPOINT`;
//! note that opentelemetry-otlp uses an HTTP endpoint given programmatically
//! (`with_endpoint`) verbatim, so pass [`Receiver::traces_url`] /
//! [`Receiver::metrics_url`] there.
//!
//! Everything received is flattened into [`FlatSpan`]s and [`FlatMetric`]s
//! that are easy to assert on. The `wait_for_*` methods are woken on every
//! export request (no polling).
//!
//! [`Receiver::stop`] closes the listener and every open connection, like
//! killing a collector process; [`Receiver::grpc_on`] / [`Receiver::http_on`]
//! start a fresh receiver (with empty state) on the same address afterwards.
//!
//! [`Receiver::set_refusing`] makes it accept trace and metric exports but
//! refuse everything in them (OTLP `partial_success`), like a collector
//! whose limits every item breaks.
//!
//! Compressed HTTP bodies (`content-encoding` other than `identity`) and
//! OTLP/JSON are answered with `415 Unsupported Media Type`; gRPC requests
//! with `grpc-encoding: gzip` are rejected by tonic with `UNIMPLEMENTED`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Result, anyhow};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtlpStatusCode;
use prost::Message;
use serde_json::Value;

use crate::server::{Counter, ServerTask, bind, loopback_any, wait_until};

/// Attribute map as flattened by this module.
pub type Attributes = BTreeMap<String, Value>;

/// Which OTLP transport a [`Receiver`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (HTTP/2, tonic).
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

/// One span, flattened out of its resource/scope envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits, or empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `SpanKind` as sent (0 unspecified, 1 internal, 2 server, 3 client,
    /// 4 producer, 5 consumer).
    pub kind: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Attributes,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// `(name, attributes)` of each span event, in order.
    pub events: Vec<(String, Attributes)>,
    /// Attributes of the resource the span was exported under.
    pub resource: Attributes,
    /// Name of the instrumentation scope.
    pub scope_name: String,
}

impl FlatSpan {
    pub fn is_client(&self) -> bool {
        self.kind == SpanKind::Client as i32
    }

    pub fn is_server(&self) -> bool {
        self.kind == SpanKind::Server as i32
    }

    pub fn is_internal(&self) -> bool {
        self.kind == SpanKind::Internal as i32
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }

    pub fn is_error(&self) -> bool {
        self.status_code == OtlpStatusCode::Error as i32
    }

    pub fn is_ok(&self) -> bool {
        self.status_code == OtlpStatusCode::Ok as i32
    }

    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    /// The attribute as a string, if it is one.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    /// The attribute as an integer, if it is one.
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nano.saturating_sub(self.start_unix_nano))
    }

    /// Whether the span has an event called `name`.
    pub fn has_event(&self, name: &str) -> bool {
        self.events.iter().any(|(n, _)| n == name)
    }
}

/// One data point of a [`FlatMetric`].
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FlatPoint {
    pub attributes: Attributes,
    /// Histogram / exponential histogram / summary count.
    pub count: Option<u64>,
    /// Histogram / exponential histogram / summary sum.
    pub sum: Option<f64>,
    /// Gauge or sum value (integers converted to `f64`).
    pub value: Option<f64>,
    /// Explicit histogram bucket bounds.
    pub bounds: Vec<f64>,
    /// Explicit histogram bucket counts (`bounds.len() + 1` of them).
    pub bucket_counts: Vec<u64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub start_unix_nano: u64,
    pub time_unix_nano: u64,
}

impl FlatPoint {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
}

/// One metric from one export request, flattened out of its envelope.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FlatMetric {
    pub name: String,
    pub unit: String,
    pub description: String,
    /// `"gauge"`, `"sum"`, `"histogram"`, `"exponential_histogram"`,
    /// `"summary"`, or `"empty"` when no data was set.
    pub kind: String,
    /// For sums: whether the sum is monotonic.
    pub monotonic: Option<bool>,
    /// For sums and histograms: 1 delta, 2 cumulative.
    pub temporality: Option<i32>,
    pub points: Vec<FlatPoint>,
    pub resource: Attributes,
    pub scope_name: String,
}

impl FlatMetric {
    /// Points whose attribute `key` equals the string `value`.
    pub fn points_with(&self, key: &str, value: &str) -> Vec<&FlatPoint> {
        self.points
            .iter()
            .filter(|p| p.attr_str(key) == Some(value))
            .collect()
    }
}

#[derive(Default)]
struct State {
    spans: Mutex<Vec<FlatSpan>>,
    metrics: Mutex<Vec<FlatMetric>>,
    resource: Mutex<Attributes>,
    log_records: Mutex<u64>,
    /// The headers (HTTP) or metadata (gRPC) of the latest request, by signal.
    headers: Mutex<BTreeMap<&'static str, Vec<(String, String)>>>,
    trace_requests: Counter,
    metric_requests: Counter,
    log_requests: Counter,
    /// Bumped after every request has been recorded; waiters watch it.
    changed: Counter,
    unavailable: AtomicBool,
    /// While set, trace and metric exports are refused item by item with
    /// this message.
    refusing: Mutex<Option<String>>,
    /// Spans and data points refused so far.
    refused: Mutex<(u64, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the data from the others.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn record_traces(&self, req: &ExportTraceServiceRequest) {
        let spans = flatten_traces(req);
        if let Some(r) = req.resource_spans.iter().find_map(|r| r.resource.as_ref()) {
            *lock(&self.resource) = resource_attributes(Some(r));
        }
        lock(&self.spans).extend(spans);
        self.trace_requests.incr();
        self.changed.incr();
    }

    fn record_metrics(&self, req: &ExportMetricsServiceRequest) {
        let metrics = flatten_metrics(req);
        if let Some(r) = req
            .resource_metrics
            .iter()
            .find_map(|r| r.resource.as_ref())
        {
            *lock(&self.resource) = resource_attributes(Some(r));
        }
        lock(&self.metrics).extend(metrics);
        self.metric_requests.incr();
        self.changed.incr();
    }

    fn record_logs(&self, req: &ExportLogsServiceRequest) {
        let n: usize = req
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        *lock(&self.log_records) += n as u64;
        self.log_requests.incr();
        self.changed.incr();
    }

    fn unavailable(&self) -> bool {
        self.unavailable.load(Ordering::SeqCst)
    }

    /// Counts a request whose data is not kept (refused or unavailable).
    fn count_only(&self, requests: &Counter) {
        requests.incr();
        self.changed.incr();
    }

    /// Records a trace export, or refuses all its spans while refusing.
    fn answer_traces(&self, req: &ExportTraceServiceRequest) -> ExportTraceServiceResponse {
        let Some(message) = lock(&self.refusing).clone() else {
            self.record_traces(req);
            return ExportTraceServiceResponse::default();
        };
        self.count_only(&self.trace_requests);
        let spans = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as i64)
            .sum();
        lock(&self.refused).0 += spans as u64;
        ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: spans,
                error_message: message,
            }),
        }
    }

    /// Records a metric export, or refuses all its points while refusing.
    fn answer_metrics(&self, req: &ExportMetricsServiceRequest) -> ExportMetricsServiceResponse {
        let Some(message) = lock(&self.refusing).clone() else {
            self.record_metrics(req);
            return ExportMetricsServiceResponse::default();
        };
        self.count_only(&self.metric_requests);
        let points = flatten_metrics(req)
            .iter()
            .map(|m| m.points.len() as i64)
            .sum();
        lock(&self.refused).1 += points as u64;
        ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: points,
                error_message: message,
            }),
        }
    }

    fn answer_logs(&self, req: &ExportLogsServiceRequest) -> ExportLogsServiceResponse {
        self.record_logs(req);
        ExportLogsServiceResponse::default()
    }

    fn record_headers<'a>(
        &self,
        signal: &'static str,
        headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) {
        let h = headers
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        lock(&self.headers).insert(signal, h);
    }

    fn record_metadata(&self, signal: &'static str, md: &tonic::metadata::MetadataMap) {
        self.record_headers(
            signal,
            md.iter().filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k.as_str(), v.as_bytes())),
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            }),
        );
    }
}

/// An OTLP receiver listening on loopback. See the module docs.
pub struct Receiver {
    addr: SocketAddr,
    protocol: Protocol,
    state: Arc<State>,
    server: ServerTask,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("addr", &self.addr)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// An OTLP/gRPC receiver on `127.0.0.1:<free port>`.
    pub async fn grpc() -> Self {
        Self::grpc_on(loopback_any())
            .await
            .expect("starting OTLP/gRPC receiver")
    }

    /// An OTLP/HTTP (protobuf) receiver on `127.0.0.1:<free port>`.
    pub async fn http() -> Self {
        Self::http_on(loopback_any())
            .await
            .expect("starting OTLP/HTTP receiver")
    }

    /// An OTLP/gRPC receiver on a given address (e.g. the address of a
    /// receiver that was just stopped).
    pub async fn grpc_on(addr: SocketAddr) -> Result<Self> {
        Self::start(addr, Protocol::Grpc).await
    }

    /// An OTLP/HTTP (protobuf) receiver on a given address.
    pub async fn http_on(addr: SocketAddr) -> Result<Self> {
        Self::start(addr, Protocol::HttpProtobuf).await
    }

    /// Starts a receiver of the given protocol on `addr`.
    pub async fn start(addr: SocketAddr, protocol: Protocol) -> Result<Self> {
        let listener = bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let router = match protocol {
            Protocol::Grpc => grpc_router(state.clone()),
            Protocol::HttpProtobuf => http_router(state.clone()),
        };
        let server = ServerTask::spawn_http(
            listener,
            Counter::default(),
            TowerToHyperService::new(router),
        );
        Ok(Self {
            addr,
            protocol,
            state,
            server,
        })
    }

    /// Closes the listener and all connections and waits until they are
    /// gone, so the port can be bound again.
    pub async fn stop(self) {
        self.server.stop().await;
    }

    /// `http://127.0.0.1:PORT` — the exporter endpoint for either protocol.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// For the HTTP receiver: the full traces URL (`<endpoint>/v1/traces`).
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint())
    }

    /// For the HTTP receiver: the full metrics URL (`<endpoint>/v1/metrics`).
    pub fn metrics_url(&self) -> String {
        format!("{}/v1/metrics", self.endpoint())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// While `true`, exports are counted but refused (gRPC `UNAVAILABLE`,
    /// HTTP `503`) and their data is dropped — a retryable collector outage.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// While `Some(message)`, trace and metric exports are accepted but
    /// every span and data point in them is refused (`partial_success`
    /// with that message), and nothing of them is kept; requests are still
    /// counted.
    pub fn set_refusing(&self, message: Option<&str>) {
        *lock(&self.state.refusing) = message.map(str::to_string);
    }

    /// Spans and data points refused so far (see [`Receiver::set_refusing`]).
    pub fn refused(&self) -> (u64, u64) {
        *lock(&self.state.refused)
    }

    /// All spans received so far, in arrival order.
    /// The value of header `name` on the latest request of `signal`
    /// (`"traces"`, `"metrics"` or `"logs"`).
    pub fn header(&self, signal: &str, name: &str) -> Option<String> {
        lock(&self.state.headers)
            .get(signal)?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    pub fn spans(&self) -> Vec<FlatSpan> {
        lock(&self.state.spans).clone()
    }

    /// All metrics received so far (one entry per metric per export), in
    /// arrival order.
    pub fn metrics(&self) -> Vec<FlatMetric> {
        lock(&self.state.metrics).clone()
    }

    /// The most recently received metric called `name`.
    pub fn metric(&self, name: &str) -> Option<FlatMetric> {
        lock(&self.state.metrics)
            .iter()
            .rev()
            .find(|m| m.name == name)
            .cloned()
    }

    /// Distinct metric names received so far, sorted.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.state.metrics)
            .iter()
            .map(|m| m.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Resource attributes of the most recent export (any signal) that
    /// carried a resource; empty before that.
    pub fn resource_attributes(&self) -> Attributes {
        lock(&self.state.resource).clone()
    }

    /// Number of trace export requests received (including refused ones).
    pub fn trace_requests(&self) -> u64 {
        self.state.trace_requests.get()
    }

    /// Number of metric export requests received (including refused ones).
    pub fn metric_requests(&self) -> u64 {
        self.state.metric_requests.get()
    }

    /// Number of log export requests received (including refused ones).
    pub fn log_requests(&self) -> u64 {
        self.state.log_requests.get()
    }

    /// Number of log records received.
    pub fn log_records(&self) -> u64 {
        *lock(&self.state.log_records)
    }

    /// Forgets everything received so far (counters are kept).
    pub fn clear(&self) {
        lock(&self.state.spans).clear();
        lock(&self.state.metrics).clear();
        lock(&self.state.resource).clear();
    }

    /// Waits until at least one received span matches `pred` and returns
    /// all matching spans.
    pub async fn wait_for_spans(
        &self,
        pred: impl Fn(&FlatSpan) -> bool,
        timeout: Duration,
    ) -> Result<Vec<FlatSpan>> {
        self.wait_for_span_count(pred, 1, timeout).await
    }

    /// Waits until at least `n` received spans match `pred` and returns all
    /// matching spans.
    pub async fn wait_for_span_count(
        &self,
        pred: impl Fn(&FlatSpan) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<FlatSpan>> {
        wait_until(&self.state.changed, timeout, || {
            let matching: Vec<FlatSpan> = lock(&self.state.spans)
                .iter()
                .filter(|s| pred(s))
                .cloned()
                .collect();
            (matching.len() >= n).then_some(matching)
        })
        .await
        .map_err(|()| {
            let spans = self.spans();
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            anyhow!(
                "timed out after {timeout:?} waiting for {n} matching span(s) on {}; \
                 received {} span(s) in {} request(s): {names:?}",
                self.endpoint(),
                spans.len(),
                self.trace_requests(),
            )
        })
    }

    /// Waits until a span called `name` arrives and returns the first one.
    pub async fn wait_for_span(&self, name: &str, timeout: Duration) -> Result<FlatSpan> {
        let mut spans = self.wait_for_spans(|s| s.name == name, timeout).await?;
        Ok(spans.swap_remove(0))
    }

    /// Waits until a metric called `name` arrives and returns the most
    /// recent one.
    pub async fn wait_for_metric(&self, name: &str, timeout: Duration) -> Result<FlatMetric> {
        self.wait_for_metric_where(name, |_| true, timeout).await
    }

    /// Waits until a metric called `name` satisfying `pred` arrives and
    /// returns the most recent such metric.
    pub async fn wait_for_metric_where(
        &self,
        name: &str,
        pred: impl Fn(&FlatMetric) -> bool,
        timeout: Duration,
    ) -> Result<FlatMetric> {
        wait_until(&self.state.changed, timeout, || {
            lock(&self.state.metrics)
                .iter()
                .rev()
                .find(|m| m.name == name && pred(m))
                .cloned()
        })
        .await
        .map_err(|()| {
            anyhow!(
                "timed out after {timeout:?} waiting for metric {name:?} on {}; \
                 received {} request(s) with metrics {:?}",
                self.endpoint(),
                self.metric_requests(),
                self.metric_names(),
            )
        })
    }

    /// Waits until at least `n` trace export requests have arrived.
    pub async fn wait_for_trace_requests(&self, n: u64, timeout: Duration) -> Result<u64> {
        self.state
            .trace_requests
            .wait_for(n, timeout, "trace export requests")
            .await
    }

    /// Waits until at least `n` metric export requests have arrived.
    pub async fn wait_for_metric_requests(&self, n: u64, timeout: Duration) -> Result<u64> {
        self.state
            .metric_requests
            .wait_for(n, timeout, "metric export requests")
            .await
    }
}

// ---------------------------------------------------------------- gRPC

#[derive(Clone)]
struct GrpcSink(Arc<State>);

fn unavailable_status() -> tonic::Status {
    tonic::Status::unavailable("test receiver set unavailable")
}

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.record_metadata("traces", request.metadata());
        if self.0.unavailable() {
            self.0.count_only(&self.0.trace_requests);
            return Err(unavailable_status());
        }
        Ok(tonic::Response::new(
            self.0.answer_traces(request.get_ref()),
        ))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.record_metadata("metrics", request.metadata());
        if self.0.unavailable() {
            self.0.count_only(&self.0.metric_requests);
            return Err(unavailable_status());
        }
        Ok(tonic::Response::new(
            self.0.answer_metrics(request.get_ref()),
        ))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.record_metadata("logs", request.metadata());
        if self.0.unavailable() {
            self.0.count_only(&self.0.log_requests);
            return Err(unavailable_status());
        }
        Ok(tonic::Response::new(self.0.answer_logs(request.get_ref())))
    }
}

fn grpc_router(state: Arc<State>) -> Router {
    let sink = GrpcSink(state);
    tonic::service::Routes::new(TraceServiceServer::new(sink.clone()))
        .add_service(MetricsServiceServer::new(sink.clone()))
        .add_service(LogsServiceServer::new(sink))
        .prepare()
        .into_axum_router()
}

// ---------------------------------------------------------------- HTTP

fn http_router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/traces", post(http_traces))
        .route("/v1/metrics", post(http_metrics))
        .route("/v1/logs", post(http_logs))
        .with_state(state)
}

/// Rejects bodies this receiver cannot decode.
fn check_http_request(headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-encoding {enc:?} not supported by the test receiver"),
        ));
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !ct.starts_with("application/x-protobuf") && !ct.starts_with("application/protobuf") {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-type {ct:?} not supported by the test receiver"),
            ));
        }
    }
    Ok(())
}

/// Decodes an OTLP/HTTP protobuf export and answers it with `answer`'s
/// protobuf response (which records it).
fn http_export<Req, Resp>(
    state: &State,
    signal: &'static str,
    headers: &HeaderMap,
    body: &Bytes,
    requests: &Counter,
    answer: impl FnOnce(&State, &Req) -> Resp,
) -> Response
where
    Req: Message + Default,
    Resp: Message,
{
    state.record_headers(
        signal,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
    );
    if let Err(rejection) = check_http_request(headers) {
        return rejection.into_response();
    }
    let req = match Req::decode(body.as_ref()) {
        Ok(req) => req,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid protobuf body: {e}"),
            )
                .into_response();
        }
    };
    if state.unavailable() {
        state.count_only(requests);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "test receiver set unavailable",
        )
            .into_response();
    }
    let response = answer(state, &req);
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        response.encode_to_vec(),
    )
        .into_response()
}

async fn http_traces(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    http_export::<ExportTraceServiceRequest, ExportTraceServiceResponse>(
        &state,
        "traces",
        &headers,
        &body,
        &state.trace_requests,
        State::answer_traces,
    )
}

async fn http_metrics(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    http_export::<ExportMetricsServiceRequest, ExportMetricsServiceResponse>(
        &state,
        "metrics",
        &headers,
        &body,
        &state.metric_requests,
        State::answer_metrics,
    )
}

async fn http_logs(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    http_export::<ExportLogsServiceRequest, ExportLogsServiceResponse>(
        &state,
        "logs",
        &headers,
        &body,
        &state.log_requests,
        State::answer_logs,
    )
}

// ---------------------------------------------------------------- flattening

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Converts an OTLP `AnyValue` to JSON: strings, ints, doubles, bools,
/// arrays and kv-lists map naturally; bytes become lowercase hex; a missing
/// value (or a non-finite double) becomes `null`.
pub fn any_value_to_json(v: Option<&AnyValue>) -> Value {
    let Some(value) = v.and_then(|v| v.value.as_ref()) else {
        return Value::Null;
    };
    match value {
        any_value::Value::StringValue(s) => Value::String(s.clone()),
        any_value::Value::BoolValue(b) => Value::Bool(*b),
        any_value::Value::IntValue(i) => Value::from(*i),
        any_value::Value::DoubleValue(d) => {
            serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number)
        }
        any_value::Value::ArrayValue(a) => Value::Array(
            a.values
                .iter()
                .map(|v| any_value_to_json(Some(v)))
                .collect(),
        ),
        any_value::Value::KvlistValue(kv) => Value::Object(
            kv.values
                .iter()
                .map(|kv| (kv.key.clone(), any_value_to_json(kv.value.as_ref())))
                .collect(),
        ),
        any_value::Value::BytesValue(b) => Value::String(hex(b)),
        // Only meaningful for the profiling signal.
        any_value::Value::StringValueStrindex(_) => Value::Null,
    }
}

/// Converts OTLP key/values to an attribute map (later keys win).
pub fn attributes(kvs: &[KeyValue]) -> Attributes {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_value_to_json(kv.value.as_ref())))
        .collect()
}

fn resource_attributes(r: Option<&Resource>) -> Attributes {
    r.map(|r| attributes(&r.attributes)).unwrap_or_default()
}

/// Flattens every span of an export request.
pub fn flatten_traces(req: &ExportTraceServiceRequest) -> Vec<FlatSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource = resource_attributes(rs.resource.as_ref());
        for ss in &rs.scope_spans {
            let scope_name = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in &ss.spans {
                let (status_code, status_message) = span
                    .status
                    .as_ref()
                    .map(|s| (s.code, s.message.clone()))
                    .unwrap_or_default();
                out.push(FlatSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    attributes: attributes(&span.attributes),
                    status_code,
                    status_message,
                    events: span
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attributes(&e.attributes)))
                        .collect(),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                });
            }
        }
    }
    out
}

fn number_value(v: Option<&number_data_point::Value>) -> Option<f64> {
    match v? {
        number_data_point::Value::AsDouble(d) => Some(*d),
        number_data_point::Value::AsInt(i) => Some(*i as f64),
    }
}

/// Flattens every metric of an export request.
pub fn flatten_metrics(req: &ExportMetricsServiceRequest) -> Vec<FlatMetric> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        let resource = resource_attributes(rm.resource.as_ref());
        for sm in &rm.scope_metrics {
            let scope_name = sm
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for m in &sm.metrics {
                let mut flat = FlatMetric {
                    name: m.name.clone(),
                    unit: m.unit.clone(),
                    description: m.description.clone(),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    ..FlatMetric::default()
                };
                match &m.data {
                    None => flat.kind = "empty".into(),
                    Some(metric::Data::Gauge(g)) => {
                        flat.kind = "gauge".into();
                        flat.points = g
                            .data_points
                            .iter()
                            .map(|p| FlatPoint {
                                attributes: attributes(&p.attributes),
                                value: number_value(p.value.as_ref()),
                                start_unix_nano: p.start_time_unix_nano,
                                time_unix_nano: p.time_unix_nano,
                                ..FlatPoint::default()
                            })
                            .collect();
                    }
                    Some(metric::Data::Sum(s)) => {
                        flat.kind = "sum".into();
                        flat.monotonic = Some(s.is_monotonic);
                        flat.temporality = Some(s.aggregation_temporality);
                        flat.points = s
                            .data_points
                            .iter()
                            .map(|p| FlatPoint {
                                attributes: attributes(&p.attributes),
                                value: number_value(p.value.as_ref()),
                                start_unix_nano: p.start_time_unix_nano,
                                time_unix_nano: p.time_unix_nano,
                                ..FlatPoint::default()
                            })
                            .collect();
                    }
                    Some(metric::Data::Histogram(h)) => {
                        flat.kind = "histogram".into();
                        flat.temporality = Some(h.aggregation_temporality);
                        flat.points = h
                            .data_points
                            .iter()
                            .map(|p| FlatPoint {
                                attributes: attributes(&p.attributes),
                                count: Some(p.count),
                                sum: p.sum,
                                bounds: p.explicit_bounds.clone(),
                                bucket_counts: p.bucket_counts.clone(),
                                min: p.min,
                                max: p.max,
                                start_unix_nano: p.start_time_unix_nano,
                                time_unix_nano: p.time_unix_nano,
                                ..FlatPoint::default()
                            })
                            .collect();
                    }
                    Some(metric::Data::ExponentialHistogram(h)) => {
                        flat.kind = "exponential_histogram".into();
                        flat.temporality = Some(h.aggregation_temporality);
                        flat.points = h
                            .data_points
                            .iter()
                            .map(|p| FlatPoint {
                                attributes: attributes(&p.attributes),
                                count: Some(p.count),
                                sum: p.sum,
                                min: p.min,
                                max: p.max,
                                start_unix_nano: p.start_time_unix_nano,
                                time_unix_nano: p.time_unix_nano,
                                ..FlatPoint::default()
                            })
                            .collect();
                    }
                    Some(metric::Data::Summary(s)) => {
                        flat.kind = "summary".into();
                        flat.points = s
                            .data_points
                            .iter()
                            .map(|p| FlatPoint {
                                attributes: attributes(&p.attributes),
                                count: Some(p.count),
                                sum: Some(p.sum),
                                start_unix_nano: p.start_time_unix_nano,
                                time_unix_nano: p.time_unix_nano,
                                ..FlatPoint::default()
                            })
                            .collect();
                    }
                }
                out.push(flat);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};

    const WAIT: Duration = Duration::from_secs(10);

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn resource() -> Option<Resource> {
        Some(Resource {
            attributes: vec![
                kv("service.name", s("vantage")),
                kv("host.name", s("probe-1")),
            ],
            ..Default::default()
        })
    }

    fn trace_request(name: &str) -> ExportTraceServiceRequest {
        let root = Span {
            trace_id: (1..=16).collect(),
            span_id: vec![0xaa; 8],
            name: format!("{name}-root"),
            kind: SpanKind::Internal as i32,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 9_000,
            ..Default::default()
        };
        let child = Span {
            trace_id: (1..=16).collect(),
            span_id: vec![0x0b; 8],
            parent_span_id: vec![0xaa; 8],
            name: name.into(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: 2_000,
            end_time_unix_nano: 5_000,
            attributes: vec![
                kv("http.request.method", s("GET")),
                kv("http.response.status_code", any_value::Value::IntValue(503)),
                kv("ratio", any_value::Value::DoubleValue(0.5)),
                kv("cached", any_value::Value::BoolValue(false)),
                kv(
                    "tags",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(s("a")),
                            },
                            AnyValue {
                                value: Some(any_value::Value::IntValue(2)),
                            },
                        ],
                    }),
                ),
            ],
            events: vec![span::Event {
                name: "retry".into(),
                attributes: vec![kv("attempt", any_value::Value::IntValue(2))],
                ..Default::default()
            }],
            status: Some(Status {
                code: OtlpStatusCode::Error as i32,
                message: "service unavailable".into(),
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource(),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "vantage-probe".into(),
                        ..Default::default()
                    }),
                    spans: vec![root, child],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn metrics_request() -> ExportMetricsServiceRequest {
        let attrs = vec![kv("probe", s("home"))];
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: resource(),
                scope_metrics: vec![ScopeMetrics {
                    scope: None,
                    metrics: vec![
                        Metric {
                            name: "probe.duration".into(),
                            unit: "s".into(),
                            description: "probe duration".into(),
                            data: Some(metric::Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    attributes: attrs.clone(),
                                    count: 3,
                                    sum: Some(0.75),
                                    bucket_counts: vec![1, 2, 0],
                                    explicit_bounds: vec![0.1, 0.5],
                                    ..Default::default()
                                }],
                                aggregation_temporality: 2,
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "probe.runs".into(),
                            data: Some(metric::Data::Sum(Sum {
                                data_points: vec![NumberDataPoint {
                                    attributes: attrs.clone(),
                                    value: Some(number_data_point::Value::AsInt(7)),
                                    ..Default::default()
                                }],
                                aggregation_temporality: 2,
                                is_monotonic: true,
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "probe.up".into(),
                            data: Some(metric::Data::Gauge(Gauge {
                                data_points: vec![NumberDataPoint {
                                    attributes: attrs,
                                    value: Some(number_data_point::Value::AsDouble(1.0)),
                                    ..Default::default()
                                }],
                            })),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn check_child_span(span: &FlatSpan, name: &str) {
        assert_eq!(span.name, name);
        assert_eq!(span.trace_id, "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(span.span_id, "0b0b0b0b0b0b0b0b");
        assert_eq!(span.parent_span_id, "aaaaaaaaaaaaaaaa");
        assert!(span.is_client() && !span.is_root() && span.is_error());
        assert_eq!(span.status_message, "service unavailable");
        assert_eq!(span.duration(), Duration::from_nanos(3_000));
        assert_eq!(span.attr_str("http.request.method"), Some("GET"));
        assert_eq!(span.attr_i64("http.response.status_code"), Some(503));
        assert_eq!(span.attr("ratio"), Some(&serde_json::json!(0.5)));
        assert_eq!(span.attr("cached"), Some(&Value::Bool(false)));
        assert_eq!(span.attr("tags"), Some(&serde_json::json!(["a", 2])));
        assert_eq!(
            span.events,
            vec![(
                "retry".to_owned(),
                Attributes::from([("attempt".to_owned(), serde_json::json!(2))])
            )]
        );
        assert_eq!(span.resource["service.name"], "vantage");
        assert_eq!(span.scope_name, "vantage-probe");
    }

    fn check_metrics(rx: &Receiver) {
        let hist = rx.metric("probe.duration").expect("histogram received");
        assert_eq!(hist.kind, "histogram");
        assert_eq!((hist.unit.as_str(), hist.temporality), ("s", Some(2)));
        let p = &hist.points_with("probe", "home")[0];
        assert_eq!((p.count, p.sum), (Some(3), Some(0.75)));
        assert_eq!(p.bounds, vec![0.1, 0.5]);
        assert_eq!(p.bucket_counts, vec![1, 2, 0]);
        let runs = rx.metric("probe.runs").expect("sum received");
        assert_eq!((runs.kind.as_str(), runs.monotonic), ("sum", Some(true)));
        assert_eq!(runs.points[0].value, Some(7.0));
        let up = rx.metric("probe.up").expect("gauge received");
        assert_eq!((up.kind.as_str(), up.points[0].value), ("gauge", Some(1.0)));
        assert_eq!(
            rx.metric_names(),
            ["probe.duration", "probe.runs", "probe.up"]
        );
    }

    async fn grpc_send_trace(rx: &Receiver, name: &str) -> Result<(), tonic::Status> {
        let mut client = TraceServiceClient::connect(rx.endpoint())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        client.export(trace_request(name)).await.map(|_| ())
    }

    async fn http_post(
        url: String,
        content_type: &str,
        extra: Option<(&str, &str)>,
        body: Vec<u8>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = http::Request::post(url).header(header::CONTENT_TYPE, content_type);
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let resp = client.request(req).await.expect("HTTP request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        (parts.status, parts.headers, body)
    }

    #[tokio::test]
    async fn grpc_receives_traces_and_metrics() {
        let rx = Receiver::grpc().await;
        assert!(rx.endpoint().starts_with("http://127.0.0.1:"));
        grpc_send_trace(&rx, "GET home")
            .await
            .expect("trace export");
        let spans = rx
            .wait_for_spans(|s| s.is_client(), WAIT)
            .await
            .expect("client span");
        assert_eq!(spans.len(), 1);
        check_child_span(&spans[0], "GET home");
        let root = rx.wait_for_span("GET home-root", WAIT).await.expect("root");
        assert!(root.is_root() && root.is_internal() && root.parent_span_id.is_empty());
        assert_eq!(rx.spans().len(), 2);
        assert_eq!(rx.trace_requests(), 1);
        assert_eq!(rx.resource_attributes()["host.name"], "probe-1");

        let mut client = MetricsServiceClient::connect(rx.endpoint())
            .await
            .expect("connect");
        client
            .export(metrics_request())
            .await
            .expect("metrics export");
        let m = rx
            .wait_for_metric("probe.duration", WAIT)
            .await
            .expect("metric");
        assert_eq!(m.points[0].count, Some(3));
        check_metrics(&rx);
        assert_eq!(rx.metric_requests(), 1);
        rx.stop().await;
    }

    #[tokio::test]
    async fn http_receives_traces_and_metrics() {
        let rx = Receiver::http().await;
        let (status, headers, body) = http_post(
            rx.traces_url(),
            "application/x-protobuf",
            None,
            trace_request("POST login").encode_to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
        ExportTraceServiceResponse::decode(body).expect("protobuf response");
        let spans = rx
            .wait_for_spans(|s| s.name == "POST login", WAIT)
            .await
            .expect("span");
        check_child_span(&spans[0], "POST login");

        let (status, _, body) = http_post(
            rx.metrics_url(),
            "application/x-protobuf",
            None,
            metrics_request().encode_to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        ExportMetricsServiceResponse::decode(body).expect("protobuf response");
        rx.wait_for_metric("probe.up", WAIT).await.expect("metric");
        check_metrics(&rx);

        // Unsupported encodings are refused, garbage is a 400.
        let gz = Some(("content-encoding", "gzip"));
        let (status, _, _) =
            http_post(rx.traces_url(), "application/x-protobuf", gz, vec![1]).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, _, _) =
            http_post(rx.traces_url(), "application/json", None, b"{}".to_vec()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, _, _) = http_post(
            rx.traces_url(),
            "application/x-protobuf",
            None,
            vec![0xff, 0xff],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!((rx.trace_requests(), rx.metric_requests()), (1, 1));
        rx.stop().await;
    }

    #[tokio::test]
    async fn waiters_are_woken_by_later_exports() {
        let rx = Arc::new(Receiver::grpc().await);
        let waiter = {
            let rx = rx.clone();
            tokio::spawn(async move {
                rx.wait_for_span_count(|s| s.name.starts_with("late"), 4, WAIT)
                    .await
            })
        };
        grpc_send_trace(&rx, "late").await.expect("export 1");
        // Two matching spans so far: the waiter needs four.
        assert!(!waiter.is_finished());
        grpc_send_trace(&rx, "late").await.expect("export 2");
        let spans = waiter.await.expect("join").expect("spans");
        assert_eq!(spans.len(), 4);
    }

    #[tokio::test]
    async fn waits_time_out_with_a_description() {
        let rx = Receiver::http().await;
        let err = rx
            .wait_for_metric("never", Duration::from_millis(50))
            .await
            .expect_err("nothing was sent");
        assert!(err.to_string().contains("\"never\""), "{err}");
        let err = rx
            .wait_for_spans(|_| true, Duration::from_millis(50))
            .await
            .expect_err("nothing was sent");
        assert!(err.to_string().contains("0 span(s)"), "{err}");
    }

    #[tokio::test]
    async fn unavailable_receiver_refuses_but_counts() {
        let rx = Receiver::grpc().await;
        rx.set_unavailable(true);
        let err = grpc_send_trace(&rx, "x").await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!((rx.trace_requests(), rx.spans().len()), (1, 0));
        rx.set_unavailable(false);
        grpc_send_trace(&rx, "x").await.expect("accepted");
        assert_eq!((rx.trace_requests(), rx.spans().len()), (2, 2));

        let rx = Receiver::http().await;
        rx.set_unavailable(true);
        let body = trace_request("x").encode_to_vec();
        let (status, _, _) = http_post(rx.traces_url(), "application/x-protobuf", None, body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!((rx.trace_requests(), rx.spans().len()), (1, 0));
    }

    #[tokio::test]
    async fn stop_frees_the_port_and_restart_works() {
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let rx = Receiver::start(loopback_any(), protocol)
                .await
                .expect("start");
            let addr = rx.addr();
            // For gRPC keep a connection open across the stop, as an
            // exporter would; it must notice the collector going away.
            let mut client = None;
            if protocol == Protocol::Grpc {
                let mut c = TraceServiceClient::connect(rx.endpoint())
                    .await
                    .expect("connect");
                c.export(trace_request("before")).await.expect("export");
                rx.wait_for_span("before", WAIT).await.expect("span");
                client = Some(c);
            }
            rx.stop().await;

            let refused = tokio::net::TcpStream::connect(addr)
                .await
                .expect_err("port must be closed after stop");
            assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
            if let Some(c) = client.as_mut() {
                c.export(trace_request("while-down"))
                    .await
                    .expect_err("collector is down");
            }

            let rx = Receiver::start(addr, protocol)
                .await
                .expect("restart on same port");
            assert_eq!(rx.addr(), addr);
            assert!(rx.spans().is_empty(), "a restarted receiver starts empty");
            match protocol {
                Protocol::Grpc => grpc_send_trace(&rx, "after").await.expect("export"),
                Protocol::HttpProtobuf => {
                    let body = trace_request("after").encode_to_vec();
                    let (status, _, _) =
                        http_post(rx.traces_url(), "application/x-protobuf", None, body).await;
                    assert_eq!(status, StatusCode::OK);
                }
            }
            rx.wait_for_span("after", WAIT)
                .await
                .expect("span after restart");
            rx.stop().await;
        }
    }

    /// Exports one span (and, over gRPC, one counter) with the real
    /// OpenTelemetry SDK and OTLP exporter (the crates the agent uses).
    fn export_with_sdk(rx_protocol: Protocol, endpoint: &str, traces: &str) {
        use opentelemetry::KeyValue as OtelKv;
        use opentelemetry::metrics::MeterProvider as _;
        use opentelemetry::trace::{
            Span as _, SpanKind as OtelKind, Tracer as _, TracerProvider as _,
        };
        use opentelemetry_otlp::WithExportConfig;

        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("sdk-test")
            .build();
        // Programmatic HTTP endpoints are used verbatim: pass the signal URLs.
        let span_exporter = match rx_protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(traces)
                .build(),
        };
        // The SDK's PeriodicReader exports from its own plain thread, where
        // opentelemetry-http's hyper client panics ("no reactor running"),
        // so metrics go through the SDK only over gRPC here.
        let metric_exporter = match rx_protocol {
            Protocol::Grpc => Some(
                opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .expect("metric exporter"),
            ),
            Protocol::HttpProtobuf => None,
        };
        let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_simple_exporter(span_exporter.expect("span exporter"))
            .build();
        let mut span = tracer_provider
            .tracer("sdk-scope")
            .span_builder("sdk span")
            .with_kind(OtelKind::Client)
            .with_attributes([OtelKv::new("probe", "home"), OtelKv::new("attempt", 2_i64)])
            .start(&tracer_provider.tracer("sdk-scope"));
        span.add_event("sdk event", vec![]);
        span.end();
        tracer_provider.shutdown().expect("tracer shutdown");

        if let Some(metric_exporter) = metric_exporter {
            let meter_provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                .with_resource(resource)
                .with_periodic_exporter(metric_exporter)
                .build();
            let counter = meter_provider
                .meter("sdk-scope")
                .u64_counter("sdk.runs")
                .build();
            counter.add(5, &[OtelKv::new("probe", "home")]);
            meter_provider.shutdown().expect("meter shutdown");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_sdk_exporters_reach_the_receiver() {
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let rx = Receiver::start(loopback_any(), protocol)
                .await
                .expect("start");
            let (endpoint, traces) = (rx.endpoint(), rx.traces_url());
            // The SDK's simple processor and shutdown block the calling thread.
            tokio::task::spawn_blocking(move || export_with_sdk(protocol, &endpoint, &traces))
                .await
                .expect("sdk export");

            let span = rx.wait_for_span("sdk span", WAIT).await.expect("sdk span");
            assert!(span.is_client() && span.is_root(), "{span:?}");
            assert_eq!(span.trace_id.len(), 32);
            assert_eq!(span.span_id.len(), 16);
            assert_eq!(span.attr_str("probe"), Some("home"));
            assert_eq!(span.attr_i64("attempt"), Some(2));
            assert!(span.has_event("sdk event"));
            assert_eq!(span.scope_name, "sdk-scope");
            assert_eq!(span.resource["service.name"], "sdk-test");
            assert_eq!(rx.resource_attributes()["service.name"], "sdk-test");
            if protocol == Protocol::Grpc {
                let runs = rx
                    .wait_for_metric("sdk.runs", WAIT)
                    .await
                    .expect("sdk metric");
                assert_eq!((runs.kind.as_str(), runs.monotonic), ("sum", Some(true)));
                assert_eq!(runs.points_with("probe", "home")[0].value, Some(5.0));
            }
            rx.stop().await;
        }
    }
}
