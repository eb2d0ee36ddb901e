//! The `/metrics` exposition: blackbox_exporter-compatible `probe_*` series
//! (so existing dashboards and alert rules keep working) and Vantage's own
//! histograms in OpenMetrics, with exemplars that carry the run's trace id.
//!
//! Labels are bounded by configuration: journey, step, location, the
//! journey's own labels, phase and `error_type` from the documented set.
//! Never a URL, a run id or a trace id (trace ids ride on exemplars only).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::names;
use crate::report::{CallDetail, JourneyReport, Phase};

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;
type ExHistogram = HistogramWithExemplars<Labels>;

#[derive(Clone)]
struct Buckets(&'static [f64]);

impl MetricConstructor<ExHistogram> for Buckets {
    fn new_metric(&self) -> ExHistogram {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

pub struct Prom {
    registry: Registry,
    probe_success: Family<Labels, Gauge>,
    probe_duration: Family<Labels, FGauge>,
    probe_http_duration: Family<Labels, FGauge>,
    probe_http_status: Family<Labels, Gauge>,
    probe_http_ssl: Family<Labels, Gauge>,
    probe_http_redirects: Family<Labels, Gauge>,
    journey_duration: Family<Labels, ExHistogram, Buckets>,
    step_duration: Family<Labels, ExHistogram, Buckets>,
    http_duration: Family<Labels, ExHistogram, Buckets>,
    db_duration: Family<Labels, ExHistogram, Buckets>,
    probe_ssl_expiry: Family<Labels, FGauge>,
    probe_tls_version: Family<Labels, Gauge>,
    probe_dns_lookup: Family<Labels, FGauge>,
    probe_dns_answers: Family<Labels, Gauge>,
    probe_dns_authorities: Family<Labels, Gauge>,
    probe_dns_additionals: Family<Labels, Gauge>,
    skipped: Family<Labels, Counter>,
    lateness: Histogram,
    dropped: Family<Labels, Counter>,
    export_failures: Family<Labels, Counter>,
    journeys: Gauge,
    /// Label sets written per journey, so a removed journey's series go too.
    written: Mutex<BTreeMap<String, Vec<(Series, Labels)>>>,
}

#[derive(Clone, Copy)]
enum Series {
    Success,
    Duration,
    HttpDuration,
    HttpStatus,
    HttpSsl,
    HttpRedirects,
    SslExpiry,
    TlsVersion,
    DnsLookup,
    DnsAnswers,
    DnsAuthorities,
    DnsAdditionals,
}

fn journey_labels(r: &JourneyReport) -> Labels {
    let mut l = vec![
        ("journey".to_string(), r.journey.to_string()),
        ("location".to_string(), r.location.to_string()),
    ];
    if let Some(a) = &r.address {
        l.push(("address".to_string(), a.clone()));
    }
    l.extend(r.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    l
}

impl Prom {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let probe_success = Family::<Labels, Gauge>::default();
        registry.register(
            "probe_success",
            "Whether the journey's last run succeeded (1) or failed (0)",
            probe_success.clone(),
        );
        let probe_duration = Family::<Labels, FGauge>::default();
        registry.register(
            "probe_duration_seconds",
            "How long the journey's last run took to complete in seconds",
            probe_duration.clone(),
        );
        let probe_http_duration = Family::<Labels, FGauge>::default();
        registry.register(
            "probe_http_duration_seconds",
            "Duration of the last run's HTTP requests by phase, summed over all requests (redirects included)",
            probe_http_duration.clone(),
        );
        let probe_http_status = Family::<Labels, Gauge>::default();
        registry.register(
            "probe_http_status_code",
            "Response HTTP status code of the last run's last HTTP request (0 when none arrived)",
            probe_http_status.clone(),
        );
        let probe_http_ssl = Family::<Labels, Gauge>::default();
        registry.register(
            "probe_http_ssl",
            "Whether the last run's last HTTP request used TLS",
            probe_http_ssl.clone(),
        );
        let probe_http_redirects = Family::<Labels, Gauge>::default();
        registry.register(
            "probe_http_redirects",
            "The number of redirects in the last run's HTTP steps",
            probe_http_redirects.clone(),
        );
        let journey_duration = Family::new_with_constructor(Buckets(names::JOURNEY_BUCKETS));
        registry.register_with_unit(
            "vantage_journey_duration",
            "Duration of journey runs",
            Unit::Seconds,
            journey_duration.clone(),
        );
        let step_duration = Family::new_with_constructor(Buckets(names::JOURNEY_BUCKETS));
        registry.register_with_unit(
            "vantage_step_duration",
            "Duration of journey steps",
            Unit::Seconds,
            step_duration.clone(),
        );
        let http_duration = Family::new_with_constructor(Buckets(names::HTTP_BUCKETS));
        registry.register_with_unit(
            "vantage_http_client_request_duration",
            "Duration of HTTP requests made by journeys (semconv http.client.request.duration)",
            Unit::Seconds,
            http_duration.clone(),
        );
        let db_duration = Family::new_with_constructor(Buckets(names::HTTP_BUCKETS));
        registry.register_with_unit(
            "vantage_db_client_operation_duration",
            "Duration of database operations made by journeys (semconv db.client.operation.duration)",
            Unit::Seconds,
            db_duration.clone(),
        );
        let probe_ssl_expiry = Family::<Labels, FGauge>::default();
        registry.register(
            "probe_ssl_earliest_cert_expiry",
            "Returns last SSL chain expiry in unixtime (earliest notAfter of the last run's chains)",
            probe_ssl_expiry.clone(),
        );
        let probe_tls_version = Family::<Labels, Gauge>::default();
        registry.register(
            "probe_tls_version_info",
            "Returns the TLS version used or NaN when unknown",
            probe_tls_version.clone(),
        );
        let probe_dns_lookup = Family::<Labels, FGauge>::default();
        registry.register(
            "probe_dns_lookup_time_seconds",
            "Returns the time taken for the DNS query in seconds",
            probe_dns_lookup.clone(),
        );
        let probe_dns_answers = Family::<Labels, Gauge>::default();
        registry.register(
            "probe_dns_answer_rrs",
            "Returns number of entries in the answer resource record list",
            probe_dns_answers.clone(),
        );
        let probe_dns_authorities = Family::<Labels, Gauge>::default();
        registry.register(
            "probe_dns_authority_rrs",
            "Returns number of entries in the authority resource record list",
            probe_dns_authorities.clone(),
        );
        let probe_dns_additionals = Family::<Labels, Gauge>::default();
        registry.register(
            "probe_dns_additional_rrs",
            "Returns number of entries in the additional resource record list",
            probe_dns_additionals.clone(),
        );
        let skipped = Family::<Labels, Counter>::default();
        registry.register(
            "vantage_schedule_skipped_ticks",
            "Scheduled runs skipped because the journey's previous run was still going",
            skipped.clone(),
        );
        let lateness = Histogram::new(names::LATENESS_BUCKETS.iter().copied());
        registry.register_with_unit(
            "vantage_schedule_lateness",
            "How late runs started against their schedule (concurrency-limit waits included)",
            Unit::Seconds,
            lateness.clone(),
        );
        let dropped = Family::<Labels, Counter>::default();
        registry.register(
            "vantage_telemetry_dropped",
            "Telemetry items dropped because the export queue was full",
            dropped.clone(),
        );
        let export_failures = Family::<Labels, Counter>::default();
        registry.register(
            "vantage_telemetry_export_failures",
            "Failed OTLP export attempts",
            export_failures.clone(),
        );
        let journeys = Gauge::default();
        registry.register(
            "vantage_journeys",
            "Journeys scheduled on this agent (after sharding)",
            journeys.clone(),
        );
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )])
            .set(1);
        registry.register("vantage_build_info", "Vantage version", build_info);
        Prom {
            registry,
            probe_success,
            probe_duration,
            probe_http_duration,
            probe_http_status,
            probe_http_ssl,
            probe_http_redirects,
            journey_duration,
            step_duration,
            http_duration,
            db_duration,
            probe_ssl_expiry,
            probe_tls_version,
            probe_dns_lookup,
            probe_dns_answers,
            probe_dns_authorities,
            probe_dns_additionals,
            skipped,
            lateness,
            dropped,
            export_failures,
            journeys,
            written: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn record(&self, r: &JourneyReport) {
        let base = journey_labels(r);
        let mut written = Vec::new();
        let mut put = |series: Series, labels: Labels| written.push((series, labels));
        self.probe_success
            .get_or_create(&base)
            .set(i64::from(r.outcome == crate::report::Outcome::Passed));
        put(Series::Success, base.clone());
        self.probe_duration
            .get_or_create(&base)
            .set(r.duration.as_secs_f64());
        put(Series::Duration, base.clone());

        let exemplar = Some(vec![("trace_id".to_string(), r.trace_id.to_string())]);
        let mut with_error = base.clone();
        with_error.push((
            "error_type".into(),
            r.error()
                .map(|e| e.kind.as_str().into_owned())
                .unwrap_or_default(),
        ));
        self.journey_duration.get_or_create(&with_error).observe(
            r.duration.as_secs_f64(),
            exemplar.clone(),
            None,
        );

        let mut phases: BTreeMap<Phase, f64> = BTreeMap::new();
        let mut last_status = None;
        let mut last_tls = None;
        let mut earliest_expiry: Option<i64> = None;
        let mut tls_version: Option<String> = None;
        let mut dns: Option<(std::time::Duration, crate::report::DnsCall)> = None;
        let mut http_calls = 0i64;
        let mut http_steps = 0i64;
        for step in &r.steps {
            if step.outcome == crate::report::StepOutcome::Skipped {
                continue;
            }
            let step_labels = |error_type: String, method: Option<&str>| {
                let mut l = vec![
                    ("journey".to_string(), r.journey.to_string()),
                    ("step".to_string(), step.name.to_string()),
                    ("location".to_string(), r.location.to_string()),
                ];
                if let Some(m) = method {
                    l.push(("method".to_string(), m.to_string()));
                }
                l.push(("error_type".to_string(), error_type));
                l
            };
            let step_error = step
                .error
                .as_ref()
                .map(|e| e.kind.as_str().into_owned())
                .unwrap_or_default();
            self.step_duration
                .get_or_create(&step_labels(step_error, None))
                .observe(step.duration.as_secs_f64(), exemplar.clone(), None);
            if step.kind == "http" {
                http_steps += 1;
            }
            for call in &step.calls {
                let error_type = call.error_type.clone().unwrap_or_default();
                match &call.detail {
                    CallDetail::Http(h) => {
                        http_calls += 1;
                        for p in Phase::HTTP {
                            *phases.entry(p).or_default() +=
                                call.phases.get(p).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                        }
                        last_status = Some(h.status.unwrap_or(0));
                        last_tls = Some(h.tls);
                        if let Some(t) = h.cert_expiry {
                            earliest_expiry = Some(earliest_expiry.map_or(t, |e: i64| e.min(t)));
                        }
                        self.http_duration
                            .get_or_create(&step_labels(error_type, Some(&h.method)))
                            .observe(call.duration.as_secs_f64(), exemplar.clone(), None);
                    }
                    CallDetail::Db(d) => {
                        let mut l = step_labels(error_type, None);
                        l.insert(3, ("db_system".into(), d.system.into()));
                        l.insert(4, ("operation".into(), d.operation.clone()));
                        self.db_duration.get_or_create(&l).observe(
                            call.duration.as_secs_f64(),
                            exemplar.clone(),
                            None,
                        );
                    }
                    CallDetail::Tls(t) => {
                        if let Some(e) = t.earliest_expiry {
                            earliest_expiry = Some(earliest_expiry.map_or(e, |x: i64| x.min(e)));
                        }
                        if let Some(v) = &t.protocol_version {
                            tls_version = Some(format!("TLS {v}"));
                        }
                    }
                    CallDetail::Dns(d) => dns = Some((call.duration, d.clone())),
                    CallDetail::Tcp(_) => {}
                }
            }
        }
        if let Some(expiry) = earliest_expiry {
            self.probe_ssl_expiry
                .get_or_create(&base)
                .set(expiry as f64);
            put(Series::SslExpiry, base.clone());
        }
        if let Some(v) = tls_version {
            let mut l = base.clone();
            l.push(("version".into(), v));
            self.probe_tls_version.get_or_create(&l).set(1);
            put(Series::TlsVersion, l);
        }
        if let Some((took, d)) = dns {
            self.probe_dns_lookup
                .get_or_create(&base)
                .set(took.as_secs_f64());
            put(Series::DnsLookup, base.clone());
            for (series, family, n) in [
                (Series::DnsAnswers, &self.probe_dns_answers, d.answers),
                (
                    Series::DnsAuthorities,
                    &self.probe_dns_authorities,
                    d.authorities,
                ),
                (
                    Series::DnsAdditionals,
                    &self.probe_dns_additionals,
                    d.additionals,
                ),
            ] {
                family.get_or_create(&base).set(i64::from(n));
                put(series, base.clone());
            }
        }
        if let Some(status) = last_status {
            for (p, secs) in &phases {
                let mut l = base.clone();
                l.push(("phase".into(), p.as_str().into()));
                self.probe_http_duration.get_or_create(&l).set(*secs);
                put(Series::HttpDuration, l);
            }
            self.probe_http_status
                .get_or_create(&base)
                .set(i64::from(status));
            put(Series::HttpStatus, base.clone());
            self.probe_http_ssl
                .get_or_create(&base)
                .set(i64::from(last_tls.unwrap_or(false)));
            put(Series::HttpSsl, base.clone());
            self.probe_http_redirects
                .get_or_create(&base)
                .set((http_calls - http_steps).max(0));
            put(Series::HttpRedirects, base.clone());
        }
        if let Ok(mut w) = self.written.lock() {
            // Fanned-out runs of one journey each add their own series.
            let entry = w.entry(r.journey.to_string()).or_default();
            entry.retain(|(_, l)| !written.iter().any(|(_, n)| n == l));
            entry.extend(written);
        }
    }

    /// Removes a journey's `probe_*` series (after a reload dropped it), so a
    /// deleted journey does not stay red or green forever.
    pub fn forget(&self, journey: &str) {
        let Some(series) = self.written.lock().ok().and_then(|mut w| w.remove(journey)) else {
            return;
        };
        for (s, labels) in series {
            match s {
                Series::Success => self.probe_success.remove(&labels),
                Series::Duration => self.probe_duration.remove(&labels),
                Series::HttpDuration => self.probe_http_duration.remove(&labels),
                Series::HttpStatus => self.probe_http_status.remove(&labels),
                Series::HttpSsl => self.probe_http_ssl.remove(&labels),
                Series::HttpRedirects => self.probe_http_redirects.remove(&labels),
                Series::SslExpiry => self.probe_ssl_expiry.remove(&labels),
                Series::TlsVersion => self.probe_tls_version.remove(&labels),
                Series::DnsLookup => self.probe_dns_lookup.remove(&labels),
                Series::DnsAnswers => self.probe_dns_answers.remove(&labels),
                Series::DnsAuthorities => self.probe_dns_authorities.remove(&labels),
                Series::DnsAdditionals => self.probe_dns_additionals.remove(&labels),
            };
        }
    }

    pub fn skipped(&self, journey: &str) {
        self.skipped
            .get_or_create(&vec![("journey".into(), journey.into())])
            .inc();
    }

    pub fn lateness(&self, secs: f64) {
        self.lateness.observe(secs);
    }

    pub fn dropped(&self, signal: &str, n: u64) {
        self.dropped
            .get_or_create(&vec![("signal".into(), signal.into())])
            .inc_by(n);
    }

    pub fn export_failed(&self, signal: &str) {
        self.export_failures
            .get_or_create(&vec![("signal".into(), signal.into())])
            .inc();
    }

    pub fn set_journeys(&self, n: usize) {
        self.journeys.set(n as i64);
    }

    /// The classic Prometheus text format of every series.
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Prom {
    fn default() -> Self {
        Self::new()
    }
}

/// The content type of [`Prom::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`Prom::encode_text`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text into the classic Prometheus text format for
/// scrapers that do not ask for OpenMetrics: no exemplars (that format has
/// none), no `# UNIT` or `# EOF`, and counter families named with their
/// `_total` suffix as the classic format expects.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut counters = std::collections::HashSet::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line
            .strip_prefix("# TYPE ")
            .or_else(|| line.strip_prefix("# HELP "))
        {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = &line[..7];
            if counters.contains(name) {
                out.push_str(&format!("{kind}{name}_total {tail}\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        // A sample with an exemplar: `name{..} value # {labels} value [ts]`.
        let sample = match line.find(" # {") {
            Some(i) if !line.starts_with('#') => &line[..i],
            _ => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}
