//! Expectations and extractions: judging what a probe observed, and taking
//! values from it for later steps. Probes never judge; this module never
//! performs I/O.

use std::time::Duration;

use http::HeaderName;
use regex::Regex;
use serde_json::Value;
use serde_json_path::JsonPath;

use super::template::Redactor;
use crate::probes::Observation;
use crate::report::ErrorKind;

#[derive(Debug)]
pub enum Expectation {
    Status(Vec<StatusMatch>),
    Header {
        name: HeaderName,
        matcher: Matcher,
    },
    BodyContains(String),
    BodyNotContains(String),
    BodyMatches(Regex),
    Json {
        path: JsonPath,
        text: String,
        matcher: Matcher,
    },
    LatencyBelow(Duration),
    Field {
        field: Field,
        matcher: Matcher,
    },
    /// Browser: no element matches this CSS selector.
    Absent(String),
    /// Browser: every request the page made succeeded.
    BackendRequestsOk,
    /// Browser: the page threw no JavaScript error.
    NoJsErrors,
}

/// A named figure of an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// First column of the first row (SQL), or the reply (Redis).
    Scalar,
    /// Number of rows returned (SQL).
    Rows,
    /// The DNS response code (`NOERROR`, `NXDOMAIN`, ...).
    Rcode,
    /// The DNS answer section, as record data strings.
    Answers,
    /// Days until the earliest certificate expiry (TLS).
    CertDaysLeft,
    /// The negotiated TLS version (`1.2`, `1.3`).
    TlsVersion,
}

impl Field {
    pub fn key(&self) -> &'static str {
        match self {
            Field::Scalar => "scalar",
            Field::Rows => "rows",
            Field::Rcode => "rcode",
            Field::Answers => "answers",
            Field::CertDaysLeft => "cert_days_left",
            Field::TlsVersion => "tls_version",
        }
    }

    /// The step kinds that have this figure.
    pub fn kinds(&self) -> &'static [&'static str] {
        match self {
            Field::Scalar => &["sql", "redis"],
            Field::Rows => &["sql"],
            Field::Rcode | Field::Answers => &["dns"],
            Field::CertDaysLeft | Field::TlsVersion => &["tls"],
        }
    }

    fn value(&self, obs: &Observation) -> Result<Value, String> {
        match (self, obs) {
            (Field::Scalar, Observation::Sql(r)) => r
                .scalar()
                .ok_or_else(|| "the query returned no rows".to_string()),
            (Field::Scalar, Observation::Redis(r)) => Ok(r.reply.clone()),
            (Field::Rows, Observation::Sql(r)) => Ok(Value::from(r.rows.len())),
            (Field::Rcode, Observation::Dns(r)) => Ok(Value::String(r.rcode.clone())),
            (Field::Answers, Observation::Dns(r)) => Ok(Value::from(r.answers.clone())),
            (Field::CertDaysLeft, Observation::Tls(r)) => r
                .days_left()
                .map(|d| Value::from((d * 100.0).round() / 100.0))
                .ok_or_else(|| "the server presented no certificate".to_string()),
            (Field::TlsVersion, Observation::Tls(r)) => Ok(r
                .protocol_version
                .clone()
                .map(Value::String)
                .unwrap_or(Value::Null)),
            _ => Err(format!("this step has no `{}`", self.key())),
        }
    }
}

impl Expectation {
    /// The config key it came from, for messages.
    pub fn key(&self) -> &'static str {
        match self {
            Expectation::Status(_) => "status",
            Expectation::Header { .. } => "headers",
            Expectation::BodyContains(_)
            | Expectation::BodyNotContains(_)
            | Expectation::BodyMatches(_) => "body",
            Expectation::Json { .. } => "json",
            Expectation::LatencyBelow(_) => "latency_below",
            Expectation::Field { field, .. } => field.key(),
            Expectation::Absent(_) => "absent",
            Expectation::BackendRequestsOk => "backend_requests",
            Expectation::NoJsErrors => "no_js_errors",
        }
    }

    /// Whether a step of `kind` can be judged by this expectation.
    pub fn applies_to(&self, kind: &str) -> bool {
        match self {
            Expectation::Status(_) | Expectation::Header { .. } => kind == "http",
            Expectation::BodyContains(_)
            | Expectation::BodyNotContains(_)
            | Expectation::BodyMatches(_) => matches!(kind, "http" | "tcp"),
            Expectation::Json { .. } | Expectation::LatencyBelow(_) => true,
            Expectation::Field { field, .. } => field.kinds().contains(&kind),
            Expectation::Absent(_) | Expectation::BackendRequestsOk | Expectation::NoJsErrors => {
                kind == "browser"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatusMatch {
    Code(u16),
    /// The hundreds digit: `2` for `2xx`.
    Class(u16),
}

impl StatusMatch {
    fn matches(&self, code: u16) -> bool {
        match self {
            StatusMatch::Code(c) => *c == code,
            StatusMatch::Class(c) => code / 100 == *c,
        }
    }
}

impl std::fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusMatch::Code(c) => write!(f, "{c}"),
            StatusMatch::Class(c) => write!(f, "{c}xx"),
        }
    }
}

/// A conjunction of comparisons on one value.
#[derive(Debug, Default)]
pub struct Matcher {
    pub ops: Vec<Op>,
}

#[derive(Debug)]
pub enum Op {
    Equals(Value),
    NotEquals(Value),
    Exists(bool),
    Contains(String),
    Matches(Regex),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    Length(u64),
}

#[derive(Debug)]
pub enum Extraction {
    Json { path: JsonPath, text: String },
    Regex(Regex),
    Header(HeaderName),
    Cookie(String),
}

/// A failed expectation.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

fn fail(message: String) -> Failure {
    Failure {
        kind: ErrorKind::Assertion,
        message,
    }
}

/// Checks every expectation; returns all that failed, in order. Values
/// quoted in messages are redacted before they are shortened, so a cut can
/// never leave part of a secret behind.
pub fn check(expectations: &[Expectation], obs: &Observation, r: &Redactor) -> Vec<Failure> {
    let mut failures = Vec::new();
    let mut json: Option<Result<Value, String>> = None;
    for e in expectations {
        if let Err(f) = check_one(e, obs, &mut json, r) {
            failures.push(f);
        }
    }
    failures
}

fn check_one(
    e: &Expectation,
    obs: &Observation,
    json: &mut Option<Result<Value, String>>,
    r: &Redactor,
) -> Result<(), Failure> {
    let text = || obs.text().map(String::from_utf8_lossy).unwrap_or_default();
    let hint = || body_hint(obs.text().unwrap_or_default(), r);
    match e {
        Expectation::Absent(css) => {
            let Observation::Browser(b) = obs else {
                return Err(fail("absent: not a browser step".into()));
            };
            match b.present.iter().find(|(c, _)| c == css) {
                None => Ok(()),
                Some((_, text)) => Err(fail(format!(
                    "`{css}` is present: {}",
                    quote(text.trim(), r)
                ))),
            }
        }
        Expectation::BackendRequestsOk => {
            let Observation::Browser(b) = obs else {
                return Err(fail("backend_requests: not a browser step".into()));
            };
            let failed: Vec<String> = b
                .requests
                .iter()
                .filter(|q| q.failed())
                .map(|q| r.redact(&q.describe()))
                .collect();
            if failed.is_empty() {
                Ok(())
            } else {
                Err(Failure {
                    kind: ErrorKind::BackendRequest,
                    message: format!(
                        "{} of {} backend request(s) failed: {}",
                        failed.len(),
                        b.requests.len(),
                        failed.join("; ")
                    ),
                })
            }
        }
        Expectation::NoJsErrors => {
            let Observation::Browser(b) = obs else {
                return Err(fail("no_js_errors: not a browser step".into()));
            };
            if b.js_errors.is_empty() {
                Ok(())
            } else {
                Err(Failure {
                    kind: ErrorKind::JsError,
                    message: format!(
                        "the page threw {} JavaScript error(s): {}",
                        b.js_errors.len(),
                        r.redact(&b.js_errors.join("; "))
                    ),
                })
            }
        }
        Expectation::Field { field, matcher } => {
            let v = field
                .value(obs)
                .map_err(|m| fail(format!("{}: {m}", field.key())))?;
            matcher
                .check(std::slice::from_ref(&v), r)
                .map_err(|m| fail(format!("{}: {m}", field.key())))
        }
        Expectation::Status(allowed) => {
            let Observation::Http(resp) = obs else {
                return Err(fail("status: not an HTTP step".into()));
            };
            let code = resp.status.as_u16();
            if allowed.iter().any(|m| m.matches(code)) {
                return Ok(());
            }
            let list = allowed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            Err(Failure {
                kind: ErrorKind::Status(code),
                message: format!(
                    "expected status {list}, got {code}{}",
                    body_hint(&resp.body, r)
                ),
            })
        }
        Expectation::Header { name, matcher } => {
            let Observation::Http(resp) = obs else {
                return Err(fail("headers: not an HTTP step".into()));
            };
            let values: Vec<Value> = resp
                .headers
                .get_all(name)
                .iter()
                .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            matcher
                .check(&values, r)
                .map_err(|m| fail(format!("header `{name}`: {m}")))
        }
        Expectation::BodyContains(s) => {
            if text().contains(s.as_str()) {
                Ok(())
            } else {
                Err(fail(format!(
                    "body does not contain {}{}",
                    quote(s, r),
                    hint()
                )))
            }
        }
        Expectation::BodyNotContains(s) => {
            if text().contains(s.as_str()) {
                Err(fail(format!("body contains {}", quote(s, r))))
            } else {
                Ok(())
            }
        }
        Expectation::BodyMatches(re) => {
            if re.is_match(&text()) {
                Ok(())
            } else {
                Err(fail(format!(
                    "body does not match /{}/{}",
                    re.as_str(),
                    hint()
                )))
            }
        }
        Expectation::Json {
            path,
            text,
            matcher,
        } => {
            let doc = json
                .get_or_insert_with(|| obs.document())
                .as_ref()
                .map_err(|e| fail(format!("{text}: {e}")))?;
            let nodes: Vec<Value> = path.query(doc).all().into_iter().cloned().collect();
            matcher
                .check(&nodes, r)
                .map_err(|m| fail(format!("{text}: {m}")))
        }
        Expectation::LatencyBelow(limit) => {
            let elapsed = obs.elapsed();
            if elapsed < *limit {
                Ok(())
            } else {
                Err(fail(format!(
                    "took {}, expected below {}",
                    fmt_secs(elapsed),
                    fmt_secs(*limit)
                )))
            }
        }
    }
}

impl Matcher {
    /// `nodes` are the values found (JSONPath matches or header values).
    fn check(&self, nodes: &[Value], r: &Redactor) -> Result<(), String> {
        for op in &self.ops {
            if let Op::Exists(want) = op {
                let found = !nodes.is_empty();
                if found != *want {
                    return Err(if *want {
                        "expected a match, found none".into()
                    } else {
                        format!("expected no match, found {}", show(&nodes[0], r))
                    });
                }
                continue;
            }
            let value = match nodes {
                [] => return Err("no match in the response".into()),
                [one] => one,
                many => {
                    return Err(format!(
                        "expected exactly one match, found {} (make the path select one value)",
                        many.len()
                    ));
                }
            };
            op.check(value, r)?;
        }
        Ok(())
    }
}

impl Op {
    fn check(&self, v: &Value, r: &Redactor) -> Result<(), String> {
        let ok = match self {
            Op::Exists(_) => true,
            Op::Equals(want) => values_equal(v, want),
            Op::NotEquals(want) => !values_equal(v, want),
            Op::Contains(s) => text_of(v).contains(s.as_str()),
            Op::Matches(re) => re.is_match(&text_of(v)),
            Op::Gt(n) | Op::Gte(n) | Op::Lt(n) | Op::Lte(n) => {
                let Some(x) = number_of(v) else {
                    return Err(format!("expected a number, got {}", show(v, r)));
                };
                match self {
                    Op::Gt(_) => x > *n,
                    Op::Gte(_) => x >= *n,
                    Op::Lt(_) => x < *n,
                    _ => x <= *n,
                }
            }
            Op::Length(n) => match v {
                Value::Array(a) => a.len() as u64 == *n,
                Value::Object(o) => o.len() as u64 == *n,
                Value::String(s) => s.chars().count() as u64 == *n,
                _ => false,
            },
        };
        if ok {
            return Ok(());
        }
        let want = match self {
            Op::Exists(_) => String::new(),
            Op::Equals(w) => show(w, r),
            Op::NotEquals(w) => format!("anything but {}", show(w, r)),
            Op::Contains(s) => format!("a value containing {}", quote(s, r)),
            Op::Matches(re) => format!("a value matching /{}/", re.as_str()),
            Op::Gt(n) => format!("> {n}"),
            Op::Gte(n) => format!(">= {n}"),
            Op::Lt(n) => format!("< {n}"),
            Op::Lte(n) => format!("<= {n}"),
            Op::Length(n) => format!("length {n}"),
        };
        Err(format!("expected {want}, got {}", show(v, r)))
    }
}

/// Equality where numbers compare by value (1 == 1.0) and a string equals a
/// number or bool written the same way (header values are strings).
fn values_equal(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::Number(n)) => a.trim().parse::<f64>().ok() == n.as_f64(),
        (Value::String(a), Value::Bool(b)) => a.as_str() == if *b { "true" } else { "false" },
        _ => got == want,
    }
}

fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A value as text: strings as they are, anything else as JSON.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn show(v: &Value, r: &Redactor) -> String {
    let s = r.redact(&v.to_string());
    if s.len() > 120 {
        format!("{}…", &s[..s.floor_char_boundary(120)])
    } else {
        s
    }
}

fn quote(s: &str, r: &Redactor) -> String {
    show(&Value::String(s.to_string()), r)
}

/// The start of a body, for messages: enough to recognise an error page.
fn body_hint(body: &[u8], r: &Redactor) -> String {
    if body.is_empty() {
        return String::new();
    }
    // Redact the whole body before cutting: a secret straddling the cut
    // would otherwise escape the redactor half-shown.
    let text = r.redact(&String::from_utf8_lossy(body));
    let cut = &text[..text.floor_char_boundary(200)];
    let one_line: String = cut.split_whitespace().collect::<Vec<_>>().join(" ");
    format!(" (body starts: {})", quote(&one_line, r))
}

fn fmt_secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// Takes a value out of an observation; `cookies` is the run's jar.
pub fn extract(
    ex: &Extraction,
    obs: &Observation,
    cookies: &cookie_store::CookieStore,
) -> Result<String, String> {
    match ex {
        Extraction::Json { path, text } => {
            let doc = obs.document()?;
            let nodes = path.query(&doc).all();
            match nodes.as_slice() {
                [one] => Ok(text_of(one)),
                [] => Err(format!("{text} matched nothing")),
                many => Err(format!(
                    "{text} matched {} values; it must select one",
                    many.len()
                )),
            }
        }
        Extraction::Regex(re) => {
            let body = String::from_utf8_lossy(obs.text().unwrap_or_default());
            let caps = re
                .captures(&body)
                .ok_or_else(|| format!("/{}/ did not match the body", re.as_str()))?;
            let m = caps.get(1).or_else(|| caps.get(0));
            Ok(m.map(|m| m.as_str().to_string()).unwrap_or_default())
        }
        Extraction::Header(name) => match obs {
            Observation::Http(resp) => resp
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .ok_or_else(|| format!("no `{name}` header in the response")),
            _ => Err("headers exist only on HTTP steps".into()),
        },
        Extraction::Cookie(name) => cookies
            .iter_unexpired()
            .find(|c| c.name() == name)
            .map(|c| c.value().to_string())
            .ok_or_else(|| format!("no cookie `{name}` in the run's cookie jar")),
    }
}
