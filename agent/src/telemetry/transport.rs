//! Sends encoded OTLP export requests to a collector, over gRPC (tonic) or
//! HTTP/protobuf (hyper), for traces and metrics alike.
//!
//! A request arrives already encoded: span batches are written straight
//! from reports (`spans.rs`) and kept encoded while they wait for a retry,
//! so nothing here knows a message type. Where to send, the headers and the
//! timeout come from the standard `OTEL_EXPORTER_OTLP_*` variables, the
//! signal's own (`..._TRACES_...`, `..._METRICS_...`) winning over the
//! general ones, and `--otlp-endpoint` over both.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType};

use super::otlp::{OtlpConfig, Protocol};

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

    fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
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
/// it as it is. As a response it reads nothing (the collector's
/// `partial_success` is not acted on).
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

    /// Sends one encoded export request; an error says why, for a log line.
    pub async fn send(&mut self, body: Bytes) -> Result<(), String> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.send_inner(body)).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {timeout:?}")),
        }
    }

    async fn send_inner(&mut self, body: Bytes) -> Result<(), String> {
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
                grpc.unary::<Encoded, Encoded, _>(r, path, tonic_prost::ProstCodec::default())
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))
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
                // Drain the body so the connection can be reused.
                let _ = response.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("{url}: HTTP {status}"))
                }
            }
        }
    }
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
        // As a response it skips whatever the collector sent.
        let back = Encoded::decode(&[0x0a, 0x02, 0x08, 0x01][..]).expect("skips fields");
        assert!(back.0.is_empty());
    }
}
