//! Vantage's demo target: a small backend that imitates the JSON API of Movie Guru (the
//! SRE-workshop app) closely enough that the same journeys run against both, with the
//! workshop's fault injection (`/phase`), Movie-Guru-named counters (`/metrics`) and a
//! record of the last trace headers (`/debug/last-request`).
//!
//! Other crates start it in-process with [`DemoServer::start`], or mount [`router`]
//! themselves. This crate holds no probe logic and talks to nothing outside itself.

pub mod backend;
pub mod cors;
pub mod metrics;
pub mod movies;
pub mod phase;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use backend::{AppState, router};
pub use phase::Phase;

/// Serves the backend on `listener` until `shutdown` completes, then lets in-flight
/// requests finish. Callers that need a bound on that wait wrap this in a timeout.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A demo backend running on a spawned task. Dropping it aborts the task, so a test that
/// panics never leaks a server; [`DemoServer::shutdown`] stops it gracefully.
pub struct DemoServer {
    addr: SocketAddr,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl DemoServer {
    /// Binds `listen` (port 0 picks a free port) and starts serving a fresh, healthy backend.
    pub async fn start(listen: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        Self::from_listener(listener, AppState::new())
    }

    /// Starts serving `state` on an already bound listener. Must be called inside a
    /// Tokio runtime.
    pub fn from_listener(listener: TcpListener, state: AppState) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state.clone(), async move {
            // A dropped sender also means stop.
            let _ = stopped.await;
        }));
        Ok(DemoServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address, with the real port when 0 was asked for.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The live state: change the phase or read counters without going through HTTP.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting connections and waits for in-flight requests to finish.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
