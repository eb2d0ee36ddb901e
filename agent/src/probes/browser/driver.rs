//! The WebDriver endpoint and browser sessions.
//!
//! By default Vantage starts and supervises a local chromedriver (restarted
//! when it dies; the run that lost it fails with a clear error). With
//! `--webdriver URL` it uses a remote Selenium/chromedriver instead. Every
//! run gets a new session with a fresh, empty Chromium profile; a session is
//! always closed and its profile removed — on success, failure, timeout and
//! cancellation — and any Chromium process still holding that profile is
//! killed, so no browser outlives its run.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
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
}

struct LocalDriver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    pub fn new(opts: BrowserOptions) -> Self {
        let permits = Arc::new(Semaphore::new(opts.max_browsers.max(1)));
        Driver {
            opts,
            local: Mutex::new(None),
            permits,
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
        let profile = tempfile::Builder::new()
            .prefix("vantage-chromium-")
            .tempdir()
            .map_err(|e| format!("cannot create a browser profile directory: {e}"))?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
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
            "goog:loggingPrefs": { "browser": "ALL", "performance": "ALL" },
            "pageLoadStrategy": "normal",
            "timeouts": { "pageLoad": 60_000, "script": 30_000, "implicit": 0 },
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .map_err(|e| format!("cannot start a browser session at {url}: {e}"))?;
        Ok(Session {
            client: Some(client),
            profile: Some(Profile {
                dir: Some(profile),
                _permit: Some(permit),
            }),
        })
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
    profile: Option<Profile>,
}

/// A session's profile directory, with the session's browser slot. The slot
/// is held until the profile is removed, so `max_browsers` bounds the
/// browsers being cleaned up as well as the running ones.
pub struct Profile {
    dir: Option<tempfile::TempDir>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Profile {
    /// Kills whatever still uses the profile and removes it.
    pub async fn remove(mut self) {
        if let Some(dir) = self.dir.take() {
            remove_profile(dir).await;
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
            let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
        }
        self.profile.take().unwrap_or(Profile {
            dir: None,
            _permit: None,
        })
    }

    /// Ends the WebDriver session, removes the profile, and kills any
    /// process still using it.
    pub async fn close(self) {
        self.quit().await.remove().await;
    }
}

/// Kills what still uses the profile, waits (bounded) until it is gone —
/// a dying Chromium still writes into its profile — and removes it.
async fn remove_profile(profile: tempfile::TempDir) {
    let path = profile.path().to_path_buf();
    for _ in 0..30 {
        if kill_profile_processes(&path) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = profile.keep();
    for _ in 0..20 {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    warn!(profile = %dir.display(), "could not remove a browser profile directory");
}

impl Drop for Session {
    fn drop(&mut self) {
        let client = self.client.take();
        let profile = self.profile.take();
        if client.is_none() && profile.is_none() {
            return;
        }
        let cleanup = async move {
            if let Some(c) = client {
                let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
            }
            if let Some(p) = profile {
                p.remove().await;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(cleanup);
            }
            Err(_) => warn!("browser session dropped outside the runtime; its profile may remain"),
        }
    }
}

/// Kills processes whose command line names this profile directory (the
/// Chromium tree and its crash handler) of a session whose chromedriver died
/// or did not clean up.
/// Returns how many were still alive (zombies have no command line).
pub fn kill_profile_processes(profile: &std::path::Path) -> usize {
    // Match the path anywhere: Chromium's crashpad handler names it as
    // `--database=<profile>/Crashpad`, not `--user-data-dir`.
    let needle = profile.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut alive = 0;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmd.contains(&needle) {
            alive += 1;
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    alive
}

/// A run's browser: the slot it reserved before its clock started, and the
/// session its first browser step opens.
#[derive(Default)]
pub struct BrowserSlot {
    pub permit: Option<OwnedSemaphorePermit>,
    pub session: Option<Session>,
}
