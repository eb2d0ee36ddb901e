//! Browser journeys end to end, with real Chromium and chromedriver, against
//! the demo started in-process (backend on 127.0.0.1, frontends on 127.0.0.2
//! and 127.0.0.3) and a tiny page server of the test's own.
//!
//! What it proves:
//! - A healthy demo: `journeys/movie-guru.yaml`, unchanged but for `app`,
//!   passes, and the backend calls the page made (`POST /login`,
//!   `GET /history`, `GET /startup`, `POST /chat`) are HTTP calls of the
//!   step that caused them, 200, naming the backend; through the binary they
//!   are CLIENT spans under those step spans, and the binary leaves no
//!   chromedriver or Chromium behind when it exits.
//! - The broken rollout: two frontend replicas behind one name, one built
//!   with a backend URL browsers cannot resolve. With `fan_out`, on every
//!   one of 3 runs exactly the broken replica (127.0.0.3) fails, with
//!   `backend_request` naming the request and `ERR_NAME_NOT_RESOLVED`, while
//!   the good one passes and the backend's own counters show no error.
//! - Failures end cleanly and say what happened: an element that never
//!   appears (`timeout`, naming the selector and what the page showed), a
//!   page that throws (`js_error`, naming the error), chromedriver killed
//!   mid-step (`browser`, and the next run restarts it), a page that hangs
//!   the browser past the journey timeout (`timeout` at the deadline plus a
//!   short grace, and its Chromium gone afterwards).
//! - No leaks: after 50 runs no Chromium process and no profile directory of
//!   theirs survives, the test process's memory is flat, and the agent's
//!   chromedriver goes when its probe environment is dropped.
//! - A failed run keeps a PNG screenshot in the artifacts directory and
//!   the page URL in its step error.
//! - Waiting for a browser slot (`max_browsers`) is not step time: two runs
//!   that share one slot have step spans that do not overlap.
//! - The agent's chromedriver listens on loopback addresses only.
//! - A passing login-then-chat run makes only the WebDriver calls its
//!   actions need, plus one per look of its waits, which look every 50 ms.
//!   A look decides visibility as WebDriver's Is Element Displayed does.
//!   A request a step's page started and that answers just after the step's
//!   wait is still that step's.
//! - A run's clock stops when its browser has quit, before its profile is
//!   deleted, while the run keeps its browser slot until the profile is gone.
//! - The agent's overhead: its step durations for the login-then-chat
//!   journey next to the same actions by a bare fantoccini script (printed,
//!   not asserted).
//!
//! Each test gets its own chromedriver through a uniquely named symlink, so
//! its chromedriver and Chromium processes can be found in /proc among other
//! tests' (and other users'). A process-wide semaphore keeps at most two
//! browsers of this file running at once; the leak test takes both slots,
//! so its memory figures are its own.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use fantoccini::Locator;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use vantage::journey::Journey;
use vantage::journey::build::{BuildOptions, load_and_build};
use vantage::journey::runner::{self, RunEnv};
use vantage::probes::ProbeEnv;
use vantage::probes::browser::BrowserOptions;
use vantage::report::{
    Call, CallDetail, ErrorKind, HttpCall, JourneyReport, Outcome, StepError, StepOutcome,
    StepReport,
};
use vantage_demo::{DemoServer, FrontendServer, start_frontend};
use vantage_tests::agent::free_port;
use vantage_tests::{FlatSpan, Receiver, vantage_bin, workspace_root};

/// The backend URL the broken replica was built with (as in the workshop).
const UNREACHABLE_BACKEND: &str = "http://server-service.movie-guru.svc.cluster.local";
/// The name both frontend replicas are reached by in the fan-out test.
const FRONTEND_HOST: &str = "frontend.movie-guru.test";
/// How long after the journey deadline a hung browser's run may take to end
/// (closing the session: about 2 s, plus starting Chromium on a loaded
/// machine). A run that queued its evidence behind the hung page took 17 s.
const HANG_GRACE: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------
// Browser slots
// ---------------------------------------------------------------------------

/// At most two of this file's browsers at once (the machine has 2 cores).
static BROWSER_SLOTS: Semaphore = Semaphore::const_new(2);

/// Takes `n` browser slots for the whole test. Declare it first so it is
/// dropped last, after the test's chromedriver is gone.
async fn browser_slots(n: u32) -> SemaphorePermit<'static> {
    BROWSER_SLOTS.acquire_many(n).await.unwrap()
}

// ---------------------------------------------------------------------------
// Processes, from /proc
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Proc {
    pid: u32,
    ppid: u32,
    /// Exited, waiting to be reaped: no longer a running browser.
    zombie: bool,
    argv: Vec<String>,
}

impl Proc {
    fn profile(&self) -> Option<&str> {
        self.argv
            .iter()
            .find_map(|a| a.strip_prefix("--user-data-dir="))
    }

    fn command(&self) -> String {
        let line = self.argv.join(" ");
        line.chars().take(160).collect()
    }
}

fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or_default();
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.push(Proc {
            pid,
            ppid,
            zombie: matches!(state, "Z" | "X"),
            argv,
        });
    }
    out
}

/// Live processes below `roots` (children, grandchildren, ...).
fn descendants(procs: &[Proc], roots: &[u32]) -> Vec<Proc> {
    let mut tree: BTreeSet<u32> = roots.iter().copied().collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for p in procs {
            if tree.contains(&p.ppid) && !tree.contains(&p.pid) {
                tree.insert(p.pid);
                if !p.zombie {
                    out.push(p.clone());
                }
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// The directory prefix of the agent's per-session Chromium profiles.
fn profile_prefix() -> String {
    std::env::temp_dir()
        .join("vantage-chromium-")
        .display()
        .to_string()
}

/// This process's resident set size in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| Path::new("/usr/bin").join(program))
}

fn kill_9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

/// Records every process seen below some roots while it runs, from a plain
/// thread, so it sees browsers that live for less than a second.
struct Watcher {
    seen: Arc<Mutex<BTreeMap<u32, Proc>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(roots: impl Fn(&[Proc]) -> Vec<u32> + Send + 'static) -> Self {
        let seen: Arc<Mutex<BTreeMap<u32, Proc>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let procs = processes();
                    let found = descendants(&procs, &roots(&procs));
                    let mut seen = seen.lock().unwrap();
                    for p in found {
                        seen.entry(p.pid).or_insert(p);
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Watcher {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; returns every process seen.
    fn finish(mut self) -> Vec<Proc> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.lock().unwrap().values().cloned().collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The agent's Chromium profiles among `procs`.
fn profiles(procs: &[Proc]) -> BTreeSet<String> {
    let prefix = profile_prefix();
    procs
        .iter()
        .filter_map(Proc::profile)
        .filter(|d| d.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Waits (closing is partly asynchronous) until no live process uses one of
/// `profiles` and none of `pids` runs; returns what is left at the deadline.
async fn wait_until_gone(profiles: &BTreeSet<String>, pids: &BTreeSet<u32>) -> Vec<Proc> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<Proc> = processes()
            .into_iter()
            .filter(|p| !p.zombie)
            .filter(|p| pids.contains(&p.pid) || p.profile().is_some_and(|d| profiles.contains(d)))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Profiles are removed when the session closes; a session whose start was
/// cut short by a deadline is cleaned up in the background, so allow a
/// bounded moment before calling a directory leaked.
fn assert_profiles_removed(profiles: &BTreeSet<String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<&String> = profiles.iter().filter(|d| Path::new(d).exists()).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "profile directories left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// One test's browser setup
// ---------------------------------------------------------------------------

/// A chromedriver of this test's own: a symlink with a unique path, so its
/// processes can be found by `argv[0]`.
struct Rig {
    _dir: tempfile::TempDir,
    chromedriver: PathBuf,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vantage-browser-test-")
            .tempdir()
            .unwrap();
        let chromedriver = dir.path().join("chromedriver");
        std::os::unix::fs::symlink(which("chromedriver"), &chromedriver).unwrap();
        Rig {
            _dir: dir,
            chromedriver,
        }
    }

    fn env(&self, max_browsers: usize) -> RunEnv {
        let opts = BrowserOptions {
            chromedriver: self.chromedriver.clone(),
            max_browsers,
            ..BrowserOptions::default()
        };
        RunEnv {
            location: "test".into(),
            probes: Arc::new(ProbeEnv::with_browser(opts).unwrap()),
        }
    }

    /// This rig's live chromedriver processes.
    fn drivers(&self, procs: &[Proc]) -> Vec<u32> {
        driver_pids(&self.chromedriver, procs)
    }

    /// Watches the processes below this rig's chromedriver(s).
    fn watch(&self) -> Watcher {
        let path = self.chromedriver.clone();
        Watcher::start(move |procs| driver_pids(&path, procs))
    }
}

fn driver_pids(path: &Path, procs: &[Proc]) -> Vec<u32> {
    let path = path.display().to_string();
    procs
        .iter()
        .filter(|p| !p.zombie && p.argv.first() == Some(&path))
        .map(|p| p.pid)
        .collect()
}

// ---------------------------------------------------------------------------
// Journeys and reports
// ---------------------------------------------------------------------------

fn movie_guru_yaml() -> PathBuf {
    workspace_root().join("journeys").join("movie-guru.yaml")
}

fn build_path(path: &Path, vars: &[(&str, &str)]) -> Journey {
    let env = |_: &str| None;
    let opts = BuildOptions {
        env: &env,
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let mut journeys = load_and_build(&[path.to_path_buf()], &opts)
        .unwrap_or_else(|errors| panic!("{} does not build: {errors:#?}", path.display()));
    assert_eq!(journeys.len(), 1);
    journeys.remove(0)
}

/// Writes `yaml` into `dir` and builds it.
fn build_yaml(dir: &Path, yaml: &str, vars: &[(&str, &str)]) -> Journey {
    let path = dir.join("journey.yaml");
    std::fs::write(&path, yaml).unwrap();
    build_path(&path, vars)
}

/// A journey of one browser step: `goto url`, then `actions` (YAML list
/// items, indented by 6), then `expect` (YAML lines, indented by 6).
fn one_step(name: &str, timeout: &str, url: &str, actions: &[&str], expect: &[&str]) -> String {
    let mut y = format!(
        "name: {name}\ntimeout: {timeout}\nsteps:\n  - name: open the page\n    browser:\n      - goto: {}\n",
        Value::String(url.to_string())
    );
    for a in actions {
        y.push_str(&format!("      - {a}\n"));
    }
    if !expect.is_empty() {
        y.push_str("    expect:\n");
        for e in expect {
            y.push_str(&format!("      {e}\n"));
        }
    }
    y
}

async fn run_all(journey: &Journey, env: &RunEnv) -> Vec<JourneyReport> {
    runner::run_all(journey, env, None, &CancellationToken::new()).await
}

/// The single report of a journey without fan-out.
async fn run_one(journey: &Journey, env: &RunEnv) -> JourneyReport {
    let mut reports = run_all(journey, env).await;
    assert_eq!(reports.len(), 1, "{reports:#?}");
    reports.remove(0)
}

fn assert_passed(report: &JourneyReport) {
    assert_eq!(
        report.outcome,
        Outcome::Passed,
        "expected a pass, got {:#?}",
        report.error()
    );
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.outcome == StepOutcome::Passed && s.error.is_none()),
        "{report:#?}"
    );
}

/// The failed step's error, after checking the run failed at step `step`.
fn failure(report: &JourneyReport, step: usize) -> &StepError {
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    assert_eq!(report.failed_step, Some(step), "{report:#?}");
    assert_eq!(report.steps[step].outcome, StepOutcome::Failed);
    let e = report.error().unwrap();
    println!(
        "{} ({}) failed: {}: {}",
        report.journey,
        report.address.as_deref().unwrap_or("-"),
        e.kind,
        e.message
    );
    e
}

fn http_calls(step: &StepReport) -> Vec<(&Call, &HttpCall)> {
    step.calls
        .iter()
        .filter_map(|c| match &c.detail {
            CallDetail::Http(h) => Some((c, h)),
            _ => None,
        })
        .collect()
}

/// `(method, url)` of every HTTP call of the step.
fn requests(step: &StepReport) -> BTreeSet<(String, String)> {
    http_calls(step)
        .iter()
        .map(|(_, h)| (h.method.clone(), h.url.clone()))
        .collect()
}

/// Where the agent keeps failed runs' screenshots: `$VANTAGE_ARTIFACTS`,
/// else `vantage-artifacts` in the temporary directory.
fn artifacts_dir() -> PathBuf {
    std::env::var_os("VANTAGE_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("vantage-artifacts"))
}

/// The failed run's screenshot is a real PNG file in the artifacts
/// directory; it is removed once checked, so tests leave nothing behind.
fn assert_screenshot(e: &StepError) {
    let path = e
        .screenshot
        .as_deref()
        .expect("a failed browser run keeps a screenshot");
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("screenshot {path}: {err}"));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
        "{path} is not a PNG ({} bytes)",
        bytes.len()
    );
    assert!(
        Path::new(path).starts_with(artifacts_dir()),
        "screenshot {path} is not in the artifacts directory {}",
        artifacts_dir().display()
    );
    let _ = std::fs::remove_file(path);
}

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

/// The demo backend on 127.0.0.1 and one frontend on 127.0.0.2 calling it.
struct Demo {
    backend: DemoServer,
    frontend: FrontendServer,
}

impl Demo {
    async fn healthy() -> Self {
        let backend = DemoServer::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let frontend = start_frontend(
            "127.0.0.2:0".parse().unwrap(),
            &backend.base_url(),
            "frontend",
        )
        .await
        .unwrap();
        Demo { backend, frontend }
    }

    fn assert_no_backend_errors(&self) {
        let by_status = self.backend.state().metrics().responses_by_status();
        let errors: BTreeMap<&u16, &u64> = by_status.iter().filter(|(s, _)| **s >= 400).collect();
        assert!(errors.is_empty(), "backend answered errors: {by_status:?}");
    }
}

const OK_PAGE: &str = "<!doctype html><html><head><title>Vantage fixture</title></head>\
<body><h1 id=\"ready\">Ready</h1><p>Nothing else here.</p></body></html>";
const THROWING_PAGE: &str = "<!doctype html><html><head><title>Throws</title></head>\
<body><h1 id=\"ready\">Ready</h1>\
<script>throw new Error('vantage-fixture-boom: cannot read the menu');</script></body></html>";
const HANGING_PAGE: &str = "<!doctype html><html><head><title>Hangs</title></head>\
<body><h1 id=\"ready\">Ready</h1><script>\
addEventListener('load', () => setTimeout(() => { for (;;) {} }, 100));\
</script></body></html>";
/// Calls `/loaded` a moment after its load event, when a probe that loaded
/// it has moved on to its next action.
const BEACON_PAGE: &str = "<!doctype html><html><head><title>Beacon</title></head>\
<body><h1 id=\"ready\">Ready</h1><script>\
addEventListener('load', () => setTimeout(() => fetch('/loaded'), 300));\
</script></body></html>";

/// Shows `#late` a second after it loaded.
const LATE_PAGE: &str = "<!doctype html><html><head><title>Late</title></head>\
<body><h1 id=\"ready\">Ready</h1><script>\
addEventListener('load', () => setTimeout(() => {\
  const p = document.createElement('p'); p.id = 'late'; p.textContent = 'Here';\
  document.body.appendChild(p); }, 1000));\
</script></body></html>";

/// Shows `#shown` when it has loaded, then calls `/slow`, which answers
/// after 300 ms.
const SHOWS_THEN_CALLS_PAGE: &str = "<!doctype html><html><head><title>Calls</title></head>\
<body><script>\
addEventListener('load', () => {\
  const p = document.createElement('p'); p.id = 'shown'; p.textContent = 'Shown';\
  document.body.appendChild(p); fetch('/slow'); });\
</script></body></html>";

/// Elements WebDriver calls displayed, or not, each with its id and
/// whether it is displayed.
const VISIBILITY_CASES: &[(&str, bool)] = &[
    ("plain", true),
    ("none", false),
    ("in-none", false),
    ("hidden", false),
    ("in-hidden", false),
    ("shown-in-hidden", true),
    ("transparent", false),
    ("in-transparent", false),
    ("empty", false),
    ("zero-with-child", true),
    ("clipped", false),
    ("scrolled-away", true),
    ("fixed-in-clip", true),
    ("absolute-in-clip", false),
    ("off-left", false),
    ("far-below", true),
    ("option", true),
    ("hidden-option", false),
    ("hidden-input", false),
];

const VISIBILITY_PAGE: &str = r#"<!doctype html><html><head><title>Visibility</title></head><body>
<p id="plain">plain</p>
<p id="none" style="display:none">none</p>
<div style="display:none"><p id="in-none">in none</p></div>
<p id="hidden" style="visibility:hidden">hidden</p>
<div style="visibility:hidden"><p id="in-hidden">in hidden</p>
  <p id="shown-in-hidden" style="visibility:visible">shown in hidden</p></div>
<p id="transparent" style="opacity:0">transparent</p>
<div style="opacity:0"><p id="in-transparent">in transparent</p></div>
<div id="empty"></div>
<span id="zero-with-child" style="display:inline-block;width:0;height:0">
  <span style="display:inline-block;width:20px;height:10px;background:red"></span></span>
<div style="overflow:hidden;height:0"><p id="clipped">clipped</p></div>
<div style="overflow:auto;height:20px"><p style="margin-top:100px" id="scrolled-away">scrolled away</p></div>
<div style="overflow:hidden;height:0"><p id="fixed-in-clip" style="position:fixed;top:0;right:0">fixed</p></div>
<div style="overflow:hidden;height:0;position:relative"><p id="absolute-in-clip" style="position:absolute;top:50px">absolute</p></div>
<p id="off-left" style="position:absolute;left:-9999px">off left</p>
<select><option id="option">one</option></select>
<select style="display:none"><option id="hidden-option">two</option></select>
<input id="hidden-input" type="hidden" value="x">
<p id="far-below" style="margin-top:3000px">far below</p>
</body></html>"#;

/// The test's own pages on 127.0.0.1; stops when dropped.
struct Pages {
    addr: SocketAddr,
    /// Notified when a page called `/loaded`.
    loaded: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Pages {
    async fn start() -> Self {
        let loaded = Arc::new(Notify::new());
        let beacon = loaded.clone();
        let app = Router::new()
            .route("/ok", get(|| async { Html(OK_PAGE) }))
            .route("/throws", get(|| async { Html(THROWING_PAGE) }))
            .route("/hangs", get(|| async { Html(HANGING_PAGE) }))
            .route("/beacon", get(|| async { Html(BEACON_PAGE) }))
            .route("/late", get(|| async { Html(LATE_PAGE) }))
            .route("/calls", get(|| async { Html(SHOWS_THEN_CALLS_PAGE) }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "slow"
                }),
            )
            .route("/visibility", get(|| async { Html(VISIBILITY_PAGE) }))
            .route(
                "/loaded",
                get(move || {
                    let beacon = beacon.clone();
                    async move {
                        beacon.notify_one();
                        "ok"
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Pages { addr, loaded, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// 1. Healthy demo
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_demo_passes_with_the_pages_backend_calls_in_its_steps() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let demo = Demo::healthy().await;
    let env = rig.env(2);
    let journey = build_path(&movie_guru_yaml(), &[("app", &demo.frontend.base_url())]);
    let report = run_one(&journey, &env).await;
    assert_passed(&report);
    let names: Vec<&str> = report.steps.iter().map(|s| &*s.name).collect();
    assert_eq!(names, ["log in", "chat"]);

    // Each backend call is a call of the step whose actions caused it,
    // naming the backend (not the frontend) and its status.
    let backend = demo.backend.base_url();
    let url = |path: &str| format!("{backend}{path}");
    let login = requests(&report.steps[0]);
    for (method, path) in [("POST", "/login"), ("GET", "/history"), ("GET", "/startup")] {
        assert!(
            login.contains(&(method.to_string(), url(path))),
            "{method} {path} missing from the log-in step: {login:?}"
        );
    }
    let chat = requests(&report.steps[1]);
    assert!(
        chat.contains(&("POST".to_string(), url("/chat"))),
        "POST /chat missing from the chat step: {chat:?}"
    );
    assert!(!chat.contains(&("POST".to_string(), url("/login"))));
    for step in &report.steps {
        let end = step.started_at + step.duration;
        for (call, h) in http_calls(step) {
            assert_eq!(h.status, Some(200), "{h:?}");
            assert_eq!(call.error_type, None, "{h:?}");
            assert_eq!(h.server_address, "127.0.0.1");
            assert_eq!(h.server_port, demo.backend.addr().port());
            assert!(h.url.starts_with(&backend), "{}", h.url);
            // Timed by the page's clock, so allow a little skew.
            let slack = Duration::from_millis(250);
            assert!(
                call.started_at + slack >= step.started_at
                    && call.started_at + call.duration <= end + slack,
                "{} {} outside its step `{}`",
                h.method,
                h.url,
                step.name
            );
        }
    }
    demo.assert_no_backend_errors();
}

/// The binary, exporting to an OTLP receiver: the page's backend calls are
/// CLIENT spans under the step spans, and nothing of the browser outlives
/// the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exports_the_pages_backend_calls_as_client_spans_under_the_steps() {
    let _slot = browser_slots(1).await;
    assert!(
        vantage_bin().is_file(),
        "build the agent first: cargo build -p vantage"
    );
    let demo = Demo::healthy().await;
    let rx = Receiver::http().await;
    let child = tokio::process::Command::new(vantage_bin())
        .args(["once", "--json"])
        .arg(movie_guru_yaml())
        .args(["--var", &format!("app={}", demo.frontend.base_url())])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("VANTAGE_LOCATION", "ci-runner")
        .env_remove("VANTAGE_WEBDRIVER")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let watcher = Watcher::start(move |_| vec![pid]);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("vantage once finishes")
        .unwrap();
    let seen = watcher.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let reports: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(reports.len(), 1, "{stdout}");
    let report = &reports[0];
    assert_eq!(report["outcome"], "passed", "{report:#}");

    // The process tree it had while running is gone with it.
    let drivers = seen
        .iter()
        .filter(|p| p.argv.first().is_some_and(|a| a.ends_with("chromedriver")))
        .count();
    let browser_profiles = profiles(&seen);
    assert!(
        drivers == 1 && browser_profiles.len() == 1,
        "expected one chromedriver and one profile, saw: {:#?}",
        seen.iter().map(Proc::command).collect::<Vec<_>>()
    );
    let pids: BTreeSet<u32> = seen.iter().map(|p| p.pid).collect();
    let left = wait_until_gone(&browser_profiles, &pids).await;
    assert!(
        left.is_empty(),
        "outlived `vantage once`: {:#?}",
        left.iter().map(Proc::command).collect::<Vec<_>>()
    );
    assert_profiles_removed(&browser_profiles);

    // Root, two steps, and one CLIENT span per backend call of the report.
    let trace_id = report["trace_id"].as_str().unwrap().to_string();
    let calls: usize = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["calls"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(calls >= 4, "{report:#}");
    let spans = rx
        .wait_for_span_count(
            |s| s.trace_id == trace_id,
            3 + calls,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let step_span = |name: &str| -> &FlatSpan {
        spans
            .iter()
            .find(|s| s.name == format!("step {name}"))
            .unwrap_or_else(|| panic!("no span for step {name}"))
    };
    let backend = demo.backend.base_url();
    let clients_of = |step: &FlatSpan| -> BTreeSet<(String, String)> {
        spans
            .iter()
            .filter(|s| s.parent_span_id == step.span_id)
            .map(|s| {
                assert!(s.is_client(), "{} under {}", s.name, step.name);
                assert_eq!(s.attr_i64("http.response.status_code"), Some(200));
                assert_eq!(s.attr_str("server.address"), Some("127.0.0.1"));
                assert_eq!(
                    s.attr_i64("server.port"),
                    Some(i64::from(demo.backend.addr().port()))
                );
                assert!(s.attr("error.type").is_none(), "{:?}", s.attributes);
                assert_eq!(s.attr_str("http.request.method"), Some(s.name.as_str()));
                let url = s.attr_str("url.full").unwrap();
                (
                    s.name.clone(),
                    url.strip_prefix(&backend).unwrap().to_string(),
                )
            })
            .collect()
    };
    let pair = |m: &str, p: &str| (m.to_string(), p.to_string());
    let login = step_span("log in");
    let chat = step_span("chat");
    for s in [login, chat] {
        assert!(s.is_ok(), "{} status {}", s.name, s.status_code);
        assert_eq!(s.attr_str("vantage.step.kind"), Some("browser"));
    }
    let login_calls = clients_of(login);
    for want in [
        pair("POST", "/login"),
        pair("GET", "/history"),
        pair("GET", "/startup"),
    ] {
        assert!(
            login_calls.contains(&want),
            "{want:?} not in {login_calls:?}"
        );
    }
    let chat_calls = clients_of(chat);
    assert!(
        chat_calls.contains(&pair("POST", "/chat")),
        "POST /chat not in {chat_calls:?}"
    );
    let clients = spans.iter().filter(|s| s.is_client()).count();
    assert_eq!(clients, calls, "one CLIENT span per reported call");
    demo.assert_no_backend_errors();
}

// ---------------------------------------------------------------------------
// 2. The broken rollout, with fan-out
// ---------------------------------------------------------------------------

/// Two replicas on one port, on 127.0.0.2 (calling `good`) and 127.0.0.3
/// (calling `bad`).
async fn split_frontends(good: &str, bad: &str) -> (FrontendServer, FrontendServer) {
    for _ in 0..10 {
        let first = start_frontend("127.0.0.2:0".parse().unwrap(), good, "frontend")
            .await
            .unwrap();
        let port = first.addr().port();
        let second: SocketAddr = format!("127.0.0.3:{port}").parse().unwrap();
        if let Ok(s) = start_frontend(second, bad, "frontend-v2").await {
            return (first, s);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_demo_fails_exactly_the_broken_replica_every_time_naming_the_request() {
    let _slots = browser_slots(2).await;
    let rig = Rig::new();
    let backend = DemoServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (good, bad) = split_frontends(&backend.base_url(), UNREACHABLE_BACKEND).await;
    assert_eq!(bad.backend_url(), UNREACHABLE_BACKEND);

    // The shipped journey, with an explicit address list for the name (DNS
    // cannot enumerate it here) and a shorter wait for the chat box, so the
    // broken replica's runs fail in 5 s instead of 10.
    let shipped = std::fs::read_to_string(movie_guru_yaml()).unwrap();
    let replace = |text: &str, from: &str, to: &str| {
        assert!(text.contains(from), "movie-guru.yaml has no `{from}`");
        text.replace(from, to)
    };
    let yaml = replace(
        &shipped,
        "fan_out: per_address",
        &format!("fan_out: {{ host: {FRONTEND_HOST}, addresses: [127.0.0.2, 127.0.0.3] }}"),
    );
    let yaml = replace(&yaml, "timeout: 10s }", "timeout: 5s }");
    let dir = tempfile::tempdir().unwrap();
    let app = format!("http://{FRONTEND_HOST}:{}", good.addr().port());
    let journey = build_yaml(dir.path(), &yaml, &[("app", &app)]);
    let env = rig.env(2);

    for run in 1..=3 {
        let reports = run_all(&journey, &env).await;
        let by_address: BTreeMap<&str, &JourneyReport> = reports
            .iter()
            .map(|r| (r.address.as_deref().unwrap_or("none"), r))
            .collect();
        assert_eq!(
            by_address.keys().copied().collect::<Vec<_>>(),
            ["127.0.0.2", "127.0.0.3"],
            "run {run}: one report per replica"
        );

        println!(
            "fan-out run {run}: 127.0.0.2 {:?} in {:?}, 127.0.0.3 {:?} in {:?}",
            by_address["127.0.0.2"].outcome,
            by_address["127.0.0.2"].duration,
            by_address["127.0.0.3"].outcome,
            by_address["127.0.0.3"].duration,
        );
        assert_passed(by_address["127.0.0.2"]);

        let broken = by_address["127.0.0.3"];
        let e = failure(broken, 0);
        assert_eq!(e.kind, ErrorKind::BackendRequest, "run {run}: {e:#?}");
        for needed in [
            "POST http://server-service.movie-guru.svc.cluster.local/login",
            "ERR_NAME_NOT_RESOLVED",
        ] {
            assert!(e.message.contains(needed), "run {run}: {}", e.message);
        }
        assert_eq!(broken.steps[1].outcome, StepOutcome::Skipped);
        // The failed request is a call of the step too, typed `dns`.
        let (call, h) = http_calls(&broken.steps[0])
            .into_iter()
            .find(|(_, h)| h.server_address == "server-service.movie-guru.svc.cluster.local")
            .unwrap_or_else(|| panic!("run {run}: no call to the unreachable backend"));
        assert_eq!(h.status, None);
        assert_eq!(call.error_type.as_deref(), Some("dns"));
        // The page a user of that replica was left on, and a picture of it.
        let page = e.page_url.as_deref().unwrap_or_default();
        assert!(
            page.starts_with(&format!("{app}/login")),
            "run {run}: page URL {page:?}"
        );
        assert_screenshot(e);
    }

    // The backend never saw the broken replica's users: all green there.
    let by_status = backend.state().metrics().responses_by_status();
    assert!(
        by_status.keys().all(|s| *s < 400),
        "backend answered errors: {by_status:?}"
    );
    assert!(
        by_status.get(&200).copied().unwrap_or(0) >= 3 * 4,
        "the good replica's calls reached the backend: {by_status:?}"
    );
}

// ---------------------------------------------------------------------------
// 3. Failures that end cleanly
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn element_that_never_appears_times_out_naming_the_selector_and_the_page() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let env = rig.env(2);
    let dir = tempfile::tempdir().unwrap();
    let yaml = one_step(
        "element-never-appears",
        "20s",
        &pages.url("/ok"),
        &[r##"wait_for: { css: "#basket", timeout: 1s }"##],
        &[],
    );
    let report = run_one(&build_yaml(dir.path(), &yaml, &[]), &env).await;
    let e = failure(&report, 0);
    assert_eq!(e.kind, ErrorKind::Timeout, "{e:#?}");
    for needed in [
        "action 2 (wait_for)",
        "waited 1s for css `#basket`",
        // What the page showed instead.
        &pages.url("/ok"),
        "Vantage fixture",
        "Ready Nothing else here.",
    ] {
        assert!(
            e.message.contains(needed),
            "{needed:?} not in: {}",
            e.message
        );
    }
    // The action's 1 s gave up, not the journey's 20 s. (Measured on the
    // report: a loaded machine can take many seconds to start Chromium
    // and to remove its profile, around the step.)
    let took = report.steps[0].duration;
    assert!(took < Duration::from_secs(15), "the step took {took:?}");
    assert_screenshot(e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_that_throws_fails_no_js_errors_naming_the_error() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let env = rig.env(2);
    let dir = tempfile::tempdir().unwrap();
    let yaml = one_step(
        "page-throws",
        "20s",
        &pages.url("/throws"),
        &[r##"wait_for: { css: "#ready", timeout: 5s }"##],
        &["no_js_errors: true"],
    );
    let report = run_one(&build_yaml(dir.path(), &yaml, &[]), &env).await;
    let e = failure(&report, 0);
    assert_eq!(e.kind, ErrorKind::JsError, "{e:#?}");
    assert!(
        e.message.contains("JavaScript error")
            && e.message
                .contains("vantage-fixture-boom: cannot read the menu"),
        "{}",
        e.message
    );
    assert_screenshot(e);

    // Without the expectation the same page passes: the error is data.
    let yaml = one_step(
        "page-throws-tolerated",
        "20s",
        &pages.url("/throws"),
        &[r##"wait_for: { css: "#ready", timeout: 5s }"##],
        &[],
    );
    assert_passed(&run_one(&build_yaml(dir.path(), &yaml, &[]), &env).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_chromedriver_fails_the_run_cleanly_and_the_next_run_restarts_it() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let env = rig.env(2);
    let dir = tempfile::tempdir().unwrap();
    let waits = one_step(
        "driver-dies",
        "30s",
        &pages.url("/beacon"),
        &[r##"wait_for: { css: "#basket", timeout: 20s }"##],
        &[],
    );
    let journey = build_yaml(dir.path(), &waits, &[]);

    let started = Instant::now();
    let killer = async {
        // The page loaded and called back: the step is in its wait_for.
        pages.loaded.notified().await;
        let procs = processes();
        let drivers = rig.drivers(&procs);
        assert_eq!(drivers.len(), 1, "this test's chromedriver");
        let browser = profiles(&descendants(&procs, &drivers));
        assert_eq!(browser.len(), 1, "one session running");
        kill_9(drivers[0]);
        (drivers[0], browser)
    };
    let (report, (killed, browser)) = tokio::join!(run_one(&journey, &env), killer);
    let took = started.elapsed();

    let e = failure(&report, 0);
    assert_eq!(e.kind, ErrorKind::Browser, "{e:#?}");
    assert!(
        e.message.contains("action 2 (wait_for)")
            && e.message
                .contains("lost the browser (chromedriver or Chromium died)"),
        "{}",
        e.message
    );
    assert!(
        took < Duration::from_secs(15),
        "the run ended {took:?} after it started, not when the driver died"
    );
    // Its Chromium, orphaned by the driver, is gone and so is its profile.
    let left = wait_until_gone(&browser, &BTreeSet::new()).await;
    assert!(
        left.is_empty(),
        "Chromium outlived its run: {:#?}",
        left.iter().map(Proc::command).collect::<Vec<_>>()
    );
    assert_profiles_removed(&browser);

    // The next run gets a new chromedriver and passes.
    let ok = one_step(
        "driver-restarted",
        "30s",
        &pages.url("/ok"),
        &[r##"wait_for: { css: "#ready", timeout: 5s }"##],
        &[],
    );
    assert_passed(&run_one(&build_yaml(dir.path(), &ok, &[]), &env).await);
    let drivers = rig.drivers(&processes());
    assert!(
        drivers.len() == 1 && drivers[0] != killed,
        "expected one new chromedriver, got {drivers:?} (killed {killed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_page_times_out_at_the_journey_deadline_and_its_browser_is_closed() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let env = rig.env(2);
    let dir = tempfile::tempdir().unwrap();
    let yaml = one_step(
        "browser-hangs",
        "5s",
        &pages.url("/hangs"),
        &[r##"wait_for: { css: "#basket", timeout: 30s }"##],
        &[],
    );
    let journey = build_yaml(dir.path(), &yaml, &[]);
    let watcher = rig.watch();
    let started = Instant::now();
    let report = run_one(&journey, &env).await;
    let took = started.elapsed();
    let seen = watcher.finish();
    println!("hung page: the run ended after {took:?} (journey timeout 5s)");

    let e = failure(&report, 0);
    assert_eq!(e.kind, ErrorKind::Timeout, "{e:#?}");
    assert!(
        e.message
            .contains("journey timeout 5s reached in step `open the page`"),
        "{}",
        e.message
    );
    let browser = profiles(&seen);
    assert_eq!(browser.len(), 1, "one session: {browser:?}");
    let left = wait_until_gone(&browser, &BTreeSet::new()).await;
    assert!(
        left.is_empty(),
        "the hung Chromium outlived its run: {:#?}",
        left.iter().map(Proc::command).collect::<Vec<_>>()
    );
    assert_profiles_removed(&browser);
    // The deadline holds for the whole run: failure screenshot, page URL
    // and closing the session get a short grace after it, not their own
    // timeouts one after another.
    assert!(
        took < Duration::from_secs(5) + HANG_GRACE,
        "a 5s journey ended after {took:?}"
    );
}

/// A run cancelled at shutdown is not the target's failure: it keeps no
/// screenshot and asks the page for nothing more, and its browser still goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_at_shutdown_takes_no_screenshot_and_closes_its_browser() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let env = rig.env(2);
    let dir = tempfile::tempdir().unwrap();
    let yaml = one_step(
        "cancelled-at-shutdown",
        "60s",
        &pages.url("/beacon"),
        &[r##"wait_for: { css: "#basket", timeout: 50s }"##],
        &[],
    );
    let journey = build_yaml(dir.path(), &yaml, &[]);
    let watcher = rig.watch();
    let cancel = CancellationToken::new();
    // The page is open and its session live when the agent shuts down.
    let shutdown = async {
        tokio::time::timeout(Duration::from_secs(50), pages.loaded.notified())
            .await
            .expect("the page never loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
        Instant::now()
    };
    let run = async {
        let report = runner::run(&journey, &env, None, &cancel).await;
        (report, Instant::now())
    };
    let ((report, ended), cancelled) = tokio::join!(run, shutdown);
    let seen = watcher.finish();
    let took = ended - cancelled;
    assert!(
        took < Duration::from_secs(20),
        "the run went on for {took:?} after it was cancelled"
    );

    let e = failure(&report, 0);
    assert_eq!(e.kind, ErrorKind::Cancelled, "{e:#?}");
    assert_eq!(e.screenshot, None, "a cancelled run took a screenshot");
    assert_eq!(
        e.page_url, None,
        "a cancelled run asked the page for its URL"
    );
    let browser = profiles(&seen);
    assert_eq!(browser.len(), 1, "one session: {browser:?}");
    let left = wait_until_gone(&browser, &BTreeSet::new()).await;
    assert!(
        left.is_empty(),
        "the cancelled run's Chromium outlived it: {:#?}",
        left.iter().map(Proc::command).collect::<Vec<_>>()
    );
    assert_profiles_removed(&browser);
}

// ---------------------------------------------------------------------------
// 4. Leaks
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_runs_leave_no_chromium_no_profile_and_flat_memory() {
    // Both slots: no other browser test of this file runs meanwhile, so the
    // memory figures are this test's.
    let _slots = browser_slots(2).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let env = rig.env(2);
    let dir = tempfile::tempdir().unwrap();
    let yaml = one_step(
        "short",
        "30s",
        &pages.url("/ok"),
        &[r##"wait_for: { css: "#ready", timeout: 5s }"##],
        &[],
    );
    let journey = build_yaml(dir.path(), &yaml, &[]);
    let watcher = rig.watch();
    let started = Instant::now();
    let mut rss_at_10 = 0;
    let mut runs = 0;
    while runs < 50 {
        // Two at a time, as the driver allows.
        let (a, b) = tokio::join!(run_one(&journey, &env), run_one(&journey, &env));
        assert_passed(&a);
        assert_passed(&b);
        runs += 2;
        if runs == 10 {
            rss_at_10 = rss_kib();
        }
    }
    let rss_at_50 = rss_kib();
    let took = started.elapsed();
    let seen = watcher.finish();
    let browser = profiles(&seen);
    println!(
        "50 runs in {took:?}: RSS after run 10 {} KiB, after run 50 {} KiB, \
         growth {} KiB; {} browser profiles seen",
        rss_at_10,
        rss_at_50,
        rss_at_50 as i64 - rss_at_10 as i64,
        browser.len()
    );

    // The watcher saw most sessions (each lives for about a second).
    assert!(browser.len() >= 25, "saw only {} sessions", browser.len());
    let left = wait_until_gone(&browser, &BTreeSet::new()).await;
    assert!(
        left.is_empty(),
        "Chromium outlived its run: {:#?}",
        left.iter().map(Proc::command).collect::<Vec<_>>()
    );
    let procs = processes();
    let drivers = rig.drivers(&procs);
    assert_eq!(drivers.len(), 1, "one chromedriver for all 50 runs");
    let below = descendants(&procs, &drivers);
    assert!(
        below.is_empty(),
        "still under chromedriver: {:#?}",
        below.iter().map(Proc::command).collect::<Vec<_>>()
    );
    assert_profiles_removed(&browser);
    assert!(
        rss_at_50 < rss_at_10 + 30 * 1024,
        "memory grew by {} KiB between run 10 and run 50",
        rss_at_50 - rss_at_10
    );
    // The agent's chromedriver goes with the agent's probe environment.
    drop(env);
    let left = wait_until_gone(&BTreeSet::new(), &drivers.into_iter().collect()).await;
    assert!(
        left.is_empty(),
        "chromedriver outlived its Driver: {left:?}"
    );
}

/// Waiting for a browser slot (`max_browsers`) is not step latency: two
/// fanned-out runs that share one slot have step spans that do not overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_browser_slot_is_not_counted_as_step_time() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let backend = DemoServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (first, _second) = split_frontends(&backend.base_url(), &backend.base_url()).await;
    let yaml = [
        "name: one-slot".to_string(),
        "timeout: 30s".to_string(),
        format!("fan_out: {{ host: {FRONTEND_HOST}, addresses: [127.0.0.2, 127.0.0.3] }}"),
        "steps:".to_string(),
        "  - name: open the login page".to_string(),
        "    browser:".to_string(),
        format!(
            "      - goto: \"http://{FRONTEND_HOST}:{}/\"",
            first.addr().port()
        ),
        r#"      - wait_for: { css: 'input[type="text"]', timeout: 10s }"#.to_string(),
    ]
    .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let journey = build_yaml(dir.path(), &yaml, &[]);
    // One browser at a time: the second replica's run waits for the first.
    let env = rig.env(1);
    let started = Instant::now();
    let reports = run_all(&journey, &env).await;
    let took = started.elapsed();
    assert_eq!(reports.len(), 2);
    let mut steps: Vec<&StepReport> = reports
        .iter()
        .map(|r| {
            assert_passed(r);
            &r.steps[0]
        })
        .collect();
    steps.sort_by_key(|s| s.started_at);
    let (a, b) = (steps[0], steps[1]);
    let a_end = a.started_at + a.duration;
    println!(
        "one browser slot, two replicas in {took:?}: steps took {:?} and {:?}; \
         the second started {:?} after the first began",
        a.duration,
        b.duration,
        b.started_at
            .duration_since(a.started_at)
            .unwrap_or_default()
    );
    assert!(
        b.started_at >= a_end,
        "the second replica's step ({:?}) overlaps the first's ({:?}): it counts the wait \
         for a browser slot as its own time",
        b.duration,
        a.duration
    );
}

/// When each of a rig's Chromium profiles was first seen in use, and when
/// its directory was last seen on disk; watched from a plain thread.
///
/// For each profile it starts a lingering process that names the profile on
/// its command line, as Chromium's crash handler does. The agent must kill
/// it before it removes the profile, and its kill loop waits between passes,
/// so every profile outlives its run by a wide margin that a 10 ms poll
/// cannot miss, however busy the machine.
struct ProfileLife {
    seen: Arc<Mutex<BTreeMap<String, (std::time::SystemTime, std::time::SystemTime)>>>,
    holders: Arc<Mutex<Vec<(String, std::process::Child)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What [`ProfileLife`] saw of one profile.
struct Seen {
    profile: String,
    first_in_use: std::time::SystemTime,
    last_on_disk: std::time::SystemTime,
    /// How the lingering process naming the profile ended; `None` when
    /// the agent left it running.
    holder: Option<std::process::ExitStatus>,
}

impl ProfileLife {
    fn start(rig: &Rig) -> Self {
        use std::os::unix::process::CommandExt;
        let path = rig.chromedriver.clone();
        let seen: Arc<Mutex<BTreeMap<_, _>>> = Arc::default();
        let holders: Arc<Mutex<Vec<_>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, holders, stop) = (seen.clone(), holders.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let procs = processes();
                    let found = profiles(&descendants(&procs, &driver_pids(&path, &procs)));
                    let mut seen = seen.lock().unwrap();
                    for p in found {
                        if seen.contains_key(&p) {
                            continue;
                        }
                        let now = std::time::SystemTime::now();
                        seen.insert(p.clone(), (now, now));
                        let holder = std::process::Command::new("sleep")
                            .arg0(format!("holder --database={p}/Crashpad"))
                            .arg("60")
                            .spawn()
                            .expect("start a process that names the profile");
                        holders.lock().unwrap().push((p, holder));
                    }
                    for (p, (_, present)) in seen.iter_mut() {
                        // Stamped before the look: present at least until then.
                        let now = std::time::SystemTime::now();
                        if Path::new(p).exists() {
                            *present = now;
                        }
                    }
                    drop(seen);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        ProfileLife {
            seen,
            holders,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; returns what it saw in the order the profiles
    /// appeared. A lingering process the agent left running is killed here.
    fn finish(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let seen = self.seen.lock().unwrap().clone();
        let mut out: Vec<Seen> = std::mem::take(&mut *self.holders.lock().unwrap())
            .into_iter()
            .map(|(profile, mut holder)| {
                let status = holder.try_wait().unwrap();
                if status.is_none() {
                    holder.kill().unwrap();
                    holder.wait().unwrap();
                }
                let (first_in_use, last_on_disk) = seen[&profile];
                Seen {
                    profile,
                    first_in_use,
                    last_on_disk,
                    holder: status,
                }
            })
            .collect();
        out.sort_by_key(|s| s.first_in_use);
        out
    }
}

impl Drop for ProfileLife {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, holder) in self.holders.lock().unwrap().iter_mut() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
    }
}

/// A run's clock stops when its WebDriver session is closed: killing what
/// still uses the Chromium profile and deleting it afterwards is the
/// agent's work, not the target's. The run still holds its browser slot
/// until the profile is gone, so with one slot the next run's browser
/// starts only after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ends_when_its_browser_quits_and_its_slot_is_held_until_the_profile_is_gone() {
    use std::os::unix::process::ExitStatusExt;
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let env = rig.env(1);
    let dir = tempfile::tempdir().unwrap();
    let yaml = one_step(
        "quits",
        "30s",
        &pages.url("/ok"),
        &[r##"wait_for: { css: "#ready", timeout: 5s }"##],
        &[],
    );
    let journey = build_yaml(dir.path(), &yaml, &[]);
    let life = ProfileLife::start(&rig);
    let (a, b) = tokio::join!(run_one(&journey, &env), run_one(&journey, &env));
    let seen = life.finish();
    assert_passed(&a);
    assert_passed(&b);
    assert_eq!(
        seen.len(),
        2,
        "two sessions: {:?}",
        seen.iter().map(|s| &s.profile).collect::<Vec<_>>()
    );
    for s in &seen {
        assert_eq!(
            s.holder.and_then(|h| h.signal()),
            Some(SIGKILL),
            "the process naming {} outlived its run: {:?}",
            s.profile,
            s.holder
        );
    }
    let mut ends: Vec<std::time::SystemTime> =
        [&a, &b].iter().map(|r| r.started_at + r.duration).collect();
    ends.sort();
    for (s, end) in seen.iter().zip(&ends) {
        let after = s.last_on_disk.duration_since(*end).unwrap_or_else(|e| {
            panic!(
                "the run ended {:?} after its profile {} was last seen on disk: \
                 its duration includes removing the profile",
                e.duration(),
                s.profile
            )
        });
        println!(
            "profile {} still on disk {after:?} after its run ended",
            s.profile
        );
    }
    assert!(
        seen[0].last_on_disk < seen[1].first_in_use,
        "the second browser started while the first run's profile was still on disk: \
         the slot was given up too early"
    );
    assert_profiles_removed(&seen.iter().map(|s| s.profile.clone()).collect());
}

/// SIGKILL's number on Linux.
const SIGKILL: i32 = 9;

/// The addresses listening on TCP `port` in this network namespace, from
/// /proc/net/tcp and /proc/net/tcp6.
fn listening_on(port: u16) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `sl local_address rem_address st`; 0A is LISTEN.
            let (Some(local), Some("0A")) = (fields.get(1), fields.get(3).copied()) else {
                continue;
            };
            let (addr, p) = local.split_once(':').unwrap();
            if u16::from_str_radix(p, 16).unwrap() != port {
                continue;
            }
            // The address is printed as 32-bit words in host byte order.
            let bytes: Vec<u8> = (0..addr.len() / 8)
                .flat_map(|i| {
                    u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16)
                        .unwrap()
                        .to_le_bytes()
                })
                .collect();
            out.push(match bytes.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap()),
                _ => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()),
            });
        }
    }
    out
}

/// The agent's own chromedriver takes WebDriver commands, which can start
/// programs, so it must not listen beyond loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_chromedriver_listens_on_loopback_only() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let env = rig.env(1);
    let dir = tempfile::tempdir().unwrap();
    let yaml = one_step(
        "starts-the-driver",
        "30s",
        &pages.url("/ok"),
        &[r##"wait_for: { css: "#ready", timeout: 5s }"##],
        &[],
    );
    assert_passed(&run_one(&build_yaml(dir.path(), &yaml, &[]), &env).await);
    let procs = processes();
    let drivers = rig.drivers(&procs);
    assert_eq!(drivers.len(), 1, "this test's chromedriver");
    let driver = procs.iter().find(|p| p.pid == drivers[0]).unwrap();
    let port: u16 = driver
        .argv
        .iter()
        .find_map(|a| a.strip_prefix("--port="))
        .unwrap_or_else(|| panic!("no --port in {:?}", driver.argv))
        .parse()
        .unwrap();
    let addresses = listening_on(port);
    println!("chromedriver {:?} listens on {addresses:?}", driver.argv);
    assert!(
        !addresses.is_empty(),
        "nothing listens on chromedriver's port {port}"
    );
    assert!(
        addresses.iter().all(|a| a.is_loopback()),
        "chromedriver listens beyond loopback on port {port}: {addresses:?}"
    );
}

/// One WebDriver command as chromedriver logged it (`--log-path`).
#[derive(Debug)]
struct Logged {
    /// Seconds, chromedriver's clock.
    at: f64,
    command: String,
    response: bool,
    /// `wait_for`'s look at the page (its script), or the answer to one.
    look: bool,
}

/// The commands and responses in a chromedriver log, in order.
fn driver_log(path: &Path) -> Vec<Logged> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: Vec<Logged> = Vec::new();
    for line in text.lines() {
        // `[1795322006.418][INFO]: [session] COMMAND ExecuteScript {`
        let Some(rest) = line.strip_prefix('[') else {
            if line.contains("const [css, xpath, visible] = arguments")
                && let Some(last) = out.last_mut()
                && !last.response
            {
                last.look = true;
            }
            continue;
        };
        let Some((at, rest)) = rest.split_once("][INFO]: [") else {
            continue;
        };
        let Some((_session, rest)) = rest.split_once("] ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let response = match words.next() {
            Some("COMMAND") => false,
            Some("RESPONSE") => true,
            _ => continue,
        };
        // Commands of a session are answered in order, one at a time.
        let look = response && out.last().is_some_and(|c| !c.response && c.look);
        out.push(Logged {
            at: at.parse().unwrap_or_default(),
            command: words.next().unwrap_or_default().to_string(),
            response,
            look,
        });
    }
    out
}

/// A passing login-then-chat run makes the calls the actions need and one
/// per look of its waits, and nothing else: no visibility call per element,
/// no URL, title or log reads, no URL read before navigating. The waits look
/// again every 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_makes_only_the_webdriver_calls_its_actions_need() {
    let _slot = browser_slots(1).await;
    let demo = Demo::healthy().await;
    let pages = Pages::start().await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("chromedriver.log");
    let (_driver, webdriver) = chromedriver_with(&[format!("--log-path={}", log.display())]).await;
    let env = RunEnv {
        location: "test".into(),
        probes: Arc::new(
            ProbeEnv::with_browser(BrowserOptions {
                webdriver: Some(webdriver),
                max_browsers: 1,
                ..BrowserOptions::default()
            })
            .unwrap(),
        ),
    };
    let journey = build_path(&movie_guru_yaml(), &[("app", &demo.frontend.base_url())]);
    assert_passed(&run_one(&journey, &env).await);
    let calls: Vec<Logged> = driver_log(&log)
        .into_iter()
        .filter(|c| !c.response)
        .collect();
    let looks = calls.iter().filter(|c| c.look).count();
    let others: Vec<&str> = calls
        .iter()
        .filter(|c| !c.look)
        .map(|c| c.command.as_str())
        .collect();
    println!(
        "login-then-chat: {} WebDriver calls, {looks} of them looks of its waits",
        calls.len()
    );
    assert_eq!(
        others,
        [
            // log in: the session, the instrumentation, the page
            "InitSession",
            "ExecuteCDP",
            "Navigate",
            // fill, click
            "FindElement",
            "ClearElement",
            "TypeElement",
            "FindElement",
            "ClickElement",
            // what the page did, its URL and title
            "ExecuteAsyncScript",
            // chat: fill and submit
            "FindElement",
            "ClearElement",
            "TypeElement",
            // what the page did, its URL and title, the `absent` element
            "ExecuteAsyncScript",
            "Quit",
        ],
        "calls besides the waits' looks"
    );
    assert!(looks >= 3, "{looks} looks for three waits");

    // A wait for an element that appears after a second looks every 50 ms
    // (plus the look itself and the time to wake up).
    let dir = tempfile::tempdir().unwrap();
    let yaml = one_step(
        "late",
        "30s",
        &pages.url("/late"),
        &[r##"wait_for: { css: "#late", timeout: 10s }"##],
        &[],
    );
    let before = driver_log(&log).len();
    assert_passed(&run_one(&build_yaml(dir.path(), &yaml, &[]), &env).await);
    let entries = driver_log(&log).split_off(before);
    let mut gaps: Vec<f64> = entries
        .windows(2)
        .filter(|w| w[0].response && w[0].look && !w[1].response && w[1].look)
        .map(|w| w[1].at - w[0].at)
        .collect();
    gaps.sort_by(f64::total_cmp);
    assert!(
        gaps.len() >= 5,
        "only {} looks in a second: {gaps:?}",
        gaps.len() + 1
    );
    let median = gaps[gaps.len() / 2];
    println!(
        "wait_for looked {} times; median pause between looks {:.0} ms",
        gaps.len() + 1,
        median * 1000.0
    );
    assert!(
        median < 0.090,
        "wait_for pauses {:.0} ms between looks",
        median * 1000.0
    );
}

/// A page that shows what the step waits for and then calls its backend:
/// the call is the step's, which ends when the call has answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_step_started_is_the_steps_even_when_it_answers_after_the_wait() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let env = rig.env(1);
    let yaml = format!(
        "name: calls\ntimeout: 30s\nsteps:\n  - name: open\n    browser:\n      - goto: \"{}\"\n      - wait_for: {{ css: \"#shown\", timeout: 5s }}\n    expect:\n      backend_requests: all_ok\n  - name: again\n    browser:\n      - wait_for: {{ css: \"#shown\", timeout: 5s }}\n",
        pages.url("/calls")
    );
    let dir = tempfile::tempdir().unwrap();
    let report = run_one(&build_yaml(dir.path(), &yaml, &[]), &env).await;
    assert_passed(&report);
    let slow = ("GET".to_string(), pages.url("/slow"));
    assert!(
        requests(&report.steps[0]).contains(&slow),
        "GET /slow is not a call of the step that started it: {:?}, next step {:?}",
        requests(&report.steps[0]),
        requests(&report.steps[1])
    );
    assert!(
        requests(&report.steps[1]).is_empty(),
        "{:?}",
        requests(&report.steps[1])
    );
    let (call, h) = http_calls(&report.steps[0])
        .into_iter()
        .find(|(_, h)| h.url == slow.1)
        .unwrap();
    assert_eq!(h.status, Some(200));
    let step = &report.steps[0];
    assert!(
        call.started_at + call.duration
            <= step.started_at + step.duration + Duration::from_millis(50),
        "the call ended after its step"
    );
}

/// `wait_for` decides in one look whether an element is displayed; it must
/// agree with WebDriver's own answer (Is Element Displayed) on the kinds of
/// hidden, clipped and unsized elements pages have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_visible_agrees_with_webdrivers_is_displayed() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let url = pages.url("/visibility");

    // WebDriver's answers, from a bare session.
    let (_driver, webdriver) = bare_chromedriver().await;
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
    let profile = tempfile::Builder::new()
        .prefix("bare-chromium-")
        .tempdir()
        .unwrap();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let mut chrome = json!({ "args": args });
    if let Some(bin) = BrowserOptions::default().chromium {
        chrome["binary"] = json!(bin);
    }
    let caps = json!({ "browserName": "chrome", "goog:chromeOptions": chrome })
        .as_object()
        .cloned()
        .unwrap();
    let c =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&webdriver)
            .await
            .unwrap();
    c.goto(&url).await.unwrap();
    let mut webdriver_says = Vec::new();
    for (id, _) in VISIBILITY_CASES {
        let el = c.find(Locator::Id(id)).await.unwrap();
        webdriver_says.push((*id, el.is_displayed().await.unwrap()));
    }
    c.close().await.unwrap();

    // The agent's: one step per element, each waiting briefly.
    let mut yaml = format!(
        "name: visibility\ntimeout: 60s\nsteps:\n  - name: open\n    browser:\n      - goto: \"{url}\"\n"
    );
    for (id, _) in VISIBILITY_CASES {
        yaml.push_str(&format!(
            "  - name: {id}\n    continue_on_failure: true\n    browser:\n      - wait_for: {{ css: \"#{id}\", timeout: 300ms }}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let env = rig.env(1);
    let report = run_one(&build_yaml(dir.path(), &yaml, &[]), &env).await;
    assert_eq!(report.steps[0].outcome, StepOutcome::Passed, "{report:#?}");
    let agent_says: Vec<(&str, bool)> = VISIBILITY_CASES
        .iter()
        .zip(&report.steps[1..])
        .map(|((id, _), step)| (*id, step.outcome == StepOutcome::Passed))
        .collect();
    assert_eq!(
        agent_says, webdriver_says,
        "wait_for (left) against WebDriver (right)"
    );
    assert_eq!(
        webdriver_says,
        VISIBILITY_CASES.to_vec(),
        "WebDriver's answers (left) against the fixture's (right)"
    );
}

// ---------------------------------------------------------------------------
// 5. Screenshot and page URL of a failed run
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_run_keeps_a_png_screenshot_in_the_artifacts_dir_and_the_page_url() {
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let pages = Pages::start().await;
    let env = rig.env(2);
    let dir = tempfile::tempdir().unwrap();
    let url = pages.url("/ok?from=vantage-test");
    let yaml = one_step(
        "wrong-heading",
        "20s",
        &url,
        &[r##"assert_text: { css: "#ready", equals: "Sold out" }"##],
        &[],
    );
    let report = run_one(&build_yaml(dir.path(), &yaml, &[]), &env).await;
    let e = failure(&report, 0);
    assert_eq!(e.kind, ErrorKind::Assertion, "{e:#?}");
    assert!(
        e.message.contains(r#"expected "Sold out", got "Ready""#),
        "{}",
        e.message
    );
    assert_eq!(e.page_url.as_deref(), Some(url.as_str()));
    assert_screenshot(e);
}

// ---------------------------------------------------------------------------
// 6. Overhead against a bare WebDriver script
// ---------------------------------------------------------------------------

/// The Chromium flags the agent uses, so the comparison is like for like.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-quic",
    "--window-size=1280,900",
];

/// A chromedriver for the bare script; killed when dropped.
async fn bare_chromedriver() -> (tokio::process::Child, String) {
    chromedriver_with(&[]).await
}

/// A chromedriver of the test's own with extra arguments; killed when
/// dropped.
async fn chromedriver_with(extra: &[String]) -> (tokio::process::Child, String) {
    let port = free_port();
    let child = tokio::process::Command::new(which("chromedriver"))
        .arg(format!("--port={port}"))
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr = format!("127.0.0.1:{port}");
    loop {
        if driver_ready(&addr).await {
            return (child, format!("http://{addr}"));
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /status` says ready. chromedriver keeps the connection open, so read
/// until the answer is in rather than to the end.
async fn driver_ready(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.ends_with(b"}}") {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    String::from_utf8_lossy(&answer).contains("\"ready\":true")
}

async fn wait_css(
    c: &fantoccini::Client,
    css: &str,
) -> anyhow::Result<fantoccini::elements::Element> {
    Ok(c.wait()
        .at_most(Duration::from_secs(15))
        .every(Duration::from_millis(50))
        .for_element(Locator::Css(css))
        .await?)
}

/// The login-then-chat journey's actions with plain fantoccini: a fresh
/// profile, no instrumentation, no logs. Returns the time of each step (the
/// first including the session start, as the agent's does) and of the
/// whole run including closing the session.
async fn bare_login_then_chat(webdriver: &str, app: &str) -> anyhow::Result<[Duration; 3]> {
    let profile = tempfile::Builder::new()
        .prefix("bare-chromium-")
        .tempdir()?;
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let mut chrome = json!({ "args": args });
    if let Some(bin) = BrowserOptions::default().chromium {
        chrome["binary"] = json!(bin);
    }
    let caps = json!({ "browserName": "chrome", "goog:chromeOptions": chrome })
        .as_object()
        .cloned()
        .unwrap();
    let start = Instant::now();
    let c =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(webdriver)
            .await?;
    let steps = async {
        c.goto(&format!("{app}/")).await?;
        let email = wait_css(&c, r#"input[type="text"]"#).await?;
        email.clear().await?;
        email.send_keys("probe@example.com").await?;
        c.find(Locator::XPath("//button[normalize-space()='Sign in']"))
            .await?
            .click()
            .await?;
        let chat = wait_css(&c, r#"input[placeholder^="Type your message"]"#).await?;
        let login = start.elapsed();
        let start = Instant::now();
        chat.clear().await?;
        chat.send_keys("a fantasy movie\u{E007}").await?;
        wait_css(
            &c,
            "#chat-container > div.flex-col > div.self-start, #error_message",
        )
        .await?;
        let answered = start.elapsed();
        anyhow::ensure!(
            c.find_all(Locator::Css("#error_message")).await?.is_empty(),
            "the chat failed"
        );
        Ok([login, answered])
    }
    .await;
    let closed = c.close().await;
    let [login, answered] = steps?;
    closed?;
    Ok([login, answered, start.elapsed()])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// Rounds of the overhead comparison: 3, or `VANTAGE_OVERHEAD_ROUNDS` for
/// a steadier reading.
fn overhead_rounds() -> usize {
    std::env::var("VANTAGE_OVERHEAD_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_overhead_against_a_bare_fantoccini_script() {
    let rounds = overhead_rounds();
    let _slot = browser_slots(1).await;
    let rig = Rig::new();
    let demo = Demo::healthy().await;
    let app = demo.frontend.base_url();
    let env = rig.env(2);
    let journey = build_path(&movie_guru_yaml(), &[("app", &app)]);
    let (_bare_driver, webdriver) = bare_chromedriver().await;
    // Warm-up: the agent starts its chromedriver on first use, and a
    // chromedriver's first session is slower than the next ones.
    assert_passed(&run_one(&journey, &env).await);
    bare_login_then_chat(&webdriver, &app).await.unwrap();

    // [log in, chat, whole run with session close] per round, alternating.
    let mut agent: [Vec<Duration>; 3] = Default::default();
    let mut bare: [Vec<Duration>; 3] = Default::default();
    for _ in 0..rounds {
        let report = run_one(&journey, &env).await;
        assert_passed(&report);
        for (i, d) in [
            report.steps[0].duration,
            report.steps[1].duration,
            report.duration,
        ]
        .into_iter()
        .enumerate()
        {
            agent[i].push(d);
        }
        let times = bare_login_then_chat(&webdriver, &app).await.unwrap();
        for (i, t) in times.into_iter().enumerate() {
            bare[i].push(t);
        }
    }
    // Noise only adds time, so each side's fastest run is the steadiest
    // reading of its own cost; the median is printed too.
    println!(
        "browser overhead over {rounds} runs each (agent step durations vs bare fantoccini), \
         median | fastest:"
    );
    for (i, name) in [
        "log in (incl. session start)",
        "chat",
        "whole run (incl. session close)",
    ]
    .iter()
    .enumerate()
    {
        let (a, b) = (median(&agent[i]), median(&bare[i]));
        let fastest = |v: &[Duration]| v.iter().copied().min().unwrap_or_default();
        let (fa, fb) = (fastest(&agent[i]), fastest(&bare[i]));
        println!(
            "  {name:32} agent {:6.0} ms  bare {:6.0} ms  ratio {:.2}  ({:+4.0} ms) | \
             agent {:6.0} ms  bare {:6.0} ms  ratio {:.2}",
            ms(a),
            ms(b),
            a.as_secs_f64() / b.as_secs_f64(),
            ms(a) - ms(b),
            ms(fa),
            ms(fb),
            fa.as_secs_f64() / fb.as_secs_f64(),
        );
    }
    assert!(agent.iter().chain(&bare).all(|v| v.len() == rounds));
}
