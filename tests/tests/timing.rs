//! Timing truth for HTTP steps: the reported phases and durations are the
//! target's time, not the agent's.
//!
//! A target on its own runtime (and thread) answers after a known delay.
//! Just before it writes the response, it has the probe's runtime blocked
//! for [`STALL`]: the response then sits in the socket while the agent
//! cannot run, as it would behind a busy or descheduled worker. A clock read
//! when the probe is polled again would overstate the delay by the whole
//! stall; the reported processing phase must instead match what the target
//! measured itself, and the step and the run must not contain the stall
//! either.
//!
//! The target knows when it had the request and when it answered, but not
//! when the request arrived: its own TLS and HTTP/2 setup can still be
//! running when the probe's processing phase starts. So the processing
//! phase must lie between the time it held the request and the time it held
//! the connection, plus [`TOLERANCE`] for the loopback trips. Plain HTTP/1.1, HTTPS with HTTP/1.1 and HTTPS
//! with h2 go through the same check, since the timestamps come from the
//! socket under TLS and HTTP framing.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::PrivateKeyDer;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use vantage::journey::Journey;
use vantage::journey::build::{BuildOptions, load_and_build};
use vantage::journey::runner::{self, RunEnv};
use vantage::probes::ProbeEnv;
use vantage::report::{Call, CallDetail, JourneyReport, Outcome, PhaseTimings};
use vantage_tests::TestCa;
use vantage_tests::tls::ring_provider;

/// How long the target takes to answer.
const DELAY: Duration = Duration::from_millis(30);
/// How long the probe's runtime is kept from running while the response
/// arrives.
const STALL: Duration = Duration::from_millis(100);
/// How far the reported processing phase may exceed what the target
/// measured: the loopback trips and the target waking up for the request.
const TOLERANCE: Duration = Duration::from_millis(3);

/// What the target measured of the one request it answered.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// From having the request to handing over the response.
    request: Duration,
    /// From accepting the connection to handing over the response.
    connection: Duration,
}

/// Has the probe's runtime blocked on request: the target sends on `wake`
/// and waits for `blocked` before writing its response.
struct Stall {
    wake: mpsc::UnboundedSender<()>,
    blocked: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Stall {
    /// Returns once the probe's runtime is blocked (or after a few seconds,
    /// in which case the test's own check that the run took the stall
    /// fails).
    fn now(&self) {
        if self.wake.send(()).is_ok() {
            let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            let _ = blocked.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// Runs on the probe's runtime: when the target asks, blocks the thread.
async fn stall_on_request(
    mut wake: mpsc::UnboundedReceiver<()>,
    blocked: std::sync::mpsc::Sender<()>,
) {
    if wake.recv().await.is_some() {
        let _ = blocked.send(());
        std::thread::sleep(STALL);
    }
}

/// An HTTP(S) target on a runtime of its own that answers every request
/// after [`DELAY`], stalling the probe's runtime just before it answers,
/// and records how long it held each request and its connection.
struct SlowTarget {
    addr: SocketAddr,
    held: Arc<Mutex<Vec<Held>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SlowTarget {
    /// `alpn` empty: plain HTTP. Otherwise TLS with a certificate for
    /// `127.0.0.1` signed by `ca`, offering these protocols.
    fn start(ca: &TestCa, alpn: &[&[u8]]) -> (Self, impl std::future::Future<Output = ()>) {
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let (blocked_tx, blocked_rx) = std::sync::mpsc::channel();
        let stall = Arc::new(Stall {
            wake: wake_tx,
            blocked: Mutex::new(blocked_rx),
        });
        let acceptor = (!alpn.is_empty()).then(|| {
            let now = SystemTime::now();
            let day = Duration::from_secs(86_400);
            let (cert, key) = ca
                .issue(&["127.0.0.1".into()], now - day, now + day)
                .expect("issuing the target's certificate");
            let mut config = rustls::ServerConfig::builder_with_provider(ring_provider())
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert], PrivateKeyDer::Pkcs8(key))
                .expect("server certificate");
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("target runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the target");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("target address");
        let held = Arc::new(Mutex::new(Vec::new()));
        let record = held.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("target listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let accepted = Instant::now();
                let _ = tcp.set_nodelay(true);
                let (stall, record, acceptor) = (stall.clone(), record.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let (stall, record) = (stall.clone(), record.clone());
                        async move {
                            let had_request = Instant::now();
                            tokio::time::sleep(DELAY).await;
                            stall.now();
                            let answered = Instant::now();
                            record.lock().unwrap_or_else(|e| e.into_inner()).push(Held {
                                request: answered - had_request,
                                connection: answered - accepted,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"slow but sure",
                            ))))
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                    }
                });
            }
        });
        let target = SlowTarget {
            addr,
            held,
            runtime: Some(runtime),
        };
        (target, stall_on_request(wake_rx, blocked_tx))
    }

    /// How long the target held the one request it was sent.
    fn held(&self) -> Held {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(held.len(), 1, "the target saw {} requests", held.len());
        held[0]
    }
}

impl Drop for SlowTarget {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

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
    journeys.remove(0)
}

/// Runs a one-step journey against `url` (trusting `ca`) on the current
/// runtime while `stall` waits for the target's signal, also on it.
async fn run_stalled(
    url: &str,
    ca: &TestCa,
    stall: impl std::future::Future<Output = ()>,
) -> (JourneyReport, Duration) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    ca.write_pem(&dir.path().join("ca.pem")).expect("CA file");
    let yaml = format!(
        "name: timing\ntimeout: 10s\nsteps:\n  - name: slow\n    timeout: 5s\n    http: {{ url: \"{url}\", ca_file: ca.pem }}\n"
    );
    let journey = build_in(dir.path(), &yaml);
    let env = RunEnv {
        location: "test".into(),
        probes: Arc::new(ProbeEnv::new().expect("system resolver configuration")),
    };
    let cancel = CancellationToken::new();
    let began = Instant::now();
    let (report, ()) = tokio::join!(runner::run(&journey, &env, None, &cancel), stall);
    (report, began.elapsed())
}

fn phase_sum(p: &PhaseTimings) -> Duration {
    [p.resolve, p.connect, p.tls, p.processing, p.transfer]
        .into_iter()
        .flatten()
        .sum()
}

/// The checks every variant shares; returns the one call.
fn check(report: &JourneyReport, wall: Duration, held: Held) -> &Call {
    assert_eq!(report.outcome, Outcome::Passed, "{report:#?}");
    // The stall did happen: a clock read on wake-up would include it.
    assert!(
        wall >= held.request + STALL,
        "the run took {wall:?}, the target held the request {held:?}: the probe was not stalled"
    );
    let step = &report.steps[0];
    assert_eq!(step.calls.len(), 1, "{report:#?}");
    let call = &step.calls[0];
    let processing = call.phases.processing.expect("a processing phase");
    let transfer = call.phases.transfer.expect("a transfer phase");
    assert!(
        processing + Duration::from_micros(200) >= held.request
            && processing <= held.connection + TOLERANCE,
        "processing {processing:?}, but the target held {held:?} (wall clock {wall:?})"
    );
    assert!(
        transfer < TOLERANCE,
        "transfer {transfer:?} of a 13-byte body"
    );
    // Durations nest, and none of them contains the stall.
    let phases = phase_sum(&call.phases);
    assert!(call.duration >= phases, "{:?} < {phases:?}", call.duration);
    assert!(
        step.duration >= call.duration,
        "{:?} < {:?}",
        step.duration,
        call.duration
    );
    assert!(
        report.duration >= step.duration,
        "{:?} < {:?}",
        report.duration,
        step.duration
    );
    // And so do the spans made from them, on the wall clock.
    let span = |start: SystemTime, d: Duration| (start, start + d);
    let (run_start, run_end) = span(report.started_at, report.duration);
    let (step_start, step_end) = span(step.started_at, step.duration);
    let (call_start, call_end) = span(call.started_at, call.duration);
    assert!(
        run_start <= step_start && step_end <= run_end,
        "{report:#?}"
    );
    assert!(
        step_start <= call_start && call_end <= step_end,
        "{report:#?}"
    );
    // Outside the phases is the agent's own work before the request, which
    // a busy machine can stretch by milliseconds, but never by the stall.
    assert!(
        report.duration < phases + STALL / 4,
        "the run is reported as {:?} for {phases:?} of phases",
        report.duration
    );
    call
}

#[tokio::test]
async fn http_reports_the_targets_delay_not_the_agents_wake_up() {
    let ca = TestCa::new();
    let (target, stall) = SlowTarget::start(&ca, &[]);
    let url = format!("http://{}/slow", target.addr);
    let (report, wall) = run_stalled(&url, &ca, stall).await;
    let call = check(&report, wall, target.held());
    assert_eq!(call.phases.tls, None);
}

#[tokio::test]
async fn https_reports_the_targets_delay_not_the_agents_wake_up() {
    let ca = TestCa::new();
    let (target, stall) = SlowTarget::start(&ca, &[b"http/1.1"]);
    let url = format!("https://{}/slow", target.addr);
    let (report, wall) = run_stalled(&url, &ca, stall).await;
    let call = check(&report, wall, target.held());
    assert!(call.phases.connect.is_some_and(|d| d > Duration::ZERO));
    assert!(call.phases.tls.is_some_and(|d| d > Duration::ZERO));
    let CallDetail::Http(h) = &call.detail else {
        panic!("not an HTTP call: {call:?}");
    };
    assert_eq!(
        (h.tls, h.status, h.protocol_version),
        (true, Some(200), Some("1.1"))
    );
}

#[tokio::test]
async fn h2_reports_the_targets_delay_not_the_agents_wake_up() {
    let ca = TestCa::new();
    let (target, stall) = SlowTarget::start(&ca, &[b"h2"]);
    let url = format!("https://{}/slow", target.addr);
    let (report, wall) = run_stalled(&url, &ca, stall).await;
    let call = check(&report, wall, target.held());
    assert!(call.phases.tls.is_some_and(|d| d > Duration::ZERO));
    let CallDetail::Http(h) = &call.detail else {
        panic!("not an HTTP call: {call:?}");
    };
    assert_eq!((h.status, h.protocol_version), (Some(200), Some("2")));
}
