//! The WebDriver endpoint and browser sessions.
//!
//! By default Vantage starts and supervises a local chromedriver (restarted
//! when it dies; the run that lost it fails with a clear error). With
//! `--webdriver URL` it uses a remote Selenium/chromedriver instead. Every
//! run gets a new session with a fresh, empty Chromium profile; a session is
//! always closed and its profile removed — on success, failure, timeout and
//! cancellation — and any Chromium process still holding that profile is
//! killed, so no browser outlives its run.
//!
//! The driver knows every profile from its creation until its removal,
//! whoever holds the session (a run, a start the run gave up on, a cleanup
//! in the background). [`Driver::shutdown`] ends them all before the agent
//! exits: a cleanup left to the runtime would be dropped with it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// How the agent reaches a browser.
#[derive(Clone, Debug)]
pub struct BrowserOptions {
    /// A remote WebDriver URL; `None` starts a local chromedriver.
    pub webdriver: Option<String>,
    pub chromedriver: PathBuf,
    /// The Chromium binary passed to chromedriver (`None`: its default).
    pub chromium: Option<PathBuf>,
    pub max_browsers: usize,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        let chromium = [
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
        BrowserOptions {
            webdriver: None,
            chromedriver: PathBuf::from("chromedriver"),
            chromium,
            max_browsers: 2,
        }
    }
}

/// Flags that keep headless Chromium from stalling on a closed network.
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
    // No crash reporter: its self-monitoring handler outlives a killed
    // browser and writes into the profile after it is removed.
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--window-size=1280,900",
];

pub struct Driver {
    opts: BrowserOptions,
    local: Mutex<Option<LocalDriver>>,
    permits: Arc<Semaphore>,
    live: Arc<Live>,
}

struct LocalDriver {
    child: tokio::process::Child,
    url: String,
}

/// How long the polite end of a session (WebDriver DELETE) may take. A hung
/// page keeps chromedriver busy; the kill that follows frees it.
const QUIT_LIMIT: Duration = Duration::from_secs(2);
/// How long a session may take to start, Chromium included.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The sessions whose profile directory exists, from its creation until its
/// removal, with their WebDriver client once the session has started; and
/// the background work that starts or closes sessions no run waits for.
#[derive(Default)]
struct Live {
    closing: AtomicBool,
    profiles: std::sync::Mutex<BTreeMap<PathBuf, Option<fantoccini::Client>>>,
    cleanups: TaskTracker,
}

impl Live {
    fn profiles(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Option<fantoccini::Client>>> {
        self.profiles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new profile; refused once the driver is shutting down.
    fn register(&self, dir: &Path) -> bool {
        let mut profiles = self.profiles();
        if self.closing.load(Ordering::Acquire) {
            return false;
        }
        profiles.insert(dir.to_path_buf(), None);
        true
    }

    fn attach(&self, dir: &Path, client: &fantoccini::Client) {
        if let Some(c) = self.profiles().get_mut(dir) {
            *c = Some(client.clone());
        }
    }

    fn forget(&self, dir: &Path) {
        self.profiles().remove(dir);
    }

    fn snapshot(&self) -> Vec<(PathBuf, Option<fantoccini::Client>)> {
        self.profiles()
            .iter()
            .map(|(d, c)| (d.clone(), c.clone()))
            .collect()
    }

    /// Runs `work` in the background, owned by the driver. Without a
    /// runtime the work is dropped, and the profile it holds removes what it
    /// can at once.
    fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            self.cleanups.spawn_on(work, &h);
        }
    }
}

impl Driver {
    pub fn new(opts: BrowserOptions) -> Self {
        let permits = Arc::new(Semaphore::new(opts.max_browsers.max(1)));
        Driver {
            opts,
            local: Mutex::new(None),
            permits,
            live: Arc::default(),
        }
    }

    /// The WebDriver URL, starting (or restarting) the local chromedriver.
    async fn url(&self) -> Result<String, String> {
        if let Some(u) = &self.opts.webdriver {
            return Ok(u.clone());
        }
        let mut local = self.local.lock().await;
        if let Some(l) = local.as_mut() {
            match l.child.try_wait() {
                Ok(None) => return Ok(l.url.clone()),
                Ok(Some(status)) => warn!(%status, "chromedriver exited; restarting it"),
                Err(e) => warn!(error = %e, "chromedriver state unknown; restarting it"),
            }
        }
        if self.live.closing.load(Ordering::Acquire) {
            return Err("the agent is shutting down".into());
        }
        let started = start_chromedriver(&self.opts.chromedriver).await?;
        info!(url = %started.url, "chromedriver started");
        let url = started.url.clone();
        *local = Some(started);
        Ok(url)
    }

    /// Waits for a browser slot. A run takes it before its clock starts, so
    /// the wait is lateness, never step time.
    pub async fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// A new session with a fresh profile, in a reserved slot (or a slot
    /// taken now). `pin` maps a host to one address (per-replica fan-out)
    /// inside the browser's resolver.
    ///
    /// The session starts in a task of the driver's: when the caller gives
    /// up while Chromium is still starting (its deadline, or the agent
    /// stopping), the task sees the start through and closes what started.
    pub async fn session(
        &self,
        pin: Option<(&str, IpAddr)>,
        reserved: Option<OwnedSemaphorePermit>,
    ) -> Result<Session, String> {
        let permit = match reserved {
            Some(p) => p,
            None => self
                .reserve()
                .await
                .ok_or_else(|| "browser pool closed".to_string())?,
        };
        let url = self.url().await?;
        let dir = tempfile::Builder::new()
            .prefix("vantage-chromium-")
            .tempdir()
            .map_err(|e| format!("cannot create a browser profile directory: {e}"))?
            .keep();
        let profile = Profile {
            dir: Some(dir.clone()),
            live: self.live.clone(),
            permit: Some(permit),
        };
        if !self.live.register(&dir) {
            return Err("the agent is shutting down".into());
        }
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", dir.display()));
        if let Some((host, ip)) = pin {
            let ip = match ip {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            };
            args.push(format!("--host-resolver-rules=MAP {host} {ip}"));
        }
        let mut chrome = json!({ "args": args });
        if let Some(bin) = &self.opts.chromium {
            chrome["binary"] = json!(bin);
        }
        let caps: serde_json::Map<String, Value> = json!({
            "browserName": "chrome",
            "goog:chromeOptions": chrome,
            // Network events only: console errors come from the page's own
            // instrument (instrument.js), so chromedriver need not keep a
            // browser log nobody reads.
            "goog:loggingPrefs": { "performance": "ALL" },
            "pageLoadStrategy": "normal",
            "timeouts": { "pageLoad": 60_000, "script": 30_000, "implicit": 0 },
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        let live = self.live.clone();
        self.live.spawn(async move {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let mut builder = fantoccini::ClientBuilder::new(connector);
            builder.capabilities(caps);
            let started = match tokio::time::timeout(START_LIMIT, builder.connect(&url)).await {
                Ok(Ok(client)) => Ok(client),
                Ok(Err(e)) => Err(format!("cannot start a browser session at {url}: {e}")),
                Err(_) => Err(format!(
                    "the browser session at {url} did not start within {}s",
                    START_LIMIT.as_secs()
                )),
            };
            match started {
                Ok(client) => {
                    live.attach(&dir, &client);
                    let session = Session {
                        client: Some(client),
                        profile,
                    };
                    // Nobody waits for it any more: close it.
                    if let Err(Ok(session)) = tx.send(Ok(session)) {
                        session.close().await;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    profile.remove().await;
                }
            }
        });
        rx.await.map_err(|_| {
            "the browser session was not started: the agent is shutting down".to_string()
        })?
    }

    /// Ends every session still open, for an agent that is stopping; it
    /// starts no new one afterwards. Chromium is killed first: a page that
    /// hangs makes every WebDriver call of its session wait, the close
    /// included. Then the sessions are ended (for a remote WebDriver, the
    /// only way), the background starts and closes finish, the local
    /// chromedriver stops, and whatever is still left is killed and removed.
    /// Bounded: about 15 s in the worst case.
    pub async fn shutdown(&self) {
        self.live.closing.store(true, Ordering::Release);
        self.permits.close();
        let open = self.live.snapshot();
        if !open.is_empty() {
            info!(sessions = open.len(), "closing browser sessions");
        }
        let dirs: Vec<PathBuf> = open.iter().map(|(d, _)| d.clone()).collect();
        let _ = kill_until_gone(&dirs, Duration::from_secs(3)).await;
        let quits = open
            .into_iter()
            .filter_map(|(_, c)| c)
            .map(|c| tokio::time::timeout(QUIT_LIMIT, c.close()));
        futures_util::future::join_all(quits).await;
        self.live.cleanups.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.live.cleanups.wait()).await;
        if let Ok(mut local) = tokio::time::timeout(Duration::from_secs(1), self.local.lock()).await
            && let Some(mut l) = local.take()
        {
            let _ = l.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), l.child.wait()).await;
        }
        // Left: profiles of starts or closes cut short, such as a browser
        // chromedriver was still launching.
        let left: Vec<PathBuf> = self.live.snapshot().into_iter().map(|(d, _)| d).collect();
        if !kill_until_gone(&left, Duration::from_secs(2)).await {
            warn!("browser processes still running after shutdown");
        }
        for dir in left {
            if remove_dir(&dir).await {
                self.live.forget(&dir);
            }
        }
    }
}

impl Drop for Driver {
    /// Normally nothing is left by now; if the agent ends without
    /// [`Driver::shutdown`], remove what can be removed without waiting.
    fn drop(&mut self) {
        let left: Vec<PathBuf> = self.live.snapshot().into_iter().map(|(d, _)| d).collect();
        if !left.is_empty() {
            kill_processes_naming(&left);
            for dir in left {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

async fn start_chromedriver(path: &PathBuf) -> Result<LocalDriver, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port for chromedriver: {e}"))?
        .port();
    // No `--allowed-ips`: with it chromedriver listens on every interface
    // (refusing other hosts only once connected); without it, on loopback
    // only.
    let child = tokio::process::Command::new(path)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start `{}`: {e} (install chromium-driver, or pass --webdriver URL)",
                path.display()
            )
        })?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let req = format!(
                "GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            if s.write_all(req.as_bytes()).await.is_ok() {
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
                if String::from_utf8_lossy(&buf).contains("\"ready\":true") {
                    return Ok(LocalDriver { child, url });
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "chromedriver on port {port} did not become ready within 15s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One run's browser. Close it with [`Session::close`] (or [`Session::quit`]
/// and then [`Profile::remove`]); dropping it closes it in the background.
pub struct Session {
    client: Option<fantoccini::Client>,
    profile: Profile,
}

/// A session's profile directory, with the session's browser slot. The slot
/// is held until the profile is removed, so `max_browsers` bounds the
/// browsers being cleaned up as well as the running ones.
pub struct Profile {
    dir: Option<PathBuf>,
    live: Arc<Live>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Profile {
    /// Moves the profile out, leaving an empty one behind.
    fn take(&mut self) -> Profile {
        Profile {
            dir: self.dir.take(),
            live: self.live.clone(),
            permit: self.permit.take(),
        }
    }

    /// Kills whatever still uses the profile and removes it.
    pub async fn remove(mut self) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        let stopped = kill_until_gone(std::slice::from_ref(&dir), Duration::from_secs(3)).await;
        // Still registered unless all is gone: shutdown tries again.
        if remove_dir(&dir).await && stopped {
            self.live.forget(&dir);
        }
        self.dir = None;
    }
}

impl Drop for Profile {
    /// Not removed by its owner: the agent is exiting, or the removal was
    /// cut short. Do what can be done without waiting.
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let alive = kill_processes_naming(std::slice::from_ref(&dir));
            if std::fs::remove_dir_all(&dir).is_ok() && alive == 0 {
                self.live.forget(&dir);
            }
        }
    }
}

impl Session {
    pub fn client(&self) -> Option<&fantoccini::Client> {
        self.client.as_ref()
    }

    /// Ends the WebDriver session, which quits Chromium, and hands back the
    /// profile to remove. A hung page can keep chromedriver busy, so the
    /// polite close gets two seconds; the kill in [`Profile::remove`]
    /// frees chromedriver too.
    pub async fn quit(mut self) -> Profile {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(QUIT_LIMIT, c.close()).await;
        }
        self.profile.take()
    }

    /// Ends the WebDriver session, removes the profile, and kills any
    /// process still using it.
    pub async fn close(self) {
        self.quit().await.remove().await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let client = self.client.take();
        let profile = self.profile.take();
        if client.is_none() && profile.dir.is_none() {
            return;
        }
        let live = profile.live.clone();
        live.spawn(async move {
            if let Some(c) = client {
                let _ = tokio::time::timeout(QUIT_LIMIT, c.close()).await;
            }
            profile.remove().await;
        });
    }
}

/// Kills what uses these profiles until nothing does (a dying Chromium
/// still writes into its profile), within `limit`. True when nothing does.
async fn kill_until_gone(dirs: &[PathBuf], limit: Duration) -> bool {
    if dirs.is_empty() {
        return true;
    }
    let until = tokio::time::Instant::now() + limit;
    loop {
        if kill_processes_naming(dirs) == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes a profile directory, retrying briefly; true when it is gone.
async fn remove_dir(dir: &Path) -> bool {
    for _ in 0..20 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    warn!(profile = %dir.display(), "could not remove a browser profile directory");
    false
}

/// Kills processes whose command line names one of these profile
/// directories (the Chromium tree and its crash handler), in one pass over
/// /proc. Returns how many were still alive (zombies have no command line).
fn kill_processes_naming(dirs: &[PathBuf]) -> usize {
    // Match the path anywhere: Chromium's crashpad handler names it as
    // `--database=<profile>/Crashpad`, not `--user-data-dir`.
    let needles: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut alive = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if needles.iter().any(|n| cmd.contains(n.as_str())) {
            alive.push(pid.to_string());
        }
    }
    if !alive.is_empty() {
        // One `kill` for all of them: a Chromium has about ten processes,
        // and on a loaded machine every program started takes a while.
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .args(&alive)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    alive.len()
}

/// A run's browser: the slot it reserved before its clock started, and the
/// session its first browser step opens.
#[derive(Default)]
pub struct BrowserSlot {
    pub permit: Option<OwnedSemaphorePermit>,
    pub session: Option<Session>,
}
