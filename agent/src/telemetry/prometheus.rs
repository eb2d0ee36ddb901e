//! The `/metrics` exposition of the [`MetricStore`]: blackbox_exporter-
//! compatible `probe_*` series (so existing dashboards and alert rules keep
//! working) and Vantage's own histograms in OpenMetrics, with exemplars that
//! carry the run's trace id.
//!
//! Labels are bounded by configuration: journey, step, location, address,
//! the journey's own labels, phase and `error_type` from the documented set.
//! Never a URL, a run id or a trace id (trace ids ride on exemplars only).
//!
//! The text is written here rather than through `prometheus-client`: that
//! crate's families own their series' state (a label vector and a histogram
//! per series, kilobytes per journey), and its `Exemplar` cannot be built
//! from state kept elsewhere. The format is small, and `promtool` checks our
//! output in the tests.

use std::fmt::Write;

use super::store::{Exemplar, Family, Hist, HistKey, JourneyState, MetricStore, lock};
use crate::report::Phase;

/// One label: name and value (escaped when written).
type Label<'a> = (&'a str, &'a str);

/// Writes an OpenMetrics float: shortest round-trip form, `+Inf`, `NaN`.
fn float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v:?}");
    }
}

fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn labels(out: &mut String, ls: &[Label<'_>], extra: Option<Label<'_>>) {
    if ls.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in ls.iter().chain(extra.as_ref()).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape(out, v);
        out.push('"');
    }
    out.push('}');
}

fn header(out: &mut String, name: &str, kind: &str, help: &str, unit: Option<&str>) {
    let _ = writeln!(out, "# HELP {name} {help}.");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    if let Some(u) = unit {
        let _ = writeln!(out, "# UNIT {name} {u}");
    }
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    ls: &[Label<'_>],
    value: impl FnOnce(&mut String),
) {
    out.push_str(name);
    out.push_str(suffix);
    labels(out, ls, None);
    out.push(' ');
    value(out);
    out.push('\n');
}

fn exemplar(out: &mut String, e: &Exemplar) {
    out.push_str(" # {trace_id=\"");
    out.push_str(&e.trace_id.to_string());
    out.push_str("\"} ");
    float(out, e.value);
}

fn histogram(out: &mut String, name: &str, ls: &[Label<'_>], h: &Hist) {
    sample(out, name, "_sum", ls, |o| float(o, h.sum));
    sample(out, name, "_count", ls, |o| {
        let _ = write!(o, "{}", h.count);
    });
    let mut cumulative = 0u64;
    let mut le = String::new();
    for (i, n) in h.counts.iter().enumerate() {
        cumulative += n;
        le.clear();
        match h.bounds.get(i) {
            Some(b) => float(&mut le, *b),
            None => le.push_str("+Inf"),
        }
        out.push_str(name);
        out.push_str("_bucket");
        labels(out, ls, Some(("le", &le)));
        let _ = write!(out, " {cumulative}");
        if let Some(e) = h.exemplars.iter().find(|e| usize::from(e.bucket) == i) {
            exemplar(out, e);
        }
        out.push('\n');
    }
}

/// The labels every `probe_*` series of a journey carries.
fn base<'a>(name: &'a str, st: &'a JourneyState, address: Option<&'a str>) -> Vec<Label<'a>> {
    let mut l = vec![("journey", name), ("location", &*st.location)];
    if let Some(a) = address {
        l.push(("address", a));
    }
    l.extend(st.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    l
}

/// Writes one histogram family. OTLP keys some series finer (server
/// address, port, status) than these labels, so series whose labels come
/// out equal are merged first.
fn hist_family(out: &mut String, name: &str, st: &JourneyState, journey: &str, fam: Family) {
    let mut merged: Vec<(Vec<Label<'_>>, Hist)> = Vec::new();
    for s in st.hists.iter().filter(|s| s.key.family() == fam) {
        let error = s.error.as_deref().unwrap_or("");
        let mut l: Vec<Label<'_>> = match &s.key {
            HistKey::Journey => base(journey, st, s.address.as_deref()),
            HistKey::Step { step } | HistKey::Http { step, .. } | HistKey::Db { step, .. } => {
                let mut l = vec![
                    ("journey", journey),
                    ("step", &**step),
                    ("location", &*st.location),
                ];
                if let Some(a) = &s.address {
                    l.push(("address", a));
                }
                l
            }
        };
        match &s.key {
            HistKey::Http { method, .. } => l.push(("method", method)),
            HistKey::Db {
                system, operation, ..
            } => {
                l.push(("db_system", system));
                l.push(("operation", operation));
            }
            _ => {}
        }
        l.push(("error_type", error));
        match merged.iter_mut().find(|(m, _)| *m == l) {
            Some((_, h)) => h.merge(&s.hist),
            None => merged.push((l, s.hist.clone())),
        }
    }
    for (l, h) in &merged {
        histogram(out, name, l, h);
    }
}

/// The OpenMetrics text of every series, whole.
pub fn encode(store: &MetricStore) -> String {
    let mut all = String::new();
    encode_chunks(store, 1 << 20, &mut |c| {
        all.push_str(&c);
        true
    });
    all
}

/// The text being written, handed to a sink in chunks of about `size`
/// bytes. A chunk ends between journeys, so it holds whole lines, and a
/// family's `# HELP` and `# TYPE` are always in the same chunk.
struct Chunks<'a> {
    out: String,
    size: usize,
    sink: &'a mut dyn FnMut(String) -> bool,
    /// False once the sink refused a chunk (the scraper went away).
    open: bool,
}

impl Chunks<'_> {
    fn flush(&mut self, force: bool) {
        if self.open && (force || self.out.len() >= self.size) {
            let chunk = std::mem::replace(&mut self.out, String::with_capacity(self.size + 8192));
            self.open = (self.sink)(chunk);
        }
    }
}

/// The OpenMetrics text of every series, handed to `sink` in chunks of
/// about `size` bytes, so that a scrape of ten thousand journeys (75 MB of
/// text) never holds more than a few chunks. Stops early when `sink`
/// returns false.
pub fn encode_chunks(store: &MetricStore, size: usize, sink: &mut dyn FnMut(String) -> bool) {
    let journeys = store.journeys();
    let mut w = Chunks {
        out: String::with_capacity(size + 8192),
        size,
        sink,
        open: true,
    };
    // One pass per family, as the format groups samples by family; each
    // journey is locked briefly in every pass, never for the whole scrape.
    type Gauge = fn(&mut String, &[Label<'_>], &super::store::ProbeState);
    let gauges: [(&str, &str, Gauge); 6] = [
        (
            "probe_success",
            "Whether the journey's last run succeeded (1) or failed (0)",
            |o, l, p| {
                sample(o, "probe_success", "", l, |o| {
                    o.push(if p.success { '1' } else { '0' })
                })
            },
        ),
        (
            "probe_duration_seconds",
            "How long the journey's last run took to complete in seconds",
            |o, l, p| sample(o, "probe_duration_seconds", "", l, |o| float(o, p.duration)),
        ),
        (
            "probe_http_duration_seconds",
            "Duration of the last run's HTTP requests by phase, summed over all requests (redirects included)",
            |o, l, p| {
                if let Some(h) = &p.http {
                    for (i, ph) in Phase::HTTP.iter().enumerate() {
                        let mut l = l.to_vec();
                        l.push(("phase", ph.as_str()));
                        sample(o, "probe_http_duration_seconds", "", &l, |o| {
                            float(o, h.phases[i])
                        });
                    }
                }
            },
        ),
        (
            "probe_http_status_code",
            "Response HTTP status code of the last run's last HTTP request (0 when none arrived)",
            |o, l, p| {
                if let Some(h) = &p.http {
                    sample(o, "probe_http_status_code", "", l, |o| {
                        let _ = write!(o, "{}", h.status);
                    })
                }
            },
        ),
        (
            "probe_http_ssl",
            "Whether the last run's last HTTP request used TLS",
            |o, l, p| {
                if let Some(h) = &p.http {
                    sample(o, "probe_http_ssl", "", l, |o| {
                        o.push(if h.ssl { '1' } else { '0' })
                    })
                }
            },
        ),
        (
            "probe_http_redirects",
            "The number of redirects in the last run's HTTP steps",
            |o, l, p| {
                if let Some(h) = &p.http {
                    sample(o, "probe_http_redirects", "", l, |o| {
                        let _ = write!(o, "{}", h.redirects);
                    })
                }
            },
        ),
    ];
    let late_gauges: [(&str, &str, Gauge); 6] = [
        (
            "probe_ssl_earliest_cert_expiry",
            "Returns last SSL chain expiry in unixtime (earliest notAfter of the last run's chains)",
            |o, l, p| {
                if let Some(t) = p.ssl_expiry {
                    sample(o, "probe_ssl_earliest_cert_expiry", "", l, |o| {
                        float(o, t as f64)
                    })
                }
            },
        ),
        (
            "probe_tls_version_info",
            "Returns the TLS version used or NaN when unknown",
            |o, l, p| {
                if let Some(v) = &p.tls_version {
                    let mut l = l.to_vec();
                    l.push(("version", v));
                    sample(o, "probe_tls_version_info", "", &l, |o| o.push('1'))
                }
            },
        ),
        (
            "probe_dns_lookup_time_seconds",
            "Returns the time taken for the DNS query in seconds",
            |o, l, p| {
                if let Some(d) = &p.dns {
                    sample(o, "probe_dns_lookup_time_seconds", "", l, |o| {
                        float(o, d.lookup)
                    })
                }
            },
        ),
        (
            "probe_dns_answer_rrs",
            "Returns number of entries in the answer resource record list",
            |o, l, p| {
                if let Some(d) = &p.dns {
                    sample(o, "probe_dns_answer_rrs", "", l, |o| {
                        let _ = write!(o, "{}", d.answers);
                    })
                }
            },
        ),
        (
            "probe_dns_authority_rrs",
            "Returns number of entries in the authority resource record list",
            |o, l, p| {
                if let Some(d) = &p.dns {
                    sample(o, "probe_dns_authority_rrs", "", l, |o| {
                        let _ = write!(o, "{}", d.authorities);
                    })
                }
            },
        ),
        (
            "probe_dns_additional_rrs",
            "Returns number of entries in the additional resource record list",
            |o, l, p| {
                if let Some(d) = &p.dns {
                    sample(o, "probe_dns_additional_rrs", "", l, |o| {
                        let _ = write!(o, "{}", d.additionals);
                    })
                }
            },
        ),
    ];
    let probe_pass = |w: &mut Chunks<'_>, list: &[(&str, &str, Gauge)]| {
        for (name, help, write) in list {
            header(&mut w.out, name, "gauge", help, None);
            for j in &journeys {
                {
                    let st = lock(&j.state);
                    for p in &st.probes {
                        let l = base(&j.name, &st, p.address.as_deref());
                        write(&mut w.out, &l, p);
                    }
                }
                // Never while a journey is locked: the sink may wait.
                w.flush(false);
                if !w.open {
                    return;
                }
            }
        }
    };
    probe_pass(&mut w, &gauges);
    for (name, help, fam) in [
        (
            "vantage_journey_duration_seconds",
            "Duration of journey runs",
            Family::Journey,
        ),
        (
            "vantage_step_duration_seconds",
            "Duration of journey steps",
            Family::Step,
        ),
        (
            "vantage_http_client_request_duration_seconds",
            "Duration of HTTP requests made by journeys (semconv http.client.request.duration)",
            Family::Http,
        ),
        (
            "vantage_db_client_operation_duration_seconds",
            "Duration of database operations made by journeys (semconv db.client.operation.duration)",
            Family::Db,
        ),
    ] {
        header(&mut w.out, name, "histogram", help, Some("seconds"));
        for j in &journeys {
            {
                let st = lock(&j.state);
                hist_family(&mut w.out, name, &st, &j.name, fam);
            }
            w.flush(false);
            if !w.open {
                return;
            }
        }
    }
    probe_pass(&mut w, &late_gauges);
    if !w.open {
        return;
    }
    let out = &mut w.out;

    let t = store.totals();
    header(
        out,
        "vantage_schedule_skipped_ticks",
        "counter",
        "Scheduled runs skipped because the journey's previous run was still going",
        None,
    );
    for (j, n) in &t.skipped {
        sample(
            out,
            "vantage_schedule_skipped_ticks",
            "_total",
            &[("journey", j)],
            |o| {
                let _ = write!(o, "{n}");
            },
        );
    }
    header(
        out,
        "vantage_schedule_lateness_seconds",
        "histogram",
        "How late runs started against their schedule (concurrency-limit waits included)",
        Some("seconds"),
    );
    histogram(out, "vantage_schedule_lateness_seconds", &[], &t.lateness);
    header(
        out,
        "vantage_telemetry_dropped",
        "counter",
        "Telemetry items dropped because the export queue was full",
        None,
    );
    sample(
        out,
        "vantage_telemetry_dropped",
        "_total",
        &[("signal", "traces")],
        |o| {
            let _ = write!(o, "{}", t.dropped_traces);
        },
    );
    signal_counter(
        out,
        "vantage_telemetry_rejected",
        "Telemetry items the collector refused in exports it accepted (OTLP partial success); they are not sent again",
        [
            ("traces", t.rejected_traces),
            ("metrics", t.rejected_metrics),
        ],
    );
    signal_counter(
        out,
        "vantage_telemetry_export_failures",
        "Failed OTLP export attempts",
        [
            ("traces", t.failures_traces),
            ("metrics", t.failures_metrics),
        ],
    );
    header(
        out,
        "vantage_journeys",
        "gauge",
        "Journeys scheduled on this agent (after sharding)",
        None,
    );
    sample(out, "vantage_journeys", "", &[], |o| {
        let _ = write!(o, "{}", t.journeys);
    });
    header(out, "vantage_build_info", "gauge", "Vantage version", None);
    sample(
        out,
        "vantage_build_info",
        "",
        &[("version", env!("CARGO_PKG_VERSION"))],
        |o| o.push('1'),
    );
    out.push_str("# EOF\n");
    w.flush(true);
}

/// The content type of [`encode`] and [`encode_chunks`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of their text through [`openmetrics_to_text`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text into the classic Prometheus text format for
/// scrapers that do not ask for OpenMetrics: no exemplars (that format has
/// none), no `# UNIT` or `# EOF`, and counter families named with their
/// `_total` suffix as the classic format expects. Works on each chunk of
/// [`encode_chunks`] alone: a chunk holds whole lines, and a family's
/// `# HELP` and `# TYPE` lines together.
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

/// A counter with one `_total` sample per telemetry signal.
fn signal_counter(out: &mut String, name: &str, help: &str, values: [(&str, u64); 2]) {
    header(out, name, "counter", help, None);
    for (signal, n) in values {
        sample(out, name, "_total", &[("signal", signal)], |o| {
            let _ = write!(o, "{n}");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::store::tests::http_run;

    /// The classic text format of every series, whole.
    fn encode_text(store: &MetricStore) -> String {
        openmetrics_to_text(&encode(store))
    }

    #[test]
    fn series_labels_buckets_and_exemplars() {
        let s = MetricStore::new();
        s.record(&http_run("a\"b", None, 200, 3));
        s.record(&http_run("a\"b", None, 200, 30));
        let om = encode(&s);
        assert!(om.ends_with("# EOF\n"));
        assert!(
            om.contains("probe_success{journey=\"a\\\"b\",location=\"here\",team=\"sre\"} 1\n"),
            "{om}"
        );
        assert!(om.contains(
            "probe_http_status_code{journey=\"a\\\"b\",location=\"here\",team=\"sre\"} 200\n"
        ));
        assert!(om.contains(
            "probe_http_duration_seconds{journey=\"a\\\"b\",location=\"here\",team=\"sre\",phase=\"connect\"} 0.0001\n"
        ));
        // Cumulative buckets; the 3 ms run's exemplar carries its trace id.
        let trace = "07".repeat(16);
        assert!(om.contains(&format!(
            "vantage_journey_duration_seconds_bucket{{journey=\"a\\\"b\",location=\"here\",team=\"sre\",error_type=\"\",le=\"0.005\"}} 1 # {{trace_id=\"{trace}\"}} 0.003\n"
        )), "{om}");
        assert!(om.contains(
            "vantage_journey_duration_seconds_bucket{journey=\"a\\\"b\",location=\"here\",team=\"sre\",error_type=\"\",le=\"0.025\"} 1\n"
        ));
        assert!(om.contains(
            "vantage_journey_duration_seconds_bucket{journey=\"a\\\"b\",location=\"here\",team=\"sre\",error_type=\"\",le=\"+Inf\"} 2\n"
        ));
        assert!(om.contains("vantage_journey_duration_seconds_count{journey=\"a\\\"b\",location=\"here\",team=\"sre\",error_type=\"\"} 2\n"));
        assert!(om.contains("# UNIT vantage_journey_duration_seconds seconds\n"));
        assert!(om.contains(
            "vantage_http_client_request_duration_seconds_count{journey=\"a\\\"b\",step=\"get\",location=\"here\",method=\"GET\",error_type=\"\"} 2\n"
        ));
        // No URL reaches a label.
        assert!(!om.contains("http://"));
        // The classic format drops exemplars and names counters `_total`.
        let text = encode_text(&s);
        assert!(!text.contains("trace_id"));
        assert!(text.contains("# TYPE vantage_schedule_skipped_ticks_total counter\n"));
    }

    #[test]
    fn http_series_that_differ_only_in_otlp_attributes_merge() {
        let s = MetricStore::new();
        // Two successes with different status codes are two OTLP series
        // (`http.response.status_code`) but share every label here.
        s.record(&http_run("m", None, 200, 3));
        s.record(&http_run("m", None, 204, 3));
        let om = encode(&s);
        let counts: Vec<&str> = om
            .lines()
            .filter(|l| l.starts_with("vantage_http_client_request_duration_seconds_count"))
            .collect();
        assert_eq!(counts.len(), 1, "{counts:?}");
        assert!(counts[0].ends_with(" 2"), "{counts:?}");
    }

    /// A store with `n` journeys that have each run once.
    fn journeys(n: usize) -> MetricStore {
        let s = MetricStore::new();
        for i in 0..n {
            s.record(&http_run(&format!("j{i:03}"), None, 200, 3));
        }
        s
    }

    #[test]
    fn chunks_hold_whole_lines_and_add_up_to_the_whole_text_in_both_formats() {
        let s = journeys(300);
        s.skipped("j000");
        let whole = encode(&s);
        let mut chunks = Vec::new();
        encode_chunks(&s, 4096, &mut |c| {
            chunks.push(c);
            true
        });
        assert!(chunks.len() > 20, "{} chunks", chunks.len());
        for c in &chunks {
            assert!(
                c.ends_with('\n'),
                "a chunk ends mid-line: {:?}",
                &c[c.len() - 40..]
            );
            // Written between journeys: well under twice the chunk size.
            assert!(c.len() < 2 * 4096 + 8192, "{} bytes", c.len());
        }
        assert_eq!(chunks.concat(), whole);
        let text: String = chunks.iter().map(|c| openmetrics_to_text(c)).collect();
        assert_eq!(text, encode_text(&s));
        assert!(text.contains("# TYPE vantage_schedule_skipped_ticks_total counter\n"));
    }

    #[test]
    fn a_refused_chunk_stops_the_encoding() {
        let s = journeys(300);
        let mut calls = 0;
        encode_chunks(&s, 4096, &mut |_| {
            calls += 1;
            false
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn floats_are_openmetrics_numbers() {
        let mut o = String::new();
        for v in [1.0, 0.005, f64::INFINITY, f64::NAN, 1e-7] {
            float(&mut o, v);
            o.push(' ');
        }
        assert_eq!(o, "1.0 0.005 +Inf NaN 1e-7 ");
    }
}
