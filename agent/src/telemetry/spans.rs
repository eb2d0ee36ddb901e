//! Turns a report into OTLP spans after the run: a root span per run
//! (`journey <name>`), a child per step, and a semconv CLIENT span per call,
//! all with the ids the runner generated (so the `traceparent` a target
//! received names the very span exported here).
//!
//! The spans are written straight to the protobuf wire format, from the
//! report's own strings, as the `spans` field of an OTLP `ScopeSpans`; an
//! export request is then the run buffers of a batch behind a resource and
//! scope header ([`request`]). Building the owned `opentelemetry-proto`
//! structs (or the SDK's `SpanData`) first would cost an allocation for
//! every attribute key and value, and a second pass to size the nested
//! messages: that was most of the agent's user-space work per probe. The
//! field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`;
//! the tests decode the output with the official `opentelemetry-proto`
//! types.

use std::time::{SystemTime, UNIX_EPOCH};

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint as varint_len};

use super::names::*;
use crate::report::{CallDetail, JourneyReport, Outcome, Phase, StepOutcome};

/// `Span.kind`.
const KIND_INTERNAL: u64 = 1;
const KIND_CLIENT: u64 = 3;
/// `Status.code`.
const STATUS_UNSET: u64 = 0;
const STATUS_OK: u64 = 1;
const STATUS_ERROR: u64 = 2;
/// `Span.flags`: sampled, and "the parent's remoteness is known" (it is
/// local), as the OpenTelemetry SDK sets them.
const SPAN_FLAGS: u32 = 0x01 | 0x100;

/// Appends protobuf fields to a buffer.
struct Pb<'a>(&'a mut Vec<u8>);

impl Pb<'_> {
    fn bytes(&mut self, field: u32, v: &[u8]) {
        encode_key(field, WireType::LengthDelimited, self.0);
        encode_varint(v.len() as u64, self.0);
        self.0.extend_from_slice(v);
    }

    fn str(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// A string given in parts (a prefix and a name), written as one.
    fn strs(&mut self, field: u32, parts: &[&str]) {
        encode_key(field, WireType::LengthDelimited, self.0);
        encode_varint(parts.iter().map(|p| p.len()).sum::<usize>() as u64, self.0);
        for p in parts {
            self.0.extend_from_slice(p.as_bytes());
        }
    }

    /// A string formatted in place (an IP address), with no buffer of its own.
    fn display(&mut self, field: u32, v: &dyn std::fmt::Display) {
        use std::io::Write as _;
        self.message(field, |m| {
            // Writing to a Vec cannot fail.
            let _ = write!(m.0, "{v}");
        });
    }

    fn varint(&mut self, field: u32, v: u64) {
        encode_key(field, WireType::Varint, self.0);
        encode_varint(v, self.0);
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        encode_key(field, WireType::SixtyFourBit, self.0);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn fixed32(&mut self, field: u32, v: u32) {
        encode_key(field, WireType::ThirtyTwoBit, self.0);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A nested message. Its length is known only once it is written: one
    /// byte is reserved (enough below 128 bytes), and the body moves when
    /// the length needs more.
    fn message(&mut self, field: u32, body: impl FnOnce(&mut Pb<'_>)) {
        self.message_in(field, 1, body);
    }

    /// A nested message whose length takes `width` bytes as a varint most
    /// of the time (a span: 128 bytes to 16 KiB takes two); the body moves
    /// only when it does not.
    fn message_in(&mut self, field: u32, width: usize, body: impl FnOnce(&mut Pb<'_>)) {
        encode_key(field, WireType::LengthDelimited, self.0);
        let at = self.0.len();
        self.0.resize(at + width, 0);
        body(&mut Pb(self.0));
        let len = self.0.len() - at - width;
        let mut head = [0u8; 10];
        let mut slot = &mut head[..];
        encode_varint(len as u64, &mut slot);
        let n = 10 - slot.len();
        if n == width {
            self.0[at..at + n].copy_from_slice(&head[..n]);
        } else {
            self.0.splice(at..at + width, head[..n].iter().copied());
        }
    }
}

/// Appends `v` as a varint; inline for the one-byte lengths that most are.
#[inline]
fn put_varint(v: u64, out: &mut Vec<u8>) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        encode_varint(v, out);
    }
}

/// An attribute value (`AnyValue`).
enum Value<'a> {
    Str(&'a str),
    Display(&'a dyn std::fmt::Display),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// Writes `KeyValue` attributes (`Span.attributes`, field 9).
struct Attrs<'p, 'b>(&'p mut Pb<'b>);

impl Attrs<'_, '_> {
    /// One `KeyValue`. Its lengths are worked out first, so it is written
    /// in one pass into space reserved once; a formatted value, whose
    /// length is not known before it is written, goes the general way.
    fn add(&mut self, key: &[&str], value: Value<'_>) {
        let key_len: usize = key.iter().map(|k| k.len()).sum();
        // `AnyValue`: its field's tag byte and the value.
        let any_len = match value {
            Value::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
            Value::Bool(_) => 2,
            Value::Int(i) => 1 + varint_len(i as u64),
            Value::Double(_) => 9,
            Value::Display(d) => return self.add_formatted(key, d),
        };
        let kv_len =
            1 + varint_len(key_len as u64) + key_len + 1 + varint_len(any_len as u64) + any_len;
        let out = &mut *self.0.0;
        out.reserve(1 + varint_len(kv_len as u64) + kv_len);
        out.push(0x4a); // field 9, length-delimited
        put_varint(kv_len as u64, out);
        out.push(0x0a); // KeyValue.key
        put_varint(key_len as u64, out);
        for k in key {
            out.extend_from_slice(k.as_bytes());
        }
        out.push(0x12); // KeyValue.value
        put_varint(any_len as u64, out);
        match value {
            Value::Str(s) => {
                out.push(0x0a); // AnyValue.string_value
                put_varint(s.len() as u64, out);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bool(b) => {
                out.push(0x10); // AnyValue.bool_value
                out.push(u8::from(b));
            }
            Value::Int(i) => {
                out.push(0x18); // AnyValue.int_value
                put_varint(i as u64, out);
            }
            Value::Double(d) => {
                out.push(0x21); // AnyValue.double_value
                out.extend_from_slice(&d.to_bits().to_le_bytes());
            }
            // Written by `add_formatted` above.
            Value::Display(_) => {}
        }
    }

    /// One `KeyValue` whose string value is formatted in place.
    fn add_formatted(&mut self, key: &[&str], value: &dyn std::fmt::Display) {
        self.0.message(9, |kv| {
            kv.strs(1, key);
            kv.message(2, |any| any.display(1, value));
        });
    }

    fn str(&mut self, key: &str, v: &str) {
        self.add(&[key], Value::Str(v));
    }

    fn int(&mut self, key: &str, v: i64) {
        self.add(&[key], Value::Int(v));
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The parts of one span that differ between root, step and call.
struct Span<'a> {
    id: [u8; 8],
    parent: Option<[u8; 8]>,
    kind: u64,
    name: &'a [&'a str],
    start: SystemTime,
    end: SystemTime,
    status: (u64, &'a str),
}

/// Writes one `Span` as an entry of `ScopeSpans.spans` (field 2).
fn span(out: &mut Pb<'_>, trace: &[u8; 16], s: Span<'_>, attrs: impl FnOnce(&mut Attrs<'_, '_>)) {
    out.message_in(2, 2, |p| {
        p.bytes(1, trace);
        p.bytes(2, &s.id);
        if let Some(parent) = &s.parent {
            p.bytes(4, parent);
        }
        p.strs(5, s.name);
        p.varint(6, s.kind);
        p.fixed64(7, nanos(s.start));
        p.fixed64(8, nanos(s.end));
        attrs(&mut Attrs(p));
        p.message(15, |st| {
            if !s.status.1.is_empty() {
                st.str(2, s.status.1);
            }
            if s.status.0 != STATUS_UNSET {
                st.varint(3, s.status.0);
            }
        });
        p.fixed32(16, SPAN_FLAGS);
    });
}

/// Appends every span of one run, root first, to `out` as `ScopeSpans.spans`
/// entries; returns how many.
pub fn encode_run(r: &JourneyReport, out: &mut Vec<u8>) -> u32 {
    let mut pb = Pb(out);
    let trace = &r.trace_id.0;
    let mut count = 1;
    let root_message = r.error().map(|e| {
        let step = r
            .failed_step
            .and_then(|i| r.steps.get(i))
            .map(|s| &*s.name)
            .unwrap_or_default();
        format!("step `{step}` failed: {}", e.message)
    });
    let root = Span {
        id: r.span_id.0,
        parent: None,
        kind: KIND_INTERNAL,
        name: &["journey ", &r.journey],
        start: r.started_at,
        end: r.started_at + r.duration,
        status: match &root_message {
            Some(m) => (STATUS_ERROR, m),
            None => (STATUS_OK, ""),
        },
    };
    span(&mut pb, trace, root, |a| {
        a.str(ATTR_JOURNEY, &r.journey);
        a.str(ATTR_LOCATION, &r.location);
        a.str(SYNTHETIC_TYPE, "test");
        a.str(
            ATTR_OUTCOME,
            match r.outcome {
                Outcome::Passed => "passed",
                Outcome::Failed => "failed",
            },
        );
        for (k, v) in r.labels.iter() {
            a.add(&[ATTR_LABEL_PREFIX, k], Value::Str(v));
        }
        if let Some(l) = r.lateness {
            a.add(&[ATTR_LATENESS], Value::Double(l.as_secs_f64()));
        }
        if let Some(addr) = &r.address {
            a.str(ATTR_ADDRESS, addr);
        }
        if let Some(e) = r.error() {
            a.str(ERROR_TYPE, &e.kind.as_str());
        }
    });
    for step in &r.steps {
        if step.outcome == StepOutcome::Skipped {
            continue;
        }
        count += 1;
        let s = Span {
            id: step.span_id.0,
            parent: Some(r.span_id.0),
            kind: KIND_INTERNAL,
            name: &["step ", &step.name],
            start: step.started_at,
            end: step.started_at + step.duration,
            status: match &step.error {
                Some(e) => (STATUS_ERROR, &e.message),
                None => (STATUS_OK, ""),
            },
        };
        span(&mut pb, trace, s, |a| {
            a.str(ATTR_JOURNEY, &r.journey);
            a.str(ATTR_STEP, &step.name);
            a.str(ATTR_STEP_KIND, step.kind);
            a.str(SYNTHETIC_TYPE, "test");
            if let Some(e) = &step.error {
                a.str(ERROR_TYPE, &e.kind.as_str());
                if let Some(p) = e.phase {
                    a.str(ATTR_PHASE, p.as_str());
                }
                if let Some(shot) = &e.screenshot {
                    a.str(ATTR_SCREENSHOT, shot);
                }
                if let Some(u) = &e.page_url {
                    a.str(URL_FULL, u);
                }
            }
        });
        for call in &step.calls {
            count += 1;
            let name = call_name(&call.detail);
            let c = Span {
                id: call.span_id.0,
                parent: Some(step.span_id.0),
                kind: KIND_CLIENT,
                name: &name,
                start: call.started_at,
                end: call.started_at + call.duration,
                // Semconv: a 4xx on a client span is an error, and so is
                // anything that never produced a response.
                status: match call.error_type {
                    Some(_) => (STATUS_ERROR, ""),
                    None => (STATUS_UNSET, ""),
                },
            };
            span(&mut pb, trace, c, |a| {
                call_attributes(a, &call.detail);
                a.str(SYNTHETIC_TYPE, "test");
                for p in Phase::ALL {
                    if let Some(d) = call.phases.get(p) {
                        a.add(
                            &[ATTR_PHASE_PREFIX, p.as_str()],
                            Value::Double(d.as_secs_f64()),
                        );
                    }
                }
                if let Some(t) = &call.error_type {
                    a.str(ERROR_TYPE, t);
                }
            });
        }
    }
    count
}

/// The span name of one call, by semantic conventions, in parts.
fn call_name(detail: &CallDetail) -> [&str; 4] {
    match detail {
        CallDetail::Http(h) => [&h.method, "", "", ""],
        CallDetail::Db(d) => match &d.namespace {
            Some(ns) if d.system != "redis" => [&d.operation, " ", ns, ""],
            _ => [&d.operation, "", "", ""],
        },
        CallDetail::Dns(d) => ["DNS ", &d.record_type, " ", &d.question],
        CallDetail::Tcp(_) => ["TCP", "", "", ""],
        CallDetail::Tls(_) => ["TLS handshake", "", "", ""],
    }
}

/// The protocol attributes of one call, by semantic conventions.
fn call_attributes(a: &mut Attrs<'_, '_>, detail: &CallDetail) {
    let peer = |a: &mut Attrs<'_, '_>, peer: Option<std::net::SocketAddr>| {
        if let Some(peer) = peer {
            a.add(&[NETWORK_PEER_ADDRESS], Value::Display(&peer.ip()));
            a.int(NETWORK_PEER_PORT, i64::from(peer.port()));
        }
    };
    match detail {
        CallDetail::Http(h) => {
            a.str(HTTP_METHOD, &h.method);
            a.str(URL_FULL, &h.url);
            a.str(SERVER_ADDRESS, &h.server_address);
            a.int(SERVER_PORT, i64::from(h.server_port));
            if let Some(s) = h.status {
                a.int(HTTP_STATUS, i64::from(s));
            }
            peer(a, h.peer);
            if let Some(v) = h.protocol_version {
                a.str(NETWORK_PROTOCOL_VERSION, v);
            }
            if let Some(t) = h.cert_expiry.and_then(iso8601) {
                a.str(TLS_NOT_AFTER, &t);
            }
        }
        CallDetail::Db(d) => {
            a.str(DB_SYSTEM, d.system);
            a.str(DB_OPERATION, &d.operation);
            a.str(SERVER_ADDRESS, &d.server_address);
            a.int(SERVER_PORT, i64::from(d.server_port));
            if let Some(q) = &d.query_text {
                a.str(DB_QUERY_TEXT, q);
            }
            if let Some(n) = &d.namespace {
                a.str(DB_NAMESPACE, n);
            }
            if let Some(c) = &d.response_status {
                a.str(DB_STATUS, c);
            }
            if let Some(n) = d.rows {
                a.int(DB_ROWS, n as i64);
            }
        }
        CallDetail::Dns(d) => {
            a.str(DNS_QUESTION, &d.question);
            a.str(ATTR_DNS_TYPE, &d.record_type);
            a.add(&[SERVER_ADDRESS], Value::Display(&d.server.ip()));
            a.int(SERVER_PORT, i64::from(d.server.port()));
            a.str(NETWORK_TRANSPORT, d.transport);
            a.int(ATTR_DNS_ANSWERS, i64::from(d.answers));
            if let Some(rc) = &d.rcode {
                a.str(ATTR_DNS_RCODE, rc);
            }
        }
        CallDetail::Tcp(t) => {
            a.str(SERVER_ADDRESS, &t.server_address);
            a.int(SERVER_PORT, i64::from(t.server_port));
            a.str(NETWORK_TRANSPORT, "tcp");
            peer(a, t.peer);
        }
        CallDetail::Tls(t) => {
            a.str(SERVER_ADDRESS, &t.server_address);
            a.int(SERVER_PORT, i64::from(t.server_port));
            peer(a, t.peer);
            if let Some(v) = &t.protocol_version {
                a.str(TLS_PROTOCOL_VERSION, v);
            }
            if let Some(c) = &t.cipher {
                a.str(TLS_CIPHER, c);
            }
            if let Some(ts) = t.earliest_expiry.and_then(iso8601) {
                a.str(TLS_NOT_AFTER, &ts);
            }
            if let Some(v) = t.verified {
                a.add(&[ATTR_TLS_VERIFIED], Value::Bool(v));
            }
        }
    }
}

fn iso8601(unix: i64) -> Option<String> {
    chrono::DateTime::<chrono::Utc>::from_timestamp(unix, 0).map(|t| t.to_rfc3339())
}

/// One `ExportTraceServiceRequest`: the resource, the scope, and the spans
/// of `runs` (each a buffer from [`encode_run`]). `resource` and `scope`
/// are encoded `Resource` and `InstrumentationScope` messages.
pub fn request<'a>(
    resource: &[u8],
    scope: &[u8],
    runs: impl IntoIterator<Item = &'a [u8]> + Clone,
) -> Vec<u8> {
    let spans: usize = runs.clone().into_iter().map(<[u8]>::len).sum();
    let mut out = Vec::with_capacity(spans + resource.len() + scope.len() + 32);
    let mut pb = Pb(&mut out);
    pb.message(1, |rs| {
        rs.bytes(1, resource);
        rs.message(2, |ss| {
            ss.bytes(1, scope);
            for run in runs {
                ss.0.extend_from_slice(run);
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DbCall, StepError};
    use crate::telemetry::store::tests::http_run;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{Span as PbSpan, span, status};
    use prost::Message;
    use std::time::Duration;

    fn decode(runs: &[&JourneyReport]) -> (Vec<PbSpan>, ExportTraceServiceRequest) {
        let resource = Resource {
            attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("vantage".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "vantage".into(),
            version: "1".into(),
            ..Default::default()
        };
        let bufs: Vec<Vec<u8>> = runs
            .iter()
            .map(|r| {
                let mut b = Vec::new();
                let n = encode_run(r, &mut b);
                assert!(n >= 1);
                b
            })
            .collect();
        let body = request(
            &resource.encode_to_vec(),
            &scope.encode_to_vec(),
            bufs.iter().map(Vec::as_slice),
        );
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("valid protobuf");
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        assert_eq!(rs.resource.as_ref(), Some(&resource));
        assert_eq!(rs.scope_spans.len(), 1);
        assert_eq!(rs.scope_spans[0].scope.as_ref(), Some(&scope));
        (rs.scope_spans[0].spans.clone(), req)
    }

    fn attr(s: &PbSpan, k: &str) -> Option<any_value::Value> {
        s.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    }

    fn str_attr(s: &PbSpan, k: &str) -> Option<String> {
        match attr(s, k) {
            Some(any_value::Value::StringValue(v)) => Some(v),
            _ => None,
        }
    }

    /// Attributes of every kind and span messages of every size around the
    /// varint boundaries decode to what was written.
    #[test]
    fn lengths_at_varint_boundaries_decode() {
        use opentelemetry_proto::tonic::trace::v1::ScopeSpans;
        for name_len in [
            0, 1, 100, 125, 126, 127, 128, 200, 16_370, 16_380, 16_384, 70_000,
        ] {
            let name = "n".repeat(name_len);
            let long = "v".repeat(name_len);
            let mut buf = Vec::new();
            let mut pb = Pb(&mut buf);
            pb.message_in(2, 2, |p| {
                p.str(5, &name);
                let mut a = Attrs(p);
                a.str("s", &long);
                a.add(&["pre.", &name], Value::Int(-3));
                a.add(&["b"], Value::Bool(true));
                a.add(&["d"], Value::Double(0.25));
                a.add(&["i"], Value::Int(i64::MAX));
                a.add(&["ip"], Value::Display(&std::net::Ipv4Addr::LOCALHOST));
            });
            let ss = ScopeSpans::decode(buf.as_slice()).expect("valid protobuf");
            assert_eq!(ss.spans.len(), 1, "name length {name_len}");
            let span = &ss.spans[0];
            assert_eq!(span.name, name);
            let want = [
                ("s".to_string(), any_value::Value::StringValue(long.clone())),
                (format!("pre.{name}"), any_value::Value::IntValue(-3)),
                ("b".into(), any_value::Value::BoolValue(true)),
                ("d".into(), any_value::Value::DoubleValue(0.25)),
                ("i".into(), any_value::Value::IntValue(i64::MAX)),
                (
                    "ip".into(),
                    any_value::Value::StringValue("127.0.0.1".into()),
                ),
            ];
            let got: Vec<(String, any_value::Value)> = span
                .attributes
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.clone().and_then(|v| v.value).unwrap(),
                    )
                })
                .collect();
            assert_eq!(got, want, "name length {name_len}");
        }
    }

    #[test]
    fn a_passing_run_is_a_root_a_step_and_a_client_span() {
        let mut r = http_run("checkout", Some("10.0.0.7"), 200, 12);
        r.lateness = Some(Duration::from_millis(3));
        let (spans, _) = decode(&[&r]);
        assert_eq!(spans.len(), 3);
        let (root, step, call) = (&spans[0], &spans[1], &spans[2]);

        assert_eq!(root.name, "journey checkout");
        assert_eq!(root.trace_id, vec![7; 16]);
        assert_eq!(root.span_id, vec![8; 8]);
        assert!(root.parent_span_id.is_empty());
        assert_eq!(root.kind, span::SpanKind::Internal as i32);
        assert_eq!(root.flags, 0x101);
        assert_eq!(
            root.end_time_unix_nano - root.start_time_unix_nano,
            12_000_000
        );
        let st = root.status.as_ref().unwrap();
        assert_eq!(st.code, status::StatusCode::Ok as i32);
        assert_eq!(str_attr(root, ATTR_JOURNEY).as_deref(), Some("checkout"));
        assert_eq!(str_attr(root, ATTR_LOCATION).as_deref(), Some("here"));
        assert_eq!(str_attr(root, SYNTHETIC_TYPE).as_deref(), Some("test"));
        assert_eq!(str_attr(root, ATTR_OUTCOME).as_deref(), Some("passed"));
        assert_eq!(str_attr(root, "vantage.label.team").as_deref(), Some("sre"));
        assert_eq!(str_attr(root, ATTR_ADDRESS).as_deref(), Some("10.0.0.7"));
        assert_eq!(
            attr(root, ATTR_LATENESS),
            Some(any_value::Value::DoubleValue(0.003))
        );
        assert_eq!(attr(root, ERROR_TYPE), None);

        assert_eq!(step.name, "step get");
        assert_eq!(step.parent_span_id, vec![8; 8]);
        assert_eq!(step.span_id, vec![9; 8]);
        assert_eq!(str_attr(step, ATTR_STEP).as_deref(), Some("get"));
        assert_eq!(str_attr(step, ATTR_STEP_KIND).as_deref(), Some("http"));

        assert_eq!(call.parent_span_id, vec![9; 8]);
        assert_eq!(call.kind, span::SpanKind::Client as i32);
        assert_eq!(call.name, "GET");
        assert_eq!(
            attr(call, HTTP_STATUS),
            Some(any_value::Value::IntValue(200))
        );
        assert_eq!(
            attr(call, "vantage.phase.processing"),
            Some(any_value::Value::DoubleValue(0.012))
        );
        assert_eq!(
            call.status.as_ref().unwrap().code,
            status::StatusCode::Unset as i32
        );
    }

    #[test]
    fn a_failed_run_carries_error_type_and_status_messages() {
        let mut r = http_run("checkout", None, 503, 5);
        // A long message: the span needs a multi-byte length.
        r.steps[0].error = Some(StepError {
            kind: crate::report::ErrorKind::Status(503),
            phase: Some(Phase::Processing),
            message: "expected 2xx, got 503 ".repeat(20),
            screenshot: Some("/tmp/shot.png".into()),
            page_url: Some("http://app/".into()),
        });
        let (spans, _) = decode(&[&r]);
        let (root, step, call) = (&spans[0], &spans[1], &spans[2]);
        let st = root.status.as_ref().unwrap();
        assert_eq!(st.code, status::StatusCode::Error as i32);
        assert!(
            st.message.starts_with("step `get` failed: expected 2xx"),
            "{}",
            st.message
        );
        assert_eq!(str_attr(root, ERROR_TYPE).as_deref(), Some("503"));
        assert_eq!(str_attr(root, ATTR_OUTCOME).as_deref(), Some("failed"));
        assert_eq!(
            step.status.as_ref().unwrap().message,
            "expected 2xx, got 503 ".repeat(20)
        );
        assert_eq!(str_attr(step, ATTR_PHASE).as_deref(), Some("processing"));
        assert_eq!(
            str_attr(step, ATTR_SCREENSHOT).as_deref(),
            Some("/tmp/shot.png")
        );
        assert_eq!(str_attr(step, URL_FULL).as_deref(), Some("http://app/"));
        assert_eq!(str_attr(call, ERROR_TYPE).as_deref(), Some("503"));
        assert_eq!(
            call.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
    }

    #[test]
    fn database_calls_are_named_by_operation_and_namespace_and_runs_concatenate() {
        let mut a = http_run("a", None, 200, 1);
        a.steps[0].calls[0].detail = CallDetail::Db(DbCall {
            system: "postgresql",
            operation: "SELECT".into(),
            query_text: Some("select 1".into()),
            namespace: Some("test".into()),
            server_address: "127.0.0.1".into(),
            server_port: 5432,
            response_status: None,
            rows: Some(1),
        });
        let mut b = http_run("b", None, 200, 1);
        b.steps[0].outcome = StepOutcome::Skipped;
        let (spans, _) = decode(&[&a, &b]);
        // Run b's only step was skipped: its root alone.
        assert_eq!(spans.len(), 4);
        assert_eq!(spans[2].name, "SELECT test");
        assert_eq!(
            str_attr(&spans[2], DB_SYSTEM).as_deref(),
            Some("postgresql")
        );
        assert_eq!(
            attr(&spans[2], DB_ROWS),
            Some(any_value::Value::IntValue(1))
        );
        assert_eq!(spans[3].name, "journey b");
    }
}
