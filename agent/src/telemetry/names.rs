//! Every metric, span and attribute name Vantage emits, in one place.

/// Journey and step durations: the semconv HTTP advice extended for
/// multi-step journeys that legitimately take tens of seconds.
pub const JOURNEY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0,
    60.0, 120.0,
];
/// Semantic-convention bucket advice for `http.client.request.duration` and
/// `db.client.operation.duration`.
pub const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Schedule lateness: a healthy agent lives in the first few buckets.
pub const LATENESS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// OTLP metric names.
pub const JOURNEY_DURATION: &str = "vantage.journey.duration";
pub const STEP_DURATION: &str = "vantage.step.duration";
pub const HTTP_CLIENT_DURATION: &str = "http.client.request.duration";
pub const DB_CLIENT_DURATION: &str = "db.client.operation.duration";
pub const SCHEDULE_LATENESS: &str = "vantage.schedule.lateness";
pub const SCHEDULE_SKIPPED: &str = "vantage.schedule.skipped";
pub const TELEMETRY_DROPPED: &str = "vantage.telemetry.dropped";
pub const TELEMETRY_REJECTED: &str = "vantage.telemetry.rejected";
/// The signal (`traces`, `metrics`) of a telemetry counter.
pub const ATTR_SIGNAL: &str = "vantage.telemetry.signal";

// Attributes Vantage owns.
pub const ATTR_JOURNEY: &str = "vantage.journey";
pub const ATTR_STEP: &str = "vantage.step";
pub const ATTR_STEP_KIND: &str = "vantage.step.kind";
pub const ATTR_LOCATION: &str = "vantage.location";
pub const ATTR_LABEL_PREFIX: &str = "vantage.label.";
pub const ATTR_OUTCOME: &str = "vantage.outcome";
pub const ATTR_PHASE: &str = "vantage.phase";
pub const ATTR_ADDRESS: &str = "vantage.address";
pub const ATTR_SCREENSHOT: &str = "vantage.browser.screenshot";
pub const ATTR_LATENESS: &str = "vantage.schedule.lateness";
pub const ATTR_PHASE_PREFIX: &str = "vantage.phase.";

// Semantic-convention attributes.
pub const ERROR_TYPE: &str = "error.type";
pub const HTTP_METHOD: &str = "http.request.method";
pub const HTTP_STATUS: &str = "http.response.status_code";
pub const URL_FULL: &str = "url.full";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
pub const NETWORK_PEER_PORT: &str = "network.peer.port";
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
pub const SYNTHETIC_TYPE: &str = "user_agent.synthetic.type";
pub const NETWORK_TRANSPORT: &str = "network.transport";
pub const DB_SYSTEM: &str = "db.system.name";
pub const DB_OPERATION: &str = "db.operation.name";
pub const DB_QUERY_TEXT: &str = "db.query.text";
pub const DB_NAMESPACE: &str = "db.namespace";
pub const DB_STATUS: &str = "db.response.status_code";
pub const DB_ROWS: &str = "db.response.returned_rows";
pub const DNS_QUESTION: &str = "dns.question.name";
pub const ATTR_DNS_TYPE: &str = "vantage.dns.record_type";
pub const ATTR_DNS_RCODE: &str = "vantage.dns.rcode";
pub const ATTR_DNS_ANSWERS: &str = "vantage.dns.answers";
pub const TLS_PROTOCOL_VERSION: &str = "tls.protocol.version";
pub const TLS_CIPHER: &str = "tls.cipher";
pub const TLS_NOT_AFTER: &str = "tls.server.not_after";
pub const ATTR_TLS_VERIFIED: &str = "vantage.tls.verified";
