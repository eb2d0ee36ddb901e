//! `JourneyReport` and `StepReport`: the one value every consumer receives.
//!
//! A run produces exactly one report. Telemetry, the Prometheus registry, the
//! CLI summary and JUnit output all read reports; none of them reach back into
//! the runner or a probe. Every string in a report has already been redacted
//! (secret values replaced by `***`, credential headers removed), so consumers
//! can export it as is.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// A W3C trace id (16 bytes), rendered as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A W3C span id (8 bytes), rendered as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn random() -> Self {
        loop {
            let id: [u8; 16] = rand::random();
            if id != [0; 16] {
                return TraceId(id);
            }
        }
    }
}

impl SpanId {
    pub fn random() -> Self {
        loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                return SpanId(id);
            }
        }
    }
}

macro_rules! hex_id {
    ($t:ty) => {
        impl fmt::Display for $t {
            /// Through a buffer on the stack: every run formats its ids
            /// into its `traceparent` header.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; 2 * std::mem::size_of::<$t>()];
                hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
                f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}
hex_id!(TraceId);
hex_id!(SpanId);

/// The small, documented set of failure kinds. `as_str()` is what becomes the
/// `error.type` attribute (and the JSON report's `kind`); an HTTP status that
/// failed its expectation is reported as the status code itself (`"500"`), as
/// semantic conventions do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The step or journey deadline passed; the step error names the phase.
    Timeout,
    /// The name did not resolve (NXDOMAIN, no records, resolver failure).
    Dns,
    /// The TCP connection failed (refused, unreachable, reset while connecting).
    Connect,
    /// The TLS handshake failed (untrusted chain, wrong host, expired, protocol).
    Tls,
    /// The peer broke the protocol or closed the connection mid-exchange.
    Protocol,
    /// The response body exceeded the step's cap.
    BodyTooLarge,
    /// More redirects than the step allows (or a loop).
    TooManyRedirects,
    /// The response arrived but an expectation did not hold.
    Assertion,
    /// The server refused the credentials (database login, Redis AUTH).
    Auth,
    /// The server rejected the statement or command.
    Query,
    /// The browser or WebDriver failed (session could not start, driver died).
    Browser,
    /// A browser action found no element for its selector.
    ElementNotFound,
    /// The page threw a JavaScript error (with `no_js_errors`), or a script failed.
    JsError,
    /// A request the page made to its backend failed (with `backend_requests: all_ok`).
    BackendRequest,
    /// An HTTP status outside the expected set; exported as the code itself.
    Status(u16),
    /// A value could not be extracted into a variable.
    Extraction,
    /// The request could not be built at run time (e.g. an extracted value
    /// made the URL invalid).
    InvalidRequest,
    /// The run was cancelled by shutdown or reload before it finished.
    Cancelled,
}

impl ErrorKind {
    pub fn as_str(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow::Borrowed;
        match self {
            ErrorKind::Timeout => Borrowed("timeout"),
            ErrorKind::Dns => Borrowed("dns"),
            ErrorKind::Connect => Borrowed("connect"),
            ErrorKind::Tls => Borrowed("tls"),
            ErrorKind::Protocol => Borrowed("protocol"),
            ErrorKind::BodyTooLarge => Borrowed("body_too_large"),
            ErrorKind::TooManyRedirects => Borrowed("too_many_redirects"),
            ErrorKind::Assertion => Borrowed("assertion"),
            ErrorKind::Auth => Borrowed("auth"),
            ErrorKind::Query => Borrowed("query"),
            ErrorKind::Browser => Borrowed("browser"),
            ErrorKind::ElementNotFound => Borrowed("element_not_found"),
            ErrorKind::JsError => Borrowed("js_error"),
            ErrorKind::BackendRequest => Borrowed("backend_request"),
            ErrorKind::Status(code) => std::borrow::Cow::Owned(code.to_string()),
            ErrorKind::Extraction => Borrowed("extraction"),
            ErrorKind::InvalidRequest => Borrowed("invalid_request"),
            ErrorKind::Cancelled => Borrowed("cancelled"),
        }
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// The phases of one HTTP exchange, in order. A timeout names the phase it hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Resolve,
    Connect,
    Tls,
    /// From the request being written to the first byte of the response head.
    Processing,
    /// From the response head to the last byte of the body.
    Transfer,
    /// A database statement, from sending it to the last row.
    Query,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Resolve,
        Phase::Connect,
        Phase::Tls,
        Phase::Processing,
        Phase::Transfer,
        Phase::Query,
    ];
    /// The phases of an HTTP exchange (`probe_http_duration_seconds`).
    pub const HTTP: [Phase; 5] = [
        Phase::Resolve,
        Phase::Connect,
        Phase::Tls,
        Phase::Processing,
        Phase::Transfer,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Resolve => "resolve",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Processing => "processing",
            Phase::Transfer => "transfer",
            Phase::Query => "query",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Passed,
    Failed,
    /// Not run because an earlier step failed.
    Skipped,
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepError {
    pub kind: ErrorKind,
    /// Where the deadline or failure hit, when the probe knows.
    pub phase: Option<Phase>,
    /// One or more sentences for a human; already redacted.
    pub message: String,
    /// A screenshot of the page when a browser step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screenshot: Option<String>,
    /// The page's URL when a browser step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_url: Option<String>,
}

/// The result of one journey run.
#[derive(Clone, Debug, Serialize)]
pub struct JourneyReport {
    pub journey: Arc<str>,
    pub location: Arc<str>,
    pub labels: Arc<BTreeMap<String, String>>,
    /// The replica address of a fanned-out run (`fan_out`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub trace_id: TraceId,
    /// The span id of the run's root span.
    pub span_id: SpanId,
    #[serde(serialize_with = "ser_system_time")]
    pub started_at: SystemTime,
    #[serde(serialize_with = "ser_duration")]
    pub duration: Duration,
    /// How late the run started against its schedule (None for `once`).
    #[serde(serialize_with = "ser_opt_duration")]
    pub lateness: Option<Duration>,
    pub outcome: Outcome,
    /// The first failed step's error, with that step's index.
    pub failed_step: Option<usize>,
    pub steps: Vec<StepReport>,
}

impl JourneyReport {
    pub fn error(&self) -> Option<&StepError> {
        self.failed_step
            .and_then(|i| self.steps.get(i))
            .and_then(|s| s.error.as_ref())
    }

    /// Every outgoing call of the run, in order.
    pub fn calls(&self) -> impl Iterator<Item = (&StepReport, &Call)> {
        self.steps
            .iter()
            .flat_map(|s| s.calls.iter().map(move |c| (s, c)))
    }
}

/// The result of one step.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub name: Arc<str>,
    /// The probe kind (`http`, ...).
    pub kind: &'static str,
    pub span_id: SpanId,
    #[serde(serialize_with = "ser_system_time")]
    pub started_at: SystemTime,
    #[serde(serialize_with = "ser_duration")]
    pub duration: Duration,
    pub outcome: StepOutcome,
    pub error: Option<StepError>,
    /// The outgoing calls the step made (one per HTTP request, redirects included).
    pub calls: Vec<Call>,
}

/// One outgoing call a probe made: becomes a CLIENT span and a semconv
/// client-duration metric. The protocol-specific part is an enum, so a new
/// protocol is one variant, not new fields on every call.
#[derive(Clone, Debug, Serialize)]
pub struct Call {
    pub span_id: SpanId,
    #[serde(serialize_with = "ser_system_time")]
    pub started_at: SystemTime,
    #[serde(serialize_with = "ser_duration")]
    pub duration: Duration,
    /// `error.type` of this call alone, when it failed at the transport level
    /// or returned an error status.
    pub error_type: Option<String>,
    /// Time in each phase the call went through.
    pub phases: PhaseTimings,
    pub detail: CallDetail,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "protocol", rename_all = "snake_case")]
pub enum CallDetail {
    Http(HttpCall),
    Db(DbCall),
    Dns(DnsCall),
    Tcp(TcpCall),
    Tls(TlsCall),
}

/// A database operation (SQL statement or Redis command).
#[derive(Clone, Debug, Serialize)]
pub struct DbCall {
    /// Semconv `db.system.name`: `postgresql`, `mysql`, `mariadb`, `redis`.
    pub system: &'static str,
    /// Semconv `db.operation.name`: `SELECT`, `INSERT`, `GET`, ...
    pub operation: String,
    /// The statement, only when its values are bound as parameters.
    pub query_text: Option<String>,
    pub namespace: Option<String>,
    pub server_address: String,
    pub server_port: u16,
    /// SQLSTATE or Redis error prefix, on failure.
    pub response_status: Option<String>,
    pub rows: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DnsCall {
    pub question: String,
    pub record_type: String,
    pub server: SocketAddr,
    pub transport: &'static str,
    pub rcode: Option<String>,
    pub answers: u32,
    pub authorities: u32,
    pub additionals: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct TcpCall {
    pub server_address: String,
    pub server_port: u16,
    pub peer: Option<SocketAddr>,
    pub tls: bool,
    pub bytes_received: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TlsCall {
    pub server_address: String,
    pub server_port: u16,
    pub peer: Option<SocketAddr>,
    /// `1.2` or `1.3`.
    pub protocol_version: Option<String>,
    pub cipher: Option<String>,
    /// Earliest `notAfter` in the presented chain, unix seconds.
    pub earliest_expiry: Option<i64>,
    /// Whether the chain verified for the host (the step fails otherwise).
    pub verified: Option<bool>,
}

/// An HTTP request on a fresh connection, with its phase timings.
#[derive(Clone, Debug, Serialize)]
pub struct HttpCall {
    pub method: String,
    /// `url.full` with userinfo removed and secret values redacted.
    pub url: String,
    pub server_address: String,
    pub server_port: u16,
    pub peer: Option<SocketAddr>,
    pub status: Option<u16>,
    /// `1.1` or `2`.
    pub protocol_version: Option<&'static str>,
    pub tls: bool,
    pub response_bytes: u64,
    /// Earliest `notAfter` in the server's chain (unix seconds), for https.
    pub cert_expiry: Option<i64>,
}

/// Time spent in each phase; `None` for a phase that was not reached or does
/// not apply (no `tls` for plain HTTP, no `resolve` for a literal address).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PhaseTimings {
    #[serde(serialize_with = "ser_opt_duration")]
    pub resolve: Option<Duration>,
    #[serde(serialize_with = "ser_opt_duration")]
    pub connect: Option<Duration>,
    #[serde(serialize_with = "ser_opt_duration")]
    pub tls: Option<Duration>,
    #[serde(serialize_with = "ser_opt_duration")]
    pub processing: Option<Duration>,
    #[serde(serialize_with = "ser_opt_duration")]
    pub transfer: Option<Duration>,
    #[serde(
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub query: Option<Duration>,
}

impl PhaseTimings {
    pub fn get(&self, phase: Phase) -> Option<Duration> {
        match phase {
            Phase::Resolve => self.resolve,
            Phase::Connect => self.connect,
            Phase::Tls => self.tls,
            Phase::Processing => self.processing,
            Phase::Transfer => self.transfer,
            Phase::Query => self.query,
        }
    }

    pub fn set(&mut self, phase: Phase, d: Duration) {
        let slot = match phase {
            Phase::Resolve => &mut self.resolve,
            Phase::Connect => &mut self.connect,
            Phase::Tls => &mut self.tls,
            Phase::Processing => &mut self.processing,
            Phase::Transfer => &mut self.transfer,
            Phase::Query => &mut self.query,
        };
        *slot = Some(d);
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn ser_system_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let unix = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    s.serialize_f64(unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_render_as_lowercase_hex_in_byte_order() {
        let mut trace = [0u8; 16];
        trace[0] = 0x0a;
        trace[15] = 0xf0;
        assert_eq!(
            TraceId(trace).to_string(),
            "0a0000000000000000000000000000f0"
        );
        let span = SpanId([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        assert_eq!(span.to_string(), "0123456789abcdef");
        assert_eq!(format!("{span:?}"), "0123456789abcdef");
        assert_eq!(
            serde_json::to_string(&span).expect("serialise"),
            "\"0123456789abcdef\""
        );
    }
}
