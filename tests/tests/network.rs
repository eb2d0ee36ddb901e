//! TCP, DNS and TLS steps on loopback, run in-process through
//! `journey::build` and `journey::runner`, plus the blackbox-compatible
//! `probe_ssl_*`, `probe_tls_*` and `probe_dns_*` series of the real binary.
//!
//! - TLS, with certificates the harness generates: a valid chain passes and
//!   reports the certificate's exact expiry; one expiring in 3 days passes
//!   the handshake, satisfies `cert_days_left: { lt: 7 }` and fails
//!   `{ gte: 7 }` as an assertion quoting the ~3 days; expired, wrong-host
//!   and self-signed certificates are `tls` errors that still report the
//!   expiry; `insecure: true` accepts a self-signed certificate and reports it.
//! - DNS, against a tiny hickory-proto server in the test (UDP and TCP; `A
//!   ok.test.` is `1.2.3.4`, everything else NXDOMAIN): an A query passes on
//!   its answer; NXDOMAIN fails the default NOERROR expectation naming both
//!   codes; `rcode: NXDOMAIN` passes; TCP transport really uses TCP; a server
//!   that never answers is a `timeout` in the processing phase.
//! - TCP: connect-only passes without waiting to read; a refused port is
//!   `connect`; send/expect against Redis; a banner read stops at
//!   `read_until` instead of waiting for the idle timeout; TLS on TCP
//!   verifies against `ca_file` (and fails without it).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use vantage::journey::Journey;
use vantage::journey::build::{BuildOptions, load_and_build};
use vantage::journey::runner::{self, RunEnv};
use vantage::probes::ProbeEnv;
use vantage::report::{
    CallDetail, DnsCall, ErrorKind, JourneyReport, Outcome, Phase, StepError, StepOutcome, TcpCall,
    TlsCall,
};
use vantage_tests::agent::AgentProcess;
use vantage_tests::{TestCa, TlsKind, TlsServer, refused_addr};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `s` as a YAML double-quoted scalar (JSON strings are valid YAML).
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Writes `yaml` as `journey.yaml` into `dir` (where a `ca.pem` may wait)
/// and builds it.
fn build_in(dir: &Path, yaml: &str) -> Journey {
    let path = dir.join("journey.yaml");
    std::fs::write(&path, yaml).unwrap();
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
    install_crypto();
    let env = RunEnv {
        location: "test".into(),
        probes: Arc::new(ProbeEnv::new().expect("system resolver configuration")),
    };
    runner::run(journey, &env, None, &CancellationToken::new()).await
}

/// Builds a one-step journey in a fresh directory, runs it once, and
/// returns the report and the wall time of the run.
async fn run_one(step: &str, ca: Option<&TestCa>) -> (JourneyReport, Duration) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(ca) = ca {
        ca.write_pem(&dir.path().join("ca.pem")).unwrap();
    }
    let yaml = format!("name: net\ntimeout: 10s\nsteps:\n{step}");
    let journey = build_in(dir.path(), &yaml);
    let started = Instant::now();
    let report = run(&journey).await;
    (report, started.elapsed())
}

fn assert_passed(report: &JourneyReport) {
    assert_eq!(
        report.outcome,
        Outcome::Passed,
        "expected a pass, got {:?}\n{report:#?}",
        report.error()
    );
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.outcome == StepOutcome::Passed && s.error.is_none()),
        "{report:#?}"
    );
}

fn failure(report: &JourneyReport) -> &StepError {
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    let i = report.failed_step.expect("a failed run names its step");
    assert_eq!(report.steps[i].outcome, StepOutcome::Failed, "{report:#?}");
    report.error().expect("a failed step has an error")
}

fn only_call(report: &JourneyReport) -> &CallDetail {
    let calls = &report.steps[0].calls;
    assert_eq!(calls.len(), 1, "{report:#?}");
    &calls[0].detail
}

fn tls_call(report: &JourneyReport) -> &TlsCall {
    match only_call(report) {
        CallDetail::Tls(t) => t,
        other => panic!("not a TLS call: {other:?}"),
    }
}

fn dns_call(report: &JourneyReport) -> &DnsCall {
    match only_call(report) {
        CallDetail::Dns(d) => d,
        other => panic!("not a DNS call: {other:?}"),
    }
}

fn tcp_call(report: &JourneyReport) -> &TcpCall {
    match only_call(report) {
        CallDetail::Tcp(t) => t,
        other => panic!("not a TCP call: {other:?}"),
    }
}

/// The value of the sample `series` (name and every label, exactly as
/// exposed). Label values may hold spaces (`version="TLS 1.3"`), so the
/// value is whatever follows the series, not the second word of the line.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn now_unix() -> i64 {
    unix(SystemTime::now())
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/// A certificate for `localhost` and `127.0.0.1` signed by `ca`, valid from
/// yesterday until `not_after`.
fn signed_until(ca: &TestCa, not_after: SystemTime) -> TlsKind<'_> {
    TlsKind::SignedBy {
        ca,
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        not_before: SystemTime::now() - DAY,
        not_after,
    }
}

/// A TLS step against `server` as `localhost`; `tls` adds flow-mapping
/// fields (`, ca_file: ca.pem`), `more` adds step keys.
fn tls_step(server: &TlsServer, tls: &str, more: &str) -> String {
    format!(
        "  - name: handshake\n    timeout: 5s\n    tls: {{ host: localhost, port: {}{tls} }}\n{more}",
        server.port()
    )
}

#[tokio::test]
async fn tls_valid_certificate_passes_with_its_expiry() {
    install_crypto();
    let ca = TestCa::new();
    let not_after = SystemTime::now() + 90 * DAY;
    let server = TlsServer::start(signed_until(&ca, not_after)).await;
    let (report, _) = run_one(
        &tls_step(
            &server,
            ", ca_file: ca.pem",
            "    expect: { cert_days_left: { gt: 89.9, lte: 90 }, tls_version: \"1.3\" }\n",
        ),
        Some(&ca),
    )
    .await;
    assert_passed(&report);
    let t = tls_call(&report);
    let expiry = t.earliest_expiry.expect("the expiry is reported");
    assert!(
        (expiry - unix(not_after)).abs() <= 1,
        "{expiry} vs {}",
        unix(not_after)
    );
    assert_eq!(t.verified, Some(true));
    assert_eq!(t.protocol_version.as_deref(), Some("1.3"));
    assert_eq!(t.server_port, server.port());
    server
        .wait_for_handshakes(1, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn tls_expiring_in_3_days_passes_the_handshake_but_not_a_7_day_expectation() {
    install_crypto();
    let ca = TestCa::new();
    let server = TlsServer::start(TlsKind::expiring_in(&ca, 3 * DAY)).await;

    let (report, _) = run_one(
        &tls_step(
            &server,
            ", ca_file: ca.pem",
            "    expect: { cert_days_left: { lt: 7, gt: 2.9 } }\n",
        ),
        Some(&ca),
    )
    .await;
    assert_passed(&report);
    assert_eq!(tls_call(&report).verified, Some(true));

    let (report, _) = run_one(
        &tls_step(
            &server,
            ", ca_file: ca.pem",
            "    expect: { cert_days_left: { gte: 7 } }\n",
        ),
        Some(&ca),
    )
    .await;
    let e = failure(&report);
    assert_eq!(e.kind, ErrorKind::Assertion, "{e:?}");
    assert!(
        e.message.starts_with("cert_days_left: expected >= 7, got "),
        "{}",
        e.message
    );
    let got: f64 = e
        .message
        .rsplit("got ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no number in {:?}", e.message));
    assert!((2.9..=3.0).contains(&got), "{got} days left, expected ~3");
}

#[tokio::test]
async fn tls_expired_certificate_is_a_tls_error_that_still_reports_the_expiry() {
    install_crypto();
    let ca = TestCa::new();
    let server = TlsServer::start(TlsKind::expired(&ca)).await;
    let (report, _) = run_one(&tls_step(&server, ", ca_file: ca.pem", ""), Some(&ca)).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Tls, Some(Phase::Tls)),
        "{e:?}"
    );
    assert!(
        e.message.to_lowercase().contains("expired"),
        "{}",
        e.message
    );
    let t = tls_call(&report);
    let expiry = t
        .earliest_expiry
        .expect("an expired chain still has its expiry");
    let yesterday = now_unix() - 86_400;
    assert!(
        (expiry - yesterday).abs() <= 5,
        "expired yesterday ({yesterday}), reported {expiry}"
    );
    assert_eq!(t.verified, Some(false));
    assert_eq!(t.protocol_version.as_deref(), Some("1.3"));
}

#[tokio::test]
async fn tls_wrong_host_is_a_tls_error() {
    install_crypto();
    let ca = TestCa::new();
    let server = TlsServer::start(TlsKind::wrong_host(&ca)).await;
    let (report, _) = run_one(&tls_step(&server, ", ca_file: ca.pem", ""), Some(&ca)).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Tls, Some(Phase::Tls)),
        "{e:?}"
    );
    assert!(
        e.message.to_lowercase().contains("not valid for"),
        "{}",
        e.message
    );
    assert!(e.message.contains("`localhost`"), "{}", e.message);
    assert_eq!(tls_call(&report).verified, Some(false));

    // Control: the same certificate checked for the name it was issued to.
    let (report, _) = run_one(
        &tls_step(&server, ", ca_file: ca.pem, server_name: wrong.example", ""),
        Some(&ca),
    )
    .await;
    assert_passed(&report);
}

#[tokio::test]
async fn tls_self_signed_is_a_tls_error_unless_insecure() {
    install_crypto();
    let other = TestCa::new();
    let server = TlsServer::start(TlsKind::self_signed()).await;
    for (ca, field) in [(None, ""), (Some(&other), ", ca_file: ca.pem")] {
        let (report, _) = run_one(&tls_step(&server, field, ""), ca).await;
        let e = failure(&report);
        assert_eq!(
            (e.kind, e.phase),
            (ErrorKind::Tls, Some(Phase::Tls)),
            "{e:?}"
        );
        assert!(
            e.message.contains("UnknownIssuer") || e.message.contains("unknown issuer"),
            "{}",
            e.message
        );
        assert!(tls_call(&report).earliest_expiry.is_some());
    }

    let (report, _) = run_one(
        &tls_step(
            &server,
            ", insecure: true",
            "    expect: { cert_days_left: { gt: 364, lte: 365 } }\n",
        ),
        None,
    )
    .await;
    assert_passed(&report);
    let t = tls_call(&report);
    let in_a_year = now_unix() + 365 * 86_400;
    let expiry = t
        .earliest_expiry
        .expect("insecure still reports the expiry");
    assert!((expiry - in_a_year).abs() <= 5, "{expiry} vs {in_a_year}");
    assert_eq!(t.verified, None, "nothing was verified");
}

// ---------------------------------------------------------------------------
// DNS
// ---------------------------------------------------------------------------

/// A tiny authoritative DNS server on loopback, on one UDP and one TCP port
/// (different ports, so a TCP query cannot be answered over UDP by accident).
/// `A ok.test.` is `1.2.3.4`; every other name is NXDOMAIN.
struct DnsServer {
    udp: SocketAddr,
    tcp: SocketAddr,
    udp_queries: Arc<AtomicU64>,
    tcp_queries: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The answer to one query message, or `None` for garbage.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    let q = query.queries.first()?.clone();
    let known = q.name.to_ascii().eq_ignore_ascii_case("ok.test.");
    if known && q.query_type == RecordType::A {
        resp.add_answer(Record::from_rdata(
            q.name.clone(),
            60,
            RData::A(A(Ipv4Addr::new(1, 2, 3, 4))),
        ));
    } else if !known {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    resp.add_query(q);
    resp.to_vec().ok()
}

impl DnsServer {
    async fn start() -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let udp_queries = Arc::new(AtomicU64::new(0));
        let tcp_queries = Arc::new(AtomicU64::new(0));
        let counted = udp_queries.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                counted.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = answer(&buf[..n]) {
                    let _ = udp.send_to(&reply, from).await;
                }
            }
        });
        let counted = tcp_queries.clone();
        let tcp_task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = tcp.accept().await {
                let counted = counted.clone();
                conns.spawn(async move {
                    while let Ok(len) = s.read_u16().await {
                        let mut buf = vec![0u8; usize::from(len)];
                        if s.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        counted.fetch_add(1, Ordering::SeqCst);
                        let Some(reply) = answer(&buf) else { return };
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        DnsServer {
            udp: udp_addr,
            tcp: tcp_addr,
            udp_queries,
            tcp_queries,
            tasks: vec![udp_task, tcp_task],
        }
    }
}

/// A DNS step; `dns` is the flow-mapping body, `more` adds step keys.
fn dns_step(dns: &str, more: &str) -> String {
    format!("  - name: lookup\n    timeout: 5s\n    dns: {{ {dns} }}\n{more}")
}

#[tokio::test]
async fn dns_a_record_passes_on_its_answer() {
    let dns = DnsServer::start().await;
    let (report, _) = run_one(
        &dns_step(
            &format!("name: ok.test, server: \"{}\"", dns.udp),
            "    expect: { answers: { contains: \"1.2.3.4\" } }\n",
        ),
        None,
    )
    .await;
    assert_passed(&report);
    let d = dns_call(&report);
    assert_eq!(d.rcode.as_deref(), Some("NOERROR"));
    assert_eq!((d.answers, d.transport), (1, "udp"));
    assert_eq!(d.record_type, "A");
    assert_eq!(dns.udp_queries.load(Ordering::SeqCst), 1);

    // Control: an answer that is not there.
    let (report, _) = run_one(
        &dns_step(
            &format!("name: ok.test, server: \"{}\"", dns.udp),
            "    expect: { rcode: NOERROR, answers: { contains: \"5.6.7.8\" } }\n",
        ),
        None,
    )
    .await;
    let e = failure(&report);
    assert_eq!(e.kind, ErrorKind::Assertion, "{e:?}");
    assert!(
        e.message.starts_with("answers:") && e.message.contains("1.2.3.4"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn dns_nxdomain_fails_the_default_noerror_expectation() {
    let dns = DnsServer::start().await;
    let (report, _) = run_one(
        &dns_step(&format!("name: missing.test, server: \"{}\"", dns.udp), ""),
        None,
    )
    .await;
    let e = failure(&report);
    assert_eq!(e.kind, ErrorKind::Assertion, "{e:?}");
    assert!(
        e.message.contains("rcode")
            && e.message.contains("NOERROR")
            && e.message.contains("NXDOMAIN"),
        "{}",
        e.message
    );
    assert_eq!(dns_call(&report).rcode.as_deref(), Some("NXDOMAIN"));
}

#[tokio::test]
async fn dns_expected_nxdomain_passes() {
    let dns = DnsServer::start().await;
    let (report, _) = run_one(
        &dns_step(
            &format!("name: missing.test, server: \"{}\"", dns.udp),
            "    expect: { rcode: NXDOMAIN, answers: { length: 0 } }\n",
        ),
        None,
    )
    .await;
    assert_passed(&report);
    assert_eq!(dns_call(&report).answers, 0);
}

#[tokio::test]
async fn dns_over_tcp_uses_tcp() {
    let dns = DnsServer::start().await;
    let (report, _) = run_one(
        &dns_step(
            &format!("name: ok.test, server: \"{}\", transport: tcp", dns.tcp),
            "    expect: { answers: { contains: \"1.2.3.4\" } }\n",
        ),
        None,
    )
    .await;
    assert_passed(&report);
    assert_eq!(dns_call(&report).transport, "tcp");
    assert_eq!(dns.tcp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(dns.udp_queries.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn dns_server_that_never_answers_is_a_timeout() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let step = format!(
        "  - name: lookup\n    timeout: 1s\n    dns: {{ name: ok.test, server: \"{addr}\" }}\n"
    );
    let (report, took) = run_one(&step, None).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Timeout, Some(Phase::Processing)),
        "{e:?}"
    );
    assert!(e.message.contains("step timeout 1s"), "{}", e.message);
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    // The query did reach the silent server.
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), silent.recv_from(&mut buf))
        .await
        .expect("the probe sent its query")
        .unwrap();
    assert!(Message::from_vec(&buf[..n]).is_ok());
}

// ---------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tcp_connect_only_passes_without_reading() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let step = format!("  - name: connect\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n");
    // The listener never writes: a probe that waited to read would sit out
    // its 1s idle timeout.
    let ((report, took), accepted) = tokio::join!(run_one(&step, None), listener.accept());
    assert_passed(&report);
    accepted.expect("the probe connected");
    assert!(took < Duration::from_millis(800), "took {took:?}");
    let t = tcp_call(&report);
    assert_eq!(t.peer, Some(SocketAddr::from(([127, 0, 0, 1], port))));
    assert_eq!(t.bytes_received, 0);
}

#[tokio::test]
async fn tcp_refused_is_connect() {
    let addr = refused_addr();
    let step = format!(
        "  - name: connect\n    tcp: {{ host: 127.0.0.1, port: {} }}\n",
        addr.port()
    );
    let (report, _) = run_one(&step, None).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Connect, Some(Phase::Connect)),
        "{e:?}"
    );
    assert!(e.message.contains(&addr.to_string()), "{}", e.message);
    assert!(
        e.message.to_lowercase().contains("refused"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn tcp_send_and_expect_against_redis() {
    let step = "  - name: ping\n    tcp: { host: 127.0.0.1, port: 6379, send: \"PING\\r\\n\", read_until: \"\\r\\n\" }\n    expect: { body: { contains: \"+PONG\" } }\n";
    let (report, took) = run_one(step, None).await;
    assert_passed(&report);
    assert_eq!(tcp_call(&report).bytes_received, 7, "exactly `+PONG\\r\\n`");
    assert!(took < Duration::from_millis(800), "took {took:?}");
}

#[tokio::test]
async fn tcp_banner_read_stops_at_read_until() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Writes the banner, then keeps the connection open until the client
    // closes it, as an SMTP server would.
    let server = tokio::spawn(async move {
        let mut served = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            served += 1;
            s.write_all(b"220 ready\r\n").await.unwrap();
            let mut sink = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut sink)).await;
            if served == 2 {
                return;
            }
        }
    });
    let step = |expect: &str| {
        format!(
            "  - name: banner\n    tcp: {{ host: 127.0.0.1, port: {port}, read_until: \"\\r\\n\", idle_timeout: 5s }}\n    expect: {{ body: {{ {expect} }} }}\n"
        )
    };
    let (report, took) = run_one(&step("contains: \"220 ready\""), None).await;
    assert_passed(&report);
    assert!(
        took < Duration::from_secs(2),
        "read_until should end the read, not the 5s idle timeout; took {took:?}"
    );
    assert_eq!(tcp_call(&report).bytes_received, 11);

    // Control: a banner that says something else fails, quoting it.
    let (report, _) = run_one(&step("contains: \"421\""), None).await;
    let e = failure(&report);
    assert_eq!(e.kind, ErrorKind::Assertion, "{e:?}");
    assert!(e.message.contains("220 ready"), "{}", e.message);
    server.abort();
}

#[tokio::test]
async fn tcp_with_tls_verifies_against_the_ca_file() {
    install_crypto();
    let ca = TestCa::new();
    let server = TlsServer::start(TlsKind::valid(&ca)).await;
    let step = |tls: &str| {
        format!(
            "  - name: https by hand\n    tcp: {{ host: localhost, port: {}, tls: true{tls}, send: {}, read_until: \"\\r\\n\\r\\n\" }}\n    expect: {{ body: {{ contains: \"HTTP/1.1 200 OK\" }} }}\n",
            server.port(),
            q("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        )
    };
    let (report, _) = run_one(&step(", ca_file: ca.pem"), Some(&ca)).await;
    assert_passed(&report);
    assert!(tcp_call(&report).tls);
    assert_eq!(server.requests(), 1);

    // Without the CA the chain is untrusted.
    let (report, _) = run_one(&step(""), None).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Tls, Some(Phase::Tls)),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------
// The blackbox series through the binary
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackbox_tls_and_dns_series_on_metrics() {
    install_crypto();
    let ca = TestCa::new();
    let not_after = SystemTime::now() + 30 * DAY;
    let server = TlsServer::start(signed_until(&ca, not_after)).await;
    let dns = DnsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    ca.write_pem(&dir.path().join("ca.pem")).unwrap();
    std::fs::write(
        dir.path().join("tls.yaml"),
        format!(
            "name: tls-expiry\nschedule: {{ every: 500ms }}\nsteps:\n  - name: handshake\n    tls: {{ host: localhost, port: {}, ca_file: ca.pem }}\n",
            server.port()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("dns.yaml"),
        format!(
            "name: dns-ok\nschedule: {{ every: 500ms }}\nsteps:\n  - name: lookup\n    dns: {{ name: ok.test, server: \"{}\" }}\n    expect: {{ answers: {{ contains: \"1.2.3.4\" }} }}\n",
            dns.udp
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&[dir.path()], &[], &[]).await.unwrap();
    let tls = "{journey=\"tls-expiry\",location=\"test\"}";
    let dnsl = "{journey=\"dns-ok\",location=\"test\"}";
    let m = agent
        .wait_for_metrics(
            |m| {
                m.contains(&format!("probe_ssl_earliest_cert_expiry{tls}"))
                    && m.contains(&format!("probe_dns_answer_rrs{dnsl}"))
            },
            Duration::from_secs(15),
        )
        .await
        .unwrap();

    let expiry = sample(&m, &format!("probe_ssl_earliest_cert_expiry{tls}")).unwrap();
    assert!(
        (expiry - unix(not_after) as f64).abs() <= 5.0,
        "probe_ssl_earliest_cert_expiry {expiry} vs not_after {}",
        unix(not_after)
    );
    assert_eq!(
        sample(
            &m,
            "probe_tls_version_info{journey=\"tls-expiry\",location=\"test\",version=\"TLS 1.3\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, &format!("probe_success{tls}")), Some(1.0), "{m}");

    assert_eq!(
        sample(&m, &format!("probe_dns_answer_rrs{dnsl}")),
        Some(1.0),
        "{m}"
    );
    let lookup = sample(&m, &format!("probe_dns_lookup_time_seconds{dnsl}")).unwrap();
    assert!(lookup > 0.0 && lookup < 1.0, "{lookup}");
    assert_eq!(
        sample(&m, &format!("probe_dns_authority_rrs{dnsl}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, &format!("probe_success{dnsl}")),
        Some(1.0),
        "the DNS journey should pass:\n{m}\nlogs:\n{}",
        agent.logs()
    );
}

#[tokio::test]
async fn http_body_ended_by_the_close_is_read_in_full_across_pauses() {
    // No Content-Length: the body ends where the server closes. It comes in
    // two writes 50 ms apart, so the probe's first read is short and the
    // rest, then the close, must still be noticed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the probe closed before its request was whole");
            request.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst part, ")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.write_all(b"second part").await.unwrap();
    });
    let step = format!(
        "  - name: get\n    http: {{ url: \"http://127.0.0.1:{port}/\" }}\n    \
         expect: {{ status: 200, body: {{ contains: \"first part, second part\" }} }}\n"
    );
    let (report, took) = run_one(&step, None).await;
    server.await.expect("server task");
    assert_passed(&report);
    assert!(took < Duration::from_secs(2), "took {took:?}");
}
