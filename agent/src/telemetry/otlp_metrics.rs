//! Periodic OTLP export of the [`MetricStore`], over gRPC or HTTP/protobuf.
//!
//! The store is the only copy of the metric state: each export reads it and
//! encodes cumulative series with the official protocol types
//! (`opentelemetry-proto`). The OpenTelemetry SDK's metric pipeline is not
//! used: it keeps its own copy of every series (each attribute set twice,
//! kilobytes per journey, plus tables preallocated to the cardinality
//! limit), and its `ResourceMetrics` cannot be built from state kept
//! elsewhere. Large agents are sent in several requests of at most
//! [`POINTS_PER_REQUEST`] points, so no request nears a collector's 4 MiB
//! gRPC message limit.
//!
//! A failed export is counted in
//! `vantage_telemetry_export_failures_total{signal="metrics"}` and logged at
//! most once a minute; nothing is queued, since the next export carries the
//! cumulative totals. Never blocks a run.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar as PbExemplar, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exemplar, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource as PbResource;
use opentelemetry_sdk::Resource;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::names;
use super::otlp::{OtlpConfig, RateLimitedLog};
use super::store::{Hist, HistKey, JourneySeries, MetricStore, lock};
use super::transport::{Refused, Signal, Transport, millis, note_refused};

/// Data points per export request.
pub const POINTS_PER_REQUEST: usize = 4000;

/// The running export task.
pub struct MetricExport {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl MetricExport {
    /// Starts the periodic export. Inside the tokio runtime.
    pub fn start(
        cfg: &OtlpConfig,
        resource: &Resource,
        store: Arc<MetricStore>,
    ) -> Result<MetricExport, String> {
        let interval = cfg
            .metric_interval
            .or_else(|| millis("OTEL_METRIC_EXPORT_INTERVAL"))
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(60));
        let transport = Transport::new(cfg, Signal::Metrics)?;
        let exporter = Exporter {
            transport,
            resource: super::otlp::pb_resource(resource),
            scope: super::otlp::pb_scope(),
            store,
            log: RateLimitedLog::new(),
            refused_log: RateLimitedLog::new(),
            failing: false,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker(exporter, interval, stop.clone()));
        Ok(MetricExport { stop, task })
    }

    /// Exports one last time, within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            warn!(grace = ?grace, "final metric export did not finish within the grace period");
        }
    }
}

async fn worker(mut exporter: Exporter, interval: Duration, stop: CancellationToken) {
    let mut next = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.cancelled() => {
                exporter.export().await;
                return;
            }
        }
        next += interval;
        exporter.export().await;
        // An export slower than the interval skips the missed ticks.
        let now = tokio::time::Instant::now();
        if next < now {
            next = now + interval;
        }
    }
}

struct Exporter {
    transport: Transport,
    resource: PbResource,
    scope: InstrumentationScope,
    store: Arc<MetricStore>,
    log: RateLimitedLog,
    refused_log: RateLimitedLog,
    failing: bool,
}

impl Exporter {
    async fn export(&mut self) {
        let journeys = self.store.journeys();
        let at = SystemTime::now();
        let mut failed = false;
        let mut done = 0;
        // One request at a time: a large agent's full set of points is tens
        // of megabytes once encoded.
        loop {
            let (req, used) = build_request(
                &self.store,
                &journeys[done..],
                &self.resource,
                &self.scope,
                at,
            );
            done += used;
            if let Some(req) = req {
                match self.send(req).await {
                    Ok(refused) => {
                        note_refused(refused, Signal::Metrics, &self.store, &self.refused_log)
                    }
                    Err(e) => {
                        self.store.export_failed("metrics");
                        if self.log.allow() {
                            warn!(error = %e, "metric export failed; the next export carries the cumulative totals");
                        }
                        failed = true;
                        break;
                    }
                }
            }
            if done >= journeys.len() {
                break;
            }
        }
        if !failed && self.failing {
            info!("metric export recovered");
        }
        self.failing = failed;
    }

    async fn send(&mut self, req: ExportMetricsServiceRequest) -> Result<Refused, String> {
        self.transport.send(Bytes::from(req.encode_to_vec())).await
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_string()))
}

fn i(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

fn point(h: &Hist, attributes: Vec<KeyValue>, now: u64) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: nanos(h.start),
        time_unix_nano: now,
        count: h.count,
        sum: Some(h.sum),
        bucket_counts: h.counts.to_vec(),
        explicit_bounds: h.bounds.to_vec(),
        exemplars: h
            .exemplars
            .iter()
            .map(|e| PbExemplar {
                time_unix_nano: nanos(e.at),
                span_id: e.span_id.0.to_vec(),
                trace_id: e.trace_id.0.to_vec(),
                value: Some(exemplar::Value::AsDouble(e.value)),
                ..Default::default()
            })
            .collect(),
        min: (h.count > 0).then_some(h.min),
        max: (h.count > 0).then_some(h.max),
        ..Default::default()
    }
}

/// The four per-journey histogram metrics, in [`Family`](super::store::Family) order.
const HISTOGRAMS: [(&str, &str); 4] = [
    (names::JOURNEY_DURATION, "Duration of journey runs"),
    (names::STEP_DURATION, "Duration of journey steps"),
    (
        names::HTTP_CLIENT_DURATION,
        "Duration of HTTP client requests.",
    ),
    (
        names::DB_CLIENT_DURATION,
        "Duration of database client operations.",
    ),
];

/// Builds one export request from the first of `journeys`' series,
/// cumulative, stopping once [`POINTS_PER_REQUEST`] points are reached.
/// Returns the request (`None` when there is nothing to send) and how many
/// journeys it covers; the process-wide series go into the request that
/// covers the last journey.
pub fn build_request(
    store: &MetricStore,
    journeys: &[Arc<JourneySeries>],
    resource: &PbResource,
    scope: &InstrumentationScope,
    at: SystemTime,
) -> (Option<ExportMetricsServiceRequest>, usize) {
    let now = nanos(at);
    let mut used = 0;
    let mut points: [Vec<HistogramDataPoint>; 4] = Default::default();
    let mut n = 0usize;
    let request = |points: &mut [Vec<HistogramDataPoint>; 4], extra: Vec<Metric>| {
        let mut metrics: Vec<Metric> = HISTOGRAMS
            .iter()
            .zip(points.iter_mut())
            .filter(|(_, p)| !p.is_empty())
            .map(|((name, desc), p)| Metric {
                name: name.to_string(),
                description: desc.to_string(),
                unit: "s".into(),
                data: Some(metric::Data::Histogram(Histogram {
                    data_points: std::mem::take(p),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            })
            .collect();
        metrics.extend(extra);
        if metrics.is_empty() {
            return None;
        }
        Some(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    };
    for j in journeys {
        used += 1;
        let st = lock(&j.state);
        for series in &st.hists {
            let mut a = vec![
                s(names::ATTR_JOURNEY, &j.name),
                s(names::ATTR_LOCATION, &st.location),
            ];
            if let Some(addr) = &series.address {
                a.push(s(names::ATTR_ADDRESS, addr));
            }
            match &series.key {
                HistKey::Journey => {}
                HistKey::Step { step } => a.push(s(names::ATTR_STEP, step)),
                HistKey::Http {
                    step,
                    method,
                    server_address,
                    server_port,
                    status,
                } => {
                    a.push(s(names::ATTR_STEP, step));
                    a.push(s(names::HTTP_METHOD, method));
                    a.push(s(names::SERVER_ADDRESS, server_address));
                    a.push(i(names::SERVER_PORT, i64::from(*server_port)));
                    if let Some(code) = status {
                        a.push(i(names::HTTP_STATUS, i64::from(*code)));
                    }
                }
                HistKey::Db {
                    step,
                    system,
                    operation,
                    server_address,
                    server_port,
                } => {
                    a.push(s(names::ATTR_STEP, step));
                    a.push(s(names::DB_SYSTEM, system));
                    a.push(s(names::DB_OPERATION, operation));
                    a.push(s(names::SERVER_ADDRESS, server_address));
                    a.push(i(names::SERVER_PORT, i64::from(*server_port)));
                }
            }
            if let Some(e) = &series.error {
                a.push(s(names::ERROR_TYPE, e));
            }
            points[series.key.family() as usize].push(point(&series.hist, a, now));
            n += 1;
        }
        drop(st);
        if n >= POINTS_PER_REQUEST && used < journeys.len() {
            return (request(&mut points, Vec::new()), used);
        }
    }

    let t = store.totals();
    let start = nanos(store.started());
    let mut extra = Vec::new();
    if t.lateness.count > 0 {
        extra.push(Metric {
            name: names::SCHEDULE_LATENESS.into(),
            description: "How late runs started against their schedule".into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![point(&t.lateness, Vec::new(), now)],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        });
    }
    let counter = |name: &str, unit: &str, desc: &str, points: Vec<(Vec<KeyValue>, u64)>| Metric {
        name: name.into(),
        description: desc.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points
                .into_iter()
                .map(|(attributes, v)| NumberDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsInt(v as i64)),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    if !t.skipped.is_empty() {
        extra.push(counter(
            names::SCHEDULE_SKIPPED,
            "{tick}",
            "Ticks skipped because the previous run was still going",
            t.skipped
                .iter()
                .map(|(j, n)| (vec![s(names::ATTR_JOURNEY, j)], *n))
                .collect(),
        ));
    }
    if t.dropped_traces > 0 {
        extra.push(counter(
            names::TELEMETRY_DROPPED,
            "{span}",
            "Spans dropped because the export queue was full",
            vec![(Vec::new(), t.dropped_traces)],
        ));
    }
    let rejected: Vec<_> = [
        ("traces", t.rejected_traces),
        ("metrics", t.rejected_metrics),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(signal, n)| (vec![s(names::ATTR_SIGNAL, signal)], n))
    .collect();
    if !rejected.is_empty() {
        extra.push(counter(
            names::TELEMETRY_REJECTED,
            "{item}",
            "Spans and data points the collector refused in exports it accepted",
            rejected,
        ));
    }
    (request(&mut points, extra), used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::store::tests::http_run;

    fn points(req: &ExportMetricsServiceRequest) -> usize {
        req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| match &m.data {
                Some(metric::Data::Histogram(h)) => h.data_points.len(),
                Some(metric::Data::Sum(s)) => s.data_points.len(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn a_large_store_is_sent_in_bounded_requests_with_totals_last() {
        let store = MetricStore::new();
        let n = 3000;
        for i in 0..n {
            store.record(&http_run(&format!("j{i:05}"), None, 200, 3));
        }
        store.skipped("j00001");
        store.lateness(0.001);
        let journeys = store.journeys();
        let (resource, scope) = (PbResource::default(), InstrumentationScope::default());
        let mut done = 0;
        let mut reqs = Vec::new();
        loop {
            let (req, used) = build_request(
                &store,
                &journeys[done..],
                &resource,
                &scope,
                SystemTime::now(),
            );
            assert!(used > 0);
            done += used;
            reqs.push(req.expect("every request has points"));
            if done >= journeys.len() {
                break;
            }
        }
        // Three histogram points per journey: 9,000, in three requests.
        assert_eq!(reqs.len(), 3);
        for r in &reqs[..2] {
            let p = points(r);
            assert!(
                (POINTS_PER_REQUEST..POINTS_PER_REQUEST + 3).contains(&p),
                "{p}"
            );
        }
        let names = |r: &ExportMetricsServiceRequest| -> Vec<String> {
            r.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .map(|m| m.name.clone())
                .collect()
        };
        assert!(!names(&reqs[0]).contains(&names::SCHEDULE_SKIPPED.to_string()));
        let last = names(&reqs[2]);
        assert!(
            last.contains(&names::SCHEDULE_SKIPPED.to_string()),
            "{last:?}"
        );
        assert!(
            last.contains(&names::SCHEDULE_LATENESS.to_string()),
            "{last:?}"
        );
        let total: usize = reqs.iter().map(points).sum();
        assert_eq!(total, 3 * n + 2);
    }

    #[test]
    fn histogram_points_carry_attributes_and_exemplars() {
        let store = MetricStore::new();
        store.record(&http_run("a", Some("10.0.0.1"), 503, 20));
        let journeys = store.journeys();
        let (req, _) = build_request(
            &store,
            &journeys,
            &PbResource::default(),
            &InstrumentationScope::default(),
            SystemTime::now(),
        );
        let req = req.unwrap();
        let http = req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == names::HTTP_CLIENT_DURATION)
            .unwrap();
        let Some(metric::Data::Histogram(h)) = &http.data else {
            panic!("not a histogram")
        };
        let p = &h.data_points[0];
        let attr = |k: &str| {
            p.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            attr(names::HTTP_STATUS),
            Some(any_value::Value::IntValue(503))
        );
        assert_eq!(
            attr(names::ERROR_TYPE),
            Some(any_value::Value::StringValue("503".into()))
        );
        assert_eq!(
            attr(names::ATTR_ADDRESS),
            Some(any_value::Value::StringValue("10.0.0.1".into()))
        );
        assert_eq!(p.count, 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), 1);
        assert_eq!(p.explicit_bounds, names::HTTP_BUCKETS);
        assert_eq!(p.exemplars.len(), 1);
        assert_eq!(p.exemplars[0].trace_id, vec![7; 16]);
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
    }
}
