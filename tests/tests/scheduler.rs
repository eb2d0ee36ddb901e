//! The scheduler through the real binary: one journey's runs never overlap
//! (skipped ticks are counted), the global concurrency limit holds, lateness
//! is exported, and `--shard I/N` partitions journeys between agents.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use vantage_tests::agent::{AgentProcess, sample};

/// A target that takes `delay` per request and records the most requests
/// it ever had in flight at once.
struct Target {
    addr: std::net::SocketAddr,
    max_in_flight: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn slow_target(delay: Duration) -> Target {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let (i, m, t) = (in_flight.clone(), max_in_flight.clone(), total.clone());
    let app = Router::new().route(
        "/{*path}",
        get(move || {
            let (i, m, t) = (i.clone(), m.clone(), t.clone());
            async move {
                let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                t.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                i.fetch_sub(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Target {
        addr,
        max_in_flight,
        total,
        _task: task,
    }
}

fn journey(name: &str, url: &str, every: &str) -> String {
    format!(
        "name: {name}\nschedule: {{ every: {every} }}\ntimeout: 10s\nsteps:\n  - name: get\n    http: {{ url: \"{url}\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_one_journey_never_overlap_and_skips_are_counted() {
    let target = slow_target(Duration::from_millis(450)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slow.yaml"),
        journey("slow", &format!("http://{}/slow", target.addr), "100ms"),
    )
    .unwrap();
    let agent = AgentProcess::start(&[dir.path()], &[], &[]).await.unwrap();
    let m = agent
        .wait_for_metrics(
            |m| {
                sample(m, "vantage_schedule_skipped_ticks_total{journey=\"slow\"}")
                    .is_some_and(|v| v >= 6.0)
                    && sample(m, "vantage_journey_duration_seconds_count{journey=\"slow\"")
                        .is_some_and(|v| v >= 3.0)
            },
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    assert_eq!(
        target.max_in_flight.load(Ordering::SeqCst),
        1,
        "a journey's runs overlapped"
    );
    // Lateness is measured for every run that started.
    let runs = sample(
        &m,
        "vantage_journey_duration_seconds_count{journey=\"slow\"",
    )
    .unwrap();
    let late = sample(&m, "vantage_schedule_lateness_seconds_count").unwrap();
    assert!(late >= runs, "lateness count {late} < runs {runs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_concurrency_limit_holds() {
    let target = slow_target(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..8 {
        std::fs::write(
            dir.path().join(format!("j{i}.yaml")),
            journey(
                &format!("j{i}"),
                &format!("http://{}/j{i}", target.addr),
                "100ms",
            ),
        )
        .unwrap();
    }
    let agent = AgentProcess::start(&[dir.path()], &["--concurrency", "2"], &[])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while target.total.load(Ordering::SeqCst) < 20 {
        assert!(tokio::time::Instant::now() < deadline, "too few runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(target.max_in_flight.load(Ordering::SeqCst), 2);
    // Waiting for a permit shows up as lateness, not as run duration.
    let m = agent.metrics().await.unwrap();
    let over_100ms = sample(&m, "vantage_schedule_lateness_seconds_bucket{le=\"0.1\"}").unwrap();
    let all = sample(&m, "vantage_schedule_lateness_seconds_count").unwrap();
    assert!(
        all > over_100ms,
        "some runs waited more than 100ms for a permit:\n{m}"
    );
    let longest_run = m
        .lines()
        .filter(|l| l.starts_with("probe_duration_seconds{"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(
        longest_run < 0.4,
        "a run's duration included its wait: {longest_run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_partition_the_journeys() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::new();
    for i in 0..40 {
        yaml.push_str(&format!(
            "- name: j{i}\n  schedule: {{ every: 1h }}\n  steps:\n    - name: get\n      http: {{ url: \"http://127.0.0.1:9/\" }}\n"
        ));
    }
    std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
    let mut counts = Vec::new();
    for shard in ["1/3", "2/3", "3/3"] {
        let agent = AgentProcess::start(&[dir.path()], &["--shard", shard], &[])
            .await
            .unwrap();
        let m = agent.metrics().await.unwrap();
        counts.push(sample(&m, "vantage_journeys ").unwrap() as u32);
        // The same shard always gets the same journeys.
        let again = AgentProcess::start(&[dir.path()], &["--shard", shard], &[])
            .await
            .unwrap();
        assert_eq!(
            sample(&again.metrics().await.unwrap(), "vantage_journeys ").unwrap() as u32,
            *counts.last().unwrap()
        );
    }
    assert_eq!(counts.iter().sum::<u32>(), 40, "{counts:?}");
    assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
}
