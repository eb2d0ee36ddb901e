//! What `vantage once` prints: a human summary, live progress on a terminal,
//! JUnit XML for CI systems and JSON for scripts. Reads reports only.

pub mod junit;

use std::io::Write;

use crate::report::{JourneyReport, Outcome, StepOutcome};

/// One line as each run finishes (on a terminal).
pub fn progress_line(r: &JourneyReport, done: usize, total: usize) -> String {
    let mark = match r.outcome {
        Outcome::Passed => "PASS",
        Outcome::Failed => "FAIL",
    };
    let at = r
        .address
        .as_ref()
        .map(|a| format!(" @ {a}"))
        .unwrap_or_default();
    format!(
        "[{done}/{total}] {mark} {}{at} ({})",
        r.journey,
        fmt_ms(r.duration)
    )
}

fn fmt_ms(d: std::time::Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The readable summary: every journey, and for a failed one its steps.
pub fn write_summary(out: &mut dyn Write, reports: &[JourneyReport]) -> std::io::Result<()> {
    let failed = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .count();
    for r in reports {
        let mark = match r.outcome {
            Outcome::Passed => "✔",
            Outcome::Failed => "✘",
        };
        let at = r
            .address
            .as_ref()
            .map(|a| format!(" @ {a}"))
            .unwrap_or_default();
        writeln!(
            out,
            "{mark} {}{at}  {}  trace {}",
            r.journey,
            fmt_ms(r.duration),
            r.trace_id
        )?;
        if r.outcome == Outcome::Passed {
            continue;
        }
        for s in &r.steps {
            match (&s.outcome, &s.error) {
                (StepOutcome::Passed, _) => {
                    writeln!(out, "    ✔ {} ({})", s.name, fmt_ms(s.duration))?
                }
                (StepOutcome::Skipped, _) => writeln!(out, "    - {} (skipped)", s.name)?,
                (StepOutcome::Failed, Some(e)) => {
                    writeln!(
                        out,
                        "    ✘ {} ({}) [{}]",
                        s.name,
                        fmt_ms(s.duration),
                        e.kind
                    )?;
                    writeln!(out, "      {}", e.message)?;
                    if let Some(shot) = &e.screenshot {
                        writeln!(out, "      screenshot: {shot}")?;
                    }
                }
                (StepOutcome::Failed, None) => writeln!(out, "    ✘ {}", s.name)?,
            }
        }
    }
    writeln!(out)?;
    writeln!(out, "{} passed, {} failed", reports.len() - failed, failed)
}
