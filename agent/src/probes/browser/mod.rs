//! Browser steps over WebDriver: goto, fill, click, press, select, wait
//! for, assert text/URL/title, run a script, screenshot — in a real
//! Chromium, one session per run shared by the run's browser steps.
//!
//! What the page's own code did is recorded by `instrument.js`, installed
//! through chromedriver's DevTools passthrough before any page script runs:
//! every fetch/XHR with its outcome, JavaScript errors and unhandled
//! rejections, console errors, LCP and CLS. Why a request failed (a DNS
//! name that does not resolve, a CORS rejection) is invisible to page
//! scripts; it comes from Chromium's DevTools network log, which
//! chromedriver exposes as the `performance` log. Each backend request
//! becomes a CLIENT call of the step, so it is a span of its own.
//!
//! Every WebDriver call is a round trip through chromedriver into the page,
//! and the step's time, so each does as much as it can: a `wait_for` look
//! finds and checks visibility in one script, and the end of a step reads
//! the records, the URL, the title and its `absent` elements in one script,
//! after the requests the step started have answered (at most a second).
//! The network log is read only when a request failed or the step did.

pub mod driver;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fantoccini::Locator;
use fantoccini::error::CmdError;
use regex::Regex;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Ctx, ProbeError};
use crate::journey::{Template, Vars};
use crate::report::{Call, CallDetail, ErrorKind, HttpCall, Phase, PhaseTimings, SpanId};

pub use driver::{BrowserOptions, BrowserSlot, Driver, Profile, Session};

const INSTRUMENT: &str = include_str!("instrument.js");

/// `wait_for`'s look at the page, one WebDriver call: whether an element
/// matches the CSS selector or the XPath (`arguments[0]` or `[1]`) and,
/// when `arguments[2]` asks, is displayed. "Displayed" follows WebDriver's
/// element-displayedness (the Selenium atom chromedriver uses): not hidden
/// by `display`, `visibility` or zero opacity up the tree, with a box of
/// some size (its own or a descendant's), not clipped away entirely by an
/// ancestor that hides its overflow, and not off the top or left of the
/// page; an `<option>` counts as its `<select>`; `<input type=hidden>` and
/// `<noscript>` never count.
const SHOWN: &str = r#"
const [css, xpath, visible] = arguments;
let found = [];
if (css !== null) {
  found = Array.from(document.querySelectorAll(css));
} else {
  const r = document.evaluate(xpath, document, null, XPathResult.ORDERED_NODE_SNAPSHOT_TYPE, null);
  for (let i = 0; i < r.snapshotLength; i++) {
    const n = r.snapshotItem(i);
    if (n.nodeType === Node.ELEMENT_NODE) found.push(n);
  }
}
if (!visible) return found.length > 0;
const styled = (el) => {
  for (let e = el; e; e = e.parentElement) {
    const cs = getComputedStyle(e);
    if (cs.display === 'none' || Number(cs.opacity) === 0) return false;
  }
  const v = getComputedStyle(el).visibility;
  return v !== 'hidden' && v !== 'collapse';
};
const sized = (r) => r.width > 0 && r.height > 0;
const shown = (el) => {
  const tag = el.tagName.toUpperCase();
  if (tag === 'OPTION' || tag === 'OPTGROUP') {
    const select = el.closest('select');
    return select !== null && shown(select);
  }
  if (tag === 'NOSCRIPT' || (tag === 'INPUT' && String(el.type).toLowerCase() === 'hidden')) return false;
  const visibleStyle = el.checkVisibility
    ? el.checkVisibility({ opacityProperty: true, visibilityProperty: true })
    : styled(el);
  if (!visibleStyle) return false;
  let box = el.getBoundingClientRect();
  if (!sized(box)) {
    const child = Array.from(el.querySelectorAll('*')).find((c) => sized(c.getBoundingClientRect()));
    if (!child) return false;
    box = child.getBoundingClientRect();
  }
  // Only containing blocks clip: none for a fixed box, positioned
  // ancestors for an absolute one.
  let position = getComputedStyle(el).position;
  for (let p = el.parentElement; p && position !== 'fixed'; p = p.parentElement) {
    const cs = getComputedStyle(p);
    if (position === 'absolute' && cs.position === 'static') continue;
    if (/hidden|clip/.test(cs.overflowX + ' ' + cs.overflowY)) {
      const c = p.getBoundingClientRect();
      if (box.right <= c.left || box.left >= c.right || box.bottom <= c.top || box.top >= c.bottom) return false;
    }
    position = cs.position;
  }
  return box.right + window.scrollX > 0 && box.bottom + window.scrollY > 0;
};
return found.some(shown);
"#;
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// How long the end of a step waits for the requests its actions started
/// and that are still in flight (within the step's deadline).
const SETTLE: Duration = Duration::from_secs(1);
/// How often `wait_for` looks again: every look is one WebDriver call.
const POLL: Duration = Duration::from_millis(50);

/// Where an action looks on the page.
#[derive(Debug, Clone)]
pub enum Locate {
    Css(String),
    Xpath(String),
    /// Visible text; matched with an XPath built at build time.
    Text {
        text: String,
        xpath: String,
    },
}

impl Locate {
    pub fn text(text: &str) -> Self {
        let lit = xpath_literal(text);
        Locate::Text {
            text: text.to_string(),
            xpath: format!(
                "//*[contains(normalize-space(.), {lit})][not(.//*[contains(normalize-space(.), {lit})])]"
            ),
        }
    }

    fn locator(&self) -> Locator<'_> {
        match self {
            Locate::Css(c) => Locator::Css(c),
            Locate::Xpath(x) | Locate::Text { xpath: x, .. } => Locator::XPath(x),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Locate::Css(c) => format!("css `{c}`"),
            Locate::Xpath(x) => format!("xpath `{x}`"),
            Locate::Text { text, .. } => format!("text {text:?}"),
        }
    }
}

/// An XPath string literal for any text (XPath 1.0 has no escapes).
fn xpath_literal(s: &str) -> String {
    if !s.contains('"') {
        format!("\"{s}\"")
    } else if !s.contains('\'') {
        format!("'{s}'")
    } else {
        let parts: Vec<String> = s.split('"').map(|p| format!("\"{p}\"")).collect();
        format!("concat({})", parts.join(", '\"', "))
    }
}

/// A comparison on a text (element text, URL, title).
#[derive(Debug, Default)]
pub struct TextMatch {
    pub equals: Option<String>,
    pub contains: Option<String>,
    pub matches: Option<Regex>,
}

impl TextMatch {
    fn check(&self, got: &str) -> Result<(), String> {
        if let Some(e) = &self.equals
            && got.trim() != e
        {
            return Err(format!("expected {e:?}, got {:?}", clip(got)));
        }
        if let Some(c) = &self.contains
            && !got.contains(c.as_str())
        {
            return Err(format!("expected it to contain {c:?}, got {:?}", clip(got)));
        }
        if let Some(re) = &self.matches
            && !re.is_match(got)
        {
            return Err(format!(
                "expected it to match /{}/, got {:?}",
                re.as_str(),
                clip(got)
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub enum Action {
    Goto(Template),
    Fill {
        at: Locate,
        value: Template,
        submit: bool,
    },
    Click {
        at: Locate,
    },
    Press {
        at: Option<Locate>,
        keys: String,
    },
    Select {
        at: Locate,
        value: Option<Template>,
        label: Option<Template>,
    },
    WaitFor {
        at: Locate,
        timeout: Option<Duration>,
        visible: bool,
        gone: bool,
    },
    AssertText {
        at: Locate,
        expect: TextMatch,
    },
    AssertAbsent {
        at: Locate,
    },
    AssertUrl(TextMatch),
    AssertTitle(TextMatch),
    /// Runs JavaScript (a function body); the returned value may be checked
    /// and extracted into a variable.
    Script {
        js: String,
        expect: Option<TextMatch>,
        extract: Option<String>,
    },
    Screenshot {
        name: String,
    },
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Goto(_) => "goto",
            Action::Fill { .. } => "fill",
            Action::Click { .. } => "click",
            Action::Press { .. } => "press",
            Action::Select { .. } => "select",
            Action::WaitFor { .. } => "wait_for",
            Action::AssertText { .. } => "assert_text",
            Action::AssertAbsent { .. } => "assert_absent",
            Action::AssertUrl(_) => "assert_url",
            Action::AssertTitle(_) => "assert_title",
            Action::Script { .. } => "script",
            Action::Screenshot { .. } => "screenshot",
        }
    }
}

/// A built browser step.
#[derive(Debug)]
pub struct BrowserStep {
    pub actions: Vec<Action>,
    /// CSS selectors the step's `absent` expectations look for afterwards.
    pub absent: Vec<String>,
    /// The step expects `backend_requests: all_ok`: when an action fails and
    /// a backend request failed too, the request is the cause reported.
    pub backend_ok: bool,
}

/// A fetch or XHR the page made, with its outcome.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub url: String,
    pub method: String,
    pub status: Option<u16>,
    /// What the page saw (`Failed to fetch`).
    pub error: Option<String>,
    /// Why, from the browser's network log (`net::ERR_NAME_NOT_RESOLVED`, `CORS ...`).
    pub net_error: Option<String>,
    pub started_at: SystemTime,
    pub duration: Duration,
}

impl PageRequest {
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.status.is_some_and(|s| s >= 400) || self.status.is_none()
    }

    /// `error.type` for the request's span: status code, or the network reason.
    pub fn error_type(&self) -> Option<String> {
        if let Some(s) = self.status.filter(|s| *s >= 400) {
            return Some(s.to_string());
        }
        if self.error.is_none() && self.status.is_some() {
            return None;
        }
        let reason = self.net_error.as_deref().unwrap_or("");
        Some(
            if reason.contains("NAME_NOT_RESOLVED") || reason.contains("NAME_RESOLUTION") {
                "dns"
            } else if reason.contains("CONNECTION_REFUSED")
                || reason.contains("ADDRESS_UNREACHABLE")
            {
                "connect"
            } else if reason.contains("CERT") || reason.contains("SSL") {
                "tls"
            } else if reason.contains("TIMED_OUT") {
                "timeout"
            } else if reason.to_ascii_lowercase().contains("cors") {
                "cors"
            } else {
                "network"
            }
            .to_string(),
        )
    }

    pub fn describe(&self) -> String {
        let outcome = match (&self.status, &self.net_error, &self.error) {
            (Some(s), _, None) => format!("HTTP {s}"),
            (_, Some(n), _) => n.clone(),
            (_, None, Some(e)) => e.clone(),
            (None, None, None) => "no response".into(),
        };
        format!("{} {} → {outcome}", self.method, self.url)
    }
}

/// What a browser step saw.
#[derive(Debug, Default)]
pub struct BrowserResult {
    pub url: String,
    pub title: String,
    pub requests: Vec<PageRequest>,
    pub js_errors: Vec<String>,
    pub console_errors: Vec<String>,
    /// `absent` selectors that were present, with the element's text.
    pub present: Vec<(String, String)>,
    pub lcp_ms: Option<f64>,
    pub cls: Option<f64>,
    pub extracted: Vec<(String, String)>,
    pub elapsed: Duration,
}

impl BrowserResult {
    pub fn document(&self) -> Value {
        json!({
            "url": self.url,
            "title": self.title,
            "requests": self.requests.iter().map(|r| json!({
                "url": r.url, "method": r.method, "status": r.status,
                "error": r.error, "net_error": r.net_error,
                "duration": r.duration.as_secs_f64(),
            })).collect::<Vec<_>>(),
            "js_errors": self.js_errors,
            "console_errors": self.console_errors,
            "lcp_ms": self.lcp_ms,
            "cls": self.cls,
        })
    }
}

/// DevTools passthrough: `POST /session/{id}/goog/cdp/execute`.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "cmd": self.cmd, "params": self.params }).to_string()),
        )
    }
}

/// chromedriver's log endpoint (`performance` holds DevTools network events).
#[derive(Debug)]
struct GetLog(&'static str);

impl fantoccini::wd::WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": self.0 }).to_string()),
        )
    }
}

/// WebDriver's Navigate To. fantoccini's `goto` first reads the current
/// URL to resolve a relative one; a step's URL is always absolute.
#[derive(Debug)]
struct Navigate(url::Url);

impl fantoccini::wd::WebDriverCompatibleCommand for Navigate {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/url", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "url": self.0.as_str() }).to_string()),
        )
    }
}

fn browser_err(what: &str, e: &CmdError) -> ProbeError {
    let lost = matches!(
        e,
        CmdError::Lost(_) | CmdError::Failed(_) | CmdError::FailedC(_)
    ) || e.to_string().contains("invalid session id")
        || e.to_string().contains("disconnected");
    if lost {
        ProbeError::new(
            ErrorKind::Browser,
            None,
            format!("{what}: lost the browser (chromedriver or Chromium died): {e}"),
        )
    } else {
        ProbeError::new(ErrorKind::Browser, None, format!("{what}: {e}"))
    }
}

/// Runs a browser step in the run's session (created on first use).
pub async fn run(step: &BrowserStep, ctx: Ctx<'_>) -> Result<BrowserResult, ProbeError> {
    let start = Instant::now();
    let started_at = SystemTime::now();
    let Some(driver) = ctx.env.browser.as_ref() else {
        return Err(ProbeError::new(
            ErrorKind::Browser,
            None,
            "browser steps need a WebDriver: install chromium-driver or pass --webdriver URL",
        ));
    };
    // A new session shows no page of the journey's yet: there is nothing
    // to read before its first navigation.
    let fresh = ctx.browser.session.is_none();
    if fresh {
        let pin = ctx.pin.as_ref().map(|(h, ip)| (h.as_str(), *ip));
        let session = driver
            .session(pin, ctx.browser.permit.take())
            .await
            .map_err(|e| ProbeError::new(ErrorKind::Browser, None, e))?;
        let client = session.client().cloned();
        // In the run's slot first, so the run closes it whatever follows.
        ctx.browser.session = Some(session);
        if let Some(c) = client {
            c.issue_cmd(Cdp {
                cmd: "Page.addScriptToEvaluateOnNewDocument",
                params: json!({ "source": INSTRUMENT }),
            })
            .await
            .map_err(|e| browser_err("installing page instrumentation", &e))?;
        }
    }
    let Some(client) = ctx
        .browser
        .session
        .as_ref()
        .and_then(|s| s.client())
        .cloned()
    else {
        return Err(ProbeError::new(
            ErrorKind::Browser,
            None,
            "browser session closed",
        ));
    };
    let mut result = BrowserResult::default();
    let mut collected = Collected {
        blank: fresh,
        ..Collected::default()
    };
    let outcome = run_actions(
        step,
        &client,
        ctx.vars,
        ctx.deadline,
        &mut result,
        &mut collected,
    )
    .await;
    // Whatever happened, read what the page did: it explains most failures.
    // One script reads the records, the URL, the title and, for a step
    // that passed, its `absent` selectors, once the requests the step
    // started have answered (briefly: a step that failed does not wait).
    let absent: &[String] = if outcome.is_ok() { &step.absent } else { &[] };
    let settle = if outcome.is_ok() {
        SETTLE.min(
            ctx.deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(Duration::from_millis(500)),
        )
    } else {
        Duration::ZERO
    };
    match read_page(&client, absent, started_at, settle, &mut collected).await {
        Ok(page) => {
            result.url = page.url;
            result.title = page.title;
            result.present = page.present;
        }
        Err(_) => {
            // A page in the middle of navigating cannot run the script:
            // ask WebDriver, one thing at a time.
            result.url = client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            result.title = client.title().await.unwrap_or_default();
            result.present = present_by_webdriver(&client, absent).await;
        }
    }
    // Why a request failed is only in the browser's network log, which is
    // read only when it can explain something.
    if outcome.is_err() || collected.requests.iter().any(PageRequest::failed) {
        annotate_network_failures(&client, &mut collected.requests).await;
    }
    result.requests = collected.requests;
    result.js_errors = collected.errors;
    result.console_errors = collected.console;
    result.lcp_ms = collected.lcp;
    result.cls = collected.cls;
    for r in &result.requests {
        ctx.rec.push_call(page_call(r));
    }
    let outcome = outcome.map_err(|mut e| {
        let failed: Vec<String> = result
            .requests
            .iter()
            .filter(|r| r.failed())
            .map(PageRequest::describe)
            .collect();
        if !failed.is_empty() {
            let list = failed.join("; ");
            if step.backend_ok && e.kind != ErrorKind::Browser {
                // The page could not go on because its backend call failed:
                // that call is the breakage to report, not the wait that timed out.
                e.message = format!(
                    "{} backend request(s) failed: {list}. Then {}",
                    failed.len(),
                    e.message
                );
                e.kind = ErrorKind::BackendRequest;
            } else {
                e.message
                    .push_str(&format!("; backend requests that failed: {list}"));
            }
        }
        e
    });
    result.elapsed = start.elapsed();
    outcome.map(|()| result)
}

fn page_call(r: &PageRequest) -> Call {
    let url = url::Url::parse(&r.url).ok();
    let host = url
        .as_ref()
        .and_then(|u| u.host_str())
        .unwrap_or_default()
        .to_string();
    let port = url
        .as_ref()
        .and_then(|u| u.port_or_known_default())
        .unwrap_or(0);
    let mut phases = PhaseTimings::default();
    phases.set(Phase::Processing, r.duration);
    Call {
        span_id: SpanId::random(),
        started_at: r.started_at,
        duration: r.duration,
        error_type: r.error_type(),
        phases,
        detail: CallDetail::Http(HttpCall {
            method: r.method.clone(),
            url: url
                .map(|u| super::http::strip_userinfo(&u))
                .unwrap_or_else(|| r.url.clone()),
            server_address: host,
            server_port: port,
            peer: None,
            status: r.status,
            protocol_version: None,
            tls: r.url.starts_with("https:"),
            response_bytes: 0,
            cert_expiry: None,
        }),
    }
}

#[derive(Default)]
struct Collected {
    requests: Vec<PageRequest>,
    errors: Vec<String>,
    console: Vec<String>,
    lcp: Option<f64>,
    cls: Option<f64>,
    /// The session's first page has not been loaded yet.
    blank: bool,
}

/// Takes the page's records and clears them, as an expression for the
/// scripts below (`null` on a page without the instrumentation).
const TAKE_RECORDS: &str = "(() => { const v = window.__vantage; if (!v) return null;
    const out = {requests: v.requests.filter(r => r.end !== null), errors: v.errors,
                 console: v.console, lcp: v.lcp, cls: v.cls, timeOrigin: v.timeOrigin};
    v.requests = v.requests.filter(r => r.end === null); v.errors = []; v.console = [];
    return out; })()";

/// What the end of a step reads from the page in one call.
struct PageRead {
    url: String,
    title: String,
    present: Vec<(String, String)>,
}

/// Reads and clears the page's records, with the page's URL and title, and
/// the first element (and its text) of each `absent` selector. It first
/// waits, up to `settle`, for the requests started since `since` to
/// answer: a page often calls its backend right after showing what a
/// `wait_for` looked for, and those calls belong to this step.
async fn read_page(
    client: &fantoccini::Client,
    absent: &[String],
    since: SystemTime,
    settle: Duration,
    into: &mut Collected,
) -> Result<PageRead, CmdError> {
    let script = format!(
        "const [absent, since, settle, done] = arguments;
         const v = window.__vantage;
         const until = performance.now() + settle;
         const busy = () => !!v && v.requests.some(r => r.end === null && v.timeOrigin + r.start >= since);
         const finish = () => {{
           const present = [];
           for (const css of absent) {{
             try {{ const el = document.querySelector(css); if (el) present.push([css, el.innerText]); }}
             catch (_) {{}}
           }}
           done({{records: {TAKE_RECORDS}, url: location.href, title: document.title, present}});
         }};
         const check = () => (busy() && performance.now() < until ? setTimeout(check, 10) : finish());
         check();"
    );
    let since_ms = since
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0;
    let v = client
        .execute_async(
            &script,
            vec![
                json!(absent),
                json!(since_ms),
                json!(settle.as_millis() as u64),
            ],
        )
        .await?;
    take_records(&v["records"], into);
    Ok(PageRead {
        url: v["url"].as_str().unwrap_or_default().to_string(),
        title: v["title"].as_str().unwrap_or_default().to_string(),
        present: v["present"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or_default().to_string(),
                    p[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    })
}

/// `absent` selectors that match, looked up one WebDriver call at a time.
async fn present_by_webdriver(
    client: &fantoccini::Client,
    absent: &[String],
) -> Vec<(String, String)> {
    let mut present = Vec::new();
    for css in absent {
        if let Ok(found) = client.find_all(Locator::Css(css)).await
            && let Some(el) = found.first()
        {
            let text = el.text().await.unwrap_or_default();
            present.push((css.clone(), text));
        }
    }
    present
}

/// Reads and clears the page's records (before a navigation wipes them).
async fn drain(client: &fantoccini::Client, into: &mut Collected) -> Result<(), CmdError> {
    let v = client
        .execute(&format!("return {TAKE_RECORDS};"), vec![])
        .await?;
    take_records(&v, into);
    Ok(())
}

fn take_records(v: &Value, into: &mut Collected) {
    if v.is_null() {
        return;
    }
    let origin = v["timeOrigin"].as_f64().unwrap_or(0.0);
    for r in v["requests"].as_array().into_iter().flatten() {
        let start = r["start"].as_f64().unwrap_or(0.0);
        let end = r["end"].as_f64().unwrap_or(start);
        into.requests.push(PageRequest {
            url: r["url"].as_str().unwrap_or_default().to_string(),
            method: r["method"].as_str().unwrap_or("GET").to_string(),
            status: r["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
            error: r["error"].as_str().map(str::to_string),
            net_error: None,
            started_at: UNIX_EPOCH + Duration::from_secs_f64(((origin + start) / 1000.0).max(0.0)),
            duration: Duration::from_secs_f64(((end - start) / 1000.0).max(0.0)),
        });
    }
    for e in v["errors"].as_array().into_iter().flatten() {
        into.errors
            .push(e["message"].as_str().unwrap_or_default().to_string());
    }
    for c in v["console"].as_array().into_iter().flatten() {
        into.console
            .push(c.as_str().unwrap_or_default().to_string());
    }
    if let Some(l) = v["lcp"].as_f64() {
        into.lcp = Some(l);
    }
    if let Some(c) = v["cls"].as_f64() {
        into.cls = Some(c);
    }
}

/// Attaches the browser's own reason to failed requests, from the DevTools
/// network events chromedriver logs (`Network.loadingFailed`).
async fn annotate_network_failures(client: &fantoccini::Client, requests: &mut [PageRequest]) {
    let Ok(log) = client.issue_cmd(GetLog("performance")).await else {
        return;
    };
    let mut urls: HashMap<String, String> = HashMap::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    for entry in log.as_array().into_iter().flatten() {
        let Some(msg) = entry["message"].as_str() else {
            continue;
        };
        let Ok(m) = serde_json::from_str::<Value>(msg) else {
            continue;
        };
        let method = m["message"]["method"].as_str().unwrap_or_default();
        let params = &m["message"]["params"];
        let id = params["requestId"].as_str().unwrap_or_default().to_string();
        match method {
            "Network.requestWillBeSent" => {
                if let Some(u) = params["request"]["url"].as_str() {
                    urls.insert(id, u.to_string());
                }
            }
            "Network.loadingFailed" => {
                let mut reason = params["errorText"].as_str().unwrap_or_default().to_string();
                if let Some(cors) = params["corsErrorStatus"]["corsError"].as_str() {
                    reason = format!("CORS {cors} ({reason})");
                } else if let Some(b) = params["blockedReason"].as_str() {
                    reason = format!("blocked: {b} ({reason})");
                }
                failures.push((id, reason));
            }
            _ => {}
        }
    }
    for (id, reason) in failures {
        let Some(url) = urls.get(&id) else { continue };
        if let Some(r) = requests
            .iter_mut()
            .find(|r| r.error.is_some() && r.net_error.is_none() && &r.url == url)
        {
            r.net_error = Some(reason);
        }
    }
}

async fn run_actions(
    step: &BrowserStep,
    client: &fantoccini::Client,
    vars: &Vars,
    deadline: Instant,
    result: &mut BrowserResult,
    collected: &mut Collected,
) -> Result<(), ProbeError> {
    for (i, action) in step.actions.iter().enumerate() {
        let label = format!("action {} ({})", i + 1, action.name());
        if let Err(e) = perform(action, client, vars, deadline, result, collected).await {
            let shown = page_state(client).await;
            return Err(ProbeError::new(
                e.kind,
                e.phase,
                format!("{label}: {}; {shown}", e.message),
            ));
        }
    }
    Ok(())
}

/// "What the page showed instead": URL, title and the start of its text.
async fn page_state(client: &fantoccini::Client) -> String {
    let shown = client
        .execute(
            "return {url: location.href, title: document.title,
                     text: document.body ? document.body.innerText : '',
                     placeholders: Array.from(document.querySelectorAll('input[placeholder]'))
                         .map(i => i.placeholder).join(' | ')};",
            vec![],
        )
        .await
        .unwrap_or_default();
    let field = |name: &str| shown[name].as_str().unwrap_or_default().to_string();
    let (mut url, mut title) = (field("url"), field("title"));
    if shown.is_null() {
        // The page could not run the script (it is navigating, say).
        url = client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default();
        title = client.title().await.unwrap_or_default();
    }
    let text: String = field("text")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let placeholders = field("placeholders");
    let mut s = format!("the page showed {url} (title {title:?}): {:?}", clip(&text));
    if !placeholders.is_empty() {
        s.push_str(&format!("; input placeholders: {:?}", clip(&placeholders)));
    }
    s
}

fn clip(s: &str) -> String {
    if s.len() > 200 {
        format!("{}…", &s[..s.floor_char_boundary(200)])
    } else {
        s.to_string()
    }
}

fn render(t: &Template, vars: &Vars) -> Result<String, ProbeError> {
    t.render(vars)
        .map_err(|e| ProbeError::new(ErrorKind::InvalidRequest, None, e))
}

async fn find(
    client: &fantoccini::Client,
    at: &Locate,
) -> Result<fantoccini::elements::Element, ProbeError> {
    client.find(at.locator()).await.map_err(|e| match &e {
        CmdError::Standard(w) if w.error == fantoccini::error::ErrorStatus::NoSuchElement => {
            ProbeError::new(
                ErrorKind::ElementNotFound,
                None,
                format!("no element matches {}", at.describe()),
            )
        }
        _ => browser_err(&format!("finding {}", at.describe()), &e),
    })
}

fn key_code(name: &str) -> String {
    match name.to_ascii_lowercase().as_str() {
        "enter" | "return" => "\u{E007}".into(),
        "tab" => "\u{E004}".into(),
        "escape" | "esc" => "\u{E00C}".into(),
        "backspace" => "\u{E003}".into(),
        "space" => " ".into(),
        "arrowdown" | "down" => "\u{E015}".into(),
        "arrowup" | "up" => "\u{E013}".into(),
        _ => name.to_string(),
    }
}

async fn perform(
    action: &Action,
    client: &fantoccini::Client,
    vars: &Vars,
    deadline: Instant,
    result: &mut BrowserResult,
    collected: &mut Collected,
) -> Result<(), ProbeError> {
    match action {
        Action::Goto(url) => {
            let url = render(url, vars)?;
            let parsed = url::Url::parse(&url).map_err(|e| {
                ProbeError::new(
                    ErrorKind::InvalidRequest,
                    None,
                    format!("cannot load {url}: {e}"),
                )
            })?;
            // A navigation replaces the document and its records: read them first.
            if !std::mem::take(&mut collected.blank) {
                let _ = drain(client, collected).await;
            }
            client
                .issue_cmd(Navigate(parsed))
                .await
                .map(drop)
                .map_err(|e| {
                    let msg = e.to_string();
                    let kind = if msg.contains("ERR_NAME_NOT_RESOLVED") {
                        ErrorKind::Dns
                    } else if msg.contains("ERR_CONNECTION_REFUSED") {
                        ErrorKind::Connect
                    } else if msg.contains("ERR_CERT") || msg.contains("ERR_SSL") {
                        ErrorKind::Tls
                    } else if msg.contains("timeout") {
                        ErrorKind::Timeout
                    } else {
                        ErrorKind::Browser
                    };
                    ProbeError::new(kind, None, format!("cannot load {url}: {msg}"))
                })
        }
        Action::Fill { at, value, submit } => {
            let el = find(client, at).await?;
            let value = render(value, vars)?;
            el.clear()
                .await
                .map_err(|e| browser_err(&format!("clearing {}", at.describe()), &e))?;
            let mut keys = value;
            if *submit {
                keys.push('\u{E007}');
            }
            el.send_keys(&keys)
                .await
                .map_err(|e| browser_err(&format!("typing into {}", at.describe()), &e))
        }
        Action::Click { at } => {
            let el = find(client, at).await?;
            el.click()
                .await
                .map_err(|e| browser_err(&format!("clicking {}", at.describe()), &e))
        }
        Action::Press { at, keys } => {
            let keys: String = keys.split('+').map(key_code).collect();
            let el = match at {
                Some(at) => find(client, at).await?,
                None => client
                    .active_element()
                    .await
                    .map_err(|e| browser_err("finding the focused element", &e))?,
            };
            el.send_keys(&keys)
                .await
                .map_err(|e| browser_err("pressing keys", &e))
        }
        Action::Select { at, value, label } => {
            let el = find(client, at).await?;
            let r = match (value, label) {
                (Some(v), _) => el.select_by_value(&render(v, vars)?).await,
                (None, Some(l)) => el.select_by_label(&render(l, vars)?).await,
                (None, None) => return Ok(()),
            };
            r.map_err(|e| browser_err(&format!("selecting in {}", at.describe()), &e))
        }
        Action::WaitFor {
            at,
            timeout,
            visible,
            gone,
        } => {
            let limit = timeout.unwrap_or(DEFAULT_WAIT);
            let until = (Instant::now() + limit).min(deadline);
            let (css, xpath) = match at {
                Locate::Css(c) => (json!(c), Value::Null),
                Locate::Xpath(x) | Locate::Text { xpath: x, .. } => (Value::Null, json!(x)),
            };
            loop {
                let shown = client
                    .execute(SHOWN, vec![css.clone(), xpath.clone(), json!(visible)])
                    .await
                    .map_err(|e| browser_err("waiting", &e))?;
                if shown.as_bool().unwrap_or(false) != *gone {
                    return Ok(());
                }
                if Instant::now() + POLL > until {
                    let what = if *gone {
                        "to disappear"
                    } else if *visible {
                        "to be visible"
                    } else {
                        "to appear"
                    };
                    return Err(ProbeError::new(
                        ErrorKind::Timeout,
                        None,
                        format!(
                            "waited {} for {} {what}",
                            humantime::format_duration(Duration::from_millis(
                                limit.as_millis() as u64
                            )),
                            at.describe()
                        ),
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Action::AssertText { at, expect } => {
            let el = find(client, at).await?;
            let text = el
                .text()
                .await
                .map_err(|e| browser_err("reading text", &e))?;
            expect.check(&text).map_err(|m| {
                ProbeError::new(
                    ErrorKind::Assertion,
                    None,
                    format!("text of {}: {m}", at.describe()),
                )
            })
        }
        Action::AssertAbsent { at } => {
            let found = client
                .find_all(at.locator())
                .await
                .map_err(|e| browser_err("looking", &e))?;
            match found.first() {
                None => Ok(()),
                Some(el) => {
                    let text = el.text().await.unwrap_or_default();
                    Err(ProbeError::new(
                        ErrorKind::Assertion,
                        None,
                        format!("{} is present: {:?}", at.describe(), clip(&text)),
                    ))
                }
            }
        }
        Action::AssertUrl(m) => {
            let url = client
                .current_url()
                .await
                .map_err(|e| browser_err("reading the URL", &e))?;
            m.check(url.as_str())
                .map_err(|msg| ProbeError::new(ErrorKind::Assertion, None, format!("URL: {msg}")))
        }
        Action::AssertTitle(m) => {
            let title = client
                .title()
                .await
                .map_err(|e| browser_err("reading the title", &e))?;
            m.check(&title)
                .map_err(|msg| ProbeError::new(ErrorKind::Assertion, None, format!("title: {msg}")))
        }
        Action::Script {
            js,
            expect,
            extract,
        } => {
            let v = client.execute(js, vec![]).await.map_err(|e| {
                ProbeError::new(ErrorKind::JsError, None, format!("script failed: {e}"))
            })?;
            let text = match &v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let Some(m) = expect {
                m.check(&text).map_err(|msg| {
                    ProbeError::new(ErrorKind::Assertion, None, format!("script result: {msg}"))
                })?;
            }
            if let Some(name) = extract {
                result.extracted.push((name.clone(), text));
            }
            Ok(())
        }
        Action::Screenshot { name } => {
            let png = client
                .screenshot()
                .await
                .map_err(|e| browser_err("taking a screenshot", &e))?;
            let _ = save_artifact(name, &png);
            Ok(())
        }
    }
}

/// Writes a screenshot under the artifacts directory; returns its path.
pub fn save_artifact(name: &str, png: &[u8]) -> Option<PathBuf> {
    let dir = std::env::var_os("VANTAGE_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("vantage-artifacts"));
    std::fs::create_dir_all(&dir).ok()?;
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{safe}.png"));
    std::fs::write(&path, png).ok()?;
    Some(path)
}

/// A screenshot and the URL of the current page, for a failed run, within
/// one shared budget: a page that hangs must not hold its run much longer.
pub async fn failure_evidence(session: &Session, name: &str) -> (Option<PathBuf>, Option<String>) {
    let Some(client) = session.client() else {
        return (None, None);
    };
    let evidence = async {
        let png = client.screenshot().await.ok();
        let url = client.current_url().await.ok().map(|u| u.to_string());
        (png.and_then(|p| save_artifact(name, &p)), url)
    };
    tokio::time::timeout(Duration::from_secs(2), evidence)
        .await
        .unwrap_or((None, None))
}

/// The address a fanned-out run pins a host to.
pub type Pin = (String, IpAddr);
