//! The `vantage` command line: `run`, `once`, `check`, `schema`.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use vantage::app::{self, AgentError, AgentOptions};
use vantage::journey::runner::{self, RunEnv};
use vantage::probes::ProbeEnv;
use vantage::scheduler::Shard;
use vantage::telemetry::{OtlpConfig, Telemetry};

/// mimalloc rather than glibc's malloc: glibc keeps a 64 MiB arena per
/// thread that ever allocated and holds on to freed peaks (a journey load,
/// a large scrape), which tripled the agent's resident set. jemalloc does as
/// well on memory but builds far slower; mimalloc is one C file. Building
/// without the `mimalloc` feature leaves the system's malloc, for heap
/// profilers that hook it.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Synthetic monitoring probe agent: runs scripted user journeys on a
/// schedule and exports what it saw as OpenTelemetry traces and metrics and
/// Prometheus series.
#[derive(Parser)]
#[command(name = "vantage", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "VANTAGE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: schedule the journeys, serve /metrics, /healthz and
    /// /readyz, export OTLP. Reloads on SIGHUP or when a journey file
    /// changes; stops gracefully on SIGTERM or SIGINT.
    Run(RunArgs),
    /// Run each journey once and exit: 0 all passed, 1 any failed, 2 invalid
    /// configuration.
    Once(OnceArgs),
    /// Validate journey files and report every error; exit 0 when valid, 2 otherwise.
    Check {
        /// Journey files or directories (every *.yaml / *.yml inside).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Override a journey var: NAME=VALUE (repeatable; not a secret).
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    /// Print the JSON Schema of the journey file format.
    Schema,
}

#[derive(Args)]
struct Common {
    /// Journey files or directories (every *.yaml / *.yml inside).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Where this agent probes from; a label on every result.
    #[arg(long, env = "VANTAGE_LOCATION", default_value_t = default_location())]
    location: String,
    /// `deployment.environment.name` on exported telemetry.
    #[arg(long, env = "VANTAGE_ENVIRONMENT")]
    environment: Option<String>,
    /// Override a journey var: NAME=VALUE (repeatable). Applies to every
    /// journey that declares the var. Not a secret: use `${env:...}` in the
    /// journey for those.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Most journeys running at once.
    #[arg(long, env = "VANTAGE_CONCURRENCY", default_value_t = 256)]
    concurrency: usize,
    /// OTLP endpoint (base URL). Default: the OTEL_EXPORTER_OTLP_*ENDPOINT
    /// variables; no export when none is set.
    #[arg(long, env = "VANTAGE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf. Default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.
    #[arg(long)]
    otlp_protocol: Option<String>,
    /// A WebDriver server (Selenium, chromedriver) for browser steps; default:
    /// start a local chromedriver.
    #[arg(long, env = "VANTAGE_WEBDRIVER")]
    webdriver: Option<String>,
    /// The chromedriver to start when no --webdriver is given.
    #[arg(long, env = "VANTAGE_CHROMEDRIVER", default_value = "chromedriver")]
    chromedriver: PathBuf,
    /// The Chromium binary chromedriver starts (default: /usr/bin/chromium when present).
    #[arg(long, env = "VANTAGE_CHROMIUM")]
    chromium: Option<PathBuf>,
    /// Most browser sessions at once.
    #[arg(long, env = "VANTAGE_MAX_BROWSERS", default_value_t = 2)]
    max_browsers: usize,
    /// Spans held for export while the collector is slow or down; past it the
    /// oldest are dropped and counted in vantage_telemetry_dropped_total.
    #[arg(long, env = "VANTAGE_OTLP_QUEUE_SPANS", default_value_t = 20_000)]
    otlp_queue_spans: usize,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "VANTAGE_LISTEN", default_value = "0.0.0.0:9464")]
    listen: SocketAddr,
    /// Run only this shard's journeys: I/N, 1-based (e.g. 2/5). Assignment is
    /// a deterministic hash of the journey name.
    #[arg(long, env = "VANTAGE_SHARD")]
    shard: Option<Shard>,
    /// Threads that run journeys, each its own share of them (by a hash of
    /// the name); default: one per CPU. The journeys use one per 8,000 runs
    /// a second, up to this many. The HTTP server, reloads and the exporters
    /// run on a thread of their own.
    #[arg(long, env = "VANTAGE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// How long in-flight runs may finish after SIGTERM before they are cancelled.
    #[arg(long, env = "VANTAGE_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// How often journey files are checked for changes.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    watch_interval: Duration,
}

#[derive(Args)]
struct OnceArgs {
    #[command(flatten)]
    common: Common,
    /// Write a JUnit XML report to this file.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Print the reports as JSON on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Run only journeys whose name contains this text.
    #[arg(long)]
    only: Option<String>,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    if !vantage::journey::template::is_var_name(k) {
        return Err(format!("`{k}` is not a valid variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn build_options(vars: &[(String, String)]) -> vantage::journey::BuildOptions<'static> {
    vantage::journey::BuildOptions {
        vars: vars.iter().cloned().collect(),
        ..vantage::journey::BuildOptions::from_process_env()
    }
}

fn default_location() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The resident set of a long-running agent, with 10,000 journeys, is
/// about 75 MiB with the allocator's defaults and about 42 MiB with these
/// two settings (`bench/RESULTS.md`, figure 3). The purge delay costs about
/// 5 % of the CPU per probe against a 25 ms delay (pages faulted in again),
/// which would put the resident set over 50 MiB (figure 1 there):
///
/// - No transparent huge pages: mimalloc advises them for its arena, and a
///   few live objects then keep whole 2 MiB pages resident. The flag is the
///   process's (`PR_SET_THP_DISABLE`), set here for every command, and is
///   inherited by the browsers and drivers the agent starts.
/// - Freed pages go back to the kernel at once rather than after a second
///   (`MIMALLOC_PURGE_DELAY=0`): runs, span batches and metric exports free
///   memory all the time, and a second's worth of it stayed resident.
///   mimalloc reads its options from the environment before `main`, and
///   setting one in-process needs `unsafe`, so `vantage run` executes
///   itself again, once, with the variable set. When that fails, the agent
///   runs with the default and says so.
///
/// `MIMALLOC_ALLOW_THP` or `MIMALLOC_PURGE_DELAY` in the environment wins
/// over the matching setting.
fn tune_allocator(command: &Command) -> Option<String> {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let _ = nix::sys::prctl::set_thp_disable(true);
    }
    if !cfg!(all(unix, feature = "mimalloc"))
        || !matches!(command, Command::Run(_))
        || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
    {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => return Some(format!("cannot find the agent's own executable: {e}")),
        };
        // Only returns when the exec failed.
        let e = std::process::Command::new(&exe)
            .arg0(arg0)
            .args(args)
            .env("MIMALLOC_PURGE_DELAY", "0")
            .exec();
        Some(format!("cannot execute {} again: {e}", exe.display()))
    }
    #[cfg(not(unix))]
    None
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tune_failed = tune_allocator(&cli.command);
    // One crypto provider for every TLS client; two would panic at run time.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Schema => {
            let schema = vantage::config::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Check { paths, vars } => check(&paths, &vars),
        Command::Once(args) => {
            init_logging(cli.log_format);
            runtime()
                .and_then(|rt| rt.block_on(once(args)))
                .unwrap_or_else(|e| {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                })
        }
        Command::Run(args) => {
            init_logging(cli.log_format);
            if let Some(why) = tune_failed {
                tracing::warn!(
                    "{why}; running with the allocator's default purge delay, which keeps more memory resident (set MIMALLOC_PURGE_DELAY=0 to avoid this)"
                );
            }
            // The journeys run on lanes of their own (`app.rs`); this
            // runtime serves, reloads and exports.
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")
                .and_then(|rt| rt.block_on(run(args)))
                .unwrap_or_else(|e| {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                })
        }
    }
}

/// The async runtime of `once`: one worker per CPU.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn print_config_errors(errors: &[vantage::config::ConfigError]) {
    let mut err = std::io::stderr().lock();
    for e in errors {
        let _ = writeln!(err, "{e}");
    }
    let _ = writeln!(err, "{} error(s)", errors.len());
}

fn check(paths: &[PathBuf], vars: &[(String, String)]) -> ExitCode {
    match vantage::journey::build::load_and_build(paths, &build_options(vars)) {
        Ok(journeys) => {
            println!("{} journey(s) OK", journeys.len());
            for j in &journeys {
                println!(
                    "  {}  {}  {} step(s)  ({})",
                    j.name,
                    j.schedule.describe(),
                    j.steps.len(),
                    j.source
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_config_errors(&errors);
            ExitCode::from(2)
        }
    }
}

fn browser_options(common: &Common) -> vantage::probes::browser::BrowserOptions {
    let defaults = vantage::probes::browser::BrowserOptions::default();
    vantage::probes::browser::BrowserOptions {
        webdriver: common.webdriver.clone(),
        chromedriver: common.chromedriver.clone(),
        chromium: common.chromium.clone().or(defaults.chromium),
        max_browsers: common.max_browsers.max(1),
    }
}

fn otlp(common: &Common) -> anyhow::Result<Option<OtlpConfig>> {
    let cfg = OtlpConfig::from_env(common.otlp_endpoint.clone(), common.otlp_protocol.clone())
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(cfg.map(|c| OtlpConfig {
        queue_spans: common.otlp_queue_spans.max(1),
        ..c
    }))
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let opts = AgentOptions {
        otlp: otlp(&args.common)?,
        browser: browser_options(&args.common),
        paths: args.common.paths,
        vars: args.common.vars.into_iter().collect(),
        location: args.common.location,
        environment: args.common.environment,
        listen: args.listen,
        concurrency: args.common.concurrency,
        shard: args.shard,
        grace: args.grace,
        watch_interval: args.watch_interval,
        lanes: args.worker_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        ),
    };
    match app::run(opts).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(AgentError::Config(errors)) => {
            print_config_errors(&errors);
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

async fn once(args: OnceArgs) -> anyhow::Result<ExitCode> {
    let journeys = match vantage::journey::build::load_and_build(
        &args.common.paths,
        &build_options(&args.common.vars),
    ) {
        Ok(j) => j,
        Err(errors) => {
            print_config_errors(&errors);
            return Ok(ExitCode::from(2));
        }
    };
    let journeys: Vec<Arc<_>> = journeys
        .into_iter()
        .filter(|j| args.only.as_deref().is_none_or(|o| j.name.contains(o)))
        .map(Arc::new)
        .collect();
    if journeys.is_empty() {
        eprintln!("no journey matches");
        return Ok(ExitCode::from(2));
    }
    let location = args.common.location.clone();
    let telemetry = Arc::new(
        Telemetry::start(
            otlp(&args.common)?.as_ref(),
            &location,
            args.common.environment.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!(e))?,
    );
    let env = Arc::new(RunEnv {
        location: location.into(),
        probes: Arc::new(
            ProbeEnv::with_browser(browser_options(&args.common))
                .map_err(|e| anyhow::anyhow!(e))?,
        ),
    });
    let permits = Arc::new(Semaphore::new(args.common.concurrency.max(1)));
    let cancel = CancellationToken::new();
    let total = journeys.len();
    let tty = std::io::stderr().is_terminal();
    if tty {
        eprintln!("running {total} journey(s)…");
    }
    let mut set = tokio::task::JoinSet::new();
    for (i, j) in journeys.iter().enumerate() {
        let (j, env, permits, cancel) = (j.clone(), env.clone(), permits.clone(), cancel.clone());
        set.spawn(async move {
            let _p = permits.acquire_owned().await;
            (i, runner::run_all(&j, &env, None, &cancel).await)
        });
    }
    let mut reports = Vec::with_capacity(total);
    let mut interrupted = false;
    loop {
        tokio::select! {
            next = set.join_next() => match next {
                Some(Ok((i, runs))) => {
                    for r in runs {
                        telemetry.record(&r);
                        if tty {
                            eprintln!("{}", vantage::cli::progress_line(&r, reports.len() + 1, total));
                        }
                        reports.push((i, r));
                    }
                }
                Some(Err(e)) => anyhow::bail!("a journey run panicked: {e}"),
                None => break,
            },
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                eprintln!("interrupted: cancelling running journeys");
                interrupted = true;
                cancel.cancel();
            }
        }
    }
    reports.sort_by_key(|(i, _)| *i);
    let reports: Vec<_> = reports.into_iter().map(|(_, r)| r).collect();
    if let Ok(t) = Arc::try_unwrap(telemetry) {
        t.shutdown(Duration::from_secs(10)).await;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, vantage::cli::junit::render(&reports))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &reports)?;
        writeln!(out)?;
    } else {
        vantage::cli::write_summary(&mut out, &reports)?;
    }
    let failed = reports
        .iter()
        .any(|r| r.outcome == vantage::report::Outcome::Failed);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
