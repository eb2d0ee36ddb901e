//! Loopback servers that misbehave in specific ways, for HTTP prober fault
//! tests.
//!
//! Each `start_*` function binds `127.0.0.1:0` and returns a [`FaultServer`].
//! Dropping the server aborts it: the listener and every connection it
//! accepted are closed.
//!
//! [`FaultServer::hits`] counts HTTP requests for the servers that speak
//! HTTP (`redirect_loop`, `oversized*`, `echo`) and accepted TCP connections
//! for the raw ones (`silent`, `stall_mid_body`);
//! [`FaultServer::connections`] always counts TCP connections.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::{Counter, ServerTask, bind, loopback_any};

/// A request as seen by [`start_echo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string (without `?`), if any.
    pub query: Option<String>,
    /// Header names are lowercase; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// A header by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body as (lossy) UTF-8.
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON document the echo server answers with for this request.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body_str(),
        })
    }
}

/// A running fault server. Stopped when dropped.
#[derive(Debug)]
pub struct FaultServer {
    addr: SocketAddr,
    hits: Counter,
    connections: Counter,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    _server: ServerTask,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT{path}`; `path` should start with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// HTTP requests (HTTP servers) or TCP connections (raw servers) seen.
    pub fn hits(&self) -> u64 {
        self.hits.get()
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.get()
    }

    /// Waits until [`hits`](Self::hits) reaches `n`.
    pub async fn wait_for_hits(&self, n: u64, timeout: Duration) -> Result<u64> {
        self.hits.wait_for(n, timeout, "hits").await
    }

    /// Waits until [`connections`](Self::connections) reaches `n`.
    pub async fn wait_for_connections(&self, n: u64, timeout: Duration) -> Result<u64> {
        self.connections.wait_for(n, timeout, "connections").await
    }

    /// Every request the echo server received, in arrival order (empty for
    /// the other servers).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    /// The most recent request the echo server received.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.requests).last().cloned()
    }
}

/// A loopback address on which nothing listens: binds `127.0.0.1:0`, notes
/// the port and closes the listener again. Connecting to it is refused.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind(loopback_any()).expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr of fresh listener");
    drop(listener);
    addr
}

async fn start_raw<F, Fut>(handler: F) -> FaultServer
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = bind(loopback_any()).await.expect("binding fault server");
    let addr = listener.local_addr().expect("local_addr of fault server");
    let connections = Counter::default();
    let hits = connections.clone();
    FaultServer {
        addr,
        hits,
        connections: connections.clone(),
        requests: Arc::default(),
        _server: ServerTask::spawn(listener, connections, handler),
    }
}

/// Builds an HTTP fault server; `make_svc` gets the server's own address,
/// the hit counter and the request log.
async fn start_http<S, B>(
    make_svc: impl FnOnce(SocketAddr, Counter, Arc<Mutex<Vec<RecordedRequest>>>) -> S,
) -> FaultServer
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = bind(loopback_any()).await.expect("binding fault server");
    let addr = listener.local_addr().expect("local_addr of fault server");
    let hits = Counter::default();
    let connections = Counter::default();
    let requests: Arc<Mutex<Vec<RecordedRequest>>> = Arc::default();
    let svc = make_svc(addr, hits.clone(), requests.clone());
    FaultServer {
        addr,
        hits,
        connections: connections.clone(),
        requests,
        _server: ServerTask::spawn_http(listener, connections, svc),
    }
}

/// Reads until the end of the request head (or EOF / 64 KiB).
async fn read_request_head(stream: &mut TcpStream) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while buf.len() < 64 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
    }
}

/// Accepts TCP connections and then does nothing: never reads, never
/// answers, never closes. For connect-succeeds-but-response-times-out tests.
pub async fn start_silent() -> FaultServer {
    start_raw(|stream| async move {
        let _held = stream;
        std::future::pending::<()>().await;
    })
    .await
}

/// Reads the request head, answers `200 OK` with `Content-Length: 100000`,
/// sends the first 10 body bytes and then stalls forever with the
/// connection open.
pub async fn start_stall_mid_body() -> FaultServer {
    start_raw(|mut stream| async move {
        read_request_head(&mut stream).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100000\r\n\r\n";
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(b"0123456789").await;
        let _ = stream.flush().await;
        std::future::pending::<()>().await;
    })
    .await
}

fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn with_location(mut resp: Response<Full<Bytes>>, location: &str) -> Response<Full<Bytes>> {
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Answers every request with `302 Found`, `Location` alternating between
/// absolute URLs `http://127.0.0.1:PORT/a` and `/b` (anything but `/a` goes
/// to `/a`). A client following redirects never gets out.
pub async fn start_redirect_loop() -> FaultServer {
    start_http(|addr, hits, _| {
        service_fn(move |req: Request<Incoming>| {
            hits.incr();
            let next = if req.uri().path() == "/a" { "/b" } else { "/a" };
            let resp = with_location(
                empty_response(StatusCode::FOUND),
                &format!("http://{addr}{next}"),
            );
            async move { Ok::<_, Infallible>(resp) }
        })
    })
    .await
}

static FILL: [u8; 16 * 1024] = [b'x'; 16 * 1024];

/// A body of `remaining` `x` bytes, produced 16 KiB at a time.
struct RepeatBody {
    remaining: usize,
    /// Whether to advertise the exact length (→ `Content-Length`) or not
    /// (→ chunked transfer encoding).
    exact: bool,
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(FILL.len());
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.exact && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining as u64)
        } else {
            SizeHint::default()
        }
    }
}

async fn start_oversized_inner(bytes: usize, exact: bool) -> FaultServer {
    start_http(move |_, hits, _| {
        service_fn(move |_req: Request<Incoming>| {
            hits.incr();
            let mut resp = Response::new(RepeatBody {
                remaining: bytes,
                exact,
            });
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if exact {
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes as u64));
            }
            async move { Ok::<_, Infallible>(resp) }
        })
    })
    .await
}

/// Answers every request with `200` and a body of `bytes` bytes, streamed
/// with chunked transfer encoding (no `Content-Length`), so the client has
/// to count the bytes itself to enforce a size limit.
pub async fn start_oversized(bytes: usize) -> FaultServer {
    start_oversized_inner(bytes, false).await
}

/// Like [`start_oversized`] but with a correct `Content-Length` header.
pub async fn start_oversized_with_length(bytes: usize) -> FaultServer {
    start_oversized_inner(bytes, true).await
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn has_session_cookie(req: &RecordedRequest) -> bool {
    req.header("cookie").is_some_and(|c| {
        c.split([';', ','])
            .map(str::trim)
            .any(|kv| kv == "session=abc123")
    })
}

async fn echo_handle(
    req: Request<Incoming>,
    addr: SocketAddr,
    hits: Counter,
    log: Arc<Mutex<Vec<RecordedRequest>>>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body,
    };
    lock(&log).push(recorded.clone());
    hits.incr();

    let echo = recorded.to_json();
    let segments: Vec<&str> = recorded.path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["delay", ms] => match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json_response(StatusCode::OK, &echo)
            }
            Err(_) => json_response(StatusCode::BAD_REQUEST, &json!({"error": "bad delay"})),
        },
        ["status", code] => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(code)
                if code.is_informational()
                    || code == StatusCode::NO_CONTENT
                    || code == StatusCode::NOT_MODIFIED =>
            {
                empty_response(code)
            }
            Some(code) => json_response(code, &echo),
            None => json_response(StatusCode::BAD_REQUEST, &json!({"error": "bad status"})),
        },
        ["set-cookie"] => {
            let mut resp = json_response(StatusCode::OK, &echo);
            resp.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static("session=abc123; Path=/"),
            );
            resp
        }
        ["needs-cookie"] => {
            if has_session_cookie(&recorded) {
                json_response(StatusCode::OK, &echo)
            } else {
                json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "missing session cookie"}),
                )
            }
        }
        [kind @ ("redirect" | "absolute-redirect"), n] => match n.parse::<u32>() {
            Ok(0) => json_response(StatusCode::OK, &echo),
            Ok(n) => {
                let next = format!("/{kind}/{}", n - 1);
                let location = if *kind == "redirect" {
                    next
                } else {
                    format!("http://{addr}{next}")
                };
                with_location(empty_response(StatusCode::FOUND), &location)
            }
            Err(_) => json_response(StatusCode::BAD_REQUEST, &json!({"error": "bad count"})),
        },
        _ => json_response(StatusCode::OK, &echo),
    }
}

/// A well-behaved HTTP/1.1 (and h2c) server that records every request
/// (see [`FaultServer::requests`]) and answers with a JSON description of
/// it: `{"method", "path", "query", "headers", "body"}` (header names
/// lowercase, body as a string).
///
/// Special paths:
/// - `/delay/{ms}`: sleeps `ms` milliseconds, then answers 200.
/// - `/status/{code}`: answers with that status.
/// - `/set-cookie`: 200 with `Set-Cookie: session=abc123; Path=/`.
/// - `/needs-cookie`: 200 if the request carries `session=abc123`, else 401.
/// - `/redirect/{n}`: 302 to the relative `/redirect/{n-1}`; `/redirect/0`
///   answers 200.
/// - `/absolute-redirect/{n}`: the same with absolute `Location` URLs.
pub async fn start_echo() -> FaultServer {
    start_http(|addr, hits, log| {
        service_fn(move |req: Request<Incoming>| {
            let (hits, log) = (hits.clone(), log.clone());
            async move { Ok::<_, Infallible>(echo_handle(req, addr, hits, log).await) }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    const WAIT: Duration = Duration::from_secs(10);

    async fn send(req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let resp = client.request(req).await.expect("HTTP request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        (parts.status, parts.headers, body)
    }

    async fn get(url: String) -> (StatusCode, http::HeaderMap, Bytes) {
        send(Request::get(url).body(Full::default()).expect("request")).await
    }

    #[tokio::test]
    async fn echo_describes_and_records_requests() {
        let server = start_echo().await;
        let req = Request::post(server.url("/submit?x=1&y=two"))
            .header("X-Probe-Id", "abc")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"hello")))
            .expect("request");
        let (status, headers, body) = send(req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let echo: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], "/submit");
        assert_eq!(echo["query"], "x=1&y=two");
        assert_eq!(echo["headers"]["x-probe-id"], "abc");
        assert_eq!(echo["headers"]["host"], server.addr().to_string());
        assert_eq!(echo["body"], "hello");

        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/submit"));
        assert_eq!(r.query.as_deref(), Some("x=1&y=two"));
        assert_eq!(r.header("X-PROBE-ID"), Some("abc"));
        assert_eq!(r.body_str(), "hello");
        assert_eq!(r.to_json(), echo);
        assert_eq!(server.hits(), 1);
        assert_eq!(server.last_request().as_ref(), Some(r));
    }

    #[tokio::test]
    async fn echo_special_paths() {
        let server = start_echo().await;
        let (status, _, _) = get(server.url("/status/503")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _, body) = get(server.url("/status/204")).await;
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));

        let (status, headers, _) = get(server.url("/redirect/2")).await;
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(headers[header::LOCATION], "/redirect/1");
        let (status, headers, _) = get(server.url("/absolute-redirect/1")).await;
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(
            headers[header::LOCATION],
            server.url("/absolute-redirect/0").as_str()
        );
        let (status, _, _) = get(server.url("/redirect/0")).await;
        assert_eq!(status, StatusCode::OK);

        let (status, headers, _) = get(server.url("/set-cookie")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::SET_COOKIE], "session=abc123; Path=/");
        let (status, _, _) = get(server.url("/needs-cookie")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let req = Request::get(server.url("/needs-cookie"))
            .header("cookie", "theme=dark; session=abc123")
            .body(Full::default())
            .expect("request");
        assert_eq!(send(req).await.0, StatusCode::OK);

        let started = tokio::time::Instant::now();
        let (status, _, _) = get(server.url("/delay/150")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(server.requests().len(), 9);
    }

    #[tokio::test]
    async fn redirect_loop_never_ends() {
        let server = start_redirect_loop().await;
        let (status, headers, _) = get(server.url("/a")).await;
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(headers[header::LOCATION], server.url("/b").as_str());
        let (status, headers, _) = get(server.url("/b")).await;
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(headers[header::LOCATION], server.url("/a").as_str());
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn refused_addr_refuses() {
        let addr = refused_addr();
        assert!(addr.ip().is_loopback());
        let err = TcpStream::connect(addr).await.expect_err("must be refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn oversized_streams_chunked_or_with_length() {
        const N: usize = 1_000_003;
        let server = start_oversized(N).await;
        let (status, headers, body) = get(server.url("/big")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get(header::CONTENT_LENGTH).is_none());
        assert_eq!(headers[header::TRANSFER_ENCODING], "chunked");
        assert_eq!(body.len(), N);

        let server = start_oversized_with_length(N).await;
        let (status, headers, body) = get(server.url("/big")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_LENGTH], N.to_string().as_str());
        assert!(headers.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(body.len(), N);
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn stall_mid_body_sends_ten_bytes_then_nothing() {
        let server = start_stall_mid_body().await;
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert_ne!(n, 0, "server closed early: {got:?}");
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n")
                && got.len() >= i + 4 + 10
            {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 ok"), "{head}");
        assert!(head.contains("content-length: 100000"), "{head}");
        assert_eq!(&got[head_end..], b"0123456789");
        // The rest never comes (but the connection stays open).
        let more = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        assert!(more.is_err(), "expected a stall, got {more:?}");
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn silent_accepts_but_never_answers() {
        let server = start_silent().await;
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        server
            .wait_for_connections(1, WAIT)
            .await
            .expect("accepted");
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        assert!(read.is_err(), "expected silence, got {read:?}");
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn dropping_a_server_closes_its_connections() {
        let server = start_silent().await;
        let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
        server
            .wait_for_connections(1, WAIT)
            .await
            .expect("accepted");
        drop(server);
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("connection closed promptly")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
