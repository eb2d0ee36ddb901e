//! Vantage's demo target: a small backend that imitates the JSON API of Movie Guru (the
//! SRE-workshop app) closely enough that the same journeys run against both, with the
//! workshop's fault injection (`/phase`), Movie-Guru-named counters (`/metrics`) and a
//! record of the last trace headers (`/debug/last-request`); and a single-page frontend
//! ([`frontend`]) whose page calls one fixed backend URL from the browser. The backend
//! keeps its users, logins, preferences and history in memory or, given a database URL,
//! in PostgreSQL ([`store`]), so transactional journeys can check the rows it writes.
//!
//! Other crates start them in-process with [`DemoServer::start`] (or
//! [`DemoServer::start_postgres`]) and [`start_frontend`], or mount [`router`] and
//! [`frontend::router`] themselves. This crate holds no probe logic, and its servers talk
//! to nothing outside themselves but the backend's database (the frontend's page, running
//! in a browser, is what calls the backend).

pub mod backend;
pub mod cors;
pub mod frontend;
pub mod metrics;
pub mod movies;
pub mod phase;
pub mod store;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use backend::{AppState, router};
pub use frontend::{FrontendConfig, FrontendConfigError, FrontendState};
pub use phase::Phase;
/// The sqlx this crate was built with, so tests that check a PostgreSQL-backed demo can
/// read its tables without depending on a second copy.
pub use sqlx;
pub use store::{PgSettings, SchemaName, Store, StoreError};

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
    running: Running,
    state: AppState,
}

impl DemoServer {
    /// Binds `listen` (port 0 picks a free port) and starts serving a fresh, healthy backend.
    pub async fn start(listen: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        Self::from_listener(listener, AppState::new())
    }

    /// Connects to PostgreSQL (creating the schema and tables if missing), binds `listen`
    /// and starts serving a fresh, healthy backend that keeps its data there.
    pub async fn start_postgres(listen: SocketAddr, settings: &PgSettings) -> io::Result<Self> {
        let store = Store::postgres(settings).await.map_err(io::Error::other)?;
        let state = AppState::with_store(store);
        match TcpListener::bind(listen).await {
            Ok(listener) => Self::from_listener(listener, state),
            Err(e) => {
                state.store().close().await;
                Err(e)
            }
        }
    }

    /// Starts serving `state` on an already bound listener. Must be called inside a
    /// Tokio runtime.
    pub fn from_listener(listener: TcpListener, state: AppState) -> io::Result<Self> {
        let running = Running::spawn(listener, router(state.clone()))?;
        Ok(DemoServer { running, state })
    }

    /// The bound address, with the real port when 0 was asked for.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// The live state: change the phase or read counters without going through HTTP.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting connections, waits for in-flight requests to finish, then closes
    /// the store's database connections.
    pub async fn shutdown(self) -> io::Result<()> {
        let served = self.running.shutdown().await;
        self.state.store().close().await;
        served
    }
}

/// Binds `listen` and serves a demo frontend whose page calls `backend_url`, tagged with
/// the replica `name`. A URL or name that [`FrontendConfig::new`] refuses is an
/// [`io::ErrorKind::InvalidInput`] error, reported before anything is bound.
pub async fn start_frontend(
    listen: SocketAddr,
    backend_url: &str,
    name: &str,
) -> io::Result<FrontendServer> {
    let config = FrontendConfig::new(backend_url, name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    FrontendServer::start(listen, config).await
}

/// A demo frontend replica running on a spawned task, with the same lifecycle as
/// [`DemoServer`]: dropping it aborts the task, [`FrontendServer::shutdown`] is graceful.
pub struct FrontendServer {
    running: Running,
    config: FrontendConfig,
}

impl FrontendServer {
    /// Binds `listen` (port 0 picks a free port) and starts serving the page.
    pub async fn start(listen: SocketAddr, config: FrontendConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        Self::from_listener(listener, config)
    }

    /// Starts serving on an already bound listener. Must be called inside a Tokio runtime.
    pub fn from_listener(listener: TcpListener, config: FrontendConfig) -> io::Result<Self> {
        let app = frontend::router(FrontendState::new(config.clone()));
        let running = Running::spawn(listener, app)?;
        Ok(FrontendServer { running, config })
    }

    /// The bound address, with the real port when 0 was asked for.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// The backend URL written into the page.
    pub fn backend_url(&self) -> &str {
        self.config.backend_url.as_str()
    }

    /// The name sent in every response's `x-replica` header.
    pub fn name(&self) -> &str {
        self.config.name.as_str()
    }

    /// Stops accepting connections and waits for in-flight requests to finish.
    pub async fn shutdown(self) -> io::Result<()> {
        self.running.shutdown().await
    }
}

/// One router served on a spawned task until stopped; the lifecycle both servers share.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Running {
    fn spawn(listener: TcpListener, app: Router) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // A dropped sender also means stop.
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Running {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
