//! A secret used by a journey reaches the target and nothing else.
//!
//! The journey takes `SECRET_TOKEN` from the environment and sends it in an
//! `Authorization` header, a custom header, a URL query parameter and a JSON
//! body; one step fails with a message that quotes the echoed body, one
//! fails on its status with the secret in the echoed body, and one whose URL
//! holds the secret is refused. The echo server must have received the
//! secret (so the test is not vacuous); then everything the agent emitted —
//! `vantage once` stdout (JSON), stderr at debug level and the JUnit file;
//! `vantage run` logs, `/metrics`, and every OTLP span and metric it
//! exported over gRPC — must contain neither the secret nor any 12-character
//! piece of it, and `***` must stand where it was (`url.full`, messages).
//!
//! A last, in-process test covers messages that cut a response to a
//! preview: the cut must not leave a piece of the secret behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use vantage::journey::build::{BuildOptions, load_and_build};
use vantage::journey::runner::{self, RunEnv};
use vantage::probes::ProbeEnv;
use vantage::report::{Outcome, StepOutcome, TraceId};
use vantage_tests::agent::AgentProcess;
use vantage_tests::{FaultServer, Receiver, refused_addr, start_echo, vantage_bin};

const JOURNEY: &str = "secret-journey";

/// A fresh secret: recognisable prefix, 32 random hex digits.
fn new_secret() -> String {
    format!("s3cr3t-{}", TraceId::random())
}

/// The first 12-character piece of `secret` found in `text`, with context.
/// A leak of part of a secret is still a leak (and the whole secret
/// contains every piece, so this finds it whole as well).
fn leak(text: &str, secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    for window in chars.windows(12) {
        let piece: String = window.iter().collect();
        if let Some(at) = text.find(&piece) {
            let mut start = at.saturating_sub(60);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = (at + piece.len() + 60).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            return Some(format!("{piece:?} in …{}…", &text[start..end]));
        }
    }
    None
}

/// Fails with every place where `secret` (or a piece of it) shows up.
fn assert_no_leak(what: &str, text: &str, secret: &str) {
    if let Some(found) = leak(text, secret) {
        panic!("secret leaked into {what}: {found}");
    }
}

#[test]
fn leak_detector_finds_whole_and_partial_secrets() {
    let secret = new_secret();
    assert!(leak(&format!("a {secret} b"), &secret).is_some());
    assert!(leak(&format!("x{}…", &secret[..20]), &secret).is_some());
    assert!(leak(&format!("{}y", &secret[25..]), &secret).is_some());
    assert!(leak(&format!("{}…", &secret[..11]), &secret).is_none());
    assert!(leak("key=*** Bearer ***", &secret).is_none());
    assert!(leak(&TraceId::random().to_string(), &secret).is_none());
}

/// The journey under test, against `echo` and the refused `refused`.
fn journey_yaml(echo: &FaultServer, refused: std::net::SocketAddr) -> String {
    let e = echo.addr();
    format!(
        r#"name: {JOURNEY}
schedule: {{ every: 1s }}
timeout: 5s
vars:
  tok: "${{env:SECRET_TOKEN}}"
steps:
  - name: authorized call
    http:
      method: POST
      url: "http://{e}/echo?key=${{tok}}"
      headers:
        Authorization: "Bearer ${{tok}}"
        X-Api-Key: "${{tok}}"
      body:
        json: {{ token: "${{tok}}", nested: {{ list: ["${{tok}}"] }} }}
    expect: {{ status: 200 }}
  - name: body mismatch
    continue_on_failure: true
    http:
      url: "http://{e}/echo"
      headers: {{ Authorization: "Bearer ${{tok}}", X-Api-Key: "${{tok}}" }}
    expect: {{ body: {{ contains: nope }} }}
  - name: error status
    continue_on_failure: true
    http:
      method: POST
      url: "http://{e}/status/500"
      body: {{ raw: "${{tok}}" }}
  - name: refused
    http: {{ url: "http://{refused}/login?key=${{tok}}" }}
"#
    )
}

/// Writes the journey into `dir`.
fn write_journey(dir: &Path, echo: &FaultServer, refused: std::net::SocketAddr) {
    std::fs::write(dir.join("secret.yaml"), journey_yaml(echo, refused)).expect("journey file");
}

/// The echo server saw the real secret everywhere the journey put it.
fn assert_target_got_secret(echo: &FaultServer, secret: &str) {
    let requests = echo.requests();
    let call = requests
        .iter()
        .find(|r| r.path == "/echo" && r.method == "POST")
        .unwrap_or_else(|| panic!("no POST /echo among {requests:#?}"));
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {secret}").as_str())
    );
    assert_eq!(call.header("x-api-key"), Some(secret));
    assert_eq!(
        call.query.as_deref(),
        Some(format!("key={secret}").as_str())
    );
    let body: Value = serde_json::from_slice(&call.body).expect("JSON body");
    assert_eq!(body["token"], secret);
    assert_eq!(body["nested"]["list"][0], secret);
    let status = requests
        .iter()
        .find(|r| r.path == "/status/500")
        .expect("POST /status/500");
    assert_eq!(status.body_str(), secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_outputs_never_contain_the_secret() {
    let secret = new_secret();
    let echo = start_echo().await;
    let refused = refused_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    write_journey(dir.path(), &echo, refused);
    let junit_path = dir.path().join("junit.xml");

    let bin = vantage_bin();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p vantage` first",
        bin.display()
    );
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("once")
        .arg(dir.path())
        .arg("--json")
        .arg("--junit")
        .arg(&junit_path)
        .args(["--location", "secrets"])
        .env("SECRET_TOKEN", &secret)
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .env_remove("VANTAGE_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("vantage once finished within 20s")
        .expect("running vantage once");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a step failed; stderr:\n{stderr}"
    );
    let junit = std::fs::read_to_string(&junit_path).expect("JUnit file written");

    assert_target_got_secret(&echo, &secret);

    // Nothing the agent wrote holds the secret or a piece of it.
    assert_no_leak("stdout (JSON reports)", &stdout, &secret);
    assert_no_leak("stderr (debug logs)", &stderr, &secret);
    assert_no_leak("the JUnit file", &junit, &secret);
    assert!(!stdout.contains(&format!("Bearer {secret}")));

    // ... and the redaction marker stands where the secret was.
    let reports: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    let report = &reports[0];
    assert_eq!(report["journey"], JOURNEY);
    let steps = report["steps"].as_array().expect("steps");
    let outcomes: Vec<&str> = steps
        .iter()
        .map(|s| s["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        outcomes,
        ["passed", "failed", "failed", "failed"],
        "{report:#}"
    );
    assert_eq!(
        steps[0]["calls"][0]["detail"]["url"],
        format!("http://{}/echo?key=***", echo.addr())
    );
    let body_mismatch = steps[1]["error"]["message"].as_str().expect("message");
    assert!(
        body_mismatch.starts_with("body does not contain \"nope\" (body starts:"),
        "{body_mismatch}"
    );
    assert!(body_mismatch.contains("Bearer ***"), "{body_mismatch}");
    assert_eq!(steps[2]["error"]["kind"], "500");
    let status = steps[2]["error"]["message"].as_str().expect("message");
    assert!(status.contains(r#"{\"body\":\"***\""#), "{status}");
    assert_eq!(steps[3]["error"]["kind"], "connect");
    assert_eq!(
        steps[3]["calls"][0]["detail"]["url"],
        format!("http://{refused}/login?key=***")
    );
    assert!(junit.contains("Bearer ***"), "{junit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_telemetry_never_contains_the_secret() {
    let secret = new_secret();
    let echo = start_echo().await;
    let refused = refused_addr();
    let receiver = Receiver::grpc().await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_journey(dir.path(), &echo, refused);

    let bin = vantage_bin();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p vantage` first",
        bin.display()
    );
    let endpoint = receiver.endpoint();
    let mut agent = AgentProcess::start(
        &[dir.path()],
        &["--grace", "5s"],
        &[
            ("SECRET_TOKEN", secret.as_str()),
            ("RUST_LOG", "debug"),
            ("NO_COLOR", "1"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
    )
    .await
    .expect("agent starts and becomes ready");

    // A few runs exported, and the client-call metric with them.
    let root = format!("journey {JOURNEY}");
    receiver
        .wait_for_span_count(|s| s.name == root, 3, Duration::from_secs(15))
        .await
        .expect("three runs exported");
    receiver
        .wait_for_metric("http.client.request.duration", Duration::from_secs(10))
        .await
        .expect("http.client.request.duration exported");
    let metrics_text = agent
        .wait_for_metrics(
            |t| t.contains(&format!("probe_success{{journey=\"{JOURNEY}\"")),
            Duration::from_secs(10),
        )
        .await
        .expect("/metrics has the journey");

    agent.signal("TERM").expect("kill -TERM");
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "logs:\n{}", agent.logs());
    // Read the logs only once the last line is through the pipe.
    agent
        .wait_for_log("vantage agent stopped", Duration::from_secs(5))
        .await
        .expect("a clean shutdown is logged");
    let logs = agent.logs();
    let spans = receiver.spans();
    let metrics = receiver.metrics();

    assert_target_got_secret(&echo, &secret);

    assert_no_leak("the agent's logs (debug)", &logs, &secret);
    assert_no_leak("/metrics", &metrics_text, &secret);
    assert_no_leak("OTLP spans", &format!("{spans:#?}"), &secret);
    assert_no_leak("OTLP metrics", &format!("{metrics:#?}"), &secret);
    assert!(logs.contains("DEBUG"), "debug logging was on");

    // `***` stands where the secret was, on the CLIENT spans' url.full ...
    let urls: Vec<&str> = spans
        .iter()
        .filter(|s| s.is_client())
        .filter_map(|s| s.attr_str("url.full"))
        .collect();
    let echo_url = format!("http://{}/echo?key=***", echo.addr());
    let refused_url = format!("http://{refused}/login?key=***");
    assert!(urls.contains(&echo_url.as_str()), "{urls:#?}");
    assert!(urls.contains(&refused_url.as_str()), "{urls:#?}");
    // ... and in the failed steps' status messages.
    let mismatch = spans
        .iter()
        .find(|s| s.name == "step body mismatch")
        .expect("step span");
    assert!(mismatch.is_error());
    assert!(
        mismatch.status_message.contains("Bearer ***"),
        "{}",
        mismatch.status_message
    );
    // Request headers are never exported, redacted or not.
    for span in &spans {
        for key in span.attributes.keys() {
            assert!(
                !key.starts_with("http.request.header."),
                "{key} on {span:?}"
            );
        }
    }
    assert!(logs.contains("journey failed"), "{logs}");
}

#[tokio::test]
async fn previews_cut_mid_secret_leave_no_piece_behind() {
    // Failure messages quote the start of a response body or of a value,
    // cut to a preview length. When the cut falls inside a secret, replacing
    // whole secrets afterwards no longer finds it and the rest shows. The
    // secret is moved along by padding, so that some step puts it across
    // whatever the preview length is (today 120 characters of the quoted
    // text, after a 200-byte cut of the body).
    let secret = new_secret();
    let echo = start_echo().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = serde_json::Value::String(echo.url("/echo"));
    let mut steps = String::new();
    // The echo body starts `{"body":"<pad>","headers":{"a-token":"<secret>"`.
    let body_pads: Vec<usize> = (0..=150).step_by(10).collect();
    for pad in &body_pads {
        steps.push_str(&format!(
            "  - name: body preview {pad}\n    continue_on_failure: true\n    http: {{ method: POST, url: {url}, headers: {{ a-token: \"${{tok}}\" }}, body: {{ raw: \"{}\", content_type: text/plain }} }}\n    expect: {{ body: {{ contains: nope }} }}\n",
            "x".repeat(*pad)
        ));
    }
    // `$.body` is `<pad><secret>`, shown as a JSON string.
    let value_pads = [0, 40, 80, 90, 100, 110, 150];
    for pad in &value_pads {
        steps.push_str(&format!(
            "  - name: value preview {pad}\n    continue_on_failure: true\n    http: {{ method: POST, url: {url}, body: {{ raw: \"{}${{tok}}\", content_type: text/plain }} }}\n    expect: {{ json: {{ \"$.body\": z }} }}\n",
            "y".repeat(*pad)
        ));
    }
    let yaml = format!(
        "name: previews\ntimeout: 20s\nvars:\n  tok: \"${{env:SECRET_TOKEN}}\"\nsteps:\n{steps}"
    );
    std::fs::write(dir.path().join("previews.yaml"), &yaml).expect("journey file");
    let lookup = {
        let secret = secret.clone();
        move |name: &str| (name == "SECRET_TOKEN").then(|| secret.clone())
    };
    let opts = BuildOptions {
        env: &lookup,
        vars: BTreeMap::new(),
    };
    let journeys = load_and_build(&[dir.path().to_path_buf()], &opts)
        .unwrap_or_else(|e| panic!("journey does not build: {e:#?}\n{yaml}"));
    let env = RunEnv {
        location: "test".into(),
        probes: Arc::new(ProbeEnv::new().expect("system resolver configuration")),
    };
    let report = runner::run(&journeys[0], &env, None, &CancellationToken::new()).await;

    // Every step reached the target with the whole secret, and failed.
    let requests = echo.requests();
    assert_eq!(requests.len(), body_pads.len() + value_pads.len());
    assert_eq!(requests[0].header("a-token"), Some(secret.as_str()));
    assert!(
        requests
            .last()
            .is_some_and(|r| r.body_str().ends_with(&secret))
    );
    assert_eq!(report.steps.len(), requests.len());
    let message = |name: &str| -> &str {
        let step = report
            .steps
            .iter()
            .find(|s| &*s.name == name)
            .unwrap_or_else(|| panic!("no step {name}"));
        assert_eq!(step.outcome, StepOutcome::Failed, "{name}");
        &step
            .error
            .as_ref()
            .expect("failed step has an error")
            .message
    };
    // Where the preview holds the whole secret, it is redacted.
    assert!(
        message("body preview 0").contains(r#"\"a-token\":\"***\""#),
        "{}",
        message("body preview 0")
    );
    assert!(
        message("value preview 0").contains(r#"got "***""#),
        "{}",
        message("value preview 0")
    );

    // No preview, wherever it was cut, shows a piece of the secret.
    let leaked: Vec<String> = report
        .steps
        .iter()
        .filter_map(|s| {
            let m = &s.error.as_ref()?.message;
            leak(m, &secret).map(|_| format!("step `{}`: {m}", s.name))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "{} of {} failure messages show part of the secret {secret:?}:\n{}",
        leaked.len(),
        report.steps.len(),
        leaked.join("\n")
    );
    assert_eq!(report.outcome, Outcome::Failed);
}
