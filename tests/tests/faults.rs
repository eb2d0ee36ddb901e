//! Fault injection against the HTTP probe, on loopback only.
//!
//! Each fault (refused connection, unresolvable name, silent server, body
//! that stalls, redirect loop, oversized body with and without
//! `Content-Length`, untrusted, expired or wrong-host certificate) must fail its step
//! with the exact `ErrorKind`, the `Phase` where one applies, and a message
//! that says what went wrong. Positive controls (trusted CA, `insecure`,
//! a healthy echo server) prove the assertions can fail. Deadlines are
//! enforced around the probe (a 1 s step timeout ends in well under 3 s, and
//! the journey timeout is named when it is the one that fires), and the
//! cookie jar lives for exactly one run. `localhost` must be tried on its
//! IPv4 address first, as the probe documents.
//!
//! The last test runs the real agent binary on a mix of these faults and a
//! healthy journey: it stays up, healthy and ready, reports each fault as
//! `probe_success 0` with its `error_type`, and exits 0 on SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use vantage::journey::Journey;
use vantage::journey::build::{BuildOptions, load_and_build};
use vantage::journey::runner::{self, RunEnv};
use vantage::probes::ProbeEnv;
use vantage::report::{
    CallDetail, ErrorKind, HttpCall, JourneyReport, Outcome, Phase, StepError, StepOutcome,
};
use vantage_tests::agent::AgentProcess;
use vantage_tests::{
    TestCa, TlsKind, TlsServer, refused_addr, start_echo, start_oversized,
    start_oversized_with_length, start_redirect_loop, start_silent, start_stall_mid_body,
    vantage_bin,
};

// ---------------------------------------------------------------------------
// In-process helpers
// ---------------------------------------------------------------------------

/// Installs ring as the process-wide rustls provider, as the binary does.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Writes `yaml` as `journey.yaml` into `dir` and builds it (no environment).
fn build_in(dir: &Path, yaml: &str) -> Journey {
    let path = dir.join("journey.yaml");
    std::fs::write(&path, yaml).expect("writing the journey file");
    let env = |_: &str| None;
    let opts = BuildOptions {
        env: &env,
        vars: BTreeMap::new(),
    };
    let mut journeys = load_and_build(&[path], &opts)
        .unwrap_or_else(|errors| panic!("journey does not build: {errors:#?}\n{yaml}"));
    assert_eq!(journeys.len(), 1, "{yaml}");
    journeys.remove(0)
}

async fn run(journey: &Journey) -> JourneyReport {
    let env = RunEnv {
        location: "test".into(),
        probes: Arc::new(ProbeEnv::new().expect("system resolver configuration")),
    };
    runner::run(journey, &env, None, &CancellationToken::new()).await
}

/// Builds `yaml` in a fresh temporary directory and runs it once.
async fn run_yaml(yaml: &str) -> JourneyReport {
    let dir = tempfile::tempdir().expect("temp dir");
    run(&build_in(dir.path(), yaml)).await
}

/// A one-step journey `name` (journey timeout 10s) whose step `probe` has
/// `timeout: 5s` and the flow-mapping body `http` (e.g. `url: "...", insecure: true`).
fn one_step(name: &str, http: &str) -> String {
    format!(
        "name: {name}\ntimeout: 10s\nsteps:\n  - name: probe\n    timeout: 5s\n    http: {{ {http} }}\n"
    )
}

/// `url: "..."` for a flow mapping (JSON strings are valid YAML).
fn url(u: &str) -> String {
    format!("url: {}", serde_json::Value::String(u.to_owned()))
}

/// The error of the (first) failed step, after checking the run failed there.
fn failure(report: &JourneyReport) -> &StepError {
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    let i = report.failed_step.expect("a failed run names its step");
    assert_eq!(report.steps[i].outcome, StepOutcome::Failed, "{report:#?}");
    report.error().expect("a failed step has an error")
}

fn http_calls(report: &JourneyReport, step: usize) -> Vec<&HttpCall> {
    report.steps[step]
        .calls
        .iter()
        .map(|c| match &c.detail {
            CallDetail::Http(h) => h,
            other => panic!("not an HTTP call: {other:?}"),
        })
        .collect()
}

fn assert_passed(report: &JourneyReport) {
    assert_eq!(
        report.outcome,
        Outcome::Passed,
        "expected a pass, got {:?}",
        report.error()
    );
    assert!(report.failed_step.is_none());
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.outcome == StepOutcome::Passed && s.error.is_none()),
        "{report:#?}"
    );
}

// ---------------------------------------------------------------------------
// Connection-level faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let addr = refused_addr();
    let report = run_yaml(&one_step("refused", &url(&format!("http://{addr}/")))).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Connect, Some(Phase::Connect)),
        "{e:?}"
    );
    assert!(
        e.message.contains(&format!("cannot connect to {addr}")),
        "{}",
        e.message
    );
    assert!(
        e.message.to_lowercase().contains("refused"),
        "{}",
        e.message
    );
    let calls = http_calls(&report, 0);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, None);
    assert_eq!(
        report.steps[0].calls[0].error_type.as_deref(),
        Some("connect")
    );
}

#[tokio::test]
async fn unresolvable_name_is_a_dns_error_in_the_resolve_phase() {
    let report = run_yaml(&one_step("dns", &url("http://nonexistent.invalid/"))).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Dns, Some(Phase::Resolve)),
        "{e:?}"
    );
    assert!(
        e.message.contains("cannot resolve `nonexistent.invalid`"),
        "{}",
        e.message
    );
    let calls = http_calls(&report, 0);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].peer, None, "no address, so no connection");
    assert_eq!(report.steps[0].calls[0].error_type.as_deref(), Some("dns"));
}

#[tokio::test]
async fn silent_server_times_out_in_processing_within_the_deadline() {
    let server = start_silent().await;
    let yaml = format!(
        "name: silent\ntimeout: 10s\nsteps:\n  - name: wait for answer\n    timeout: 1s\n    http: {{ {} }}\n",
        url(&server.url("/"))
    );
    let report = run_yaml(&yaml).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Timeout, Some(Phase::Processing)),
        "{e:?}"
    );
    // The message names the limit that fired, the step and the phase.
    assert!(e.message.contains("step timeout 1s"), "{}", e.message);
    assert!(e.message.contains("`wait for answer`"), "{}", e.message);
    assert!(e.message.contains("processing phase"), "{}", e.message);
    assert!(!e.message.contains("journey timeout"), "{}", e.message);

    // Enforced around the probe: no later than the deadline plus a margin.
    let took = report.steps[0].duration;
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "step took {took:?}"
    );
    assert!(
        report.duration < Duration::from_secs(3),
        "{:?}",
        report.duration
    );

    // The open call is closed as a timeout with the phases it reached.
    let step = &report.steps[0];
    assert_eq!(step.calls.len(), 1);
    assert_eq!(step.calls[0].error_type.as_deref(), Some("timeout"));
    let CallDetail::Http(h) = &step.calls[0].detail else {
        panic!("not an HTTP call")
    };
    let phases = &step.calls[0].phases;
    assert_eq!(h.peer, Some(server.addr()));
    assert_eq!(h.status, None);
    assert!(phases.connect.is_some(), "{:?}", phases);
    assert!(
        phases
            .processing
            .is_some_and(|p| p >= Duration::from_millis(900)),
        "{:?}",
        phases
    );
    assert_eq!(phases.transfer, None);
    assert_eq!(server.connections(), 1, "one attempt, no retry");
}

#[tokio::test]
async fn stall_mid_body_times_out_in_transfer() {
    let server = start_stall_mid_body().await;
    let yaml = format!(
        "name: stall\ntimeout: 10s\nsteps:\n  - name: read body\n    timeout: 1s\n    http: {{ {} }}\n",
        url(&server.url("/"))
    );
    let report = run_yaml(&yaml).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Timeout, Some(Phase::Transfer)),
        "{e:?}"
    );
    assert!(e.message.contains("step timeout 1s"), "{}", e.message);
    assert!(e.message.contains("`read body`"), "{}", e.message);
    assert!(e.message.contains("transfer phase"), "{}", e.message);
    assert!(report.steps[0].duration < Duration::from_secs(3));
    let calls = http_calls(&report, 0);
    // The head arrived: status and the 10 bytes sent are on record.
    assert_eq!(calls[0].status, Some(200));
    assert_eq!(calls[0].response_bytes, 10);
    let phases = &report.steps[0].calls[0].phases;
    assert!(phases.transfer.is_some(), "{phases:?}");
}

#[tokio::test]
async fn journey_timeout_is_named_when_it_fires_first() {
    // Step one takes ~600 ms of a 1 s journey; step two's own 5 s limit is
    // far away, so the journey deadline must cut it after ~400 ms.
    let echo = start_echo().await;
    let silent = start_silent().await;
    let yaml = format!(
        "name: short-journey\ntimeout: 1s\nsteps:\n  - name: slow start\n    http: {{ {} }}\n  - name: hang\n    timeout: 5s\n    http: {{ {} }}\n  - name: never\n    http: {{ {} }}\n",
        url(&echo.url("/delay/600")),
        url(&silent.url("/")),
        url(&echo.url("/")),
    );
    let report = run_yaml(&yaml).await;
    let e = failure(&report);
    assert_eq!(report.failed_step, Some(1));
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Timeout, Some(Phase::Processing)),
        "{e:?}"
    );
    assert!(e.message.contains("journey timeout 1s"), "{}", e.message);
    assert!(e.message.contains("`hang`"), "{}", e.message);
    assert!(!e.message.contains("step timeout"), "{}", e.message);
    assert_eq!(report.steps[0].outcome, StepOutcome::Passed);
    assert_eq!(report.steps[2].outcome, StepOutcome::Skipped);
    assert!(
        report.duration >= Duration::from_millis(950) && report.duration < Duration::from_secs(3),
        "run took {:?}",
        report.duration
    );
    assert_eq!(echo.hits(), 1, "the step after the timeout never ran");
}

// ---------------------------------------------------------------------------
// Protocol-level faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redirect_loop_stops_at_max_redirects() {
    let server = start_redirect_loop().await;
    let report = run_yaml(&one_step(
        "loop",
        &format!("{}, max_redirects: 5", url(&server.url("/start"))),
    ))
    .await;
    let e = failure(&report);
    assert_eq!(e.kind, ErrorKind::TooManyRedirects, "{e:?}");
    assert!(
        e.message.contains("stopped after 5 redirects"),
        "{}",
        e.message
    );
    // The original request plus five redirects, each its own call.
    let calls = http_calls(&report, 0);
    assert_eq!(calls.len(), 6, "{calls:#?}");
    assert!(calls.iter().all(|c| c.status == Some(302)));
    assert_eq!(server.hits(), 6);
}

#[tokio::test]
async fn chunked_body_over_the_cap_is_body_too_large() {
    let server = start_oversized(1024 * 1024).await;
    let report = run_yaml(&one_step(
        "big-chunked",
        &format!("{}, max_body: 64KiB", url(&server.url("/big"))),
    ))
    .await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::BodyTooLarge, Some(Phase::Transfer)),
        "{e:?}"
    );
    assert!(e.message.contains("64 KiB cap"), "{}", e.message);
    // Counted while reading: it stopped near the cap, not after 1 MiB.
    let calls = http_calls(&report, 0);
    assert!(
        calls[0].response_bytes <= 64 * 1024,
        "{}",
        calls[0].response_bytes
    );
    assert_eq!(
        report.steps[0].calls[0].error_type.as_deref(),
        Some("body_too_large")
    );
}

#[tokio::test]
async fn content_length_over_the_cap_is_body_too_large() {
    let server = start_oversized_with_length(1024 * 1024).await;
    let report = run_yaml(&one_step(
        "big-length",
        &format!("{}, max_body: 64KiB", url(&server.url("/big"))),
    ))
    .await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::BodyTooLarge, Some(Phase::Transfer)),
        "{e:?}"
    );
    assert!(e.message.contains("64 KiB cap"), "{}", e.message);
    // Rejected from the header, before reading the body.
    assert!(e.message.contains("1048576 bytes seen"), "{}", e.message);
    assert_eq!(http_calls(&report, 0)[0].response_bytes, 0);
}

#[tokio::test]
async fn within_the_cap_passes() {
    // Control for the two above: the same servers pass under a larger cap.
    let chunked = start_oversized(32 * 1024).await;
    let sized = start_oversized_with_length(32 * 1024).await;
    for server in [&chunked, &sized] {
        let report = run_yaml(&one_step(
            "small",
            &format!("{}, max_body: 64KiB", url(&server.url("/big"))),
        ))
        .await;
        assert_passed(&report);
        assert_eq!(http_calls(&report, 0)[0].response_bytes, 32 * 1024);
    }
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// `https://127.0.0.1:PORT/`. The TLS tests use the IP literal so that they
/// test TLS and nothing else: `localhost` goes through the resolver, which
/// `localhost_is_tried_on_ipv4_first` covers. The test certificates carry
/// `127.0.0.1` as an IP SAN (except the self-signed and wrong-host ones,
/// which must fail anyway).
fn tls_url(server: &TlsServer) -> String {
    server.url_for("127.0.0.1", "/")
}

/// A one-step journey against `server` with a CA file `ca.pem` next to it.
async fn run_tls(name: &str, ca: Option<&TestCa>, http_extra: &str, u: &str) -> JourneyReport {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut http = url(u);
    if let Some(ca) = ca {
        ca.write_pem(&dir.path().join("ca.pem")).expect("CA file");
        http.push_str(", ca_file: ca.pem");
    }
    http.push_str(http_extra);
    run(&build_in(dir.path(), &one_step(name, &http))).await
}

#[tokio::test]
async fn self_signed_certificate_is_a_tls_error() {
    install_crypto();
    let server = TlsServer::start(TlsKind::self_signed()).await;
    let report = run_tls("self-signed", None, "", &tls_url(&server)).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Tls, Some(Phase::Tls)),
        "{e:?}"
    );
    assert!(
        e.message.contains("TLS handshake with 127.0.0.1"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("invalid peer certificate"),
        "{}",
        e.message
    );
    assert!(e.message.contains("UnknownIssuer"), "{}", e.message);
    assert_eq!(server.handshakes(), 0);
    assert_eq!(server.requests(), 0);
    assert_eq!(report.steps[0].calls[0].error_type.as_deref(), Some("tls"));
}

#[tokio::test]
async fn certificate_for_another_host_is_a_tls_error() {
    install_crypto();
    let ca = TestCa::new();
    let server = TlsServer::start(TlsKind::wrong_host(&ca)).await;
    // The CA is trusted, so the only thing wrong is the name.
    let report = run_tls("wrong-host", Some(&ca), "", &tls_url(&server)).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Tls, Some(Phase::Tls)),
        "{e:?}"
    );
    assert!(e.message.contains("not valid for name"), "{}", e.message);
    assert!(e.message.contains("wrong.example"), "{}", e.message);
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn expired_certificate_is_a_tls_error() {
    install_crypto();
    let ca = TestCa::new();
    let server = TlsServer::start(TlsKind::expired(&ca)).await;
    let report = run_tls("expired", Some(&ca), "", &tls_url(&server)).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Tls, Some(Phase::Tls)),
        "{e:?}"
    );
    assert!(e.message.contains("expired"), "{}", e.message);
}

#[tokio::test]
async fn trusted_ca_file_passes() {
    install_crypto();
    let ca = TestCa::new();
    let server = TlsServer::start(TlsKind::valid(&ca)).await;
    let report = run_tls("trusted", Some(&ca), "", &tls_url(&server)).await;
    assert_passed(&report);
    let calls = http_calls(&report, 0);
    assert!(calls[0].tls);
    assert_eq!(calls[0].status, Some(200));
    assert!(report.steps[0].calls[0].phases.tls.is_some());
    assert_eq!(server.requests(), 1);

    // Control for the control: without the CA file the same server fails.
    let report = run_tls("untrusted", None, "", &tls_url(&server)).await;
    assert_eq!(failure(&report).kind, ErrorKind::Tls);
}

#[tokio::test]
async fn insecure_accepts_a_self_signed_certificate() {
    install_crypto();
    let server = TlsServer::start(TlsKind::self_signed()).await;
    let report = run_tls("insecure", None, ", insecure: true", &tls_url(&server)).await;
    assert_passed(&report);
    assert_eq!(http_calls(&report, 0)[0].status, Some(200));
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn echo_server_passes() {
    let server = start_echo().await;
    let report = run_yaml(&format!(
        "name: echo\nsteps:\n  - name: get\n    http: {{ {} }}\n    expect: {{ status: 200, json: {{ \"$.path\": /hello, \"$.query\": \"a=1\" }} }}\n",
        url(&server.url("/hello?a=1"))
    ))
    .await;
    assert_passed(&report);
    let calls = http_calls(&report, 0);
    assert_eq!(calls[0].peer, Some(server.addr()));
    assert_eq!(calls[0].status, Some(200));
    let req = server.last_request().expect("request recorded");
    assert_eq!(req.path, "/hello");
    assert!(
        req.header("traceparent")
            .is_some_and(|t| t.contains(&report.trace_id.to_string()))
    );
}

#[tokio::test]
async fn localhost_is_tried_on_ipv4_first() {
    // The probe tries one resolved address, "IPv4 first" (probes/http.rs).
    // The test servers listen on 127.0.0.1 only, so trying ::1 first would
    // report a healthy target as refused.
    let server = start_echo().await;
    let report = run_yaml(&one_step(
        "localhost",
        &url(&format!("http://localhost:{}/", server.port())),
    ))
    .await;
    assert_passed(&report);
    let calls = http_calls(&report, 0);
    assert_eq!(calls[0].peer, Some(server.addr()));
    let phases = &report.steps[0].calls[0].phases;
    assert!(phases.resolve.is_some(), "{phases:?}");
    assert_eq!(server.hits(), 1);
}

// ---------------------------------------------------------------------------
// Cookies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cookie_jar_lives_for_one_run() {
    let server = start_echo().await;
    // Within a run the cookie set by step one is sent by step two.
    let report = run_yaml(&format!(
        "name: login\nsteps:\n  - name: set\n    http: {{ {} }}\n  - name: use\n    http: {{ {} }}\n",
        url(&server.url("/set-cookie")),
        url(&server.url("/needs-cookie")),
    ))
    .await;
    assert_passed(&report);

    // The same journey run twice: each run must start with an empty jar,
    // so `/needs-cookie` first is a 401 both times.
    let dir = tempfile::tempdir().expect("temp dir");
    let journey = build_in(
        dir.path(),
        &format!(
            "name: jar\nsteps:\n  - name: before\n    http: {{ {} }}\n    expect: {{ status: 401 }}\n  - name: set\n    http: {{ {} }}\n  - name: after\n    http: {{ {} }}\n    expect: {{ status: 200 }}\n",
            url(&server.url("/needs-cookie")),
            url(&server.url("/set-cookie")),
            url(&server.url("/needs-cookie")),
        ),
    );
    for round in 0..2 {
        let report = run(&journey).await;
        assert_eq!(
            report.outcome,
            Outcome::Passed,
            "run {round}: {:?}",
            report.error()
        );
    }
    let needs: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/needs-cookie")
        .collect();
    // login: 1, then per run: before + after.
    assert_eq!(needs.len(), 5);
    assert_eq!(
        needs[1].header("cookie"),
        None,
        "first run started with a cookie"
    );
    assert_eq!(
        needs[3].header("cookie"),
        None,
        "second run inherited the jar"
    );
    assert_eq!(needs[4].header("cookie"), Some("session=abc123"));

    // Without `/set-cookie` first, the default 2xx expectation fails on 401.
    let report = run_yaml(&one_step("no-cookie", &url(&server.url("/needs-cookie")))).await;
    let e = failure(&report);
    assert_eq!(e.kind, ErrorKind::Status(401), "{e:?}");
    assert_eq!(e.phase, None);
    assert!(
        e.message.starts_with("expected status 2xx, got 401"),
        "{}",
        e.message
    );
    assert_eq!(report.steps[0].calls[0].error_type.as_deref(), Some("401"));
}

// ---------------------------------------------------------------------------
// The agent binary under faults
// ---------------------------------------------------------------------------

/// One sample of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{k="v",...} value [# exemplar]` lines; skips comments.
fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            let mut end = body.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '}' => {
                        end = i + 1;
                        break;
                    }
                    ',' => {}
                    '=' => {
                        chars.next(); // opening quote
                        let mut value = String::new();
                        while let Some((_, c)) = chars.next() {
                            match c {
                                '\\' => {
                                    if let Some((_, e)) = chars.next() {
                                        value.push(if e == 'n' { '\n' } else { e });
                                    }
                                }
                                '"' => break,
                                c => value.push(c),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
            rest = &body[end..];
        }
        if let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.push(Sample {
                name,
                labels,
                value,
            });
        }
    }
    out
}

fn samples_for<'a>(samples: &'a [Sample], name: &str, journey: &str) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name && s.labels.get("journey").map(String::as_str) == Some(journey))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_survives_faults_and_reports_them() {
    install_crypto();
    let echo = start_echo().await;
    let silent = start_silent().await;
    let self_signed = TlsServer::start(TlsKind::self_signed()).await;
    let refused = refused_addr();

    // (journey, step `http` body, expected error_type; "" for a pass)
    let journeys: [(&str, String, &str); 5] = [
        (
            "fault-refused",
            url(&format!("http://{refused}/")),
            "connect",
        ),
        ("fault-dns", url("http://nonexistent.invalid/"), "dns"),
        ("fault-timeout", url(&silent.url("/")), "timeout"),
        ("fault-tls", url(&tls_url(&self_signed)), "tls"),
        ("healthy", url(&echo.url("/ok")), ""),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, http, _) in &journeys {
        std::fs::write(
            dir.path().join(format!("{name}.yaml")),
            format!(
                "name: {name}\nschedule: {{ every: 1s }}\ntimeout: 800ms\nsteps:\n  - name: probe\n    timeout: 500ms\n    http: {{ {http} }}\n"
            ),
        )
        .expect("writing journey");
    }

    let bin = vantage_bin();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p vantage` first",
        bin.display()
    );
    let mut agent = AgentProcess::start(&[dir.path()], &["--grace", "5s"], &[])
        .await
        .expect("agent starts and becomes ready");
    let started = Instant::now();

    // Every journey runs at least four times (~4 s at one run a second).
    let runs = |samples: &[Sample], journey: &str| -> f64 {
        samples_for(samples, "vantage_journey_duration_seconds_count", journey)
            .iter()
            .map(|s| s.value)
            .sum()
    };
    let text = agent
        .wait_for_metrics(
            |text| {
                let samples = parse_samples(text);
                journeys.iter().all(|(j, _, _)| runs(&samples, j) >= 4.0)
            },
            Duration::from_secs(15),
        )
        .await
        .expect("every journey ran four times");
    let samples = parse_samples(&text);

    assert!(agent.is_running(), "agent died; logs:\n{}", agent.logs());
    assert_eq!(agent.get("/healthz").await.expect("healthz").0, 200);
    assert_eq!(agent.get("/readyz").await.expect("readyz").0, 200);

    for (name, _, error_type) in &journeys {
        let success = samples_for(&samples, "probe_success", name);
        assert_eq!(success.len(), 1, "{name}: {success:?}");
        let want = if error_type.is_empty() { 1.0 } else { 0.0 };
        assert_eq!(success[0].value, want, "probe_success of {name}");

        // Every run of this journey ended the same way.
        let types: BTreeSet<&str> =
            samples_for(&samples, "vantage_journey_duration_seconds_count", name)
                .iter()
                .filter(|s| s.value > 0.0)
                .filter_map(|s| s.labels.get("error_type").map(String::as_str))
                .collect();
        assert_eq!(
            types,
            BTreeSet::from([*error_type]),
            "error_type labels of {name}"
        );
    }
    let all_types: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "vantage_journey_duration_seconds_bucket")
        .filter_map(|s| s.labels.get("error_type").map(String::as_str))
        .collect();
    for t in ["connect", "dns", "timeout", "tls"] {
        assert!(all_types.contains(t), "no error_type={t} in {all_types:?}");
    }
    // A red target is data for the operator's dashboards, not an agent error.
    let logs = agent.logs();
    assert!(!logs.contains(" ERROR "), "{logs}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    agent.signal("TERM").expect("kill -TERM");
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exit within 10s of SIGTERM");
    assert_eq!(status.code(), Some(0), "logs:\n{}", agent.logs());
    // The pipe may still hold the last lines when the exit is seen.
    agent
        .wait_for_log("vantage agent stopped", Duration::from_secs(5))
        .await
        .expect("a clean shutdown is logged");
}
