//! Runs one journey once and returns its report.
//!
//! Steps run in order. Each step's future is raced against a deadline that
//! is the earlier of its own timeout and the journey's, so the journey
//! timeout is enforced around the run, not checked between steps; when it
//! fires, the probe's future is dropped (closing its connection) and the
//! recorder still says which phase it was in. A failed step ends the run and
//! the rest are reported as skipped, unless it says `continue_on_failure`.
//! A failing target is data in the report, never an `Err`.
//!
//! A step ends when its last byte arrived, if its probe knows that instant
//! (HTTP does, from the kernel's receive timestamps); what follows, the
//! runtime waking the probe up and the runner judging the result, is the
//! agent's time, not the target's. The run ends when its last step did, or
//! after the browser session is closed. Steps run one after another inside
//! the run, so a run still lasts at least as long as its steps together.
//! The steps' wall-clock start times are derived from the run's, so their
//! spans nest inside the run's exactly as their durations do.

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
    run_pinned(journey, env, lateness, cancel, None).await
}

/// Runs `journey` once, or once per replica address when it fans out: one
/// report each, labelled with the address. The same address is the same
/// replica on every run, never a random pick.
pub async fn run_all(
    journey: &Journey,
    env: &RunEnv,
    lateness: Option<Duration>,
    cancel: &CancellationToken,
) -> Vec<JourneyReport> {
    let Some(fan) = &journey.fan_out else {
        return vec![run(journey, env, lateness, cancel).await];
    };
    let addresses = match &fan.addresses {
        Some(a) => Ok(a.clone()),
        None => resolve_all(&env.probes, &fan.host).await,
    };
    match addresses {
        Ok(list) => {
            let runs = list.into_iter().map(|ip| {
                let pin = Some((fan.host.clone(), ip));
                async move { run_pinned(journey, env, lateness, cancel, pin).await }
            });
            futures_util::future::join_all(runs).await
        }
        Err(message) => vec![unresolved(journey, env, lateness, message)],
    }
}

/// Every A and AAAA record of `host`, sorted so replicas keep their order.
async fn resolve_all(env: &ProbeEnv, host: &str) -> Result<Vec<std::net::IpAddr>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![ip]);
    }
    let (v4, v6) = tokio::join!(
        env.resolver.ipv4_lookup(host),
        env.resolver.ipv6_lookup(host)
    );
    let mut ips: Vec<std::net::IpAddr> = Vec::new();
    for lookup in [v4.as_ref().ok(), v6.as_ref().ok()].into_iter().flatten() {
        for r in lookup.answers() {
            match &r.data {
                hickory_proto::rr::RData::A(a) => ips.push(std::net::IpAddr::V4(a.0)),
                hickory_proto::rr::RData::AAAA(a) => ips.push(std::net::IpAddr::V6(a.0)),
                _ => {}
            }
        }
    }
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        let why = v4
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no A or AAAA records".into());
        return Err(format!(
            "fan-out host `{host}` resolves to no address: {why}"
        ));
    }
    Ok(ips)
}

/// The report of a fanned-out run whose host did not resolve at all.
fn unresolved(
    journey: &Journey,
    env: &RunEnv,
    lateness: Option<Duration>,
    message: String,
) -> JourneyReport {
    let mut steps: Vec<StepReport> = journey.steps.iter().map(skipped).collect();
    if let Some(first) = steps.first_mut() {
        first.outcome = StepOutcome::Failed;
        first.error = Some(StepError {
            kind: ErrorKind::Dns,
            phase: Some(crate::report::Phase::Resolve),
            message: journey.redactor.redact(&message),
            screenshot: None,
            page_url: None,
        });
    }
    JourneyReport {
        journey: journey.name.clone(),
        location: env.location.clone(),
        labels: journey.labels.clone(),
        address: None,
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        started_at: SystemTime::now(),
        duration: Duration::ZERO,
        lateness,
        outcome: Outcome::Failed,
        failed_step: Some(0),
        steps,
    }
}

async fn run_pinned(
    journey: &Journey,
    env: &RunEnv,
    lateness: Option<Duration>,
    cancel: &CancellationToken,
    pin: Option<crate::probes::browser::Pin>,
) -> JourneyReport {
    // A browser journey waits for its browser slot before its clock starts:
    // the wait is lateness, never step time.
    let mut browser = crate::probes::browser::BrowserSlot::default();
    let uses_browser = journey
        .steps
        .iter()
        .any(|s| matches!(s.action, crate::probes::Action::Browser(_)));
    if let (true, Some(driver)) = (uses_browser, env.probes.browser.as_ref()) {
        tokio::select! {
            p = driver.reserve() => browser.permit = p,
            _ = cancel.cancelled() => {}
        }
    }
    let trace_id = TraceId::random();
    let span_id = SpanId::random();
    let clock = RunClock::now();
    let (started_at, start) = (clock.wall, clock.start);
    let journey_deadline = start + journey.timeout;
    let mut vars = Vars::new();
    let mut cookies = cookie_store::CookieStore::default();
    let mut steps = Vec::with_capacity(journey.steps.len());
    let mut failed_step = None;
    let mut stop = false;
    let mut end = start;
    for (index, step) in journey.steps.iter().enumerate() {
        if stop {
            steps.push(skipped(step));
            continue;
        }
        let (report, step_end) = run_step(
            journey,
            step,
            env,
            trace_id,
            RunState {
                clock,
                vars: &mut vars,
                cookies: &mut cookies,
                browser: &mut browser,
                pin: &pin,
            },
            journey_deadline,
            cancel,
        )
        .await;
        end = step_end;
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
    // A failed browser run keeps a screenshot and the page URL, unless the
    // page hung past its deadline (every WebDriver call would queue behind
    // the stuck one) or the agent is shutting down (the run was cancelled,
    // and the target did not fail). The session is closed however the run
    // ended.
    if let Some(session) = browser.session.take() {
        let failed = failed_step
            .and_then(|i| steps.get_mut(i))
            .and_then(|s| s.error.as_mut());
        // A `wait_for` that gave up is a page that answered; a step that hit
        // its deadline may be a page that does not.
        if let Some(e) = failed.filter(|e| match e.kind {
            ErrorKind::Cancelled => false,
            ErrorKind::Timeout => e.message.contains("waited "),
            _ => true,
        }) {
            let name = format!("{trace_id}-{}", journey.name);
            let (shot, url) = crate::probes::browser::failure_evidence(&session, &name).await;
            e.screenshot = shot.map(|p| p.display().to_string());
            e.page_url = url.map(|u| journey.redactor.redact(&u));
        }
        // The run ends when the browser has quit. Removing its profile is
        // the agent's housekeeping, done in the run's browser slot.
        let profile = session.quit().await;
        end = Instant::now();
        profile.remove().await;
    }
    let duration = end - start;
    JourneyReport {
        journey: journey.name.clone(),
        location: env.location.clone(),
        labels: journey.labels.clone(),
        address: pin.as_ref().map(|(_, ip)| ip.to_string()),
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

/// One reading of both clocks for a run. Every wall-clock time of its
/// steps is derived from it, rather than read again: two readings of the
/// wall clock can disagree with the monotonic clock by a few hundred
/// nanoseconds (or more while NTP slews), enough for a step that ends with
/// the run to end after it on the wall clock.
#[derive(Clone, Copy)]
struct RunClock {
    wall: SystemTime,
    start: Instant,
}

impl RunClock {
    /// Monotonic first: derived wall-clock times then come out a few
    /// nanoseconds late, never early, against a call that reads the wall
    /// clock before the monotonic one, so its span stays inside its step's.
    fn now() -> Self {
        let start = Instant::now();
        RunClock {
            wall: SystemTime::now(),
            start,
        }
    }

    fn wall_at(&self, t: Instant) -> SystemTime {
        self.wall + t.saturating_duration_since(self.start)
    }
}

/// What the steps of one run share.
struct RunState<'a> {
    clock: RunClock,
    vars: &'a mut Vars,
    cookies: &'a mut cookie_store::CookieStore,
    browser: &'a mut crate::probes::browser::BrowserSlot,
    pin: &'a Option<crate::probes::browser::Pin>,
}

async fn run_step(
    journey: &Journey,
    step: &Step,
    env: &RunEnv,
    trace_id: TraceId,
    state: RunState<'_>,
    journey_deadline: Instant,
    cancel: &CancellationToken,
) -> (StepReport, Instant) {
    let RunState {
        clock,
        vars,
        cookies,
        browser,
        pin,
    } = state;
    let start = Instant::now();
    let started_at = clock.wall_at(start);
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
            browser,
            pin,
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
    let last_byte = match &ended {
        Ok(Ok(obs)) => last_byte(obs),
        _ => None,
    };
    let error = match ended {
        Err(Ended::Cancelled) => {
            rec.abort(ErrorKind::Cancelled);
            Some(StepError {
                kind: ErrorKind::Cancelled,
                phase: rec.phase,
                message: "run cancelled: the agent is shutting down".into(),
                screenshot: None,
                page_url: None,
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
                screenshot: None,
                page_url: None,
            })
        }
        Ok(Err(e)) => Some(StepError {
            kind: e.kind,
            phase: e.phase,
            message: e.message,
            screenshot: None,
            page_url: None,
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
                    screenshot: None,
                    page_url: None,
                })
            } else {
                let mut error = None;
                if let crate::probes::Observation::Browser(b) = &obs {
                    for (name, value) in &b.extracted {
                        vars.insert(name.clone(), value.clone());
                    }
                }
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
                                screenshot: None,
                                page_url: None,
                            });
                            break;
                        }
                    }
                }
                error
            }
        }
    };
    let now = Instant::now();
    let end = last_byte.map_or(now, |t| t.clamp(start, now));
    (
        finish(journey, step, started_at, end - start, rec, error),
        end,
    )
}

/// When the observation's last byte arrived, for probes that timestamp it.
fn last_byte(obs: &probes::Observation) -> Option<Instant> {
    match obs {
        probes::Observation::Http(r) => Some(r.finished),
        _ => None,
    }
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
    duration: Duration,
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
        duration,
        outcome: if error.is_some() {
            StepOutcome::Failed
        } else {
            StepOutcome::Passed
        },
        error,
        calls,
    }
}
