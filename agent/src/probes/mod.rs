//! Probes: one file per step kind, behind one enum.
//!
//! A probe performs one attempt on fresh connections, records its calls and
//! phase timings in a [`Recorder`], and returns what it observed. It never
//! retries, never pools connections across runs, never judges (expectations
//! live in `journey::assert`) and never exports: this module imports neither
//! `telemetry`, `store` nor `server`. Deadlines are enforced around a probe by
//! the runner; the recorder tells the runner which phase a timeout hit.
//!
//! Adding a kind is one file here plus one arm in [`Action`] and [`run`].

pub mod browser;
pub mod dns;
pub mod http;
pub mod redis;
pub mod rx_time;
pub mod sql;
pub mod tcp;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::journey::Vars;
use crate::report::{Call, CallDetail, ErrorKind, Phase, PhaseTimings, SpanId, TraceId};

/// What a step does.
#[derive(Debug)]
pub enum Action {
    Http(http::HttpRequest),
    // Boxed: twice the size of an HTTP request, and far rarer.
    Sql(Box<sql::SqlCheck>),
    Redis(Box<redis::RedisCheck>),
    Tcp(tcp::TcpCheck),
    Dns(dns::DnsQuery),
    Tls(tls::TlsCheck),
    Browser(browser::BrowserStep),
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Http(_) => "http",
            Action::Sql(_) => "sql",
            Action::Redis(_) => "redis",
            Action::Tcp(_) => "tcp",
            Action::Dns(_) => "dns",
            Action::Tls(_) => "tls",
            Action::Browser(_) => "browser",
        }
    }
}

/// What a probe saw; judged by `journey::assert`.
#[derive(Debug)]
pub enum Observation {
    Http(http::HttpResponse),
    Sql(sql::SqlResult),
    Redis(redis::RedisResult),
    Tcp(tcp::TcpResult),
    Dns(dns::DnsResult),
    Tls(tls::TlsResult),
    Browser(browser::BrowserResult),
}

impl Observation {
    /// Time from the step's first byte on the wire to its last.
    pub fn elapsed(&self) -> std::time::Duration {
        match self {
            Observation::Http(r) => r.elapsed,
            Observation::Sql(r) => r.elapsed,
            Observation::Redis(r) => r.elapsed,
            Observation::Tcp(r) => r.elapsed,
            Observation::Dns(r) => r.elapsed,
            Observation::Tls(r) => r.elapsed,
            Observation::Browser(r) => r.elapsed,
        }
    }

    /// The observation as a JSON document for JSONPath expectations and
    /// extractions: the HTTP body parsed, SQL rows as objects, the Redis
    /// reply, DNS sections, the TLS handshake's figures.
    pub fn document(&self) -> Result<serde_json::Value, String> {
        match self {
            Observation::Http(r) => serde_json::from_slice(&r.body)
                .map_err(|e| format!("response body is not JSON ({e})")),
            Observation::Sql(r) => Ok(r.document()),
            Observation::Redis(r) => Ok(r.reply.clone()),
            Observation::Dns(r) => Ok(r.document()),
            Observation::Tls(r) => Ok(r.document()),
            Observation::Browser(r) => Ok(r.document()),
            Observation::Tcp(r) => serde_json::from_slice(&r.received)
                .map_err(|e| format!("received data is not JSON ({e})")),
        }
    }

    /// The bytes a body expectation looks at.
    pub fn text(&self) -> Option<&[u8]> {
        match self {
            Observation::Http(r) => Some(&r.body),
            Observation::Tcp(r) => Some(&r.received),
            _ => None,
        }
    }
}

/// A probe failure before anything could be judged. `kind` becomes `error.type`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProbeError {
    pub kind: ErrorKind,
    pub phase: Option<Phase>,
    pub message: String,
}

impl ProbeError {
    pub fn new(kind: ErrorKind, phase: Option<Phase>, message: impl Into<String>) -> Self {
        ProbeError {
            kind,
            phase,
            message: message.into(),
        }
    }
}

/// Shared, read-only things probes need: built once per agent.
pub struct ProbeEnv {
    pub resolver: hickory_resolver::TokioResolver,
    pub user_agent: String,
    /// Where browser sessions come from; `None` when browsers are off.
    pub browser: Option<browser::Driver>,
}

impl ProbeEnv {
    pub fn new() -> Result<Self, String> {
        let mut builder = hickory_resolver::Resolver::builder_tokio()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
        // Every run resolves afresh: a cached answer would hide a DNS outage.
        builder.options_mut().cache_size = 0;
        builder.options_mut().attempts = 1;
        // IPv4 first, then IPv6, and only the first answer is tried (no
        // happy-eyeballs): `localhost` resolves to 127.0.0.1, not ::1.
        builder.options_mut().ip_strategy =
            hickory_resolver::config::LookupIpStrategy::Ipv4thenIpv6;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(ProbeEnv {
            resolver,
            user_agent: format!("Vantage/{} (synthetic)", env!("CARGO_PKG_VERSION")),
            browser: Some(browser::Driver::new(browser::BrowserOptions::default())),
        })
    }

    /// The same, with these browser settings.
    pub fn with_browser(opts: browser::BrowserOptions) -> Result<Self, String> {
        let mut env = Self::new()?;
        env.browser = Some(browser::Driver::new(opts));
        Ok(env)
    }
}

/// Per-step inputs and outputs of a probe.
pub struct Ctx<'a> {
    pub env: &'a ProbeEnv,
    pub trace_id: TraceId,
    /// The step's deadline. The runner enforces it around the probe; a probe
    /// passes it on to servers that can enforce it too (SQL statement timeouts).
    pub deadline: Instant,
    pub vars: &'a Vars,
    pub cookies: &'a mut cookie_store::CookieStore,
    pub rec: &'a mut Recorder,
    /// The run's browser slot and session (opened by its first browser step).
    pub browser: &'a mut browser::BrowserSlot,
    /// Per-replica fan-out: this host connects to this address only.
    pub pin: &'a Option<browser::Pin>,
}

/// Runs one step's action.
///
/// Every kind but HTTP is boxed: a future is as large as its largest
/// state, and a run's future is copied whole when it is spawned. Unboxed,
/// the browser and TCP probes made every HTTP run's future twice the size.
pub async fn run(action: &Action, ctx: Ctx<'_>) -> Result<Observation, ProbeError> {
    match action {
        Action::Http(req) => http::run(req, ctx).await.map(Observation::Http),
        Action::Sql(c) => Box::pin(sql::run(c, ctx)).await.map(Observation::Sql),
        Action::Redis(c) => Box::pin(redis::run(c, ctx)).await.map(Observation::Redis),
        Action::Tcp(c) => Box::pin(tcp::run(c, ctx)).await.map(Observation::Tcp),
        Action::Dns(q) => Box::pin(dns::run(q, ctx)).await.map(Observation::Dns),
        Action::Tls(c) => Box::pin(tls::run(c, ctx)).await.map(Observation::Tls),
        Action::Browser(b) => Box::pin(browser::run(b, ctx))
            .await
            .map(Observation::Browser),
    }
}

/// Where a probe is and what calls it made. Owned by the runner and lent to
/// the probe, so when a deadline drops the probe mid-call the runner still
/// knows the phase and can close the open call.
#[derive(Default)]
pub struct Recorder {
    pub phase: Option<Phase>,
    pub calls: Vec<Call>,
    open: Option<OpenCall>,
}

struct OpenCall {
    span_id: SpanId,
    started_at: SystemTime,
    start: Instant,
    phase_start: Instant,
    phases: PhaseTimings,
    detail: CallDetail,
}

impl Recorder {
    /// Starts a call; returns the span id to put in `traceparent`.
    pub fn begin_call(&mut self, detail: CallDetail) -> SpanId {
        let now = Instant::now();
        let span_id = SpanId::random();
        self.open = Some(OpenCall {
            span_id,
            started_at: SystemTime::now(),
            start: now,
            phase_start: now,
            phases: PhaseTimings::default(),
            detail,
        });
        self.phase = None;
        span_id
    }

    /// Enters `phase`, closing the previous one's timing.
    pub fn enter(&mut self, phase: Phase) {
        self.close_phase();
        self.phase = Some(phase);
    }

    fn close_phase(&mut self) {
        let now = Instant::now();
        if let (Some(open), Some(prev)) = (self.open.as_mut(), self.phase) {
            open.phases.set(prev, now - open.phase_start);
            open.phase_start = now;
        } else if let Some(open) = self.open.as_mut() {
            open.phase_start = now;
        }
    }

    /// Gives mutable access to the open call's details (status, peer, ...).
    pub fn detail_mut(&mut self) -> Option<&mut CallDetail> {
        self.open.as_mut().map(|o| &mut o.detail)
    }

    /// Ends the open call; `error_type` is set when it failed.
    pub fn end_call(&mut self, error_type: Option<String>) {
        self.close_phase();
        if let Some(open) = self.open.take() {
            self.calls.push(Call {
                span_id: open.span_id,
                started_at: open.started_at,
                duration: open.start.elapsed(),
                error_type,
                phases: open.phases,
                detail: open.detail,
            });
        }
    }

    /// Adds a call observed after the fact (a request a browser page made).
    pub fn push_call(&mut self, call: Call) {
        self.calls.push(call);
    }

    /// Closes a call the probe could not finish (deadline or cancellation).
    pub fn abort(&mut self, kind: ErrorKind) {
        if self.open.is_some() {
            self.end_call(Some(kind.as_str().into_owned()));
        }
    }
}

/// The address to connect to: a literal as is, a name through the resolver
/// (recording the resolve phase). IPv4 first, then IPv6, as the resolver
/// orders them; only the first is tried.
pub async fn resolve_host(
    env: &ProbeEnv,
    rec: &mut Recorder,
    host: &str,
) -> Result<std::net::IpAddr, ProbeError> {
    let host = host.trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ip);
    }
    rec.enter(Phase::Resolve);
    let dns = |m: String| ProbeError::new(ErrorKind::Dns, Some(Phase::Resolve), m);
    let lookup = env
        .resolver
        .lookup_ip(host)
        .await
        .map_err(|e| dns(format!("cannot resolve `{host}`: {e}")))?;
    lookup
        .iter()
        .next()
        .ok_or_else(|| dns(format!("`{host}` has no A or AAAA records")))
}

/// Opens a TCP connection to `addr`, returning as soon as it is established.
///
/// Unlike `TcpStream::connect`, which always waits for the runtime to
/// report the socket writable, this asks the kernel right after `connect`
/// whether the handshake is already done, as it is on loopback and often
/// on a LAN (it completes inside the system call there). The connect phase
/// then ends when the connection was made, not when this task was next
/// polled, and the run skips a trip through the runtime's event loop.
/// Otherwise it waits as usual.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::AsFd;
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    enum State {
        Connected,
        Pending,
        /// Writable, with an error or a hang-up: `SO_ERROR` says which.
        Failed,
    }
    let state = match socket.connect(&addr.into()) {
        Ok(()) => State::Connected,
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {
            let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
            match poll(&mut fds, PollTimeout::ZERO) {
                // Writable and nothing wrong: the handshake is done, and
                // asking for the socket's error would be a wasted call.
                Ok(1) => match fds[0].revents() {
                    Some(r) if r == PollFlags::POLLOUT => State::Connected,
                    Some(r) if r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) => {
                        State::Failed
                    }
                    _ => State::Pending,
                },
                // Interrupted or failed: treat as not yet known and wait below.
                _ => State::Pending,
            }
        }
        Err(e) => return Err(e),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    match state {
        State::Connected => return Ok(stream),
        State::Pending => stream.writable().await?,
        State::Failed => {}
    }
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok(stream),
    }
}

/// Shared TLS client configurations, built once.
pub fn shared_tls(insecure: bool) -> Arc<rustls::ClientConfig> {
    use std::sync::OnceLock;
    static VERIFIED: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    static INSECURE: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let cell = if insecure { &INSECURE } else { &VERIFIED };
    cell.get_or_init(|| {
        // Without an extra CA file the only fallible part is the protocol
        // version list, which the ring provider always supports.
        #[allow(clippy::expect_used)]
        let config = http::tls_config(None, insecure).expect("ring supports TLS 1.2 and 1.3");
        Arc::new(config)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::connect;
    use std::time::Duration;

    #[tokio::test]
    async fn connect_returns_an_established_stream_or_the_refusal() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = connect(addr).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addr);
        drop(listener);
        let err = connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }

    #[tokio::test]
    async fn connect_waits_for_a_handshake_that_is_not_done_yet() {
        // A listener whose accept queue is full drops new SYNs, so the
        // second connection stays in progress until the queue has room and
        // the client resends its SYN (after about a second).
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        socket.listen(0).unwrap();
        let listener = std::net::TcpListener::from(socket);
        let addr = listener.local_addr().unwrap();
        let _first = connect(addr).await.unwrap();
        let second = tokio::spawn(connect(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "connected past a full accept queue");
        let _accepted = listener.accept().unwrap();
        let stream = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("connection never completed")
            .unwrap()
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addr);
    }
}
