//! The long-running agent: load, schedule, serve, reload, shut down.
//!
//! Journeys run on lanes: threads with a single-threaded runtime each, one
//! per CPU by default, that schedule and run their own share of the
//! journeys (`scheduler::partition`). A run then never moves between
//! threads and never wakes another one: on a work-stealing runtime, the
//! run a scheduler spawned woke the other worker, which stole it (2.5
//! context switches per run at a thousand runs a second, against 2.0 on
//! lanes; `bench/RESULTS.md`, figure 1). Everything else (the HTTP server,
//! reloads, signals, the OTLP exporters) runs on the caller's runtime, so
//! it never delays a run.
//!
//! Startup is a reload from the empty set. SIGHUP or a changed journey file
//! triggers a reload; an invalid new config is rejected with its errors
//! logged and the old set keeps running. SIGTERM/SIGINT stop scheduling,
//! let in-flight runs finish within the grace period (then cancel them, so
//! they still report), close every browser session, and flush the
//! exporters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::ConfigError;
use crate::journey::build::{BuildOptions, load_and_build};
use crate::journey::runner::RunEnv;
use crate::probes::ProbeEnv;
use crate::scheduler::{JourneySet, Scheduler, Shard, lanes_for, partition};
use crate::server::{ServerState, router};
use crate::telemetry::{OtlpConfig, Telemetry};

pub struct AgentOptions {
    pub paths: Vec<PathBuf>,
    /// `--var` overrides of journey vars.
    pub vars: std::collections::BTreeMap<String, String>,
    pub location: String,
    pub environment: Option<String>,
    pub listen: SocketAddr,
    pub concurrency: usize,
    pub shard: Option<Shard>,
    pub grace: Duration,
    pub otlp: Option<OtlpConfig>,
    pub browser: crate::probes::browser::BrowserOptions,
    /// How often journey files are checked for changes.
    pub watch_interval: Duration,
    /// Threads that run journeys, each its own share.
    pub lanes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid journey configuration ({} error(s))", .0.len())]
    Config(Vec<ConfigError>),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// Loads journeys and keeps this shard's.
pub fn load(
    paths: &[PathBuf],
    vars: &std::collections::BTreeMap<String, String>,
    shard: Option<Shard>,
) -> Result<JourneySet, Vec<ConfigError>> {
    let opts = BuildOptions {
        vars: vars.clone(),
        ..BuildOptions::from_process_env()
    };
    let journeys = load_and_build(paths, &opts)?;
    let mut set: Vec<Arc<crate::journey::Journey>> = journeys
        .into_iter()
        .filter(|j| shard.is_none_or(|s| s.owns(&j.name)))
        .map(Arc::new)
        .collect();
    // The collect above reuses the built journeys' buffer, which is many
    // times the size of the pointers it now holds.
    set.shrink_to_fit();
    Ok(Arc::new(set))
}

/// A cheap fingerprint of the journey files: names, sizes, modification times.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    fn walk(p: &std::path::Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                let mut entries: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                entries.sort();
                for e in entries {
                    walk(&e, out);
                }
            }
        } else {
            out.push((p.to_path_buf(), meta.len(), meta.modified().ok()));
        }
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out);
    }
    out
}

pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    let initial = load(&opts.paths, &opts.vars, opts.shard).map_err(AgentError::Config)?;
    let location: Arc<str> = opts.location.clone().into();
    let telemetry = Arc::new(
        Telemetry::start(opts.otlp.as_ref(), &location, opts.environment.as_deref())
            .map_err(AgentError::Setup)?,
    );
    let probes = Arc::new(ProbeEnv::with_browser(opts.browser.clone()).map_err(AgentError::Setup)?);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| AgentError::Listen(opts.listen, e))?;
    let bound = listener.local_addr().unwrap_or(opts.listen);
    let server_stop = CancellationToken::new();
    let app = router(ServerState {
        metrics: telemetry.metrics.clone(),
        ready: ready.clone(),
    });
    let server = {
        let stop = server_stop.clone();
        tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = r {
                error!(error = %e, "HTTP server failed");
            }
        })
    };
    let scheduler = Arc::new(Scheduler {
        env: Arc::new(RunEnv {
            location: location.clone(),
            probes,
        }),
        telemetry: telemetry.clone(),
        concurrency: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        tracker: TaskTracker::new(),
        cancel_runs: CancellationToken::new(),
        running: Default::default(),
    });
    let lanes = opts.lanes.max(1);
    info!(
        journeys = initial.len(),
        listen = %bound,
        location = %location,
        otlp = telemetry.otlp_enabled(),
        shard = ?opts.shard.map(|s| format!("{}/{}", s.index, s.count)),
        workers = lanes,
        lanes_in_use = lanes_for(&initial, lanes),
        "vantage agent started"
    );
    telemetry.metrics.set_journeys(initial.len());
    let stop_scheduling = CancellationToken::new();
    // Schedulers still running; lanes hold their runtimes until `release`.
    let schedulers = TaskTracker::new();
    let release = CancellationToken::new();
    let mut senders = Vec::with_capacity(lanes);
    let mut threads = Vec::with_capacity(lanes);
    for (i, part) in partition(&initial, lanes).into_iter().enumerate() {
        let (tx, rx) = watch::channel(part);
        senders.push(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AgentError::Setup(format!("cannot start a runtime for journeys: {e}")))?;
        let run = schedulers.track_future({
            let (s, stop) = (scheduler.clone(), stop_scheduling.clone());
            async move { s.run(rx, stop).await }
        });
        let release = release.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vantage-lane-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    run.await;
                    // Runs, browser sessions and their cleanups live on this
                    // runtime: it stays until shutdown has dealt with them.
                    release.cancelled().await;
                });
                // Blocking work of a stuck run must not hold the process.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| AgentError::Setup(format!("cannot start a thread for journeys: {e}")))?;
        threads.push(thread);
    }
    drop(initial);
    schedulers.close();
    ready.store(true, Ordering::Release);

    wait_and_reload(&opts, &senders, &scheduler).await;

    // Shutdown: not ready, no new runs, in-flight runs get the grace period.
    ready.store(false, Ordering::Release);
    stop_scheduling.cancel();
    schedulers.wait().await;
    scheduler.tracker.close();
    let in_flight = scheduler.tracker.len();
    if in_flight > 0 {
        info!(in_flight, grace = ?opts.grace, "waiting for running journeys");
    }
    if tokio::time::timeout(opts.grace, scheduler.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            still_running = scheduler.tracker.len(),
            "grace period over; cancelling the remaining runs"
        );
        scheduler.cancel_runs.cancel();
    }
    // Browsers are closed alongside the cancelled runs, and before the
    // process exits: a run stuck on a hung page would wait on it in every
    // WebDriver call of its own cleanup, and a cleanup still running when
    // the runtime stops would be dropped.
    let browsers = async {
        if let Some(b) = &scheduler.env.probes.browser {
            b.shutdown().await;
        }
    };
    let runs = async {
        let _ = tokio::time::timeout(Duration::from_secs(5), scheduler.tracker.wait()).await;
    };
    tokio::join!(browsers, runs);
    drop(scheduler);
    // The lanes' runtimes stop, dropping any run still stuck past the waits
    // above, and with them their hold on the telemetry.
    release.cancel();
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    if tokio::time::timeout(Duration::from_secs(5), joined)
        .await
        .is_err()
    {
        warn!("a journey thread did not stop within 5s");
    }
    server_stop.cancel();
    let _ = server.await;
    match Arc::try_unwrap(telemetry) {
        Ok(t) => t.shutdown(opts.grace).await,
        Err(_) => warn!("telemetry still in use at shutdown; not flushed"),
    }
    info!("vantage agent stopped");
    Ok(())
}

/// Handles signals and file changes until a stop signal arrives.
async fn wait_and_reload(
    opts: &AgentOptions,
    lanes: &[watch::Sender<JourneySet>],
    scheduler: &Scheduler,
) {
    let telemetry = &scheduler.telemetry;
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        error!("cannot install signal handlers; stopping");
        return;
    };
    let mut seen = fingerprint(&opts.paths);
    let mut tick = tokio::time::interval(opts.watch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reason = tokio::select! {
            _ = term.recv() => { info!("SIGTERM received; shutting down"); return; }
            _ = int.recv() => { info!("SIGINT received; shutting down"); return; }
            _ = hup.recv() => "SIGHUP",
            _ = tick.tick() => {
                let now = fingerprint(&opts.paths);
                if now == seen { continue; }
                seen = now;
                "journey files changed"
            }
        };
        let (paths, vars, shard) = (opts.paths.clone(), opts.vars.clone(), opts.shard);
        // Reading and building touches the disk: keep it off the runtime threads.
        let result = tokio::task::spawn_blocking(move || load(&paths, &vars, shard)).await;
        match result {
            Ok(Ok(set)) => {
                info!(
                    reason,
                    journeys = set.len(),
                    lanes_in_use = lanes_for(&set, lanes.len()),
                    "configuration reloaded"
                );
                telemetry.metrics.set_journeys(set.len());
                for (tx, part) in lanes.iter().zip(partition(&set, lanes.len())) {
                    let _ = tx.send(part);
                }
                scheduler.retain(&set);
            }
            Ok(Err(errors)) => {
                for e in &errors {
                    error!(error = %e, "invalid journey configuration");
                }
                error!(
                    reason,
                    errors = errors.len(),
                    "reload rejected; the previous journeys keep running"
                );
            }
            Err(e) => error!(error = %e, "reload failed"),
        }
    }
}
