//! Wire types of the journey file format (v1) and loading them from disk.
//!
//! These types mirror the YAML exactly and reject unknown keys. They carry
//! source locations ([`Loc`]) for every value that `journey::build` validates,
//! so its errors can name file, line and column. Nothing here interprets a
//! value: durations, URLs, regexes and JSONPath stay strings until
//! `journey::build`, and no runtime code sees these types.

mod load;

pub use load::{ConfigError, LoadedFile, SourceFile, load_paths, parse_file};

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};

/// The version of the journey file format this agent reads.
pub const FORMAT_VERSION: u32 = 1;

/// A value with the line and column (1-based) where it appears.
#[derive(Clone, Debug, PartialEq)]
pub struct Loc<T> {
    pub value: T,
    pub line: u64,
    pub column: u64,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Loc<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Loc {
            value: s.value,
            line: s.referenced.line(),
            column: s.referenced.column(),
        })
    }
}

impl<T: JsonSchema> JsonSchema for Loc<T> {
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

/// One journey: a named, scheduled sequence of steps.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JourneyConfig {
    /// Format version; only `1` exists. Optional.
    #[serde(default)]
    pub version: Option<Loc<u32>>,
    /// Unique name across every loaded file; used in metrics and span names.
    pub name: Loc<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// When the journey runs. Default: every 1m.
    #[serde(default)]
    pub schedule: Option<Loc<ScheduleConfig>>,
    /// Deadline for the whole run, enforced around it (e.g. `45s`). Default 30s.
    #[serde(default)]
    pub timeout: Option<Loc<String>>,
    /// Extra labels on the journey's results (bounded, user-chosen).
    #[serde(default)]
    pub labels: BTreeMap<String, Loc<String>>,
    /// Variables usable as `${name}` in the steps. Values may use
    /// `${env:NAME}` and `${file:PATH}` secret references.
    #[serde(default)]
    pub vars: BTreeMap<String, Loc<String>>,
    /// `per_address`: run once against every address the first step's host
    /// resolves to; or `{ host, addresses }` for an explicit list.
    #[serde(default)]
    pub fan_out: Option<Loc<FanOutConfig>>,
    pub steps: Vec<StepConfig>,
}

#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum FanOutConfig {
    /// `per_address`.
    Mode(String),
    Explicit(FanOutExplicit),
}

#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct FanOutExplicit {
    /// The host whose replicas are probed; default: the first step's host.
    #[serde(default)]
    pub host: Option<String>,
    /// Addresses for hosts DNS cannot enumerate; default: resolve A and AAAA.
    #[serde(default)]
    pub addresses: Option<Vec<String>>,
}

/// One browser action. Elements are located by exactly one of `css`,
/// `xpath` or `text` (visible text).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BrowserActionConfig {
    /// Load a URL.
    Goto(String),
    /// Type into an input; `submit: true` presses Enter after.
    Fill(FillConfig),
    Click(TargetConfig),
    /// Press keys (`Enter`, `Tab`, `Escape`, text), in an element or the focused one.
    Press(PressConfig),
    /// Choose an option of a `<select>` by `value` or `label`.
    Select(SelectConfig),
    /// Wait until an element appears (visible by default) or, with `gone`, disappears.
    WaitFor(WaitConfig),
    AssertText(AssertTextConfig),
    AssertAbsent(TargetConfig),
    AssertUrl(TextMatchConfig),
    AssertTitle(TextMatchConfig),
    /// Run JavaScript (a function body that may `return` a value).
    Script(ScriptConfig),
    /// Save a screenshot under this name in the artifacts directory.
    Screenshot(String),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    #[serde(default)]
    pub css: Option<String>,
    #[serde(default)]
    pub xpath: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FillConfig {
    #[serde(default)]
    pub css: Option<String>,
    #[serde(default)]
    pub xpath: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    pub value: String,
    #[serde(default)]
    pub submit: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PressConfig {
    #[serde(default)]
    pub css: Option<String>,
    #[serde(default)]
    pub xpath: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    /// Key names joined by `+` are sent in order: `Enter`, `Tab`, `Escape`, ...
    pub keys: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectConfig {
    #[serde(default)]
    pub css: Option<String>,
    #[serde(default)]
    pub xpath: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitConfig {
    #[serde(default)]
    pub css: Option<String>,
    #[serde(default)]
    pub xpath: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    /// Default 10s (and never past the step's deadline).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Require the element to be displayed. Default true.
    #[serde(default)]
    pub visible: Option<bool>,
    /// Wait for it to disappear instead.
    #[serde(default)]
    pub gone: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssertTextConfig {
    #[serde(default)]
    pub css: Option<String>,
    #[serde(default)]
    pub xpath: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub matches: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TextMatchConfig {
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub matches: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptConfig {
    pub js: String,
    /// What the returned value (as text) must satisfy.
    #[serde(default)]
    pub expect: Option<TextMatchConfig>,
    /// Store the returned value (as text) in this variable.
    #[serde(default)]
    pub extract: Option<String>,
}

/// `{ every: 1m }` or `{ cron: "*/5 * * * *" }`.
#[derive(Debug, Deserialize, JsonSchema, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Run at a fixed interval, e.g. `30s`, `1m`, `1h`.
    #[serde(default)]
    pub every: Option<String>,
    /// A 5-field (minute) or 6-field (second) cron expression, in UTC.
    #[serde(default)]
    pub cron: Option<String>,
}

/// One step: exactly one probe kind (`http`, `sql`, `redis`, `tcp`, `dns`,
/// `tls`), with optional expectations and extractions.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    pub name: Loc<String>,
    /// Deadline for this step (also bounded by the journey's).
    #[serde(default)]
    pub timeout: Option<Loc<String>>,
    /// Run the following steps even if this one fails. Default false.
    #[serde(default)]
    pub continue_on_failure: bool,
    #[serde(default)]
    pub http: Option<HttpConfig>,
    #[serde(default)]
    pub sql: Option<SqlConfig>,
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    #[serde(default)]
    pub tcp: Option<TcpConfig>,
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Actions in a real browser; the run's browser steps share one session.
    #[serde(default)]
    pub browser: Option<Vec<Loc<BrowserActionConfig>>>,
    #[serde(default)]
    pub expect: Option<ExpectConfig>,
    /// Variables to set for later steps, by name.
    #[serde(default)]
    pub extract: BTreeMap<String, Loc<ExtractConfig>>,
}

/// An HTTP request on a fresh connection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Any method; default GET.
    #[serde(default)]
    pub method: Option<Loc<String>>,
    /// Absolute http:// or https:// URL.
    pub url: Loc<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, Loc<String>>,
    /// Query parameters appended to the URL (percent-encoded).
    #[serde(default)]
    pub query: BTreeMap<String, Loc<String>>,
    #[serde(default)]
    pub body: Option<Loc<BodyConfig>>,
    /// Follow redirects (default true), at most `max_redirects` (default 10).
    #[serde(default)]
    pub follow_redirects: Option<bool>,
    #[serde(default)]
    pub max_redirects: Option<u32>,
    /// Skip TLS certificate verification. Default false.
    #[serde(default)]
    pub insecure: bool,
    /// PEM file of extra CA certificates to trust (relative to the journey file).
    #[serde(default)]
    pub ca_file: Option<Loc<String>>,
    /// Largest response body accepted, e.g. `10MiB` (the default), `512KiB`.
    #[serde(default)]
    pub max_body: Option<Loc<String>>,
}

/// A SQL statement on PostgreSQL or MySQL/MariaDB, on a fresh connection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// `postgres` or `mysql` (also for MariaDB).
    pub driver: Loc<String>,
    /// Connection URL, e.g. `${env:DB_DSN}` (`postgres://user:pass@host/db`).
    pub dsn: Loc<String>,
    /// One statement; values go in `params` (`$1` for PostgreSQL, `?` for MySQL).
    pub query: Loc<String>,
    /// Bound parameters: strings (may use `${var}`), numbers, booleans, null.
    #[serde(default)]
    pub params: Vec<Loc<serde_json::Value>>,
    /// Default 5s.
    #[serde(default)]
    pub connect_timeout: Option<Loc<String>>,
    /// Enforced by the server, which cancels the statement. Default 10s, and
    /// never past the step's deadline.
    #[serde(default)]
    pub statement_timeout: Option<Loc<String>>,
    /// Allow writes and commit them. Default false (a read-only transaction).
    #[serde(default)]
    pub write: bool,
    /// Allow writes and roll them back: the check leaves nothing behind.
    #[serde(default)]
    pub rollback: bool,
    /// Rows kept from the result (default 1000).
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// `disable`, `prefer` (default), `require`, `verify_ca` or `verify_full`.
    #[serde(default)]
    pub tls: Option<Loc<String>>,
    /// PEM CA file for `verify_ca`/`verify_full` (relative to the journey file).
    #[serde(default)]
    pub ca_file: Option<Loc<String>>,
}

/// One Redis command on a fresh connection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db` or `rediss://` for TLS.
    pub url: Loc<String>,
    /// `PING`, `"GET session:${id}"` or a list such as `[LLEN, jobs]`.
    pub command: Loc<RedisCommand>,
    /// Default 5s.
    #[serde(default)]
    pub connect_timeout: Option<Loc<String>>,
}

#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum RedisCommand {
    Line(String),
    Words(Vec<String>),
}

/// A TCP connection, optionally with TLS, a payload and a reply to judge.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    pub host: Loc<String>,
    pub port: Loc<u16>,
    /// Speak TLS on the connection.
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub ca_file: Option<Loc<String>>,
    /// Sent after connecting (may use `${var}`; `\r\n` as YAML escapes).
    #[serde(default)]
    pub send: Option<Loc<String>>,
    /// Stop reading once this text arrived.
    #[serde(default)]
    pub read_until: Option<String>,
    /// Stop reading after this long without data. Default 1s.
    #[serde(default)]
    pub idle_timeout: Option<Loc<String>>,
}

/// One DNS query.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    pub name: Loc<String>,
    /// Record type: A (default), AAAA, CNAME, MX, NS, TXT, SOA, SRV, PTR, CAA, ...
    #[serde(default, rename = "type")]
    pub record_type: Option<Loc<String>>,
    /// `ip` or `ip:port`; default the system's first nameserver.
    #[serde(default)]
    pub server: Option<Loc<String>>,
    /// `udp` (default) or `tcp`.
    #[serde(default)]
    pub transport: Option<Loc<String>>,
    /// Ask for recursion. Default true.
    #[serde(default)]
    pub recursion: Option<bool>,
}

/// A TLS handshake and certificate check.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub host: Loc<String>,
    /// Default 443.
    #[serde(default)]
    pub port: Option<u16>,
    /// SNI and the name the certificate must match; default `host`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Extra trusted CAs (PEM, relative to the journey file).
    #[serde(default)]
    pub ca_file: Option<Loc<String>>,
    /// Report the figures without verifying the chain.
    #[serde(default)]
    pub insecure: bool,
}

/// Exactly one of `raw`, `json` or `form`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyConfig {
    #[serde(default)]
    pub raw: Option<String>,
    /// Sent as JSON; string values may use `${...}` references.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    /// Sent as `application/x-www-form-urlencoded`.
    #[serde(default)]
    pub form: Option<BTreeMap<String, String>>,
    /// Overrides the content type implied by the body kind.
    #[serde(default)]
    pub content_type: Option<String>,
}

/// What must hold for the step to pass.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectConfig {
    /// HTTP: `200`, `"2xx"`, or a list of either. Default: `2xx`.
    #[serde(default)]
    pub status: Option<Loc<StatusConfig>>,
    /// Response headers by name (case-insensitive).
    #[serde(default)]
    pub headers: BTreeMap<String, Loc<Matcher>>,
    #[serde(default)]
    pub body: Option<Loc<BodyExpect>>,
    /// RFC 9535 JSONPath expressions and what their single match must satisfy.
    #[serde(default)]
    pub json: BTreeMap<String, Loc<Matcher>>,
    /// The step's total time must stay below this, e.g. `2s`.
    #[serde(default)]
    pub latency_below: Option<Loc<String>>,
    /// SQL: first column of the first row; Redis: the reply.
    #[serde(default)]
    pub scalar: Option<Loc<Matcher>>,
    /// SQL: the number of rows returned.
    #[serde(default)]
    pub rows: Option<Loc<Matcher>>,
    /// DNS: the response code (default `NOERROR`).
    #[serde(default)]
    pub rcode: Option<Loc<Matcher>>,
    /// DNS: the answer section as a list of record data strings.
    #[serde(default)]
    pub answers: Option<Loc<Matcher>>,
    /// TLS: days until the earliest certificate expiry in the chain.
    #[serde(default)]
    pub cert_days_left: Option<Loc<Matcher>>,
    /// TLS: the negotiated version, `1.2` or `1.3`.
    #[serde(default)]
    pub tls_version: Option<Loc<Matcher>>,
    /// Browser: no element matches this CSS selector after the step.
    #[serde(default)]
    pub absent: Option<Loc<String>>,
    /// Browser: `all_ok` fails the step when any request the page made
    /// (fetch/XHR) failed or answered 4xx/5xx, naming them.
    #[serde(default)]
    pub backend_requests: Option<Loc<String>>,
    /// Browser: fail when the page threw a JavaScript error or an unhandled rejection.
    #[serde(default)]
    pub no_js_errors: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum StatusConfig {
    One(StatusItem),
    Many(Vec<StatusItem>),
}

/// A code (`204`) or a class (`"2xx"`).
#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum StatusItem {
    Code(u16),
    Class(String),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyExpect {
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub not_contains: Option<String>,
    /// A regular expression the body must match.
    #[serde(default)]
    pub matches: Option<String>,
}

/// A bare value means `equals`; a map states the comparisons.
#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum Matcher {
    Ops(MatcherOps),
    Equals(serde_json::Value),
}

#[derive(Debug, Deserialize, JsonSchema, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct MatcherOps {
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    #[serde(default)]
    pub not_equals: Option<serde_json::Value>,
    /// `true`: at least one match; `false`: none.
    #[serde(default)]
    pub exists: Option<bool>,
    /// Substring of the value's text.
    #[serde(default)]
    pub contains: Option<String>,
    /// Regular expression over the value's text.
    #[serde(default)]
    pub matches: Option<String>,
    #[serde(default)]
    pub gt: Option<f64>,
    #[serde(default)]
    pub gte: Option<f64>,
    #[serde(default)]
    pub lt: Option<f64>,
    #[serde(default)]
    pub lte: Option<f64>,
    /// Exact length of an array, object or string.
    #[serde(default)]
    pub length: Option<u64>,
}

/// Exactly one source: `json`, `regex`, `header` or `cookie`.
#[derive(Debug, Deserialize, JsonSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// JSONPath with a single match; strings are taken as is, other values as JSON text.
    #[serde(default)]
    pub json: Option<String>,
    /// Regular expression over the body; the first capture group, or the whole match.
    #[serde(default)]
    pub regex: Option<String>,
    /// A response header's value.
    #[serde(default)]
    pub header: Option<String>,
    /// A cookie's value from the run's cookie jar.
    #[serde(default)]
    pub cookie: Option<String>,
}

/// The JSON Schema of a journey file (one journey or a list of them).
pub fn json_schema() -> serde_json::Value {
    let one = schemars::schema_for!(JourneyConfig);
    let mut root = serde_json::to_value(&one).unwrap_or_default();
    let defs = root
        .as_object_mut()
        .and_then(|o| o.remove("$defs"))
        .unwrap_or_else(|| serde_json::json!({}));
    let mut journey = root.clone();
    if let Some(o) = journey.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
    }
    let mut defs = defs.as_object().cloned().unwrap_or_default();
    defs.insert("JourneyConfig".into(), journey);
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://vantage.dev/schema/journey-v1.json",
        "title": "Vantage journey file (format v1)",
        "description": "One journey, or a list of journeys.",
        "oneOf": [
            { "$ref": "#/$defs/JourneyConfig" },
            { "type": "array", "items": { "$ref": "#/$defs/JourneyConfig" } }
        ],
        "$defs": defs,
    })
}
