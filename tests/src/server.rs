//! Shared plumbing for the loopback test servers: an accept loop whose
//! connections all die with it, and a counter that can be awaited.
//!
//! Every server in this crate runs its accept loop in one tokio task that owns
//! the listener and a [`JoinSet`] with one task per connection. Stopping (or
//! dropping) the server therefore closes the listening socket *and* every
//! accepted connection, like killing a process would.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// A monotonically increasing counter whose changes can be awaited.
#[derive(Clone, Debug)]
pub(crate) struct Counter(watch::Sender<u64>);

impl Default for Counter {
    fn default() -> Self {
        Self(watch::Sender::new(0))
    }
}

impl Counter {
    pub(crate) fn incr(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    pub(crate) fn get(&self) -> u64 {
        *self.0.borrow()
    }

    /// A receiver that is woken on every increment after this call.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }

    /// Waits until the counter reaches at least `n`.
    pub(crate) async fn wait_for(&self, n: u64, timeout: Duration, what: &str) -> Result<u64> {
        let mut rx = self.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|v| *v >= n)).await {
            Ok(Ok(v)) => Ok(*v),
            Ok(Err(_)) => bail!("{what} counter was dropped"),
            Err(_) => bail!(
                "timed out after {timeout:?} waiting for {n} {what}; got {}",
                self.get()
            ),
        }
    }
}

/// Waits until `check` returns `Some`, re-evaluating it every time `counter`
/// changes. Returns `Err(())` when `timeout` passes first.
pub(crate) async fn wait_until<T>(
    counter: &Counter,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, ()> {
    // Subscribe before the first check so that no change can slip between
    // the check and the wait.
    let mut rx = counter.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return check().ok_or(()),
        }
    }
}

/// A running accept loop. Dropping it aborts the loop and every connection.
#[derive(Debug)]
pub(crate) struct ServerTask {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerTask {
    /// Runs `handler` on every connection accepted by `listener`, counting
    /// accepted connections in `connections`.
    pub(crate) fn spawn<F, Fut>(listener: TcpListener, connections: Counter, handler: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (shutdown, mut shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    // Either an explicit stop or the sender being dropped.
                    _ = &mut shutdown_rx => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            connections.incr();
                            conns.spawn(handler(stream));
                        }
                        // E.g. EMFILE: back off briefly instead of spinning.
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            drop(listener);
            conns.shutdown().await;
        });
        Self {
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge, e.g. gRPC) with `svc`.
    pub(crate) fn spawn_http<S, B>(listener: TcpListener, connections: Counter, svc: S) -> Self
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Self::spawn(listener, connections, move |stream| {
            let svc = svc.clone();
            async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        })
    }

    /// Closes the listener and every open connection, and waits until that
    /// has happened.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds `addr`, turning the error into something readable.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))
}

/// `127.0.0.1:0`.
pub(crate) fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
