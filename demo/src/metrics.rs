//! Server-side counters named like Movie Guru's, rendered by hand in the Prometheus text
//! format for `GET /metrics`. Plain atomics are enough: nothing here is a histogram and the
//! only labels are a fixed outcome set and HTTP status codes, so no series can grow per
//! user, path or message.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a chat that reached the "model" ended, matching Movie Guru's `Outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatOutcome {
    Success,
    Error,
    Unsafe,
}

impl ChatOutcome {
    /// The `result` field of the chat response.
    pub fn result(self) -> &'static str {
        match self {
            ChatOutcome::Success => "SUCCESS",
            ChatOutcome::Error => "ERROR",
            ChatOutcome::Unsafe => "UNSAFE",
        }
    }

    fn label(self) -> &'static str {
        match self {
            ChatOutcome::Success => "success",
            ChatOutcome::Error => "error",
            ChatOutcome::Unsafe => "unsafe",
        }
    }
}

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// All counters of the demo backend.
#[derive(Debug, Default)]
pub struct Metrics {
    pub login_attempts: Counter,
    pub login_success: Counter,
    pub startup_attempts: Counter,
    pub startup_success: Counter,
    pub chat_calls: Counter,
    chat_success: Counter,
    chat_error: Counter,
    chat_unsafe: Counter,
    pub prefget_attempts: Counter,
    pub prefget_success: Counter,
    pub prefupdate_attempts: Counter,
    pub prefupdate_success: Counter,
    /// Responses by status code. At most a few hundred keys exist, so it stays small.
    http_responses: Mutex<BTreeMap<u16, u64>>,
}

impl Metrics {
    pub fn chat_outcome(&self, outcome: ChatOutcome) -> &Counter {
        match outcome {
            ChatOutcome::Success => &self.chat_success,
            ChatOutcome::Error => &self.chat_error,
            ChatOutcome::Unsafe => &self.chat_unsafe,
        }
    }

    pub fn record_response(&self, status: u16) {
        let mut map = self
            .http_responses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(status).or_default() += 1;
    }

    /// Responses sent so far, by status code.
    pub fn responses_by_status(&self) -> BTreeMap<u16, u64> {
        self.http_responses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let plain = [
            (
                "movieguru_login_attempts_total",
                "Login calls received.",
                &self.login_attempts,
            ),
            (
                "movieguru_login_success_total",
                "Login calls answered with success.",
                &self.login_success,
            ),
            (
                "movieguru_startup_attempts_total",
                "Startup calls received.",
                &self.startup_attempts,
            ),
            (
                "movieguru_startup_success_total",
                "Startup calls answered with success.",
                &self.startup_success,
            ),
            (
                "movieguru_chat_calls_total",
                "Chat calls received.",
                &self.chat_calls,
            ),
            (
                "movieguru_prefget_attempts_total",
                "Preference reads received.",
                &self.prefget_attempts,
            ),
            (
                "movieguru_prefget_success_total",
                "Preference reads answered with success.",
                &self.prefget_success,
            ),
            (
                "movieguru_prefupdate_attempts_total",
                "Preference updates received.",
                &self.prefupdate_attempts,
            ),
            (
                "movieguru_prefupdate_success_total",
                "Preference updates answered with success.",
                &self.prefupdate_success,
            ),
        ];
        for (name, help, counter) in plain {
            header(&mut out, name, help);
            let _ = writeln!(out, "{name} {}", counter.get());
        }

        let name = "movieguru_chat_outcome_counter_total";
        header(&mut out, name, "Chat answers by outcome.");
        for outcome in [
            ChatOutcome::Success,
            ChatOutcome::Error,
            ChatOutcome::Unsafe,
        ] {
            let _ = writeln!(
                out,
                "{name}{{Outcome=\"{}\"}} {}",
                outcome.label(),
                self.chat_outcome(outcome).get()
            );
        }

        let name = "movieguru_http_requests_total";
        header(&mut out, name, "HTTP responses sent, by status code.");
        for (code, count) in self.responses_by_status() {
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {count}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_labels() {
        let m = Metrics::default();
        m.login_attempts.inc();
        m.login_attempts.inc();
        m.chat_outcome(ChatOutcome::Unsafe).inc();
        m.record_response(200);
        m.record_response(500);
        m.record_response(200);
        let text = m.render();
        for line in [
            "# TYPE movieguru_login_attempts_total counter",
            "movieguru_login_attempts_total 2",
            "movieguru_login_success_total 0",
            "movieguru_chat_outcome_counter_total{Outcome=\"unsafe\"} 1",
            "movieguru_chat_outcome_counter_total{Outcome=\"error\"} 0",
            "movieguru_http_requests_total{code=\"200\"} 2",
            "movieguru_http_requests_total{code=\"500\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
