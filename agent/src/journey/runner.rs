//! Runs one journey once and returns its report.
//!
//! Steps run in order. Each step's future is raced against a deadline that
//! is the earlier of its own timeout and the journey's, so the journey
//! timeout is enforced around the run, not checked between steps; when it
//! fires, the probe's future is dropped (closing its connection) and the
//! recorder still says which phase it was in. A failed step ends the run and
//! the rest are reported as skipped, unless it says `continue_on_failure`.
//! A failing target is data in the report, never an `Err`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::assert;
use super::{Journey, Step, Vars};
use crate::probes::{self, Ctx, ProbeEnv, Recorder};
use crate::report::{
    CallDetail, ErrorKind, JourneyReport, Outcome, SpanId, StepError, StepOutcome, StepReport,
    TraceId,
};

/// What a run needs from the agent.
pub struct RunEnv {
    pub location: Arc<str>,
    pub probes: Arc<ProbeEnv>,
}

/// Runs `journey` once. `cancel` ends the run early (shutdown past its grace
/// period); the report then marks the interrupted step `cancelled`.
pub async fn run(
    journey: &Journey,
    env: &RunEnv,
    lateness: Option<Duration>,
    cancel: &CancellationToken,
) -> JourneyReport {
    let trace_id = TraceId::random();
    let span_id = SpanId::random();
    let started_at = SystemTime::now();
    let start = Instant::now();
    let journey_deadline = start + journey.timeout;
    let mut vars = Vars::new();
    let mut cookies = cookie_store::CookieStore::default();
    let mut steps = Vec::with_capacity(journey.steps.len());
    let mut failed_step = None;
    let mut stop = false;
    for (index, step) in journey.steps.iter().enumerate() {
        if stop {
            steps.push(skipped(step));
            continue;
        }
        let report = run_step(
            journey,
            step,
            env,
            trace_id,
            &mut vars,
            &mut cookies,
            journey_deadline,
            cancel,
        )
        .await;
        if report.outcome == StepOutcome::Failed {
            failed_step.get_or_insert(index);
            let fatal = matches!(
                report.error.as_ref().map(|e| e.kind),
                Some(ErrorKind::Cancelled)
            ) || Instant::now() >= journey_deadline;
            if !step.continue_on_failure || fatal {
                stop = true;
            }
        }
        steps.push(report);
    }
    let duration = start.elapsed();
    JourneyReport {
        journey: journey.name.clone(),
        location: env.location.clone(),
        labels: journey.labels.clone(),
        trace_id,
        span_id,
        started_at,
        duration,
        lateness,
        outcome: if failed_step.is_some() {
            Outcome::Failed
        } else {
            Outcome::Passed
        },
        failed_step,
        steps,
    }
}

fn skipped(step: &Step) -> StepReport {
    StepReport {
        name: step.name.clone(),
        kind: step.action.kind(),
        span_id: SpanId::random(),
        started_at: SystemTime::now(),
        duration: Duration::ZERO,
        outcome: StepOutcome::Skipped,
        error: None,
        calls: Vec::new(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    journey: &Journey,
    step: &Step,
    env: &RunEnv,
    trace_id: TraceId,
    vars: &mut Vars,
    cookies: &mut cookie_store::CookieStore,
    journey_deadline: Instant,
    cancel: &CancellationToken,
) -> StepReport {
    let started_at = SystemTime::now();
    let start = Instant::now();
    let step_deadline = step.timeout.map(|t| start + t);
    let deadline = match step_deadline {
        Some(d) if d < journey_deadline => d,
        _ => journey_deadline,
    };
    let mut rec = Recorder::default();
    let ended = {
        let ctx = Ctx {
            env: &env.probes,
            trace_id,
            deadline,
            vars,
            cookies,
            rec: &mut rec,
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline, probes::run(&step.action, ctx)) => match r {
                Ok(r) => Ended::Done(Box::new(r)),
                Err(_) => Ended::TimedOut,
            },
            _ = cancel.cancelled() => Ended::Cancelled,
        }
    };
    let ended = match ended {
        Ended::Done(r) => Ok(*r),
        other => Err(other),
    };
    let error = match ended {
        Err(Ended::Cancelled) => {
            rec.abort(ErrorKind::Cancelled);
            Some(StepError {
                kind: ErrorKind::Cancelled,
                phase: rec.phase,
                message: "run cancelled: the agent is shutting down".into(),
            })
        }
        Err(_) => {
            // The probe future was dropped at the deadline.
            let phase = rec.phase;
            rec.abort(ErrorKind::Timeout);
            let by_step = step_deadline.is_some_and(|d| d <= journey_deadline);
            let limit = if by_step {
                format!(
                    "step timeout {}",
                    humantime::format_duration(step.timeout.unwrap_or_default())
                )
            } else {
                format!(
                    "journey timeout {}",
                    humantime::format_duration(journey.timeout)
                )
            };
            let during = match phase {
                Some(p) => format!(" during the {p} phase"),
                None => String::new(),
            };
            Some(StepError {
                kind: ErrorKind::Timeout,
                phase,
                message: format!("{limit} reached in step `{}`{during}", step.name),
            })
        }
        Ok(Err(e)) => Some(StepError {
            kind: e.kind,
            phase: e.phase,
            message: e.message,
        }),
        Ok(Ok(obs)) => {
            let failures = assert::check(&step.expect, &obs, &journey.redactor);
            if let Some(first) = failures.first() {
                let message = failures
                    .iter()
                    .map(|f| f.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                Some(StepError {
                    kind: first.kind,
                    phase: None,
                    message,
                })
            } else {
                let mut error = None;
                for (name, ex) in &step.extract {
                    match assert::extract(ex, &obs, cookies) {
                        Ok(v) => {
                            vars.insert(name.clone(), v);
                        }
                        Err(e) => {
                            error = Some(StepError {
                                kind: ErrorKind::Extraction,
                                phase: None,
                                message: format!("cannot extract `{name}`: {e}"),
                            });
                            break;
                        }
                    }
                }
                error
            }
        }
    };
    finish(journey, step, started_at, start, rec, error)
}

enum Ended {
    Done(Box<Result<probes::Observation, probes::ProbeError>>),
    TimedOut,
    Cancelled,
}

/// Builds the step report, redacting every string that leaves the runner.
fn finish(
    journey: &Journey,
    step: &Step,
    started_at: SystemTime,
    start: Instant,
    rec: Recorder,
    error: Option<StepError>,
) -> StepReport {
    let redactor = &journey.redactor;
    let mut calls = rec.calls;
    for call in &mut calls {
        match &mut call.detail {
            CallDetail::Http(h) => redactor.redact_in_place(&mut h.url),
            CallDetail::Db(d) => {
                if let Some(q) = &mut d.query_text {
                    redactor.redact_in_place(q);
                }
            }
            CallDetail::Dns(_) | CallDetail::Tcp(_) | CallDetail::Tls(_) => {}
        }
    }
    let error = error.map(|mut e| {
        redactor.redact_in_place(&mut e.message);
        e
    });
    StepReport {
        name: step.name.clone(),
        kind: step.action.kind(),
        span_id: SpanId::random(),
        started_at,
        duration: start.elapsed(),
        outcome: if error.is_some() {
            StepOutcome::Failed
        } else {
            StepOutcome::Passed
        },
        error,
        calls,
    }
}
