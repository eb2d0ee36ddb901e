//! HTTP steps: one request (plus bounded redirects), each on a fresh
//! connection, timed per phase.
//!
//! The exchange is composed by hand — resolve, TCP connect, TLS handshake,
//! hyper handshake, response head, capped body — because a pooled client has
//! no per-phase hooks and would reuse connections across runs. No retries and
//! no happy-eyeballs: the first resolved address (IPv4 first) is the one
//! tried, so an outage is seen, not hidden. Every request carries W3C
//! `traceparent` with the call's span id and a `tracestate` entry marking it
//! synthetic.
//!
//! The response's phases end when its bytes arrived, as the kernel
//! timestamped them on the socket ([`super::rx_time`]), not when this task
//! got round to looking: otherwise the agent's own wake-up latency would be
//! reported as the target's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;
use url::Url;

use super::rx_time::{RxClock, RxStream};
use super::{Ctx, ProbeError};
use crate::journey::{Template, Vars};
use crate::report::{Call, CallDetail, ErrorKind, HttpCall, Phase, SpanId, TraceId};

/// Default cap on a response body.
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
/// Default number of redirects followed.
pub const DEFAULT_MAX_REDIRECTS: u32 = 10;
/// The `tracestate` entry that marks a request as synthetic.
pub const TRACESTATE: &str = "vantage=synthetic";

/// A built HTTP step.
#[derive(Debug)]
pub struct HttpRequest {
    pub method: Method,
    pub url: UrlTemplate,
    pub headers: Vec<(HeaderName, Template)>,
    pub query: Vec<(String, Template)>,
    pub body: BodyTemplate,
    /// 0: do not follow redirects.
    pub max_redirects: u32,
    pub tls: Arc<rustls::ClientConfig>,
    pub max_body: u64,
}

/// A URL known at build time, or one with run-time variables (validated at
/// build time with placeholders, parsed again when rendered).
#[derive(Debug)]
pub enum UrlTemplate {
    Static(Url),
    Dynamic(Template),
}

#[derive(Debug)]
pub enum BodyTemplate {
    Empty,
    Raw {
        text: Template,
        content_type: Option<String>,
    },
    Json {
        value: JsonTemplate,
        content_type: Option<String>,
    },
    Form {
        fields: Vec<(String, Template)>,
        content_type: Option<String>,
    },
}

/// A JSON value whose string leaves may hold run-time variables.
#[derive(Debug)]
pub enum JsonTemplate {
    Plain(serde_json::Value),
    String(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    fn render(&self, vars: &Vars) -> Result<serde_json::Value, String> {
        Ok(match self {
            JsonTemplate::Plain(v) => v.clone(),
            JsonTemplate::String(t) => serde_json::Value::String(t.render(vars)?),
            JsonTemplate::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|i| i.render(vars))
                    .collect::<Result<_, _>>()?,
            ),
            JsonTemplate::Object(fields) => {
                let mut map = serde_json::Map::new();
                for (k, v) in fields {
                    map.insert(k.clone(), v.render(vars)?);
                }
                serde_json::Value::Object(map)
            }
        })
    }
}

/// What the final response of the step looked like.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub url: Url,
    /// Time from the first request to the last body byte, redirects included.
    pub elapsed: Duration,
    /// When the last byte of this response arrived.
    pub finished: Instant,
}

pub async fn run(req: &HttpRequest, ctx: Ctx<'_>) -> Result<HttpResponse, ProbeError> {
    let start = Instant::now();
    let invalid = |m: String| ProbeError::new(ErrorKind::InvalidRequest, None, m);
    let mut url = match &req.url {
        UrlTemplate::Static(u) => u.clone(),
        UrlTemplate::Dynamic(t) => {
            let text = t.render(ctx.vars).map_err(invalid)?;
            parse_http_url(&text).map_err(|e| invalid(format!("URL after substitution: {e}")))?
        }
    };
    if !req.query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in &req.query {
            pairs.append_pair(k, &v.render(ctx.vars).map_err(invalid)?);
        }
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let value = value.render(ctx.vars).map_err(invalid)?;
        let value = HeaderValue::from_str(&value).map_err(|_| {
            invalid(format!(
                "header `{name}` has characters not allowed in HTTP"
            ))
        })?;
        headers.append(name.clone(), value);
    }
    let (mut body, content_type) = render_body(&req.body, ctx.vars).map_err(invalid)?;
    if let Some(ct) = content_type
        && !headers.contains_key(header::CONTENT_TYPE)
    {
        let v = HeaderValue::from_str(&ct)
            .map_err(|_| invalid("content type has invalid characters".into()))?;
        headers.insert(header::CONTENT_TYPE, v);
    }
    let mut method = req.method.clone();
    let mut redirects = 0u32;
    loop {
        let exchange = Exchange {
            method: &method,
            url: &url,
            headers: &headers,
            body: body.clone(),
            tls: &req.tls,
            max_body: req.max_body,
            trace_id: ctx.trace_id,
            user_agent: &ctx.env.user_agent,
        };
        let resp = exchange.run(ctx.env, ctx.cookies, ctx.rec, ctx.pin).await?;
        let location = resp.headers.get(header::LOCATION).cloned();
        let is_redirect = matches!(resp.status.as_u16(), 301 | 302 | 303 | 307 | 308);
        if !is_redirect || req.max_redirects == 0 {
            return Ok(HttpResponse {
                elapsed: resp.finished.saturating_duration_since(start),
                url,
                ..resp
            });
        }
        let Some(location) = location else {
            return Ok(HttpResponse {
                elapsed: resp.finished.saturating_duration_since(start),
                url,
                ..resp
            });
        };
        if redirects >= req.max_redirects {
            return Err(ProbeError::new(
                ErrorKind::TooManyRedirects,
                None,
                format!(
                    "stopped after {} redirects (last one to {}); raise `max_redirects` or fix the redirect loop",
                    redirects,
                    strip_userinfo(&url)
                ),
            ));
        }
        let next = location
            .to_str()
            .ok()
            .and_then(|l| url.join(l).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                ProbeError::new(
                    ErrorKind::Protocol,
                    None,
                    format!("{} sent an invalid redirect Location", resp.status.as_u16()),
                )
            })?;
        // Like browsers: 303, and 301/302 after a POST, become a GET without body.
        let status = resp.status.as_u16();
        if status == 303 || ((status == 301 || status == 302) && method == Method::POST) {
            if method != Method::HEAD {
                method = Method::GET;
            }
            body = Bytes::new();
            headers.remove(header::CONTENT_TYPE);
        }
        // Credentials never follow a redirect to another origin.
        if next.origin() != url.origin() {
            headers.remove(header::AUTHORIZATION);
            headers.remove(header::COOKIE);
        }
        url = next;
        redirects += 1;
    }
}

fn render_body(body: &BodyTemplate, vars: &Vars) -> Result<(Bytes, Option<String>), String> {
    Ok(match body {
        BodyTemplate::Empty => (Bytes::new(), None),
        BodyTemplate::Raw { text, content_type } => {
            (Bytes::from(text.render(vars)?), content_type.clone())
        }
        BodyTemplate::Json {
            value,
            content_type,
        } => {
            let v = value.render(vars)?;
            let bytes = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
            (
                Bytes::from(bytes),
                Some(content_type.clone().unwrap_or("application/json".into())),
            )
        }
        BodyTemplate::Form {
            fields,
            content_type,
        } => {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in fields {
                ser.append_pair(k, &v.render(vars)?);
            }
            (
                Bytes::from(ser.finish()),
                Some(
                    content_type
                        .clone()
                        .unwrap_or("application/x-www-form-urlencoded".into()),
                ),
            )
        }
    })
}

/// Parses and checks an absolute http(s) URL with a host.
pub fn parse_http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported URL scheme `{}` (use http or https)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    Ok(url)
}

/// The URL without user:password, as exported in `url.full`.
pub fn strip_userinfo(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.as_str().to_owned();
    }
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Runs `work` while polling hyper's connection future `conn` in the same
/// task. No task is spawned per exchange, so a probe costs one task and two
/// cross-task wake-ups fewer; and the connection cannot outlive the
/// exchange: when `work` ends, or a deadline drops the probe future, `conn`
/// is dropped with it and the socket closes. A connection that ends first
/// (closed or broken) leaves `work` to see why through hyper's channel.
async fn drive<C, W>(conn: C, work: W) -> W::Output
where
    C: Future<Output = ()>,
    W: Future,
{
    let mut conn = std::pin::pin!(conn);
    let mut work = std::pin::pin!(work);
    let mut conn_open = true;
    std::future::poll_fn(move |cx| {
        if conn_open && conn.as_mut().poll(cx).is_ready() {
            conn_open = false;
        }
        let out = work.as_mut().poll(cx);
        // The work may have just queued a request: the connection writes it
        // now rather than after another trip through the runtime's queue.
        if out.is_pending() && conn_open && conn.as_mut().poll(cx).is_ready() {
            conn_open = false;
        }
        out
    })
    .await
}

struct Exchange<'a> {
    method: &'a Method,
    url: &'a Url,
    headers: &'a HeaderMap,
    body: Bytes,
    tls: &'a Arc<rustls::ClientConfig>,
    max_body: u64,
    trace_id: TraceId,
    user_agent: &'a str,
}

impl Exchange<'_> {
    async fn run(
        self,
        env: &super::ProbeEnv,
        cookies: &mut cookie_store::CookieStore,
        rec: &mut super::Recorder,
        pin: &Option<super::browser::Pin>,
    ) -> Result<HttpResponse, ProbeError> {
        let host = self.url.host_str().unwrap_or_default().to_string();
        let port = self.url.port_or_known_default().unwrap_or(80);
        let https = self.url.scheme() == "https";
        // Read before the recorder's own readings, so the call, when its
        // times are recomputed below, still covers every recorded phase. The
        // wall clock first: the call's span then ends inside its step's.
        let started_at = SystemTime::now();
        let call_start = Instant::now();
        let span_id = rec.begin_call(CallDetail::Http(HttpCall {
            method: self.method.to_string(),
            url: strip_userinfo(self.url),
            server_address: host.trim_matches(['[', ']']).to_string(),
            server_port: port,
            peer: None,
            status: None,
            protocol_version: None,
            tls: https,
            response_bytes: 0,
            cert_expiry: None,
        }));
        let pinned = pin
            .as_ref()
            .filter(|(h, _)| h.eq_ignore_ascii_case(host.trim_matches(['[', ']'])))
            .map(|(_, ip)| *ip);
        let result = self
            .exchange(env, cookies, rec, &host, port, https, span_id, pinned)
            .await;
        let error_type = match &result {
            Ok((r, _)) if r.status.as_u16() >= 400 => Some(r.status.as_u16().to_string()),
            Ok(_) => None,
            Err(e) => Some(e.kind.as_str().into_owned()),
        };
        rec.end_call(error_type);
        let (resp, arrival) = result?;
        if let Some(call) = rec.calls.last_mut() {
            arrival.apply(call, started_at, call_start);
        }
        Ok(resp)
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        env: &super::ProbeEnv,
        cookies: &mut cookie_store::CookieStore,
        rec: &mut super::Recorder,
        host: &str,
        port: u16,
        https: bool,
        span_id: SpanId,
        pinned: Option<std::net::IpAddr>,
    ) -> Result<(HttpResponse, Arrival), ProbeError> {
        let bare_host = host.trim_matches(['[', ']']);
        // A fanned-out run talks to its replica's address; the name still
        // goes in Host and SNI.
        let ip = match pinned {
            Some(ip) => ip,
            None => super::resolve_host(env, rec, bare_host).await?,
        };
        let addr = SocketAddr::new(ip, port);
        rec.enter(Phase::Connect);
        let tcp = super::connect(addr).await.map_err(|e| {
            ProbeError::new(
                ErrorKind::Connect,
                Some(Phase::Connect),
                format!("cannot connect to {addr}: {e}"),
            )
        })?;
        // A request without a body over plain HTTP is one write, which
        // Nagle's algorithm never holds back (it waits only while earlier
        // data is unacknowledged); a body or TLS means several writes.
        if https || !self.body.is_empty() {
            let _ = tcp.set_nodelay(true);
        }
        let (tcp, rx) = RxStream::new(tcp);
        if let Some(CallDetail::Http(h)) = rec.detail_mut() {
            h.peer = Some(addr);
        }
        let traceparent = format!("00-{}-{}-01", self.trace_id, span_id);
        let (status, headers, body, arrival) = if https {
            rec.enter(Phase::Tls);
            let server_name = rustls::pki_types::ServerName::try_from(bare_host.to_string())
                .map_err(|_| {
                    ProbeError::new(
                        ErrorKind::Tls,
                        Some(Phase::Tls),
                        format!("`{bare_host}` is not a valid TLS server name"),
                    )
                })?;
            let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
            // The TLS side is boxed: its handshake and stream would
            // otherwise make every plain HTTP run as large as an HTTPS one
            // (a run's future is copied whole when it is spawned).
            let stream = Box::pin(connector.connect(server_name, tcp))
                .await
                .map_err(|e| {
                    ProbeError::new(
                        ErrorKind::Tls,
                        Some(Phase::Tls),
                        format!("TLS handshake with {bare_host}:{port} failed: {e}"),
                    )
                })?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let expiry = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(super::tls::earliest_expiry);
            if let Some(CallDetail::Http(h)) = rec.detail_mut() {
                h.cert_expiry = expiry;
            }
            Box::pin(self.send(stream, &rx, h2, cookies, rec, &traceparent, host, port)).await?
        } else {
            self.send(tcp, &rx, false, cookies, rec, &traceparent, host, port)
                .await?
        };
        let resp = HttpResponse {
            status,
            headers,
            body,
            url: self.url.clone(),
            elapsed: Duration::ZERO,
            finished: arrival.last,
        };
        Ok((resp, arrival))
    }

    #[allow(clippy::too_many_arguments)]
    async fn send<S>(
        &self,
        stream: S,
        rx: &RxClock,
        h2: bool,
        cookies: &mut cookie_store::CookieStore,
        rec: &mut super::Recorder,
        traceparent: &str,
        host: &str,
        port: u16,
    ) -> Result<(StatusCode, HeaderMap, Bytes, Arrival), ProbeError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        rec.enter(Phase::Processing);
        let sent = Instant::now();
        let protocol = |e: hyper::Error| {
            ProbeError::new(
                ErrorKind::Protocol,
                Some(Phase::Processing),
                format!("HTTP exchange failed: {}", describe_hyper(&e)),
            )
        };
        let io = TokioIo::new(stream);
        let mut builder = Request::builder().method(self.method.clone());
        let (mut sender, conn) = if h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(protocol)?;
            builder = builder.uri(self.url.as_str());
            (
                Sender::H2(s),
                Either::Left(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(protocol)?;
            let path = match self.url.query() {
                Some(q) => format!("{}?{}", self.url.path(), q),
                None => self.url.path().to_string(),
            };
            builder = builder.uri(path);
            let default_port = self.url.port().is_none();
            let host_header = if default_port {
                host.to_string()
            } else {
                format!("{host}:{port}")
            };
            builder = builder.header(header::HOST, host_header);
            (
                Sender::H1(s),
                Either::Right(async move {
                    let _ = conn.await;
                }),
            )
        };
        drive(conn, async {
        let Some(req_headers) = builder.headers_mut() else {
            return Err(ProbeError::new(
                ErrorKind::InvalidRequest,
                None,
                "cannot build the request",
            ));
        };
        for (k, v) in self.headers {
            req_headers.append(k.clone(), v.clone());
        }
        let set_default = |h: &mut HeaderMap, name: HeaderName, value: &str| {
            if !h.contains_key(&name)
                && let Ok(v) = HeaderValue::from_str(value)
            {
                h.insert(name, v);
            }
        };
        set_default(req_headers, header::USER_AGENT, self.user_agent);
        set_default(req_headers, header::ACCEPT, "*/*");
        req_headers.insert(
            HeaderName::from_static("traceparent"),
            HeaderValue::from_str(traceparent).unwrap_or(HeaderValue::from_static("")),
        );
        req_headers.insert(
            HeaderName::from_static("tracestate"),
            HeaderValue::from_static(TRACESTATE),
        );
        let jar: Vec<String> = cookies
            .get_request_values(self.url)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        if !jar.is_empty()
            && !req_headers.contains_key(header::COOKIE)
            && let Ok(v) = HeaderValue::from_str(&jar.join("; "))
        {
            req_headers.insert(header::COOKIE, v);
        }
        let request = builder
            .body(Full::new(self.body.clone()))
            .map_err(|e| ProbeError::new(ErrorKind::InvalidRequest, None, e.to_string()))?;
        let response = sender.send(request).await.map_err(protocol)?;
        // The connection has read at least the whole head by now; the latest
        // read is the one that completed it (or, when this task was slow to
        // wake, a body read that followed it closely).
        let head = arrived(rx, sent);
        rec.enter(Phase::Transfer);
        let status = response.status();
        let version = match response.version() {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        if let Some(CallDetail::Http(h)) = rec.detail_mut() {
            h.status = Some(status.as_u16());
            h.protocol_version = Some(version);
        }
        let (parts, mut body) = response.into_parts();
        for value in parts.headers.get_all(header::SET_COOKIE) {
            if let Ok(text) = value.to_str() {
                let _ = cookies.parse(text, self.url);
            }
        }
        let too_large = |n: u64| {
            ProbeError::new(
                ErrorKind::BodyTooLarge,
                Some(Phase::Transfer),
                format!(
                    "response body is larger than the {} cap ({n} bytes seen); raise `max_body` if this is expected",
                    format_bytes(self.max_body)
                ),
            )
        };
        if let Some(len) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > self.max_body
        {
            return Err(too_large(len));
        }
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ProbeError::new(
                    ErrorKind::Protocol,
                    Some(Phase::Transfer),
                    format!(
                        "response body broke off after {} bytes: {}",
                        buf.len(),
                        describe_hyper(&e)
                    ),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                let total = (buf.len() + data.len()) as u64;
                if total > self.max_body {
                    return Err(too_large(total));
                }
                buf.extend_from_slice(&data);
                if let Some(CallDetail::Http(h)) = rec.detail_mut() {
                    h.response_bytes = total;
                }
            }
        }
        let last = arrived(rx, head);
        let arrival = Arrival { sent, head, last };
        Ok((status, parts.headers, buf.freeze(), arrival))
        })
        .await
    }
}

/// When the bytes of one response arrived.
#[derive(Clone, Copy, Debug)]
struct Arrival {
    /// When the processing phase began (the request is written after it).
    sent: Instant,
    /// When the read that completed the response head arrived.
    head: Instant,
    /// When the read that completed the body arrived.
    last: Instant,
}

impl Arrival {
    /// Ends the processing and transfer phases, and the call, at the
    /// arrivals. The recorder ended them when this task ran, which is
    /// later by however long the runtime took to wake it. `call_start` is
    /// no later than the recorder's own start, so the call still lasts at
    /// least as long as the sum of its phases; `started_at` is the wall
    /// clock read just before it.
    fn apply(&self, call: &mut Call, started_at: SystemTime, call_start: Instant) {
        call.phases.processing = Some(self.head - self.sent);
        call.phases.transfer = Some(self.last - self.head);
        call.started_at = started_at;
        call.duration = self.last.saturating_duration_since(call_start);
    }
}

/// When the latest bytes on the connection arrived, kept between
/// `not_before` and now: a wall clock stepped while the bytes were queued
/// cannot move a phase out of the time this task saw it take.
fn arrived(rx: &RxClock, not_before: Instant) -> Instant {
    let now = Instant::now();
    rx.latest().map_or(now, |t| t.clamp(not_before, now))
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// hyper's errors wrap the io error that explains them; show both.
fn describe_hyper(e: &hyper::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

pub fn format_bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

/// The web's roots plus the CA certificates of `extra_ca` (PEM), for every
/// verifying TLS client (HTTP, TCP, TLS steps).
pub fn root_store(extra_ca: Option<&[u8]>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca {
        use rustls::pki_types::pem::PemObject;
        let mut added = 0;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not a PEM certificate file: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no certificates found in the CA file".into());
        }
    }
    Ok(roots)
}

/// A TLS client configuration: webpki roots plus `extra_ca` (PEM), or no
/// verification at all when `insecure`. ALPN offers h2 and http/1.1.
pub fn tls_config(extra_ca: Option<&[u8]>, insecure: bool) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let roots = root_store(extra_ca)?;
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any certificate: only for steps that say `insecure: true`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::{drive, strip_userinfo};

    #[test]
    fn userinfo_is_stripped_and_a_url_without_it_is_kept_as_it_is() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        for (given, exported) in [
            (
                "http://user:pw@example.com:8080/a?b=1#c",
                "http://example.com:8080/a?b=1#c",
            ),
            ("https://user@example.com/", "https://example.com/"),
            ("https://:pw@example.com/x", "https://example.com/x"),
            ("http://127.0.0.1:9/p?q", "http://127.0.0.1:9/p?q"),
            ("http://[::1]/", "http://[::1]/"),
        ] {
            assert_eq!(strip_userinfo(&u(given)), exported, "{given}");
        }
    }

    /// A request the work queues is written by the connection in the same
    /// poll: waiting for another poll would put the runtime's queue (other
    /// runs' work) between the call's start and its request.
    #[test]
    fn the_connection_writes_what_the_work_queued_in_the_same_poll() {
        let queued = Cell::new(false);
        let written = Cell::new(false);
        let conn = std::future::poll_fn(|_| {
            if queued.get() {
                written.set(true);
            }
            Poll::<()>::Pending
        });
        let work = std::future::poll_fn(|_| {
            if written.get() {
                return Poll::Ready("answered");
            }
            queued.set(true);
            Poll::Pending
        });
        let mut both = pin!(drive(conn, work));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(both.as_mut().poll(&mut cx).is_pending());
        assert!(written.get(), "the queued request waited for another poll");
        assert_eq!(both.as_mut().poll(&mut cx), Poll::Ready("answered"));
    }

    /// A connection that has ended is not polled again; the work goes on.
    #[test]
    fn an_ended_connection_is_not_polled_again() {
        let polls = Cell::new(0);
        let conn = std::future::poll_fn(|_| {
            polls.set(polls.get() + 1);
            Poll::Ready(())
        });
        let rounds = Cell::new(0);
        let work = std::future::poll_fn(|_| {
            rounds.set(rounds.get() + 1);
            if rounds.get() == 3 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let mut both = pin!(drive(conn, work));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(both.as_mut().poll(&mut cx).is_pending());
        assert!(both.as_mut().poll(&mut cx).is_pending());
        assert!(both.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.get(), 1);
    }
}
