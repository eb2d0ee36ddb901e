//! The one in-process store of every metric Vantage exports. Both exporters
//! read it: the `/metrics` encoder (`prometheus.rs`) and the periodic OTLP
//! metric export (`otlp_metrics.rs`).
//!
//! A run is recorded once, under one short lock of its journey's entry: no
//! label vectors are built and no attribute set is hashed per run. Series
//! live with their journey, so a journey dropped by a reload takes all of
//! its series with it, and an agent with thousands of journeys keeps well
//! under a kilobyte per series (label values are the model's shared
//! `Arc<str>`s, histogram buckets are plain counters, and exemplars are kept
//! only for buckets that were hit).
//!
//! Must not do I/O, and must not hold a lock across anything slower than
//! arithmetic: `record` runs on the hot path of every run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::names;
use crate::report::{CallDetail, JourneyReport, Outcome, Phase, SpanId, StepOutcome, TraceId};

/// Locks a mutex, recovering the data if a panicking holder poisoned it:
/// a counter is still a counter.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pushes without the usual doubling: a journey's series are few and
/// created once, and ten thousand journeys' spare capacity adds up.
fn push_exact<T>(v: &mut Vec<T>, item: T) {
    v.reserve_exact(1);
    v.push(item);
}

/// The most recent observation that landed in one bucket.
#[derive(Clone, Debug)]
pub struct Exemplar {
    pub bucket: u8,
    pub value: f64,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub at: SystemTime,
}

/// A cumulative explicit-bucket histogram.
#[derive(Clone, Debug)]
pub struct Hist {
    pub bounds: &'static [f64],
    /// Per bucket, not cumulative; `bounds.len() + 1` of them.
    pub counts: Box<[u64]>,
    pub sum: f64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub start: SystemTime,
    pub exemplars: Vec<Exemplar>,
}

impl Hist {
    pub fn new(bounds: &'static [f64], start: SystemTime) -> Hist {
        Hist {
            bounds,
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            start,
            exemplars: Vec::new(),
        }
    }

    fn bucket(&self, v: f64) -> usize {
        self.bounds.partition_point(|b| *b < v)
    }

    pub fn observe(&mut self, v: f64) {
        let b = self.bucket(v);
        self.counts[b] += 1;
        self.sum += v;
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn observe_with(&mut self, v: f64, trace_id: TraceId, span_id: SpanId, at: SystemTime) {
        self.observe(v);
        let bucket = self.bucket(v) as u8;
        let e = Exemplar {
            bucket,
            value: v,
            trace_id,
            span_id,
            at,
        };
        match self.exemplars.iter_mut().find(|e| e.bucket == bucket) {
            Some(slot) => *slot = e,
            None => push_exact(&mut self.exemplars, e),
        }
    }

    /// Adds `other`'s observations (same bounds); the later exemplar wins.
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.start = self.start.min(other.start);
        for e in &other.exemplars {
            match self.exemplars.iter_mut().find(|x| x.bucket == e.bucket) {
                Some(x) if x.at >= e.at => {}
                Some(x) => *x = e.clone(),
                None => self.exemplars.push(e.clone()),
            }
        }
    }
}

/// What a histogram series is about, beyond its journey.
#[derive(Clone, Debug)]
pub enum HistKey {
    Journey,
    Step {
        step: Arc<str>,
    },
    Http {
        step: Arc<str>,
        method: Box<str>,
        server_address: Box<str>,
        server_port: u16,
        status: Option<u16>,
    },
    Db {
        step: Arc<str>,
        system: &'static str,
        operation: Box<str>,
        server_address: Box<str>,
        server_port: u16,
    },
}

/// Which histogram a series belongs to; the discriminant orders both
/// exporters' output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Journey = 0,
    Step = 1,
    Http = 2,
    Db = 3,
}

/// A borrowed [`HistKey`], so that finding an existing series allocates
/// nothing.
#[derive(Clone, Copy)]
enum KeyRef<'a> {
    Journey,
    Step(&'a Arc<str>),
    Http(&'a Arc<str>, &'a str, &'a str, u16, Option<u16>),
    Db(&'a Arc<str>, &'static str, &'a str, &'a str, u16),
}

impl HistKey {
    pub fn family(&self) -> Family {
        match self {
            HistKey::Journey => Family::Journey,
            HistKey::Step { .. } => Family::Step,
            HistKey::Http { .. } => Family::Http,
            HistKey::Db { .. } => Family::Db,
        }
    }

    fn matches(&self, k: KeyRef<'_>) -> bool {
        match (self, k) {
            (HistKey::Journey, KeyRef::Journey) => true,
            (HistKey::Step { step }, KeyRef::Step(s)) => step == s,
            (
                HistKey::Http {
                    step,
                    method,
                    server_address,
                    server_port,
                    status,
                },
                KeyRef::Http(s, m, a, p, st),
            ) => {
                step == s
                    && &**method == m
                    && &**server_address == a
                    && *server_port == p
                    && *status == st
            }
            (
                HistKey::Db {
                    step,
                    system,
                    operation,
                    server_address,
                    server_port,
                },
                KeyRef::Db(s, sys, op, a, p),
            ) => {
                step == s
                    && *system == sys
                    && &**operation == op
                    && &**server_address == a
                    && *server_port == p
            }
            _ => false,
        }
    }

    fn owned(k: KeyRef<'_>) -> HistKey {
        match k {
            KeyRef::Journey => HistKey::Journey,
            KeyRef::Step(s) => HistKey::Step { step: s.clone() },
            KeyRef::Http(s, m, a, p, st) => HistKey::Http {
                step: s.clone(),
                method: m.into(),
                server_address: a.into(),
                server_port: p,
                status: st,
            },
            KeyRef::Db(s, sys, op, a, p) => HistKey::Db {
                step: s.clone(),
                system: sys,
                operation: op.into(),
                server_address: a.into(),
                server_port: p,
            },
        }
    }

    /// The histogram's bucket bounds.
    fn bounds(&self) -> &'static [f64] {
        match self {
            HistKey::Journey | HistKey::Step { .. } => names::JOURNEY_BUCKETS,
            HistKey::Http { .. } | HistKey::Db { .. } => names::HTTP_BUCKETS,
        }
    }
}

/// One histogram series of a journey.
#[derive(Clone, Debug)]
pub struct HistSeries {
    pub key: HistKey,
    /// The fan-out address, when the journey fans out.
    pub address: Option<Box<str>>,
    /// `error.type`; `None` on success.
    pub error: Option<Box<str>>,
    pub hist: Hist,
}

/// The last run's HTTP facts (blackbox_exporter's `probe_http_*`).
#[derive(Clone, Debug, Default)]
pub struct HttpLast {
    /// Seconds per phase, summed over the run's requests, in
    /// [`Phase::HTTP`] order.
    pub phases: [f64; 5],
    pub status: u16,
    pub ssl: bool,
    pub redirects: i64,
}

/// The last DNS step's facts (`probe_dns_*`).
#[derive(Clone, Debug, Default)]
pub struct DnsLast {
    pub lookup: f64,
    pub answers: u32,
    pub authorities: u32,
    pub additionals: u32,
}

/// The `probe_*` gauges of one journey (one per address when it fans out).
/// A field once set keeps its last value, like a gauge.
#[derive(Clone, Debug, Default)]
pub struct ProbeState {
    pub address: Option<Box<str>>,
    pub success: bool,
    pub duration: f64,
    pub http: Option<HttpLast>,
    pub ssl_expiry: Option<i64>,
    pub tls_version: Option<Box<str>>,
    pub dns: Option<DnsLast>,
}

/// Everything recorded for one journey.
#[derive(Clone, Debug)]
pub struct JourneyState {
    pub location: Arc<str>,
    pub labels: Arc<BTreeMap<String, String>>,
    pub probes: Vec<ProbeState>,
    pub hists: Vec<HistSeries>,
}

pub struct JourneySeries {
    pub name: Arc<str>,
    pub state: Mutex<JourneyState>,
}

/// Process-wide counters that belong to no journey.
#[derive(Clone, Debug)]
pub struct Totals {
    pub lateness: Hist,
    pub skipped: BTreeMap<Arc<str>, u64>,
    pub dropped_traces: u64,
    pub rejected_traces: u64,
    pub rejected_metrics: u64,
    pub failures_traces: u64,
    pub failures_metrics: u64,
    pub journeys: i64,
}

pub struct MetricStore {
    started: SystemTime,
    journeys: RwLock<HashMap<Arc<str>, Arc<JourneySeries>>>,
    lateness: Mutex<Hist>,
    skipped: Mutex<BTreeMap<Arc<str>, u64>>,
    dropped_traces: AtomicU64,
    rejected_traces: AtomicU64,
    rejected_metrics: AtomicU64,
    failures_traces: AtomicU64,
    failures_metrics: AtomicU64,
    journey_count: AtomicI64,
}

/// The counter of `signal` (`traces` or `metrics`) among a per-signal pair.
fn by_signal<'a>(signal: &str, traces: &'a AtomicU64, metrics: &'a AtomicU64) -> &'a AtomicU64 {
    if signal == "metrics" { metrics } else { traces }
}

impl Default for MetricStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricStore {
    pub fn new() -> Self {
        let started = SystemTime::now();
        MetricStore {
            started,
            journeys: RwLock::new(HashMap::new()),
            lateness: Mutex::new(Hist::new(names::LATENESS_BUCKETS, started)),
            skipped: Mutex::new(BTreeMap::new()),
            dropped_traces: AtomicU64::new(0),
            rejected_traces: AtomicU64::new(0),
            rejected_metrics: AtomicU64::new(0),
            failures_traces: AtomicU64::new(0),
            failures_metrics: AtomicU64::new(0),
            journey_count: AtomicI64::new(0),
        }
    }

    /// When the process started recording: the start of cumulative series.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    fn entry(&self, r: &JourneyReport) -> Arc<JourneySeries> {
        if let Some(e) = self
            .journeys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.journey)
        {
            return e.clone();
        }
        let mut w = self.journeys.write().unwrap_or_else(|e| e.into_inner());
        w.entry(r.journey.clone())
            .or_insert_with(|| {
                Arc::new(JourneySeries {
                    name: r.journey.clone(),
                    state: Mutex::new(JourneyState {
                        location: r.location.clone(),
                        labels: r.labels.clone(),
                        probes: Vec::new(),
                        hists: Vec::new(),
                    }),
                })
            })
            .clone()
    }

    /// Records one finished run.
    pub fn record(&self, r: &JourneyReport) {
        let entry = self.entry(r);
        let mut st = lock(&entry.state);
        let st = &mut *st;
        // A reload may have changed them.
        if !Arc::ptr_eq(&st.labels, &r.labels) {
            st.labels = r.labels.clone();
        }
        if !Arc::ptr_eq(&st.location, &r.location) {
            st.location = r.location.clone();
        }
        let now = SystemTime::now();
        let address = r.address.as_deref();
        let mut hist = |key: KeyRef<'_>, error: Option<&str>, v: f64| {
            let found = st.hists.iter_mut().find(|h| {
                h.address.as_deref() == address && h.error.as_deref() == error && h.key.matches(key)
            });
            let h = match found {
                Some(h) => h,
                None => {
                    let key = HistKey::owned(key);
                    push_exact(
                        &mut st.hists,
                        HistSeries {
                            hist: Hist::new(key.bounds(), now),
                            key,
                            address: address.map(Into::into),
                            error: error.map(Into::into),
                        },
                    );
                    // Just pushed.
                    let last = st.hists.len() - 1;
                    &mut st.hists[last]
                }
            };
            h.hist.observe_with(v, r.trace_id, r.span_id, now);
        };

        let journey_error = r.error().map(|e| e.kind.as_str());
        hist(
            KeyRef::Journey,
            journey_error.as_deref(),
            r.duration.as_secs_f64(),
        );

        let mut http = HttpLast::default();
        let mut http_calls = 0i64;
        let mut http_steps = 0i64;
        let mut any_http = false;
        let mut earliest_expiry: Option<i64> = None;
        let mut tls_version: Option<String> = None;
        let mut dns: Option<DnsLast> = None;
        for step in &r.steps {
            if step.outcome == StepOutcome::Skipped {
                continue;
            }
            let step_error = step.error.as_ref().map(|e| e.kind.as_str());
            hist(
                KeyRef::Step(&step.name),
                step_error.as_deref(),
                step.duration.as_secs_f64(),
            );
            if step.kind == "http" {
                http_steps += 1;
            }
            for call in &step.calls {
                let secs = call.duration.as_secs_f64();
                let error = call.error_type.as_deref();
                match &call.detail {
                    CallDetail::Http(h) => {
                        any_http = true;
                        http_calls += 1;
                        for (i, p) in Phase::HTTP.iter().enumerate() {
                            http.phases[i] +=
                                call.phases.get(*p).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                        }
                        http.status = h.status.unwrap_or(0);
                        http.ssl = h.tls;
                        if let Some(t) = h.cert_expiry {
                            earliest_expiry = Some(earliest_expiry.map_or(t, |e| e.min(t)));
                        }
                        hist(
                            KeyRef::Http(
                                &step.name,
                                &h.method,
                                &h.server_address,
                                h.server_port,
                                h.status,
                            ),
                            error,
                            secs,
                        );
                    }
                    CallDetail::Db(d) => hist(
                        KeyRef::Db(
                            &step.name,
                            d.system,
                            &d.operation,
                            &d.server_address,
                            d.server_port,
                        ),
                        error,
                        secs,
                    ),
                    CallDetail::Tls(t) => {
                        if let Some(e) = t.earliest_expiry {
                            earliest_expiry = Some(earliest_expiry.map_or(e, |x| x.min(e)));
                        }
                        if let Some(v) = &t.protocol_version {
                            tls_version = Some(format!("TLS {v}"));
                        }
                    }
                    CallDetail::Dns(d) => {
                        dns = Some(DnsLast {
                            lookup: secs,
                            answers: d.answers,
                            authorities: d.authorities,
                            additionals: d.additionals,
                        })
                    }
                    CallDetail::Tcp(_) => {}
                }
            }
        }
        http.redirects = (http_calls - http_steps).max(0);

        let probe = match st
            .probes
            .iter_mut()
            .position(|p| p.address.as_deref() == address)
        {
            Some(i) => &mut st.probes[i],
            None => {
                push_exact(
                    &mut st.probes,
                    ProbeState {
                        address: address.map(Into::into),
                        ..ProbeState::default()
                    },
                );
                let last = st.probes.len() - 1;
                &mut st.probes[last]
            }
        };
        probe.success = r.outcome == Outcome::Passed;
        probe.duration = r.duration.as_secs_f64();
        if any_http {
            probe.http = Some(http);
        }
        if earliest_expiry.is_some() {
            probe.ssl_expiry = earliest_expiry;
        }
        if let Some(v) = tls_version
            && probe.tls_version.as_deref() != Some(&v)
        {
            probe.tls_version = Some(v.into());
        }
        if dns.is_some() {
            probe.dns = dns;
        }
    }

    /// Removes a journey's series (after a reload dropped it), so a deleted
    /// journey does not stay red or green forever.
    pub fn forget(&self, journey: &str) {
        self.journeys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(journey);
        lock(&self.skipped).remove(journey);
    }

    pub fn skipped(&self, journey: &str) {
        let mut s = lock(&self.skipped);
        match s.get_mut(journey) {
            Some(n) => *n += 1,
            None => {
                s.insert(journey.into(), 1);
            }
        }
    }

    pub fn lateness(&self, secs: f64) {
        lock(&self.lateness).observe(secs);
    }

    /// Counts telemetry items dropped; `signal` is `traces`.
    pub fn dropped(&self, _signal: &str, n: u64) {
        self.dropped_traces.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts items of `signal` (`traces` or `metrics`) that the collector
    /// refused in an export it accepted.
    pub fn rejected(&self, signal: &str, n: u64) {
        by_signal(signal, &self.rejected_traces, &self.rejected_metrics)
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a failed export attempt of `signal` (`traces` or `metrics`).
    pub fn export_failed(&self, signal: &str) {
        by_signal(signal, &self.failures_traces, &self.failures_metrics)
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_journeys(&self, n: usize) {
        self.journey_count.store(n as i64, Ordering::Relaxed);
    }

    /// Every journey's series, sorted by journey name. Holds no lock once
    /// returned; each journey's state is locked while it is read.
    pub fn journeys(&self) -> Vec<Arc<JourneySeries>> {
        let mut v: Vec<_> = self
            .journeys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn totals(&self) -> Totals {
        Totals {
            lateness: lock(&self.lateness).clone(),
            skipped: lock(&self.skipped).clone(),
            dropped_traces: self.dropped_traces.load(Ordering::Relaxed),
            rejected_traces: self.rejected_traces.load(Ordering::Relaxed),
            rejected_metrics: self.rejected_metrics.load(Ordering::Relaxed),
            failures_traces: self.failures_traces.load(Ordering::Relaxed),
            failures_metrics: self.failures_metrics.load(Ordering::Relaxed),
            journeys: self.journey_count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::{Call, ErrorKind, HttpCall, PhaseTimings, StepError, StepReport};

    /// A one-step HTTP run of `journey`; `status` 0 means the request failed.
    pub(crate) fn http_run(
        journey: &str,
        address: Option<&str>,
        status: u16,
        ms: u64,
    ) -> JourneyReport {
        let failed = status >= 400 || status == 0;
        let error = failed.then(|| StepError {
            kind: if status == 0 {
                ErrorKind::Connect
            } else {
                ErrorKind::Status(status)
            },
            phase: None,
            message: "failed".into(),
            screenshot: None,
            page_url: None,
        });
        let phases = PhaseTimings {
            connect: Some(Duration::from_micros(100)),
            processing: Some(Duration::from_millis(ms)),
            ..PhaseTimings::default()
        };
        JourneyReport {
            journey: journey.into(),
            location: "here".into(),
            labels: Arc::new(BTreeMap::from([("team".to_string(), "sre".to_string())])),
            address: address.map(Into::into),
            trace_id: TraceId([7; 16]),
            span_id: SpanId([8; 8]),
            started_at: SystemTime::now(),
            duration: Duration::from_millis(ms),
            lateness: None,
            outcome: if failed {
                Outcome::Failed
            } else {
                Outcome::Passed
            },
            failed_step: failed.then_some(0),
            steps: vec![StepReport {
                name: "get".into(),
                kind: "http",
                span_id: SpanId([9; 8]),
                started_at: SystemTime::now(),
                duration: Duration::from_millis(ms),
                outcome: if failed {
                    StepOutcome::Failed
                } else {
                    StepOutcome::Passed
                },
                error,
                calls: vec![Call {
                    span_id: SpanId([10; 8]),
                    started_at: SystemTime::now(),
                    duration: Duration::from_millis(ms),
                    error_type: failed.then(|| {
                        if status == 0 {
                            "connect".to_string()
                        } else {
                            status.to_string()
                        }
                    }),
                    phases,
                    detail: CallDetail::Http(HttpCall {
                        method: "GET".into(),
                        url: "http://127.0.0.1:1/".into(),
                        server_address: "127.0.0.1".into(),
                        server_port: 1,
                        peer: None,
                        status: (status != 0).then_some(status),
                        protocol_version: Some("1.1"),
                        tls: false,
                        response_bytes: 2,
                        cert_expiry: None,
                    }),
                }],
            }],
        }
    }

    #[test]
    fn runs_accumulate_in_one_series_per_key_and_error() {
        let s = MetricStore::new();
        for ms in [3, 30, 300] {
            s.record(&http_run("a", None, 200, ms));
        }
        s.record(&http_run("a", None, 503, 20));
        let j = s.journeys();
        assert_eq!(j.len(), 1);
        let st = lock(&j[0].state);
        // Journey, step and HTTP series for success, and again for 503
        // (the HTTP series also differs by status code).
        assert_eq!(st.hists.len(), 6);
        let ok = st
            .hists
            .iter()
            .find(|h| matches!(h.key, HistKey::Journey) && h.error.is_none())
            .unwrap();
        assert_eq!(ok.hist.count, 3);
        assert!((ok.hist.sum - 0.333).abs() < 1e-9);
        assert_eq!(ok.hist.min, 0.003);
        assert_eq!(ok.hist.max, 0.3);
        // 3 ms in (0.0, 0.005], 30 ms in (0.025, 0.05], 300 ms in (0.25, 0.5].
        assert_eq!(ok.hist.counts[0], 1);
        assert_eq!(ok.hist.counts[3], 1);
        assert_eq!(ok.hist.counts[7], 1);
        assert_eq!(ok.hist.exemplars.len(), 3, "one exemplar per bucket hit");
        let bad = st
            .hists
            .iter()
            .find(|h| matches!(h.key, HistKey::Journey) && h.error.is_some())
            .unwrap();
        assert_eq!(bad.error.as_deref(), Some("503"));
        assert_eq!(st.probes.len(), 1);
        assert!(!st.probes[0].success, "the last run decides probe_success");
        assert_eq!(st.probes[0].http.as_ref().unwrap().status, 503);
    }

    #[test]
    fn fanned_out_runs_keep_a_probe_state_per_address_and_forget_drops_all() {
        let s = MetricStore::new();
        s.record(&http_run("f", Some("10.0.0.1"), 200, 5));
        s.record(&http_run("f", Some("10.0.0.2"), 0, 5));
        s.skipped("f");
        {
            let j = s.journeys();
            let st = lock(&j[0].state);
            assert_eq!(st.probes.len(), 2);
            assert!(st.probes[0].success && !st.probes[1].success);
        }
        s.forget("f");
        assert!(s.journeys().is_empty());
        assert!(s.totals().skipped.is_empty());
    }

    #[test]
    fn an_exemplar_is_replaced_by_the_next_observation_in_its_bucket() {
        let mut h = Hist::new(names::JOURNEY_BUCKETS, SystemTime::now());
        h.observe_with(0.001, TraceId([1; 16]), SpanId([1; 8]), SystemTime::now());
        h.observe_with(0.002, TraceId([2; 16]), SpanId([2; 8]), SystemTime::now());
        assert_eq!(h.exemplars.len(), 1);
        assert_eq!(h.exemplars[0].trace_id, TraceId([2; 16]));
        assert_eq!(h.exemplars[0].value, 0.002);
        // Above the last bound: the +Inf bucket.
        h.observe(1000.0);
        assert_eq!(h.counts[names::JOURNEY_BUCKETS.len()], 1);
    }
}
