//! Turns a report into OTLP spans after the run: a root span per run
//! (`journey <name>`), a child per step, and a semconv CLIENT span per call,
//! all with the ids the runner generated (so the `traceparent` a target
//! received names the very span exported here).

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::names::*;
use crate::report::{CallDetail, JourneyReport, Outcome, Phase, StepOutcome};

fn ctx(trace: [u8; 16], span: [u8; 8]) -> SpanContext {
    SpanContext::new(
        opentelemetry::trace::TraceId::from_bytes(trace),
        opentelemetry::trace::SpanId::from_bytes(span),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    )
}

pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("vantage")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

#[allow(clippy::too_many_arguments)]
fn span(
    r: &JourneyReport,
    span_id: [u8; 8],
    parent: [u8; 8],
    kind: SpanKind,
    name: String,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
    scope: &InstrumentationScope,
) -> SpanData {
    SpanData {
        span_context: ctx(r.trace_id.0, span_id),
        parent_span_id: opentelemetry::trace::SpanId::from_bytes(parent),
        parent_span_is_remote: false,
        span_kind: kind,
        name: Cow::Owned(name),
        start_time: start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// Every span of one run, root first.
pub fn spans_for(r: &JourneyReport, scope: &InstrumentationScope) -> Vec<SpanData> {
    let mut out = Vec::with_capacity(1 + r.steps.len() * 2);
    let mut root_attrs = vec![
        KeyValue::new(ATTR_JOURNEY, r.journey.to_string()),
        KeyValue::new(ATTR_LOCATION, r.location.to_string()),
        KeyValue::new(SYNTHETIC_TYPE, "test"),
        KeyValue::new(
            ATTR_OUTCOME,
            match r.outcome {
                Outcome::Passed => "passed",
                Outcome::Failed => "failed",
            },
        ),
    ];
    for (k, v) in r.labels.iter() {
        root_attrs.push(KeyValue::new(format!("{ATTR_LABEL_PREFIX}{k}"), v.clone()));
    }
    if let Some(l) = r.lateness {
        root_attrs.push(KeyValue::new(ATTR_LATENESS, l.as_secs_f64()));
    }
    if let Some(a) = &r.address {
        root_attrs.push(KeyValue::new(ATTR_ADDRESS, a.clone()));
    }
    let root_status = match r.error() {
        Some(e) => {
            root_attrs.push(KeyValue::new(ERROR_TYPE, e.kind.as_str().into_owned()));
            let step = r
                .failed_step
                .and_then(|i| r.steps.get(i))
                .map(|s| s.name.to_string())
                .unwrap_or_default();
            Status::error(format!("step `{step}` failed: {}", e.message))
        }
        None => Status::Ok,
    };
    out.push(span(
        r,
        r.span_id.0,
        [0; 8],
        SpanKind::Internal,
        format!("journey {}", r.journey),
        r.started_at,
        r.started_at + r.duration,
        root_attrs,
        root_status,
        scope,
    ));
    for step in &r.steps {
        if step.outcome == StepOutcome::Skipped {
            continue;
        }
        let mut attrs = vec![
            KeyValue::new(ATTR_JOURNEY, r.journey.to_string()),
            KeyValue::new(ATTR_STEP, step.name.to_string()),
            KeyValue::new(ATTR_STEP_KIND, step.kind),
            KeyValue::new(SYNTHETIC_TYPE, "test"),
        ];
        let status = match &step.error {
            Some(e) => {
                attrs.push(KeyValue::new(ERROR_TYPE, e.kind.as_str().into_owned()));
                if let Some(p) = e.phase {
                    attrs.push(KeyValue::new(ATTR_PHASE, p.as_str()));
                }
                if let Some(shot) = &e.screenshot {
                    attrs.push(KeyValue::new(ATTR_SCREENSHOT, shot.clone()));
                }
                if let Some(u) = &e.page_url {
                    attrs.push(KeyValue::new(URL_FULL, u.clone()));
                }
                Status::error(e.message.clone())
            }
            None => Status::Ok,
        };
        out.push(span(
            r,
            step.span_id.0,
            r.span_id.0,
            SpanKind::Internal,
            format!("step {}", step.name),
            step.started_at,
            step.started_at + step.duration,
            attrs,
            status,
            scope,
        ));
        for call in &step.calls {
            let (name, mut attrs) = call_attributes(&call.detail);
            attrs.push(KeyValue::new(SYNTHETIC_TYPE, "test"));
            for p in Phase::ALL {
                if let Some(d) = call.phases.get(p) {
                    attrs.push(KeyValue::new(
                        format!("{ATTR_PHASE_PREFIX}{}", p.as_str()),
                        d.as_secs_f64(),
                    ));
                }
            }
            let status = match &call.error_type {
                Some(t) => {
                    attrs.push(KeyValue::new(ERROR_TYPE, t.clone()));
                    // Semconv: a 4xx on a client span is an error, and so is
                    // anything that never produced a response.
                    Status::error(String::new())
                }
                None => Status::Unset,
            };
            out.push(span(
                r,
                call.span_id.0,
                step.span_id.0,
                SpanKind::Client,
                name,
                call.started_at,
                call.started_at + call.duration,
                attrs,
                status,
                scope,
            ));
        }
    }
    out
}

/// The span name and protocol attributes of one call, by semantic conventions.
fn call_attributes(detail: &CallDetail) -> (String, Vec<KeyValue>) {
    let peer = |attrs: &mut Vec<KeyValue>, peer: Option<std::net::SocketAddr>| {
        if let Some(peer) = peer {
            attrs.push(KeyValue::new(NETWORK_PEER_ADDRESS, peer.ip().to_string()));
            attrs.push(KeyValue::new(NETWORK_PEER_PORT, i64::from(peer.port())));
        }
    };
    match detail {
        CallDetail::Http(h) => {
            let mut attrs = vec![
                KeyValue::new(HTTP_METHOD, h.method.clone()),
                KeyValue::new(URL_FULL, h.url.clone()),
                KeyValue::new(SERVER_ADDRESS, h.server_address.clone()),
                KeyValue::new(SERVER_PORT, i64::from(h.server_port)),
            ];
            if let Some(s) = h.status {
                attrs.push(KeyValue::new(HTTP_STATUS, i64::from(s)));
            }
            peer(&mut attrs, h.peer);
            if let Some(v) = h.protocol_version {
                attrs.push(KeyValue::new(NETWORK_PROTOCOL_VERSION, v));
            }
            if let Some(t) = h.cert_expiry.and_then(iso8601) {
                attrs.push(KeyValue::new(TLS_NOT_AFTER, t));
            }
            (h.method.clone(), attrs)
        }
        CallDetail::Db(d) => {
            let mut attrs = vec![
                KeyValue::new(DB_SYSTEM, d.system),
                KeyValue::new(DB_OPERATION, d.operation.clone()),
                KeyValue::new(SERVER_ADDRESS, d.server_address.clone()),
                KeyValue::new(SERVER_PORT, i64::from(d.server_port)),
            ];
            if let Some(q) = &d.query_text {
                attrs.push(KeyValue::new(DB_QUERY_TEXT, q.clone()));
            }
            if let Some(n) = &d.namespace {
                attrs.push(KeyValue::new(DB_NAMESPACE, n.clone()));
            }
            if let Some(c) = &d.response_status {
                attrs.push(KeyValue::new(DB_STATUS, c.clone()));
            }
            if let Some(n) = d.rows {
                attrs.push(KeyValue::new(DB_ROWS, n as i64));
            }
            let name = match &d.namespace {
                Some(ns) if d.system != "redis" => format!("{} {ns}", d.operation),
                _ => d.operation.clone(),
            };
            (name, attrs)
        }
        CallDetail::Dns(d) => {
            let mut attrs = vec![
                KeyValue::new(DNS_QUESTION, d.question.clone()),
                KeyValue::new(ATTR_DNS_TYPE, d.record_type.clone()),
                KeyValue::new(SERVER_ADDRESS, d.server.ip().to_string()),
                KeyValue::new(SERVER_PORT, i64::from(d.server.port())),
                KeyValue::new(NETWORK_TRANSPORT, d.transport),
                KeyValue::new(ATTR_DNS_ANSWERS, i64::from(d.answers)),
            ];
            if let Some(rc) = &d.rcode {
                attrs.push(KeyValue::new(ATTR_DNS_RCODE, rc.clone()));
            }
            (format!("DNS {} {}", d.record_type, d.question), attrs)
        }
        CallDetail::Tcp(t) => {
            let mut attrs = vec![
                KeyValue::new(SERVER_ADDRESS, t.server_address.clone()),
                KeyValue::new(SERVER_PORT, i64::from(t.server_port)),
                KeyValue::new(NETWORK_TRANSPORT, "tcp"),
            ];
            peer(&mut attrs, t.peer);
            ("TCP".to_string(), attrs)
        }
        CallDetail::Tls(t) => {
            let mut attrs = vec![
                KeyValue::new(SERVER_ADDRESS, t.server_address.clone()),
                KeyValue::new(SERVER_PORT, i64::from(t.server_port)),
            ];
            peer(&mut attrs, t.peer);
            if let Some(v) = &t.protocol_version {
                attrs.push(KeyValue::new(TLS_PROTOCOL_VERSION, v.clone()));
            }
            if let Some(c) = &t.cipher {
                attrs.push(KeyValue::new(TLS_CIPHER, c.clone()));
            }
            if let Some(ts) = t.earliest_expiry.and_then(iso8601) {
                attrs.push(KeyValue::new(TLS_NOT_AFTER, ts));
            }
            if let Some(v) = t.verified {
                attrs.push(KeyValue::new(ATTR_TLS_VERIFIED, v));
            }
            ("TLS handshake".to_string(), attrs)
        }
    }
}

fn iso8601(unix: i64) -> Option<String> {
    chrono::DateTime::<chrono::Utc>::from_timestamp(unix, 0).map(|t| t.to_rfc3339())
}
