//! The only place that names metrics and spans. Consumes reports; never
//! reaches back into runs.
//!
//! [`Telemetry::record`] is called once per finished run. It updates the
//! Prometheus registry and the OTLP instruments (in-memory, cheap) and
//! hands the run's spans to a bounded queue; it never waits on a network.

pub mod names;
pub mod otlp;
pub mod prometheus;
pub mod spans;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;

use crate::report::{CallDetail, JourneyReport, StepOutcome};
pub use otlp::{OtlpConfig, Protocol};
pub use prometheus::Prom;

pub struct Telemetry {
    pub prom: Arc<Prom>,
    otlp: Option<otlp::Otlp>,
    scope: opentelemetry::InstrumentationScope,
}

impl Telemetry {
    /// Prometheus only.
    pub fn local() -> Self {
        Telemetry {
            prom: Arc::new(Prom::new()),
            otlp: None,
            scope: spans::scope(),
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
            t.otlp = Some(otlp::Otlp::start(cfg, resource, t.prom.clone())?);
        }
        Ok(t)
    }

    pub fn otlp_enabled(&self) -> bool {
        self.otlp.is_some()
    }

    /// Records one finished run everywhere.
    pub fn record(&self, r: &JourneyReport) {
        self.prom.record(r);
        let Some(otlp) = &self.otlp else { return };
        if let Some(i) = &otlp.instruments {
            let mut base = vec![
                KeyValue::new(names::ATTR_JOURNEY, r.journey.to_string()),
                KeyValue::new(names::ATTR_LOCATION, r.location.to_string()),
            ];
            if let Some(a) = &r.address {
                base.push(KeyValue::new(names::ATTR_ADDRESS, a.clone()));
            }
            let with_error = |mut v: Vec<KeyValue>, e: Option<String>| {
                if let Some(e) = e {
                    v.push(KeyValue::new(names::ERROR_TYPE, e));
                }
                v
            };
            i.journey_duration.record(
                r.duration.as_secs_f64(),
                &with_error(
                    base.to_vec(),
                    r.error().map(|e| e.kind.as_str().into_owned()),
                ),
            );
            for step in &r.steps {
                if step.outcome == StepOutcome::Skipped {
                    continue;
                }
                let mut attrs = base.to_vec();
                attrs.push(KeyValue::new(names::ATTR_STEP, step.name.to_string()));
                i.step_duration.record(
                    step.duration.as_secs_f64(),
                    &with_error(
                        attrs.clone(),
                        step.error.as_ref().map(|e| e.kind.as_str().into_owned()),
                    ),
                );
                for call in &step.calls {
                    let secs = call.duration.as_secs_f64();
                    match &call.detail {
                        CallDetail::Http(h) => {
                            let mut a = attrs.clone();
                            a.push(KeyValue::new(names::HTTP_METHOD, h.method.clone()));
                            a.push(KeyValue::new(
                                names::SERVER_ADDRESS,
                                h.server_address.clone(),
                            ));
                            a.push(KeyValue::new(names::SERVER_PORT, i64::from(h.server_port)));
                            if let Some(s) = h.status {
                                a.push(KeyValue::new(names::HTTP_STATUS, i64::from(s)));
                            }
                            i.http_duration
                                .record(secs, &with_error(a, call.error_type.clone()));
                        }
                        CallDetail::Db(d) => {
                            let mut a = attrs.clone();
                            a.push(KeyValue::new(names::DB_SYSTEM, d.system));
                            a.push(KeyValue::new(names::DB_OPERATION, d.operation.clone()));
                            a.push(KeyValue::new(
                                names::SERVER_ADDRESS,
                                d.server_address.clone(),
                            ));
                            a.push(KeyValue::new(names::SERVER_PORT, i64::from(d.server_port)));
                            i.db_duration
                                .record(secs, &with_error(a, call.error_type.clone()));
                        }
                        CallDetail::Dns(_) | CallDetail::Tcp(_) | CallDetail::Tls(_) => {}
                    }
                }
            }
            if let Some(l) = r.lateness {
                i.lateness.record(l.as_secs_f64(), &[]);
            }
        }
        otlp.send_spans(spans::spans_for(r, &self.scope), &self.prom);
    }

    pub fn record_lateness(&self, lateness: Duration) {
        self.prom.lateness(lateness.as_secs_f64());
    }

    pub fn record_skip(&self, journey: &str) {
        self.prom.skipped(journey);
        if let Some(i) = self.otlp.as_ref().and_then(|o| o.instruments.as_ref()) {
            i.skipped.add(
                1,
                &[KeyValue::new(names::ATTR_JOURNEY, journey.to_string())],
            );
        }
    }

    /// Flushes exporters within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(o) = self.otlp {
            o.shutdown(grace).await;
        }
    }
}
