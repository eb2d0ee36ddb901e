//! JUnit XML: one testsuite per journey, one testcase per step, the way CI
//! systems (GitLab, Jenkins, GitHub test reporters) display them.

use crate::report::{JourneyReport, StepOutcome};

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

pub fn render(reports: &[JourneyReport]) -> String {
    let tests: usize = reports.iter().map(|r| r.steps.len()).sum();
    let failures: usize = reports
        .iter()
        .flat_map(|r| &r.steps)
        .filter(|s| s.outcome == StepOutcome::Failed)
        .count();
    let skipped: usize = reports
        .iter()
        .flat_map(|r| &r.steps)
        .filter(|s| s.outcome == StepOutcome::Skipped)
        .count();
    let total: f64 = reports.iter().map(|r| r.duration.as_secs_f64()).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"vantage\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.3}\">\n"
    ));
    for r in reports {
        let f = r
            .steps
            .iter()
            .filter(|s| s.outcome == StepOutcome::Failed)
            .count();
        let sk = r
            .steps
            .iter()
            .filter(|s| s.outcome == StepOutcome::Skipped)
            .count();
        x.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" skipped=\"{sk}\" time=\"{:.3}\">\n",
            esc(&r.journey),
            r.steps.len(),
            r.duration.as_secs_f64()
        ));
        x.push_str(&format!(
            "    <properties><property name=\"trace_id\" value=\"{}\"/><property name=\"location\" value=\"{}\"/></properties>\n",
            r.trace_id,
            esc(&r.location)
        ));
        for s in &r.steps {
            x.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                esc(&r.journey),
                esc(&s.name),
                s.duration.as_secs_f64()
            ));
            match (&s.outcome, &s.error) {
                (StepOutcome::Passed, _) => x.push_str("/>\n"),
                (StepOutcome::Skipped, _) => {
                    x.push_str("><skipped message=\"an earlier step failed\"/></testcase>\n")
                }
                (StepOutcome::Failed, e) => {
                    let (kind, msg) = e
                        .as_ref()
                        .map(|e| (e.kind.as_str().into_owned(), e.message.clone()))
                        .unwrap_or_default();
                    x.push_str(&format!(
                        "><failure type=\"{}\" message=\"{}\">{}</failure></testcase>\n",
                        esc(&kind),
                        esc(&msg),
                        esc(&msg)
                    ));
                }
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::report::{ErrorKind, Outcome, SpanId, StepError, StepReport, TraceId};

    fn step(name: &str, outcome: StepOutcome, error: Option<StepError>) -> StepReport {
        StepReport {
            name: name.into(),
            kind: "http",
            span_id: SpanId::random(),
            started_at: SystemTime::now(),
            duration: Duration::from_millis(12),
            outcome,
            error,
            calls: Vec::new(),
        }
    }

    #[test]
    fn failures_skips_and_escaping() {
        let report = JourneyReport {
            journey: "a<b>&\"c\"".into(),
            location: "here".into(),
            labels: Arc::new(BTreeMap::new()),
            address: None,
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            started_at: SystemTime::now(),
            duration: Duration::from_millis(30),
            lateness: None,
            outcome: Outcome::Failed,
            failed_step: Some(1),
            steps: vec![
                step("ok", StepOutcome::Passed, None),
                step(
                    "bad",
                    StepOutcome::Failed,
                    Some(StepError {
                        kind: ErrorKind::Status(503),
                        phase: None,
                        message: "expected status 2xx, got 503 <html>\u{1}".into(),
                        screenshot: None,
                        page_url: None,
                    }),
                ),
                step("later", StepOutcome::Skipped, None),
            ],
        };
        let xml = render(&[report]);
        assert!(
            xml.contains(r#"<testsuites name="vantage" tests="3" failures="1" skipped="1""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testsuite name="a&lt;b&gt;&amp;&quot;c&quot;""#),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<failure type="503" message="expected status 2xx, got 503 &lt;html&gt;�">"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"name="later" time="0.012"><skipped"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"value="01010101010101010101010101010101""#),
            "trace id property: {xml}"
        );
    }
}
