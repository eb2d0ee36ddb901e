//! End to end: the `vantage` binary runs the example API journey against the
//! demo backend and exports to a real OTLP receiver, over gRPC and over
//! HTTP/protobuf. Asserts the span tree, the semantic-convention attributes,
//! the metric names, units and buckets, the resource, and that the target
//! received a `traceparent` naming the run's trace and the CLIENT span.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use vantage_demo::DemoServer;
use vantage_tests::{FlatSpan, Receiver, vantage_bin, workspace_root};

const SEMCONV_HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

struct Once {
    code: i32,
    reports: Vec<Value>,
    stderr: String,
}

async fn vantage_once(demo: &DemoServer, rx: &Receiver, protocol: &str) -> Once {
    vantage_once_with(demo, rx, protocol, &[]).await
}

async fn vantage_once_with(
    demo: &DemoServer,
    rx: &Receiver,
    protocol: &str,
    env: &[(&str, &str)],
) -> Once {
    let out = tokio::process::Command::new(vantage_bin())
        .args(["once", "--json", "--only", "movie-guru-api"])
        .arg(workspace_root().join("journeys"))
        .args(["--var", &format!("api={}", demo.base_url())])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=ci,team=sre",
        )
        .env("VANTAGE_LOCATION", "ci-runner")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run vantage once");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reports: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}):\n{stdout}"));
    Once {
        code: out.status.code().unwrap_or(-1),
        reports,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn by_id<'a>(spans: &'a [FlatSpan], id: &str) -> &'a FlatSpan {
    spans
        .iter()
        .find(|s| s.span_id == id)
        .unwrap_or_else(|| panic!("no span {id}"))
}

async fn healthy_run_exports_the_span_tree_and_metrics(protocol: &str, rx: Receiver) {
    let demo = DemoServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let run = vantage_once(&demo, &rx, protocol).await;
    assert_eq!(run.code, 0, "journey should pass; stderr:\n{}", run.stderr);
    let report = &run.reports[0];
    let trace_id = report["trace_id"].as_str().unwrap().to_string();
    assert_eq!(trace_id.len(), 32);

    // 1 root + 5 steps + 5 HTTP client spans.
    let spans = rx
        .wait_for_span_count(|s| s.trace_id == trace_id, 11, Duration::from_secs(20))
        .await
        .unwrap();
    let root: Vec<&FlatSpan> = spans.iter().filter(|s| s.is_root()).collect();
    assert_eq!(root.len(), 1);
    let root = root[0];
    assert_eq!(root.name, "journey movie-guru-api");
    assert_eq!(root.span_id, report["span_id"].as_str().unwrap());
    assert_eq!(root.attr_str("vantage.journey"), Some("movie-guru-api"));
    assert_eq!(root.attr_str("vantage.location"), Some("ci-runner"));
    assert_eq!(root.attr_str("user_agent.synthetic.type"), Some("test"));
    assert_eq!(root.attr_str("vantage.label.team"), Some("movie-guru"));
    assert!(root.is_ok(), "root status {}", root.status_code);
    assert_eq!(root.scope_name, "vantage");

    let steps: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .collect();
    let names: BTreeSet<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "step log in",
            "step startup",
            "step chat",
            "step save preferences",
            "step read preferences back"
        ])
    );
    for s in &steps {
        assert!(s.is_internal());
        assert!(s.start_unix_nano >= root.start_unix_nano && s.end_unix_nano <= root.end_unix_nano);
    }

    let clients: Vec<&FlatSpan> = spans.iter().filter(|s| s.is_client()).collect();
    assert_eq!(clients.len(), 5);
    let demo_port = demo.addr().port() as i64;
    for c in &clients {
        let parent = by_id(&spans, &c.parent_span_id);
        assert!(
            parent.name.starts_with("step "),
            "client span under {}",
            parent.name
        );
        assert!(["GET", "POST"].contains(&c.name.as_str()));
        assert_eq!(c.attr_str("http.request.method"), Some(c.name.as_str()));
        assert_eq!(c.attr_i64("http.response.status_code"), Some(200));
        assert_eq!(c.attr_str("server.address"), Some("127.0.0.1"));
        assert_eq!(c.attr_i64("server.port"), Some(demo_port));
        let url = c.attr_str("url.full").unwrap();
        assert!(url.starts_with(&demo.base_url()), "{url}");
        assert_eq!(c.attr_str("network.peer.address"), Some("127.0.0.1"));
        assert!(c.attr("vantage.phase.connect").is_some());
        assert!(c.attr("vantage.phase.processing").is_some());
        assert!(c.attr("error.type").is_none());
    }

    // The target saw the trace: the last request's traceparent names this
    // run's trace and the CLIENT span that made it, and marks it synthetic.
    let last = demo.state().last_request();
    let tp = last.traceparent.expect("traceparent sent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], trace_id);
    let client = by_id(&spans, parts[2]);
    assert!(client.is_client());
    assert_eq!(
        by_id(&spans, &client.parent_span_id).name,
        "step read preferences back"
    );
    assert_eq!(parts[3], "01");
    assert!(
        last.tracestate
            .unwrap_or_default()
            .contains("vantage=synthetic")
    );

    // Resource.
    let res = &root.resource;
    assert_eq!(res["service.name"], "vantage");
    assert_eq!(res["service.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(res["deployment.environment.name"], "ci");
    assert_eq!(res["team"], "sre");
    assert_eq!(
        res["service.instance.id"].as_str().map(str::len),
        Some(36),
        "a UUID"
    );

    // Metrics, exported when `once` shuts down.
    let m = rx
        .wait_for_metric("vantage.journey.duration", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(m.unit, "s");
    assert_eq!(m.kind, "histogram");
    let p = &m.points[0];
    assert_eq!(p.attr_str("vantage.journey"), Some("movie-guru-api"));
    assert_eq!(p.attr_str("vantage.location"), Some("ci-runner"));
    assert!(p.attr("error.type").is_none(), "no error.type on success");
    assert_eq!(p.count, Some(1));
    let http = rx
        .metric("http.client.request.duration")
        .expect("semconv HTTP metric");
    assert_eq!(http.unit, "s");
    assert_eq!(http.points[0].bounds, SEMCONV_HTTP_BUCKETS);
    assert_eq!(
        http.points
            .iter()
            .map(|p| p.count.unwrap_or(0))
            .sum::<u64>(),
        5
    );
    for p in &http.points {
        assert!(p.attr_str("http.request.method").is_some());
        assert_eq!(p.attr_str("server.address"), Some("127.0.0.1"));
        assert!(p.attr("http.response.status_code").is_some());
    }
    let step = rx.metric("vantage.step.duration").expect("step metric");
    assert_eq!(step.unit, "s");
    assert_eq!(step.points.len(), 5, "one series per step");
    // No URL, trace id or run id on any metric attribute.
    for metric in rx.metrics() {
        for p in &metric.points {
            for (k, v) in &p.attributes {
                let v = v.to_string();
                assert!(!v.contains("http://"), "{}: {k}={v}", metric.name);
                assert!(!v.contains(&trace_id), "{}: {k}={v}", metric.name);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_carries_span_tree_metrics_and_trace_context() {
    healthy_run_exports_the_span_tree_and_metrics("grpc", Receiver::grpc().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_carries_span_tree_metrics_and_trace_context() {
    healthy_run_exports_the_span_tree_and_metrics("http/protobuf", Receiver::http().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_call_is_named_in_spans_and_metrics() {
    let demo = DemoServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    demo.state()
        .update_phase(&serde_json::json!({ "StartupSuccess": 0.0 }))
        .unwrap();
    let rx = Receiver::http().await;
    let run = vantage_once(&demo, &rx, "http/protobuf").await;
    assert_eq!(
        run.code, 1,
        "a failed journey exits 1; stderr:\n{}",
        run.stderr
    );
    let report = &run.reports[0];
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["failed_step"], 1);
    assert_eq!(report["steps"][1]["error"]["kind"], "500");
    assert_eq!(report["steps"][2]["outcome"], "skipped");
    let trace_id = report["trace_id"].as_str().unwrap().to_string();

    // Root + the two steps that ran + their two client spans; skipped steps
    // are not exported as spans.
    let spans = rx
        .wait_for_span_count(|s| s.trace_id == trace_id, 5, Duration::from_secs(20))
        .await
        .unwrap();
    let root = spans.iter().find(|s| s.is_root()).unwrap();
    assert!(root.is_error());
    assert_eq!(root.attr_str("error.type"), Some("500"));
    assert!(
        root.status_message
            .contains("step `startup` failed: expected status 200, got 500"),
        "{}",
        root.status_message
    );
    let step = spans.iter().find(|s| s.name == "step startup").unwrap();
    assert!(step.is_error());
    assert_eq!(step.attr_str("error.type"), Some("500"));
    let client = spans
        .iter()
        .find(|s| s.is_client() && s.parent_span_id == step.span_id)
        .unwrap();
    assert_eq!(client.attr_i64("http.response.status_code"), Some(500));
    assert_eq!(client.attr_str("error.type"), Some("500"));
    assert!(client.is_error());

    let m = rx
        .wait_for_metric("vantage.journey.duration", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(m.points[0].attr_str("error.type"), Some("500"));
}

/// `OTEL_EXPORTER_OTLP_HEADERS` goes on every request, percent-decoded; a
/// signal's own `..._TRACES_HEADERS` replaces it for that signal.
async fn headers_follow_the_signal(protocol: &str, rx: Receiver) {
    let demo = DemoServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let run = vantage_once_with(
        &demo,
        &rx,
        protocol,
        &[
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-tenant=sre,authorization=Bearer%20general",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "authorization=Bearer%20traces",
            ),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    rx.wait_for_span_count(|_| true, 11, Duration::from_secs(20))
        .await
        .unwrap();
    rx.wait_for_metric("vantage.journey.duration", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        rx.header("traces", "authorization").as_deref(),
        Some("Bearer traces")
    );
    assert_eq!(rx.header("traces", "x-tenant"), None);
    assert_eq!(
        rx.header("metrics", "authorization").as_deref(),
        Some("Bearer general")
    );
    assert_eq!(rx.header("metrics", "x-tenant").as_deref(), Some("sre"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_sends_the_configured_headers() {
    headers_follow_the_signal("grpc", Receiver::grpc().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_sends_the_configured_headers() {
    headers_follow_the_signal("http/protobuf", Receiver::http().await).await;
}
