//! The `vantage-demo` command line: parses flags, sets up logging to stderr, starts the
//! backend, prints the one "listening" line tests wait for, and stops on SIGINT/SIGTERM.
//! It holds no server logic; a demo frontend will be one more flag (and one more
//! `DemoServer`-like component) here, not a rewrite.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use vantage_demo::DemoServer;

/// How long in-flight requests (possibly sleeping an injected latency) may run after a
/// shutdown signal before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A Movie-Guru-like demo backend with fault injection, for exercising Vantage.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address the backend API listens on; port 0 picks a free port.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
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

    let server = DemoServer::start(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    // Tests and scripts parse this exact line from stdout to learn the real port.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "demo backend listening on {}", server.base_url())?;
    stdout.flush()?;
    drop(stdout);
    info!(addr = %server.addr(), "demo backend started");

    shutdown_signal().await?;
    info!("shutdown signal received, draining requests");
    match tokio::time::timeout(SHUTDOWN_GRACE, server.shutdown()).await {
        Ok(result) => result.context("server failed")?,
        Err(_) => warn!(
            grace = ?SHUTDOWN_GRACE,
            "requests still running after the grace period, exiting anyway"
        ),
    }
    Ok(())
}

/// Completes on SIGINT or, on Unix, SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    Ok(())
}
