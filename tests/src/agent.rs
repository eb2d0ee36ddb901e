//! The `vantage` binary as a child process: start it on a free port, scrape
//! its endpoints, read its logs, signal it, and kill it on drop so a failed
//! test never leaves an agent behind.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

pub struct AgentProcess {
    child: Child,
    pub port: u16,
    logs: Arc<Mutex<String>>,
    log_tx: tokio::sync::watch::Sender<usize>,
}

impl AgentProcess {
    /// Starts `vantage run PATHS... --listen 127.0.0.1:PORT EXTRA...` with
    /// `env` added, and waits until `/readyz` answers 200.
    pub async fn start(paths: &[&Path], extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(crate::vantage_bin());
        cmd.arg("run");
        for p in paths {
            cmd.arg(p);
        }
        cmd.args(["--listen", &listen, "--location", "test"])
            .args(extra)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", crate::vantage_bin().display()))?;
        let logs = Arc::new(Mutex::new(String::new()));
        let (log_tx, _) = tokio::sync::watch::channel(0usize);
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            let tx = log_tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let n = {
                        let mut l = logs.lock().unwrap_or_else(|e| e.into_inner());
                        l.push_str(&line);
                        l.push('\n');
                        l.len()
                    };
                    let _ = tx.send(n);
                }
            });
        }
        let agent = AgentProcess {
            child,
            port,
            logs,
            log_tx,
        };
        agent
            .wait_for_status("/readyz", 200, Duration::from_secs(20))
            .await?;
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Everything the agent wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the logs contain `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let mut rx = self.log_tx.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                bail!(
                    "no log line containing {needle:?} within {timeout:?}; logs:\n{}",
                    self.logs()
                );
            }
        }
    }

    /// A plain HTTP/1.1 GET against the agent; returns status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(&format!("127.0.0.1:{}", self.port), path, &[]).await
    }

    /// `/metrics` as Prometheus scrapes it: OpenMetrics, with exemplars.
    pub async fn openmetrics(&self) -> Result<String> {
        let (status, body) = http_get(
            &format!("127.0.0.1:{}", self.port),
            "/metrics",
            &[(
                "Accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )],
        )
        .await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }

    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = self.get("/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }

    /// Polls `/metrics` until `pred` holds. The agent is another process, so
    /// there is nothing to await but its answers.
    pub async fn wait_for_metrics(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = self.metrics().await.unwrap_or_default();
            if pred(&text) {
                return Ok(text);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "metrics condition not met within {timeout:?}; last scrape:\n{text}\nlogs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for_status(&self, path: &str, want: u16, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok((s, _)) = self.get(path).await
                && s == want
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{path} did not answer {want} within {timeout:?}; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{sig} failed");
        }
        Ok(())
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => Ok(s?),
            Err(_) => bail!(
                "agent did not exit within {timeout:?}; logs:\n{}",
                self.logs()
            ),
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

/// A minimal HTTP/1.1 GET with `Connection: close`.
pub async fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the first sample line that starts with `series` (name and
/// labels as written, e.g. `probe_success{journey="a"`).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
