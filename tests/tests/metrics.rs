//! `/metrics` of a running agent: the blackbox_exporter-compatible series
//! with the values a passing and a failing journey should give, Vantage's
//! histograms with trace-id exemplars, and an exposition that Prometheus'
//! own `promtool` accepts.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use vantage_tests::agent::{AgentProcess, sample};
use vantage_tests::start_echo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackbox_series_exemplars_and_promtool() {
    let echo = start_echo().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ok.yaml"),
        format!(
            "name: ok\nschedule: {{ every: 200ms }}\nlabels: {{ team: sre }}\nsteps:\n  - name: redirected\n    http: {{ url: \"{}\" }}\n",
            echo.url("/redirect/2")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        format!(
            "name: bad\nschedule: {{ every: 200ms }}\nsteps:\n  - name: get\n    http: {{ url: \"{}\" }}\n",
            echo.url("/status/503")
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&[dir.path()], &[], &[]).await.unwrap();
    let m = agent
        .wait_for_metrics(
            |m| {
                m.contains("probe_success{journey=\"ok\"")
                    && m.contains("probe_success{journey=\"bad\"")
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let ok = "{journey=\"ok\",location=\"test\",team=\"sre\"}";
    let bad = "{journey=\"bad\",location=\"test\"}";
    assert_eq!(sample(&m, &format!("probe_success{ok}")), Some(1.0), "{m}");
    assert_eq!(sample(&m, &format!("probe_success{bad}")), Some(0.0), "{m}");
    assert_eq!(
        sample(&m, &format!("probe_http_status_code{ok}")),
        Some(200.0)
    );
    assert_eq!(
        sample(&m, &format!("probe_http_status_code{bad}")),
        Some(503.0)
    );
    assert_eq!(sample(&m, &format!("probe_http_redirects{ok}")), Some(2.0));
    assert_eq!(sample(&m, &format!("probe_http_ssl{ok}")), Some(0.0));
    let duration = sample(&m, &format!("probe_duration_seconds{ok}")).unwrap();
    assert!(duration > 0.0 && duration < 5.0, "{duration}");
    for phase in ["resolve", "connect", "tls", "processing", "transfer"] {
        let v = sample(
            &m,
            &format!(
                "probe_http_duration_seconds{{journey=\"ok\",location=\"test\",team=\"sre\",phase=\"{phase}\"}}"
            ),
        );
        assert!(v.is_some(), "phase {phase} missing:\n{m}");
    }
    // Failures carry a bounded error_type; successes an empty one.
    assert!(
        m.contains("vantage_journey_duration_seconds_count{journey=\"bad\",location=\"test\",error_type=\"503\"}"),
        "{m}"
    );
    assert!(m.contains(
        "vantage_step_duration_seconds_count{journey=\"ok\",step=\"redirected\",location=\"test\",error_type=\"\"}"
    ));
    // Classic text has no exemplars; the OpenMetrics a Prometheus server
    // asks for does, carrying the trace id of a real run (32 hex digits).
    assert!(!m.contains("# {trace_id"), "{m}");
    let om = agent.openmetrics().await.unwrap();
    assert!(om.ends_with("# EOF\n"));
    let exemplar = om
        .lines()
        .find(|l| {
            l.starts_with("vantage_journey_duration_seconds_bucket") && l.contains("# {trace_id=\"")
        })
        .unwrap_or_else(|| panic!("no exemplar:\n{m}"));
    let id = exemplar
        .split("trace_id=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    // No URL anywhere in the exposition.
    assert!(!m.contains("http://"), "a URL leaked into a label:\n{m}");

    // Prometheus' own parser accepts the classic text.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/test");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(m.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 3 for lint warnings (naming advice) and 1 for errors;
    // only parse errors matter here.
    assert_ne!(
        out.status.code(),
        Some(1),
        "promtool rejected /metrics:\n{report}\n{m}"
    );
    assert!(!report.contains("error while linting"), "{report}");
}
