//! `build`: config wire types in, runnable journeys out, with every error
//! found (not just the first), each naming file, line, column and key path.
//!
//! This is where config types die: after it, durations are `Duration`s, URLs
//! are `Url`s, patterns are compiled, secrets are resolved and registered
//! with the journey's redactor. Startup and reload both come through here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use regex::Regex;
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::config::{
    self, ConfigError, ExpectConfig, HttpConfig, JourneyConfig, LoadedFile, Loc, SourceFile,
    StatusConfig, StatusItem,
};
use crate::journey::assert::{Expectation, Extraction, Field, Matcher, Op, StatusMatch};
use crate::journey::template::{Redactor, ResolveError, Scope, Template, resolve};
use crate::journey::{CronSchedule, Journey, Schedule, Step};
mod kinds;
use crate::probes::http::{
    BodyTemplate, DEFAULT_MAX_BODY, DEFAULT_MAX_REDIRECTS, HttpRequest, JsonTemplate, UrlTemplate,
    parse_http_url, tls_config,
};

/// Label names Vantage itself puts on results.
const RESERVED_LABELS: &[&str] = &[
    "journey",
    "step",
    "location",
    "phase",
    "error_type",
    "method",
    "le",
    "quantile",
    "job",
    "instance",
    "signal",
    "version",
];

/// Defaults for fields a journey leaves out.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest interval accepted: below it a journey is a load test.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

pub struct BuildOptions<'a> {
    /// Environment lookup for `${env:NAME}` (a function so tests need no real env).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `--var NAME=VALUE` overrides of journey vars. Not secrets: use them
    /// for settings such as a base URL that should stay visible in spans.
    pub vars: BTreeMap<String, String>,
}

impl BuildOptions<'static> {
    pub fn from_process_env() -> Self {
        BuildOptions {
            env: &|name| std::env::var(name).ok(),
            vars: BTreeMap::new(),
        }
    }
}

/// Builds every journey in `files`. Journeys with errors are left out and
/// their errors returned; callers decide whether a partial set is usable
/// (`check` and reload reject it).
pub fn build_all(
    files: &[LoadedFile],
    opts: &BuildOptions<'_>,
) -> (Vec<Journey>, Vec<ConfigError>) {
    let mut journeys = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for file in files {
        for (i, cfg) in file.journeys.iter().enumerate() {
            let prefix = if file.journeys.len() > 1 {
                format!("[{i}].")
            } else {
                String::new()
            };
            let mut cx = Cx {
                file: &file.source,
                prefix,
                errors: Vec::new(),
                secrets: BTreeSet::new(),
                poisoned: BTreeSet::new(),
                opts,
            };
            let name = cfg.name.value.clone();
            let here = format!("{}:{}", file.source.display, cfg.name.line);
            if let Some(first) = seen.get(&name) {
                cx.err(
                    &cfg.name,
                    "name",
                    format!("duplicate journey name `{name}` (first defined at {first})"),
                );
            } else {
                seen.insert(name, here);
            }
            let journey = cx.journey(cfg);
            if cx.errors.is_empty() {
                journeys.extend(journey);
            }
            errors.append(&mut cx.errors);
        }
    }
    (journeys, errors)
}

struct Cx<'a> {
    file: &'a SourceFile,
    /// `[i].` when the file holds a list.
    prefix: String,
    errors: Vec<ConfigError>,
    secrets: BTreeSet<String>,
    /// Journey vars whose definition failed.
    poisoned: BTreeSet<String>,
    opts: &'a BuildOptions<'a>,
}

impl Cx<'_> {
    fn err<T>(&mut self, at: &Loc<T>, path: &str, message: impl Into<String>) {
        self.err_at(at.line, at.column, path, message);
    }

    fn err_at(&mut self, line: u64, column: u64, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.display.clone(),
            line,
            column,
            path: format!("{}{}", self.prefix, path),
            message: message.into(),
        });
    }

    fn duration(&mut self, d: &Loc<String>, path: &str) -> Option<Duration> {
        match parse_duration(&d.value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(d, path, e);
                None
            }
        }
    }

    fn template(
        &mut self,
        at: (u64, u64),
        path: &str,
        text: &str,
        statics: &BTreeMap<String, String>,
        extracted: &BTreeSet<String>,
    ) -> Option<Template> {
        let scope = Scope {
            statics,
            extracted,
            poisoned: &self.poisoned,
            base_dir: self.file.dir(),
            env: self.opts.env,
        };
        match resolve(text, &scope, &mut self.secrets) {
            Ok(t) => Some(t),
            Err(ResolveError::Invalid(e)) => {
                self.err_at(at.0, at.1, path, e);
                None
            }
            // Already reported where the var is defined, which also keeps
            // the journey out of the built set.
            Err(ResolveError::Poisoned) => None,
        }
    }

    fn journey(&mut self, cfg: &JourneyConfig) -> Option<Journey> {
        if let Some(v) = &cfg.version
            && v.value != config::FORMAT_VERSION
        {
            self.err(
                v,
                "version",
                format!(
                    "unsupported format version {} (this agent reads version {})",
                    v.value,
                    config::FORMAT_VERSION
                ),
            );
        }
        let name = cfg.name.value.trim();
        if name.is_empty() {
            self.err(&cfg.name, "name", "journey name is empty");
        } else if name.len() > 128 || name.chars().any(char::is_control) {
            self.err(
                &cfg.name,
                "name",
                "journey name must be at most 128 characters without control characters",
            );
        }
        let schedule = self.schedule(cfg.schedule.as_ref());
        let timeout = match &cfg.timeout {
            Some(t) => self.duration(t, "timeout"),
            None => Some(DEFAULT_TIMEOUT),
        };
        for (k, v) in &cfg.labels {
            if !is_label_name(k) {
                self.err(
                    v,
                    &format!("labels.{k}"),
                    format!("label name `{k}` must match [a-zA-Z_][a-zA-Z0-9_]*"),
                );
            } else if RESERVED_LABELS.contains(&k.as_str()) {
                self.err(
                    v,
                    &format!("labels.{k}"),
                    format!("label name `{k}` is reserved (Vantage sets it); choose another"),
                );
            }
        }
        // Journey vars: static, resolved once, may hold secrets.
        let mut statics = BTreeMap::new();
        let none = BTreeSet::new();
        for (k, v) in &cfg.vars {
            let path = format!("vars.{k}");
            if !crate::journey::template::is_var_name(k) {
                self.err(v, &path, format!("invalid variable name `{k}`"));
                continue;
            }
            if let Some(value) = self.opts.vars.get(k) {
                statics.insert(k.clone(), value.clone());
                continue;
            }
            if let Some(t) =
                self.template((v.line, v.column), &path, &v.value, &BTreeMap::new(), &none)
            {
                statics.insert(k.clone(), t.as_static().unwrap_or_default().to_string());
            } else {
                self.poisoned.insert(k.clone());
            }
        }
        if cfg.steps.is_empty() {
            self.err(&cfg.name, "steps", "a journey needs at least one step");
        }
        let mut extracted = BTreeSet::new();
        // Exactly sized: a step is large, and spare capacity on thousands
        // of one-step journeys adds up to megabytes.
        let mut steps = Vec::with_capacity(cfg.steps.len());
        let mut step_names: HashMap<&str, usize> = HashMap::new();
        for (i, s) in cfg.steps.iter().enumerate() {
            let path = format!("steps[{i}]");
            if let Some(prev) = step_names.insert(s.name.value.as_str(), i) {
                self.err(
                    &s.name,
                    &format!("{path}.name"),
                    format!(
                        "duplicate step name `{}` (also steps[{prev}])",
                        s.name.value
                    ),
                );
            }
            if let Some(step) = self.step(s, &path, &statics, &mut extracted) {
                steps.push(step);
            }
        }
        let fan_out = cfg
            .fan_out
            .as_ref()
            .and_then(|f| self.fan_out(f, cfg, &statics));
        if cfg.fan_out.is_some() && fan_out.is_none() {
            return None;
        }
        Some(Journey {
            fan_out,
            name: name.into(),
            source: format!("{}:{}", self.file.display, cfg.name.line).into(),
            schedule: schedule?,
            timeout: timeout?,
            labels: Arc::new(
                cfg.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect(),
            ),
            steps,
            redactor: Redactor::new(std::mem::take(&mut self.secrets)),
        })
    }

    fn schedule(&mut self, cfg: Option<&Loc<config::ScheduleConfig>>) -> Option<Schedule> {
        let Some(cfg) = cfg else {
            return Some(Schedule::Every(DEFAULT_INTERVAL));
        };
        match (&cfg.value.every, &cfg.value.cron) {
            (Some(every), None) => match parse_duration(every) {
                Ok(d) if d < MIN_INTERVAL => {
                    self.err(
                        cfg,
                        "schedule.every",
                        format!("interval {every} is below the minimum of 100ms"),
                    );
                    None
                }
                Ok(d) => Some(Schedule::Every(d)),
                Err(e) => {
                    self.err(cfg, "schedule.every", e);
                    None
                }
            },
            (None, Some(text)) => match croner::Cron::from_str(text) {
                Ok(cron) => Some(Schedule::Cron(Arc::new(CronSchedule {
                    text: text.clone(),
                    cron,
                }))),
                Err(e) => {
                    self.err(
                        cfg,
                        "schedule.cron",
                        format!("invalid cron expression `{text}`: {e}"),
                    );
                    None
                }
            },
            _ => {
                self.err(
                    cfg,
                    "schedule",
                    "give exactly one of `every` (e.g. 1m) or `cron` (e.g. \"*/5 * * * *\")",
                );
                None
            }
        }
    }

    fn step(
        &mut self,
        s: &config::StepConfig,
        path: &str,
        statics: &BTreeMap<String, String>,
        extracted: &mut BTreeSet<String>,
    ) -> Option<Step> {
        let errors_before = self.errors.len();
        if s.name.value.trim().is_empty() {
            self.err(&s.name, &format!("{path}.name"), "step name is empty");
        }
        let timeout = s
            .timeout
            .as_ref()
            .and_then(|t| self.duration(t, &format!("{path}.timeout")));
        let given: Vec<&str> = [
            ("http", s.http.is_some()),
            ("sql", s.sql.is_some()),
            ("redis", s.redis.is_some()),
            ("tcp", s.tcp.is_some()),
            ("dns", s.dns.is_some()),
            ("tls", s.tls.is_some()),
            ("browser", s.browser.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        let action = match given.as_slice() {
            [] => {
                self.err(
                    &s.name,
                    path,
                    "a step needs exactly one action: http, browser, sql, redis, tcp, dns or tls",
                );
                None
            }
            [_] => self.action(s, path, statics, extracted),
            many => {
                self.err(
                    &s.name,
                    path,
                    format!(
                        "a step has exactly one action; this one has {}",
                        many.join(" and ")
                    ),
                );
                None
            }
        };
        let kind = given.first().copied().unwrap_or("http");
        let mut expect = match &s.expect {
            Some(e) => self.expect(e, &format!("{path}.expect"), statics, extracted),
            None => Vec::new(),
        };
        for e in &expect {
            if !e.applies_to(kind) {
                self.err(
                    &s.name,
                    &format!("{path}.expect.{}", e.key()),
                    format!("`{}` does not apply to a {kind} step", e.key()),
                );
            }
        }
        // Defaults an SRE expects: HTTP 2xx, DNS NOERROR.
        if kind == "http" && !expect.iter().any(|e| matches!(e, Expectation::Status(_))) {
            expect.insert(0, Expectation::Status(vec![StatusMatch::Class(2)]));
        }
        if kind == "dns"
            && !expect.iter().any(|e| {
                matches!(
                    e,
                    Expectation::Field {
                        field: Field::Rcode,
                        ..
                    }
                )
            })
        {
            expect.insert(
                0,
                Expectation::Field {
                    field: Field::Rcode,
                    matcher: Matcher {
                        ops: vec![Op::Equals(Value::String("NOERROR".into()))],
                    },
                },
            );
        }
        let mut extract = Vec::new();
        for (name, ex) in &s.extract {
            let p = format!("{path}.extract.{name}");
            if !crate::journey::template::is_var_name(name) {
                self.err(ex, &p, format!("invalid variable name `{name}`"));
                continue;
            }
            if statics.contains_key(name) {
                self.err(
                    ex,
                    &p,
                    format!("`{name}` is already a journey var; extract into another name"),
                );
                continue;
            }
            if let Some(x) = self.extraction(ex, &p) {
                let applies = match &x {
                    Extraction::Json { .. } => true,
                    Extraction::Regex(_) => matches!(kind, "http" | "tcp"),
                    Extraction::Header(_) | Extraction::Cookie(_) => kind == "http",
                };
                if applies {
                    extract.push((name.clone(), x));
                } else {
                    self.err(
                        ex,
                        &p,
                        format!("this extraction does not apply to a {kind} step"),
                    );
                }
            }
        }
        // Later steps may use what this one extracts.
        for (name, _) in &extract {
            extracted.insert(name.clone());
        }
        for a in s.browser.iter().flatten() {
            if let config::BrowserActionConfig::Script(sc) = &a.value
                && let Some(name) = &sc.extract
            {
                if crate::journey::template::is_var_name(name) {
                    extracted.insert(name.clone());
                } else {
                    self.err(
                        a,
                        &format!("{path}.browser"),
                        format!("invalid variable name `{name}`"),
                    );
                }
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        // Kept for the agent's life, ten thousand times over: no spare room.
        expect.shrink_to_fit();
        extract.shrink_to_fit();
        Some(Step {
            name: s.name.value.trim().into(),
            timeout,
            continue_on_failure: s.continue_on_failure,
            action: action?,
            expect,
            extract,
        })
    }

    fn http(
        &mut self,
        h: &HttpConfig,
        path: &str,
        statics: &BTreeMap<String, String>,
        extracted: &BTreeSet<String>,
    ) -> Option<HttpRequest> {
        let method = match &h.method {
            None => Some(Method::GET),
            Some(m) => match Method::from_bytes(m.value.trim().to_ascii_uppercase().as_bytes()) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.err(
                        m,
                        &format!("{path}.method"),
                        format!("invalid HTTP method `{}`", m.value),
                    );
                    None
                }
            },
        };
        let url_path = format!("{path}.url");
        let url = self
            .template(
                (h.url.line, h.url.column),
                &url_path,
                &h.url.value,
                statics,
                extracted,
            )
            .and_then(|t| {
                let checked = parse_http_url(&t.render_with_placeholder("x"));
                match (t.as_static(), checked) {
                    (_, Err(e)) => {
                        // Show the text as written: the rendered one may hold a secret.
                        self.err(&h.url, &url_path, format!("{e} in `{}`", h.url.value));
                        None
                    }
                    (Some(_), Ok(u)) => Some(UrlTemplate::Static(u)),
                    (None, Ok(_)) => Some(UrlTemplate::Dynamic(t)),
                }
            });
        let mut headers = Vec::new();
        for (k, v) in &h.headers {
            let p = format!("{path}.headers.{k}");
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(name) => {
                    if let Some(t) =
                        self.template((v.line, v.column), &p, &v.value, statics, extracted)
                    {
                        headers.push((name, t));
                    }
                }
                Err(_) => self.err(v, &p, format!("invalid header name `{k}`")),
            }
        }
        let mut query = Vec::new();
        for (k, v) in &h.query {
            let p = format!("{path}.query.{k}");
            if let Some(t) = self.template((v.line, v.column), &p, &v.value, statics, extracted) {
                query.push((k.clone(), t));
            }
        }
        let body = match &h.body {
            None => Some(BodyTemplate::Empty),
            Some(b) => self.body(b, &format!("{path}.body"), statics, extracted),
        };
        let max_body = match &h.max_body {
            None => Some(DEFAULT_MAX_BODY),
            Some(m) => match parse_size(&m.value) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.err(m, &format!("{path}.max_body"), e);
                    None
                }
            },
        };
        let tls = match (&h.ca_file, h.insecure) {
            (None, insecure) => Some(crate::probes::shared_tls(insecure)),
            (Some(ca), true) => {
                self.err(
                    ca,
                    &format!("{path}.ca_file"),
                    "`ca_file` and `insecure: true` contradict each other",
                );
                None
            }
            (Some(ca), false) => {
                let full = self.file.dir().join(&ca.value);
                match std::fs::read(&full)
                    .map_err(|e| format!("cannot read `{}`: {e}", full.display()))
                    .and_then(|pem| tls_config(Some(&pem), false))
                {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        self.err(ca, &format!("{path}.ca_file"), e);
                        None
                    }
                }
            }
        };
        let max_redirects = match h.follow_redirects {
            Some(false) => 0,
            _ => h.max_redirects.unwrap_or(DEFAULT_MAX_REDIRECTS),
        };
        Some(HttpRequest {
            method: method?,
            url: url?,
            headers,
            query,
            body: body?,
            max_redirects,
            tls: tls?,
            max_body: max_body?,
        })
    }

    fn body(
        &mut self,
        b: &Loc<config::BodyConfig>,
        path: &str,
        statics: &BTreeMap<String, String>,
        extracted: &BTreeSet<String>,
    ) -> Option<BodyTemplate> {
        let at = (b.line, b.column);
        let ct = b.value.content_type.clone();
        match (&b.value.raw, &b.value.json, &b.value.form) {
            (Some(raw), None, None) => self
                .template(at, &format!("{path}.raw"), raw, statics, extracted)
                .map(|text| BodyTemplate::Raw {
                    text,
                    content_type: ct,
                }),
            (None, Some(json), None) => self
                .json_template(at, &format!("{path}.json"), json, statics, extracted)
                .map(|value| BodyTemplate::Json {
                    value,
                    content_type: ct,
                }),
            (None, None, Some(form)) => {
                let mut fields = Vec::new();
                for (k, v) in form {
                    fields.push((
                        k.clone(),
                        self.template(at, &format!("{path}.form.{k}"), v, statics, extracted)?,
                    ));
                }
                Some(BodyTemplate::Form {
                    fields,
                    content_type: ct,
                })
            }
            _ => {
                self.err(b, path, "give exactly one of `raw`, `json` or `form`");
                None
            }
        }
    }

    fn json_template(
        &mut self,
        at: (u64, u64),
        path: &str,
        v: &Value,
        statics: &BTreeMap<String, String>,
        extracted: &BTreeSet<String>,
    ) -> Option<JsonTemplate> {
        Some(match v {
            Value::String(s) => {
                let t = self.template(at, path, s, statics, extracted)?;
                match t.as_static() {
                    Some(text) => JsonTemplate::Plain(Value::String(text.to_string())),
                    None => JsonTemplate::String(t),
                }
            }
            Value::Array(items) => JsonTemplate::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        self.json_template(at, &format!("{path}[{i}]"), x, statics, extracted)
                    })
                    .collect::<Option<_>>()?,
            ),
            Value::Object(fields) => JsonTemplate::Object(
                fields
                    .iter()
                    .map(|(k, x)| {
                        self.json_template(at, &format!("{path}.{k}"), x, statics, extracted)
                            .map(|t| (k.clone(), t))
                    })
                    .collect::<Option<_>>()?,
            ),
            other => JsonTemplate::Plain(other.clone()),
        })
    }

    fn expect(
        &mut self,
        e: &ExpectConfig,
        path: &str,
        statics: &BTreeMap<String, String>,
        extracted: &BTreeSet<String>,
    ) -> Vec<Expectation> {
        let mut out = Vec::new();
        if let Some(status) = &e.status {
            let items = match &status.value {
                StatusConfig::One(i) => vec![i.clone()],
                StatusConfig::Many(v) => v.clone(),
            };
            let mut matches = Vec::new();
            for item in items {
                match item {
                    StatusItem::Code(c) if (100..=599).contains(&c) => matches.push(StatusMatch::Code(c)),
                    StatusItem::Code(c) => self.err(status, &format!("{path}.status"), format!("{c} is not an HTTP status code (100-599)")),
                    StatusItem::Class(s) => match parse_status_class(&s) {
                        Some(m) => matches.push(m),
                        None => self.err(
                            status,
                            &format!("{path}.status"),
                            format!("invalid status `{s}` (use a code such as 200 or a class such as \"2xx\")"),
                        ),
                    },
                }
            }
            if matches.is_empty()
                && self
                    .errors
                    .iter()
                    .all(|e| e.line != status.line || e.column != status.column)
            {
                self.err(status, &format!("{path}.status"), "status list is empty");
            }
            out.push(Expectation::Status(matches));
        }
        for (name, m) in &e.headers {
            let p = format!("{path}.headers.{name}");
            let Ok(hn) = HeaderName::from_bytes(name.as_bytes()) else {
                self.err(m, &p, format!("invalid header name `{name}`"));
                continue;
            };
            if let Some(matcher) = self.matcher(m, &p) {
                out.push(Expectation::Header { name: hn, matcher });
            }
        }
        if let Some(b) = &e.body {
            let p = format!("{path}.body");
            let at = (b.line, b.column);
            if let Some(s) = &b.value.contains
                && let Some(t) = self.template(at, &format!("{p}.contains"), s, statics, extracted)
                && let Some(text) = self.static_text(b, &format!("{p}.contains"), &t)
            {
                out.push(Expectation::BodyContains(text));
            }
            if let Some(s) = &b.value.not_contains
                && let Some(t) =
                    self.template(at, &format!("{p}.not_contains"), s, statics, extracted)
                && let Some(text) = self.static_text(b, &format!("{p}.not_contains"), &t)
            {
                out.push(Expectation::BodyNotContains(text));
            }
            if let Some(re) = &b.value.matches {
                match Regex::new(re) {
                    Ok(r) => out.push(Expectation::BodyMatches(r)),
                    Err(e) => self.err(
                        b,
                        &format!("{p}.matches"),
                        format!("invalid regex: {}", one_line(&e.to_string())),
                    ),
                }
            }
        }
        for (jp, m) in &e.json {
            let p = format!("{path}.json[{}]", serde_json::Value::String(jp.clone()));
            let compiled = match JsonPath::parse(jp) {
                Ok(c) => Some(c),
                Err(err) => {
                    self.err(
                        m,
                        &p,
                        format!("invalid JSONPath `{jp}`: {}", one_line(&err.to_string())),
                    );
                    None
                }
            };
            let matcher = self.matcher(m, &p);
            if let (Some(path), Some(matcher)) = (compiled, matcher) {
                out.push(Expectation::Json {
                    path,
                    text: jp.clone(),
                    matcher,
                });
            }
        }
        if let Some(l) = &e.latency_below
            && let Some(d) = self.duration(l, &format!("{path}.latency_below"))
        {
            out.push(Expectation::LatencyBelow(d));
        }
        if let Some(css) = &e.absent {
            out.push(Expectation::Absent(css.value.clone()));
        }
        if let Some(b) = &e.backend_requests {
            if b.value.trim() == "all_ok" {
                out.push(Expectation::BackendRequestsOk);
            } else {
                self.err(
                    b,
                    &format!("{path}.backend_requests"),
                    format!("unknown value `{}` (use all_ok)", b.value),
                );
            }
        }
        if e.no_js_errors == Some(true) {
            out.push(Expectation::NoJsErrors);
        }
        for (field, m) in [
            (Field::Scalar, &e.scalar),
            (Field::Rows, &e.rows),
            (Field::Rcode, &e.rcode),
            (Field::Answers, &e.answers),
            (Field::CertDaysLeft, &e.cert_days_left),
            (Field::TlsVersion, &e.tls_version),
        ] {
            if let Some(m) = m
                && let Some(matcher) = self.matcher(m, &format!("{path}.{}", field.key()))
            {
                out.push(Expectation::Field { field, matcher });
            }
        }
        out
    }

    fn static_text<T>(&mut self, at: &Loc<T>, path: &str, t: &Template) -> Option<String> {
        match t.as_static() {
            Some(s) => Some(s.to_string()),
            None => {
                self.err(at, path, "expectations cannot use extracted variables");
                None
            }
        }
    }

    fn matcher(&mut self, m: &Loc<config::Matcher>, path: &str) -> Option<Matcher> {
        let mut ops = Vec::new();
        match &m.value {
            config::Matcher::Equals(v) => {
                if v.is_object() {
                    self.err(
                        m,
                        path,
                        "unknown comparison; use equals, not_equals, exists, contains, matches, gt, gte, lt, lte or length (to compare with an object, write `equals: {...}`)",
                    );
                    return None;
                }
                ops.push(Op::Equals(v.clone()));
            }
            config::Matcher::Ops(o) => {
                if let Some(v) = &o.equals {
                    ops.push(Op::Equals(v.clone()));
                }
                if let Some(v) = &o.not_equals {
                    ops.push(Op::NotEquals(v.clone()));
                }
                if let Some(v) = o.exists {
                    ops.push(Op::Exists(v));
                }
                if let Some(v) = &o.contains {
                    ops.push(Op::Contains(v.clone()));
                }
                if let Some(v) = &o.matches {
                    match Regex::new(v) {
                        Ok(r) => ops.push(Op::Matches(r)),
                        Err(e) => {
                            self.err(
                                m,
                                &format!("{path}.matches"),
                                format!("invalid regex: {}", one_line(&e.to_string())),
                            );
                            return None;
                        }
                    }
                }
                for (v, f) in [
                    (o.gt, Op::Gt as fn(f64) -> Op),
                    (o.gte, Op::Gte),
                    (o.lt, Op::Lt),
                    (o.lte, Op::Lte),
                ] {
                    if let Some(v) = v {
                        ops.push(f(v));
                    }
                }
                if let Some(v) = o.length {
                    ops.push(Op::Length(v));
                }
                if ops.is_empty() {
                    self.err(m, path, "empty comparison; give at least one of equals, exists, contains, matches, gt, gte, lt, lte, length");
                    return None;
                }
            }
        }
        Some(Matcher { ops })
    }

    fn extraction(&mut self, ex: &Loc<config::ExtractConfig>, path: &str) -> Option<Extraction> {
        let c = &ex.value;
        let given = [
            c.json.is_some(),
            c.regex.is_some(),
            c.header.is_some(),
            c.cookie.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            self.err(
                ex,
                path,
                "give exactly one of `json`, `regex`, `header` or `cookie`",
            );
            return None;
        }
        if let Some(jp) = &c.json {
            return match JsonPath::parse(jp) {
                Ok(p) => Some(Extraction::Json {
                    path: p,
                    text: jp.clone(),
                }),
                Err(e) => {
                    self.err(
                        ex,
                        &format!("{path}.json"),
                        format!("invalid JSONPath `{jp}`: {}", one_line(&e.to_string())),
                    );
                    None
                }
            };
        }
        if let Some(re) = &c.regex {
            return match Regex::new(re) {
                Ok(r) => Some(Extraction::Regex(r)),
                Err(e) => {
                    self.err(
                        ex,
                        &format!("{path}.regex"),
                        format!("invalid regex: {}", one_line(&e.to_string())),
                    );
                    None
                }
            };
        }
        if let Some(h) = &c.header {
            return match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(Extraction::Header(n)),
                Err(_) => {
                    self.err(
                        ex,
                        &format!("{path}.header"),
                        format!("invalid header name `{h}`"),
                    );
                    None
                }
            };
        }
        c.cookie.clone().map(Extraction::Cookie)
    }
}

/// Parses `500ms`, `30s`, `1m`, `1h30m`; must be above zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err(format!("duration `{text}` must be above zero")),
        Ok(d) => Ok(d),
        Err(_) => Err(format!(
            "invalid duration `{text}` (use a number and a unit, e.g. 500ms, 30s, 5m, 1h)"
        )),
    }
}

/// Parses `10MiB`, `512KiB`, `1000` (bytes), `2MB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size `{text}` (e.g. 512KiB, 10MiB)"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "GiB" => 1024 * 1024 * 1024,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        _ => {
            return Err(format!(
                "invalid size unit in `{text}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("size `{text}` must be above zero and fit in 64 bits"))
}

fn parse_status_class(s: &str) -> Option<StatusMatch> {
    let s = s.trim().to_ascii_lowercase();
    if let Some(d) = s.strip_suffix("xx") {
        return match d {
            "1" | "2" | "3" | "4" | "5" => d.parse().ok().map(StatusMatch::Class),
            _ => None,
        };
    }
    s.parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .map(StatusMatch::Code)
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Loads and builds in one go: what `check`, `once`, `run` and reload share.
pub fn load_and_build(
    paths: &[std::path::PathBuf],
    opts: &BuildOptions<'_>,
) -> Result<Vec<Journey>, Vec<ConfigError>> {
    // Parsed on a thread of its own: the allocator gives each thread its own
    // pages, so the parser's short-lived wire types and the long-lived model
    // do not share pages, and once the wire types are dropped their pages go
    // back to the OS whole (with 10,000 journeys, tens of MiB that would
    // otherwise stay resident in pages pinned by a few model objects).
    let parsed = std::thread::scope(|s| s.spawn(|| config::load_paths(paths)).join());
    let (files, mut errors) = match parsed {
        Ok(p) => p,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    let (journeys, build_errors) = build_all(&files, opts);
    drop(files);
    errors.extend(build_errors);
    errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    if errors.is_empty() {
        Ok(journeys)
    } else {
        Err(errors)
    }
}
