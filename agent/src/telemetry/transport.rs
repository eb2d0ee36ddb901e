//! Sends encoded OTLP export requests to a collector, over gRPC (tonic) or
//! HTTP/protobuf (hyper), for traces and metrics alike.
//!
//! A request arrives already encoded: span batches are written straight
//! from reports (`spans.rs`) and kept encoded while they wait for a retry,
//! so nothing here knows a message type. Where to send, the headers and the
//! timeout come from the standard `OTEL_EXPORTER_OTLP_*` variables, the
//! signal's own (`..._TRACES_...`, `..._METRICS_...`) winning over the
//! general ones, and `--otlp-endpoint` over both.
//!
//! A collector that accepts a request may still refuse part of it (the
//! response's `partial_success`, for instance spans over its size limits).
//! [`Transport::send`] returns what was refused; [`note_refused`] counts it
//! in `vantage_telemetry_rejected_total` and logs the collector's reason.
//! Refused items are not sent again: the protocol says a retry would be
//! refused the same way.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType};
use tracing::warn;

use super::otlp::{OtlpConfig, Protocol, RateLimitedLog};
use super::store::MetricStore;

/// The two signals Vantage exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The signal's part of its `OTEL_EXPORTER_OTLP_<SIGNAL>_*` variables.
    fn env(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    /// The path of the HTTP/protobuf endpoint.
    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The gRPC method.
    fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }

    /// The `signal` label of the agent's own telemetry counters.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }

    /// What the signal's items are called in a log line.
    fn items(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "data points",
        }
    }
}

/// What the collector refused of a request it accepted (OTLP
/// `partial_success`). Both empty for a full success.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refused {
    /// Spans or data points refused.
    pub items: u64,
    /// The collector's reason, or a warning it sent with a full success.
    pub message: String,
}

/// An export response that may carry a `partial_success`.
trait Reply: prost::Message + Default + Send + 'static {
    fn refused(self) -> Refused;
}

impl Reply for ExportTraceServiceResponse {
    fn refused(self) -> Refused {
        self.partial_success
            .map(|p| Refused {
                items: p.rejected_spans.max(0) as u64,
                message: p.error_message,
            })
            .unwrap_or_default()
    }
}

impl Reply for ExportMetricsServiceResponse {
    fn refused(self) -> Refused {
        self.partial_success
            .map(|p| Refused {
                items: p.rejected_data_points.max(0) as u64,
                message: p.error_message,
            })
            .unwrap_or_default()
    }
}

/// Reads an OTLP/HTTP response body. One that is not the protobuf
/// response (an empty body, a proxy's page) counts as a full success: the
/// status line already said the request was accepted.
fn decode_reply<R: Reply>(body: &[u8]) -> Refused {
    R::decode(body).map(R::refused).unwrap_or_default()
}

fn refused_from(signal: Signal, body: &[u8]) -> Refused {
    match signal {
        Signal::Traces => decode_reply::<ExportTraceServiceResponse>(body),
        Signal::Metrics => decode_reply::<ExportMetricsServiceResponse>(body),
    }
}

/// Counts what a collector refused in `vantage_telemetry_rejected_total`
/// and logs its reason (at most once a minute per `log`). A message with
/// nothing refused is the collector's warning, logged the same way.
pub(crate) fn note_refused(
    refused: Refused,
    signal: Signal,
    store: &MetricStore,
    log: &RateLimitedLog,
) {
    if refused.items == 0 && refused.message.is_empty() {
        return;
    }
    if refused.items > 0 {
        store.rejected(signal.name(), refused.items);
    }
    if log.allow() {
        let reason = if refused.message.is_empty() {
            "no reason given"
        } else {
            refused.message.as_str()
        };
        if refused.items > 0 {
            warn!(
                refused = refused.items,
                reason,
                "the collector refused {} of an export; they are not sent again (counted in vantage_telemetry_rejected_total)",
                signal.items()
            );
        } else {
            warn!(
                reason,
                "the collector accepted a {} export with a warning",
                signal.name()
            );
        }
    }
}

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

pub(crate) fn millis(k: &str) -> Option<Duration> {
    var(k)?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

/// `OTEL_EXPORTER_OTLP_*HEADERS`: `k=v,k2=v2`, values percent-decoded.
fn headers(signal: Signal) -> Vec<(String, String)> {
    let Some(raw) = var(&format!("OTEL_EXPORTER_OTLP_{}_HEADERS", signal.env()))
        .or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"))
    else {
        return Vec::new();
    };
    raw.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_ascii_lowercase(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An export request that is already protobuf: tonic's prost codec writes
/// it as it is. (Decoding, which the codec's type needs, skips everything.)
#[derive(Clone, Debug, Default)]
struct Encoded(Bytes);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

enum Kind {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http {
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        url: http::Uri,
    },
}

/// One signal's way to the collector.
pub struct Transport {
    kind: Kind,
    signal: Signal,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

impl Transport {
    /// Reads the endpoint, headers and timeout. Inside the tokio runtime;
    /// connects lazily, so a collector that is down is not an error here.
    pub fn new(cfg: &OtlpConfig, signal: Signal) -> Result<Transport, String> {
        let sig = signal.env();
        let timeout = millis(&format!("OTEL_EXPORTER_OTLP_{sig}_TIMEOUT"))
            .or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .unwrap_or(Duration::from_secs(10));
        let specific = var(&format!("OTEL_EXPORTER_OTLP_{sig}_ENDPOINT"));
        let base = || var("OTEL_EXPORTER_OTLP_ENDPOINT");
        let kind = match cfg.protocol {
            Protocol::Grpc => {
                let url = cfg
                    .endpoint
                    .clone()
                    .or(specific)
                    .or_else(base)
                    .unwrap_or_else(|| "http://localhost:4317".into());
                let channel = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|e| format!("invalid OTLP {} endpoint `{url}`: {e}", signal.name()))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                Kind::Grpc(tonic::client::Grpc::new(channel))
            }
            Protocol::HttpProtobuf => {
                // A signal's own endpoint is the full URL; a base endpoint
                // gets the signal's path appended.
                let with_path =
                    |base: String| format!("{}{}", base.trim_end_matches('/'), signal.http_path());
                let url = match &cfg.endpoint {
                    Some(e) => with_path(e.clone()),
                    None => specific.unwrap_or_else(|| {
                        with_path(base().unwrap_or_else(|| "http://localhost:4318".into()))
                    }),
                };
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| format!("invalid OTLP {} endpoint `{url}`: {e}", signal.name()))?;
                if uri.scheme_str() != Some("http") {
                    return Err(format!(
                        "OTLP {} endpoint `{url}`: only http:// is supported over HTTP/protobuf (use grpc for TLS)",
                        signal.name()
                    ));
                }
                Kind::Http {
                    client: Box::new(Client::builder(TokioExecutor::new()).build_http()),
                    url: uri,
                }
            }
        };
        Ok(Transport {
            kind,
            signal,
            headers: headers(signal),
            timeout,
        })
    }

    /// Sends one encoded export request. `Ok` is what the collector refused
    /// of it, if anything; an error says why the request failed, for a log
    /// line.
    pub async fn send(&mut self, body: Bytes) -> Result<Refused, String> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.send_inner(body)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {timeout:?}")),
        }
    }

    async fn send_inner(&mut self, body: Bytes) -> Result<Refused, String> {
        match &mut self.kind {
            Kind::Grpc(grpc) => {
                let mut r = tonic::Request::new(Encoded(body));
                for (k, v) in &self.headers {
                    if let (Ok(k), Ok(v)) = (
                        tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
                        v.parse(),
                    ) {
                        r.metadata_mut().insert(k, v);
                    }
                }
                grpc.ready()
                    .await
                    .map_err(|e| format!("collector not reachable: {e}"))?;
                let path = http::uri::PathAndQuery::from_static(self.signal.grpc_path());
                match self.signal {
                    Signal::Traces => unary::<ExportTraceServiceResponse>(grpc, r, path).await,
                    Signal::Metrics => unary::<ExportMetricsServiceResponse>(grpc, r, path).await,
                }
            }
            Kind::Http { client, url } => {
                let mut b = http::Request::post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                for (k, v) in &self.headers {
                    b = b.header(k.as_str(), v.as_str());
                }
                let request = b.body(Full::new(body)).map_err(|e| e.to_string())?;
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                let status = response.status();
                // Read the whole body: it says what was refused, and the
                // connection can then be reused.
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if status.is_success() {
                    Ok(refused_from(self.signal, &body))
                } else {
                    Err(format!("{url}: HTTP {status}"))
                }
            }
        }
    }
}

async fn unary<R: Reply>(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    request: tonic::Request<Encoded>,
    path: http::uri::PathAndQuery,
) -> Result<Refused, String> {
    grpc.unary(
        request,
        path,
        tonic_prost::ProstCodec::<Encoded, R>::default(),
    )
    .await
    .map(|r| r.into_inner().refused())
    .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_percent_decoded() {
        assert_eq!(percent_decode("Bearer%20abc%3D"), "Bearer abc=");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn an_encoded_request_is_written_as_it_is() {
        use prost::Message as _;
        let e = Encoded(Bytes::from_static(&[0x0a, 0x02, 0x08, 0x01]));
        assert_eq!(e.encoded_len(), 4);
        assert_eq!(e.encode_to_vec(), vec![0x0a, 0x02, 0x08, 0x01]);
    }

    #[test]
    fn a_partial_success_says_what_was_refused_and_why() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        use prost::Message as _;
        let traces = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 7,
                error_message: "span too large".into(),
            }),
        };
        assert_eq!(
            refused_from(Signal::Traces, &traces.encode_to_vec()),
            Refused {
                items: 7,
                message: "span too large".into()
            }
        );
        let metrics = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 3,
                error_message: String::new(),
            }),
        };
        assert_eq!(
            refused_from(Signal::Metrics, &metrics.encode_to_vec()),
            Refused {
                items: 3,
                message: String::new()
            }
        );
        // A full success, an empty body and a body that is not protobuf
        // refuse nothing.
        let full = ExportTraceServiceResponse::default().encode_to_vec();
        assert_eq!(refused_from(Signal::Traces, &full), Refused::default());
        assert_eq!(refused_from(Signal::Traces, b""), Refused::default());
        assert_eq!(
            refused_from(Signal::Metrics, b"<html>ok</html>"),
            Refused::default()
        );
    }

    #[test]
    fn refused_items_are_counted_per_signal() {
        let store = MetricStore::new();
        let log = RateLimitedLog::new();
        note_refused(
            Refused {
                items: 5,
                message: "too big".into(),
            },
            Signal::Traces,
            &store,
            &log,
        );
        note_refused(
            Refused {
                items: 2,
                message: String::new(),
            },
            Signal::Metrics,
            &store,
            &log,
        );
        note_refused(Refused::default(), Signal::Metrics, &store, &log);
        let t = store.totals();
        assert_eq!((t.rejected_traces, t.rejected_metrics), (5, 2));
    }
}
