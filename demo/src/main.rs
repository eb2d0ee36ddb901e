//! The `vantage-demo` command line: `backend` (the default, so a bare `vantage-demo
//! [--listen ADDR]` still starts it; `--database-url` keeps its data in PostgreSQL) or
//! `frontend --backend URL`. It parses flags, sets up logging to stderr, starts one
//! server, prints the one "listening" line tests and scripts wait for, and stops on
//! SIGINT/SIGTERM. It holds no server logic, and never prints the database URL.

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use vantage_demo::frontend::{BackendUrl, DEFAULT_REPLICA_NAME, ReplicaName};
use vantage_demo::store::DEFAULT_SCHEMA;
use vantage_demo::{
    AppState, DemoServer, FrontendConfig, FrontendServer, PgSettings, SchemaName, Store,
};

/// How long in-flight requests (possibly sleeping an injected latency) may run after a
/// shutdown signal before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A Movie-Guru-like demo app for exercising Vantage: a JSON backend with fault injection,
/// and a single-page frontend that calls it from the browser.
///
/// Without a subcommand, starts the backend. The backend keeps users, logins, preferences
/// and chat history in memory, or in PostgreSQL with --database-url.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the JSON backend API, with fault injection (/phase) and counters (/metrics);
    /// data in memory, or in PostgreSQL with --database-url.
    Backend(BackendArgs),
    /// Serve the single-page frontend; its page calls one fixed backend URL from the browser.
    Frontend(FrontendArgs),
}

#[derive(Debug, Args)]
struct BackendArgs {
    /// Address the backend API listens on; port 0 picks a free port.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Keep users, logins, preferences and chat history in this PostgreSQL database
    /// (postgres://user:password@host:port/database) instead of in memory.
    ///
    /// Tables named movieguru_users, movieguru_sessions (a row per login),
    /// movieguru_preferences and movieguru_history are created at startup if missing.
    /// The URL is never printed or logged.
    #[arg(
        long,
        env = "DEMO_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// PostgreSQL schema holding the tables, created if missing, so several backends
    /// (parallel tests, say) can share one database.
    #[arg(
        long,
        env = "DEMO_DB_SCHEMA",
        value_name = "NAME",
        default_value = DEFAULT_SCHEMA,
        requires = "database_url"
    )]
    db_schema: SchemaName,
}

#[derive(Debug, Args)]
struct FrontendArgs {
    /// Address the frontend listens on; port 0 picks a free port.
    #[arg(long, env = "DEMO_FRONTEND_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Base URL of the backend as browsers call it, e.g. http://127.0.0.1:8081.
    ///
    /// Written into the page; the frontend server itself never calls it, so a URL that
    /// browsers cannot reach still gives a healthy-looking frontend.
    #[arg(long, env = "DEMO_BACKEND_URL", value_name = "URL")]
    backend: BackendUrl,
    /// This replica's name, sent in the `x-replica` header of every response.
    #[arg(long, env = "DEMO_REPLICA_NAME", default_value = DEFAULT_REPLICA_NAME)]
    name: ReplicaName,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only help a human at a terminal; in captured test logs they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    match cli.command {
        None => run_backend(cli.backend).await,
        Some(Command::Backend(args)) => run_backend(args).await,
        Some(Command::Frontend(args)) => run_frontend(args).await,
    }
}

async fn run_backend(args: BackendArgs) -> anyhow::Result<()> {
    let store = match args.database_url {
        None => Store::memory(),
        Some(url) => {
            let settings = PgSettings::new(url, args.db_schema);
            let store = Store::postgres(&settings)
                .await
                .context("cannot use the database given by --database-url")?;
            if let Store::Postgres(pg) = &store {
                info!(database = %pg.target(), schema = %pg.schema(), "keeping data in PostgreSQL");
            }
            store
        }
    };
    let state = AppState::with_store(store);
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            state.store().close().await;
            return Err(e).with_context(|| format!("cannot listen on {}", args.listen));
        }
    };
    let server = DemoServer::from_listener(listener, state)?;
    let signal = watch_shutdown_signals()?;
    announce(&format!("demo backend listening on {}", server.base_url()))?;
    info!(addr = %server.addr(), "demo backend started");
    serve_until_signal(signal, || server.shutdown()).await
}

async fn run_frontend(args: FrontendArgs) -> anyhow::Result<()> {
    let config = FrontendConfig {
        backend_url: args.backend,
        name: args.name,
    };
    let server = FrontendServer::start(args.listen, config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let signal = watch_shutdown_signals()?;
    announce(&format!("demo frontend listening on {}", server.base_url()))?;
    info!(
        addr = %server.addr(),
        backend = %server.backend_url(),
        replica = %server.name(),
        "demo frontend started"
    );
    serve_until_signal(signal, || server.shutdown()).await
}

/// Prints the line tests and scripts parse from stdout to learn the real port.
fn announce(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// Waits for `signal`, then runs `shutdown` for at most [`SHUTDOWN_GRACE`].
async fn serve_until_signal<F, Fut>(
    signal: impl Future<Output = ()>,
    shutdown: F,
) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    signal.await;
    info!("shutdown signal received, draining requests");
    match tokio::time::timeout(SHUTDOWN_GRACE, shutdown()).await {
        Ok(result) => result.context("server failed")?,
        Err(_) => warn!(
            grace = ?SHUTDOWN_GRACE,
            "requests still running after the grace period, exiting anyway"
        ),
    }
    Ok(())
}

/// Starts watching SIGINT and, on Unix, SIGTERM right away, before the "listening" line:
/// a caller that signals as soon as it has read the line must not kill the process with
/// the default action. The returned future completes on the first signal.
fn watch_shutdown_signals() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        // Registered on first poll; only Unix has the early-SIGTERM race this avoids.
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
