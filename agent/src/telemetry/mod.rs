//! The only place that names metrics and spans. Consumes reports; never
//! reaches back into runs.
//!
//! [`Telemetry::record`] is called once per finished run. It updates the
//! metric store (in memory, one short lock), which both `/metrics` and the
//! periodic OTLP metric export read, and hands the run's spans to a bounded
//! queue; it never waits on a network.

pub mod names;
pub mod otlp;
pub mod otlp_metrics;
pub mod prometheus;
pub mod spans;
pub mod store;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use crate::report::JourneyReport;
pub use otlp::{OtlpConfig, Protocol};
pub use store::MetricStore;

pub struct Telemetry {
    pub metrics: Arc<MetricStore>,
    otlp: Option<otlp::Otlp>,
}

impl Telemetry {
    /// Prometheus only.
    pub fn local() -> Self {
        Telemetry {
            metrics: Arc::new(MetricStore::new()),
            otlp: None,
        }
    }

    /// Prometheus plus OTLP when `cfg` is given. Inside the tokio runtime.
    pub fn start(
        cfg: Option<&OtlpConfig>,
        location: &str,
        environment: Option<&str>,
    ) -> Result<Self, String> {
        let mut t = Self::local();
        if let Some(cfg) = cfg {
            let resource = otlp::resource(location, environment);
            t.otlp = Some(otlp::Otlp::start(cfg, resource, t.metrics.clone())?);
        }
        Ok(t)
    }

    pub fn otlp_enabled(&self) -> bool {
        self.otlp.is_some()
    }

    /// Records one finished run everywhere.
    pub fn record(&self, r: &JourneyReport) {
        self.metrics.record(r);
        if let Some(otlp) = &self.otlp {
            otlp.send_spans(r, &self.metrics);
        }
    }

    pub fn record_lateness(&self, lateness: Duration) {
        self.metrics.lateness(lateness.as_secs_f64());
    }

    pub fn record_skip(&self, journey: &str) {
        self.metrics.skipped(journey);
    }

    /// Flushes exporters within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(o) = self.otlp {
            o.shutdown(grace).await;
        }
    }
}
