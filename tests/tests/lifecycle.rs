//! The long-running agent's lifecycle, through the real binary: readiness,
//! reload on file change and SIGHUP (an invalid config is rejected and the
//! old journeys keep running), graceful SIGTERM that lets an in-flight run
//! finish and flushes its spans, cancellation past the grace period, and a
//! collector outage that neither crashes the agent nor grows its memory,
//! with export resuming when the collector returns, and browser runs stuck
//! on a hung page that leave no Chromium and no profile behind when the
//! agent stops.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use tokio::sync::Semaphore;
use vantage_tests::agent::{AgentProcess, sample};
use vantage_tests::{Receiver, start_echo};

fn journey(name: &str, url: &str, every: &str) -> String {
    format!(
        "name: {name}\nschedule: {{ every: {every} }}\ntimeout: 10s\nsteps:\n  - name: get\n    http: {{ url: \"{url}\" }}\n"
    )
}

/// Waits until journey `alpha` has passed.
async fn alpha_passes(agent: &AgentProcess) {
    agent
        .wait_for_metrics(
            |m| sample(m, "probe_success{journey=\"alpha\"") == Some(1.0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// A directory holding journey `alpha`, a GET of `url` every 200 ms.
fn alpha_dir(url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("j.yaml"), journey("alpha", url, "200ms")).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rejects_invalid_config_and_applies_valid_config() {
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("j.yaml");
    std::fs::write(&file, journey("alpha", &echo.url("/a"), "200ms")).unwrap();
    let agent = AgentProcess::start(&[dir.path()], &["--watch-interval", "100ms"], &[])
        .await
        .unwrap();
    alpha_passes(&agent).await;
    assert_eq!(agent.get("/healthz").await.unwrap().0, 200);

    // A broken edit: rejected, logged with its location, alpha keeps running.
    std::fs::write(
        &file,
        "name: alpha\nsteps:\n  - name: get\n    http: { url: \"nope\" }\n",
    )
    .unwrap();
    agent
        .wait_for_log("reload rejected", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(agent.logs().contains("j.yaml:4:"), "{}", agent.logs());
    let hits = echo.hits();
    echo.wait_for_hits(hits + 2, Duration::from_secs(10))
        .await
        .expect("the old journey still runs after a rejected reload");
    assert_eq!(agent.get("/readyz").await.unwrap().0, 200);

    // A valid edit: beta replaces alpha, and alpha's probe_* series go away.
    std::fs::write(&file, journey("beta", &echo.url("/b"), "200ms")).unwrap();
    let m = agent
        .wait_for_metrics(
            |m| {
                sample(m, "probe_success{journey=\"beta\"") == Some(1.0)
                    && !m.contains("probe_success{journey=\"alpha\"")
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(m.contains("vantage_journeys 1"), "{m}");

    // SIGHUP reloads too, even without a change.
    agent.signal("HUP").unwrap();
    agent
        .wait_for_log("reason=\"SIGHUP\"", Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_runs_finish_and_flushes_spans() {
    let echo = start_echo().await;
    let rx = Receiver::grpc().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slow2.yaml"),
        journey("slow-fast-schedule", &echo.url("/delay/1500"), "100ms"),
    )
    .unwrap();
    let mut agent = AgentProcess::start(
        &[dir.path()],
        &["--grace", "10s"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint().as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .await
    .unwrap();
    // Wait until a slow request is in flight, then ask the agent to stop.
    echo.wait_for_hits(1, Duration::from_secs(10))
        .await
        .unwrap();
    agent.signal("TERM").unwrap();
    // Readiness drops as soon as the signal is handled, while the in-flight
    // run still finishes.
    agent
        .wait_for_status("/readyz", 503, Duration::from_secs(5))
        .await
        .unwrap();
    let status = agent.wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "exit {status:?}; logs:\n{}", agent.logs());
    // The run that was in flight finished (passed, not cancelled) and its
    // spans were flushed before exit.
    let spans = rx.spans();
    let root = spans
        .iter()
        .find(|s| s.name == "journey slow-fast-schedule")
        .unwrap_or_else(|| panic!("in-flight run not flushed; logs:\n{}", agent.logs()));
    assert!(
        root.is_ok(),
        "status {} {}",
        root.status_code,
        root.status_message
    );
    assert!(root.duration() >= Duration::from_millis(1400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_past_the_grace_period_are_cancelled_and_still_reported() {
    let echo = start_echo().await;
    let rx = Receiver::http().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stuck.yaml"),
        journey("stuck", &echo.url("/delay/20000"), "100ms")
            .replace("timeout: 10s", "timeout: 30s"),
    )
    .unwrap();
    let mut agent = AgentProcess::start(
        &[dir.path()],
        &["--grace", "300ms"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint().as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    )
    .await
    .unwrap();
    echo.wait_for_hits(1, Duration::from_secs(10))
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    agent.signal("TERM").unwrap();
    let status = agent.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "exit {status:?}; logs:\n{}", agent.logs());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    let root = rx
        .spans()
        .into_iter()
        .find(|s| s.name == "journey stuck")
        .unwrap_or_else(|| panic!("cancelled run not reported; logs:\n{}", agent.logs()));
    assert!(root.is_error());
    assert_eq!(root.attr_str("error.type"), Some("cancelled"));
    assert!(
        agent.logs().contains("grace period over"),
        "{}",
        agent.logs()
    );
}

/// A collector that accepts exports but refuses what is in them (OTLP
/// partial success): the agent counts exactly what was refused, by signal,
/// logs the collector's reason, does not count it as a failed export, and
/// does not send the refused items again.
async fn refused_items_are_counted_and_not_sent_again(protocol: &str, rx: Receiver) {
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alpha.yaml"),
        journey("alpha", &echo.url("/ok"), "200ms"),
    )
    .unwrap();
    rx.set_refusing(Some("over the test collector's limits"));
    let agent = AgentProcess::start(
        &[dir.path()],
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint().as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ],
    )
    .await
    .unwrap();
    let rejected = |m: &str, signal: &str| {
        sample(
            m,
            &format!("vantage_telemetry_rejected_total{{signal=\"{signal}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let m = agent
        .wait_for_metrics(
            |m| rejected(m, "traces") >= 3.0 && rejected(m, "metrics") >= 1.0,
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}; logs:\n{}", agent.logs()));
    for signal in ["traces", "metrics"] {
        assert_eq!(
            sample(
                &m,
                &format!("vantage_telemetry_export_failures_total{{signal=\"{signal}\"}}")
            ),
            Some(0.0),
            "a refusal is not a failed export"
        );
    }
    assert!(rx.spans().is_empty() && rx.metrics().is_empty());
    let logs = agent.logs();
    assert!(
        logs.contains("the collector refused spans")
            && logs.contains("the collector refused data points")
            && logs.contains("over the test collector's limits"),
        "{logs}"
    );

    // The collector takes data again: new spans and points arrive, and the
    // refused ones are not among them (no retry), so once both have
    // arrived the agent's counts equal what the collector refused.
    rx.set_refusing(None);
    rx.wait_for_span("journey alpha", Duration::from_secs(15))
        .await
        .unwrap();
    rx.wait_for_metric("vantage.journey.duration", Duration::from_secs(15))
        .await
        .unwrap();
    let (spans, points) = rx.refused();
    let m = agent.metrics().await.unwrap();
    assert_eq!(rejected(&m, "traces"), spans as f64);
    assert_eq!(rejected(&m, "metrics"), points as f64);
    let warnings = agent.logs().matches("the collector refused").count();
    assert_eq!(warnings, 2, "one warning per signal a minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_refused_items_are_counted_and_not_sent_again() {
    refused_items_are_counted_and_not_sent_again("grpc", Receiver::grpc().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refused_items_are_counted_and_not_sent_again() {
    refused_items_are_counted_and_not_sent_again("http/protobuf", Receiver::http().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_is_survived_and_export_resumes() {
    let echo = start_echo().await;
    let mut rx = Receiver::grpc().await;
    let addr = rx.addr();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        std::fs::write(
            dir.path().join(format!("j{i}.yaml")),
            journey(&format!("j{i}"), &echo.url("/ok"), "200ms"),
        )
        .unwrap();
    }
    let agent = AgentProcess::start(
        &[dir.path()],
        &["--otlp-queue-spans", "2000"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint().as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ],
    )
    .await
    .unwrap();
    rx.wait_for_metric("vantage.journey.duration", Duration::from_secs(15))
        .await
        .unwrap();
    rx.wait_for_span("journey j0", Duration::from_secs(15))
        .await
        .unwrap();

    // Collector down: runs go on, exports fail and are counted, and the
    // bounded span queue overflows (20 journeys x 5 runs/s x 3 spans fills
    // 2000 spans in under 7 s) with the drops counted.
    rx.stop().await;
    let rss_before = agent.rss_kib().unwrap();
    let m = agent
        .wait_for_metrics(
            |m| {
                sample(
                    m,
                    "vantage_telemetry_export_failures_total{signal=\"traces\"}",
                )
                .is_some_and(|v| v >= 1.0)
                    && sample(
                        m,
                        "vantage_telemetry_export_failures_total{signal=\"metrics\"}",
                    )
                    .is_some_and(|v| v >= 1.0)
                    && sample(m, "vantage_telemetry_dropped_total{signal=\"traces\"}")
                        .is_some_and(|v| v >= 1.0)
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(
        sample(&m, "probe_success{journey=\"j0\""),
        Some(1.0),
        "probing goes on"
    );
    assert_eq!(agent.get("/healthz").await.unwrap().0, 200);
    assert_eq!(agent.get("/readyz").await.unwrap().0, 200);
    // The queue is full (spans are being dropped). From here on, memory
    // must stay flat however long the outage lasts: a few seconds more of
    // runs add only drops. (The allowance covers the allocator keeping the
    // transient peaks of failed export attempts, in a debug build.)
    let rss_full = agent.rss_kib().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_later = agent.rss_kib().unwrap();
    println!(
        "collector outage: RSS {rss_before} KiB before, {rss_full} KiB once the span queue was full, {rss_later} KiB 3 s later"
    );
    assert!(
        rss_later < rss_full + 10 * 1024,
        "memory grew from {rss_full} KiB to {rss_later} KiB after the span queue was full"
    );
    assert!(
        rss_later < rss_before + 40 * 1024,
        "memory grew from {rss_before} KiB to {rss_later} KiB during the outage"
    );
    // Export failures are logged, but not once per failure.
    let warnings = agent.logs().matches("span export failed").count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} span export warnings"
    );

    // Collector back on the same port: metrics and spans flow again,
    // including spans of runs that happened during the outage.
    let outage_end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    rx = Receiver::grpc_on(addr).await.unwrap();
    rx.wait_for_metric("vantage.journey.duration", Duration::from_secs(30))
        .await
        .unwrap();
    let spans = rx
        .wait_for_spans(
            |s| s.start_unix_nano < outage_end && s.is_root(),
            Duration::from_secs(45),
        )
        .await
        .unwrap();
    assert!(!spans.is_empty());
    agent
        .wait_for_log("span export recovered", Duration::from_secs(30))
        .await
        .unwrap();
}

/// Calls back, then spins its renderer forever: every later WebDriver call
/// of the session waits behind it.
const HANGING_PAGE: &str = "<!doctype html><html><head><title>Hangs</title></head>\
<body><h1>Hangs</h1><script>\
addEventListener('load', () => fetch('/hanging').then(() => { for (;;) {} }));\
</script></body></html>";

/// Live processes whose command line names `dir` (Chromium and its helpers
/// name their profile, which the agent creates under `$TMPDIR`), and the
/// profile directories left in it.
fn browser_leftovers(dir: &Path) -> (Vec<String>, Vec<PathBuf>) {
    let needle = dir.display().to_string();
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Zombies have an empty command line: they are no longer running.
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmd.contains(&needle) {
            procs.push(format!(
                "{pid}: {}",
                cmd.chars().take(160).collect::<String>()
            ));
        }
    }
    let profiles = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vantage-chromium-"))
        })
        .collect();
    (procs, profiles)
}

/// Chromium started through a wrapper: the first launch at once, every
/// later one only after 30 s, as on a machine so loaded that a browser is
/// still starting when the agent stops. The waiting wrapper names the
/// profile on its command line, as Chromium does.
fn chromium_slow_after_the_first(dir: &Path) -> PathBuf {
    let script = dir.join("chromium");
    let first = dir.join("first-launch");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             if mkdir {first} 2>/dev/null; then exec /usr/bin/chromium \"$@\"; fi\n\
             exec python3 -c 'import os, sys, time; time.sleep(30); os.execv(sys.argv[1], sys.argv[1:])' \
             /usr/bin/chromium \"$@\"\n",
            first = first.display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    script
}

/// SIGTERM while browser runs are still going past the grace period, one
/// stuck on a page that hangs and one whose browser is still starting: the
/// agent cancels them and, before it exits, ends their sessions, kills
/// their Chromium and removes their profiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_browser_runs_stuck_on_a_hung_page_leaves_no_browser_behind() {
    let hung = Arc::new(Semaphore::new(0));
    let app = {
        let hung = hung.clone();
        Router::new()
            .route("/hangs", get(|| async { Html(HANGING_PAGE) }))
            .route(
                "/hanging",
                get(move || {
                    hung.add_permits(1);
                    async { "ok" }
                }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hangs", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // The agent's profiles go to a directory of this test's own.
    let tmp = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let chromium = chromium_slow_after_the_first(bin.path());
    let dir = tempfile::tempdir().unwrap();
    for name in ["hung-a", "hung-b"] {
        std::fs::write(
            dir.path().join(format!("{name}.yaml")),
            format!(
                "name: {name}\nschedule: {{ every: 1s }}\ntimeout: 60s\nsteps:\n  - name: open\n    browser:\n      - goto: \"{url}\"\n      - wait_for: {{ css: \"#never\", timeout: 50s }}\n"
            ),
        )
        .unwrap();
    }
    let mut agent = AgentProcess::start(
        &[dir.path()],
        &[
            "--grace",
            "1s",
            "--max-browsers",
            "2",
            "--chromium",
            chromium.to_str().unwrap(),
        ],
        &[("TMPDIR", tmp.path().to_str().unwrap())],
    )
    .await
    .unwrap();
    // One page loaded and spins; the other run's browser is starting.
    let stuck = tokio::time::timeout(Duration::from_secs(60), hung.acquire()).await;
    assert!(
        stuck.is_ok(),
        "the page did not load; logs:\n{}",
        agent.logs()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (running, profiles) = browser_leftovers(tmp.path());
        if profiles.len() == 2 && running.iter().any(|p| p.contains("time.sleep")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second browser did not start: {running:#?} {profiles:?}; logs:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t0 = tokio::time::Instant::now();
    agent.signal("TERM").unwrap();
    let status = agent.wait_exit(Duration::from_secs(30)).await.unwrap();
    let took = t0.elapsed();
    // Checked at once: the agent must have cleaned up before exiting.
    let (running, profiles) = browser_leftovers(tmp.path());
    server.abort();
    // A failed check leaves nothing running either.
    for p in &running {
        let pid = p.split(':').next().unwrap();
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }
    assert!(status.success(), "exit {status:?}; logs:\n{}", agent.logs());
    assert!(
        agent.logs().contains("grace period over"),
        "{}",
        agent.logs()
    );
    assert!(
        running.is_empty(),
        "Chromium outlived the agent: {running:#?}\nlogs:\n{}",
        agent.logs()
    );
    assert!(
        profiles.is_empty(),
        "profile directories outlived the agent: {profiles:?}"
    );
    println!("stopped in {took:?} with two browser runs past the grace period (1s)");
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// `vantage run` re-executes itself once with `MIMALLOC_PURGE_DELAY=0` and
/// turns transparent huge pages off (figure 3's resident set); a value the
/// user set is kept, and the PID the supervisor started is the agent's.
#[tokio::test]
async fn run_sets_the_allocator_up_for_a_small_resident_set_unless_told_otherwise() {
    let echo = start_echo().await;
    let dir = alpha_dir(&echo.url("/a"));
    for (env, purge, thp_off) in [
        (&[][..], "MIMALLOC_PURGE_DELAY=0", true),
        (
            &[("MIMALLOC_PURGE_DELAY", "250"), ("MIMALLOC_ALLOW_THP", "1")][..],
            "MIMALLOC_PURGE_DELAY=250",
            false,
        ),
    ] {
        let agent = AgentProcess::start(&[dir.path()], &[], env).await.unwrap();
        alpha_passes(&agent).await;
        let environ = std::fs::read(format!("/proc/{}/environ", agent.pid())).unwrap();
        let vars: Vec<_> = environ
            .split(|b| *b == 0)
            .map(String::from_utf8_lossy)
            .filter(|v| v.starts_with("MIMALLOC_PURGE_DELAY="))
            .collect();
        assert_eq!(vars, [purge], "{env:?}");
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
        // "THP_enabled: 0" once PR_SET_THP_DISABLE is set (Linux 5.0 and later).
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.ends_with('0'), thp_off, "{env:?}: {line}");
        }
        assert!(!agent.logs().contains("cannot execute"), "{}", agent.logs());
    }
}

/// `--worker-threads` sets the threads that run journeys (lanes, each with
/// a runtime of its own), the agent says how many it has and how many its
/// journeys' rate uses, and a count of 0 is refused with the flag's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sets_the_lanes_and_zero_is_refused() {
    let echo = start_echo().await;
    let dir = alpha_dir(&echo.url("/a"));
    let cpus = std::thread::available_parallelism().unwrap().get();
    for (extra, workers) in [(&["--worker-threads", "1"][..], 1), (&[][..], cpus)] {
        let agent = AgentProcess::start(&[dir.path()], extra, &[])
            .await
            .unwrap();
        alpha_passes(&agent).await;
        let logs = agent.logs();
        let started = logs
            .lines()
            .find(|l| l.contains("vantage agent started"))
            .unwrap_or_else(|| panic!("no start line in: {logs}"));
        assert!(
            started.contains(&format!("workers={workers}")),
            "{extra:?}: {started}"
        );
        // One journey a second needs only one of them.
        assert!(started.contains("lanes_in_use=1"), "{extra:?}: {started}");
        let lanes = std::fs::read_dir(format!("/proc/{}/task", agent.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("vantage-lane-"))
            .count();
        assert_eq!(lanes, workers, "{extra:?}: threads named vantage-lane-*");
    }
    let out = std::process::Command::new(vantage_tests::vantage_bin())
        .arg("run")
        .arg(dir.path())
        .args(["--worker-threads", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--worker-threads"), "{err}");
}
