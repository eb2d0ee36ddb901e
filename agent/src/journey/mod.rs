//! The built journey model, and running it.
//!
//! `build` turns config wire types into these types: durations parsed, URLs
//! parsed, regexes and JSONPath compiled, secrets resolved and registered
//! with the journey's redactor. After `build` nothing is a string that might
//! be a URL, and nothing can fail to parse. `runner` executes a journey and
//! returns its one report; `assert` judges what a probe observed.

pub mod assert;
pub mod build;
pub mod runner;
pub mod template;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::probes::Action;
pub use assert::{Expectation, Extraction};
pub use build::{BuildOptions, build_all};
pub use template::{Redactor, Template, Vars};

/// A journey ready to run.
#[derive(Debug)]
pub struct Journey {
    pub name: Arc<str>,
    /// `file:line` of its definition, for logs.
    pub source: Arc<str>,
    pub schedule: Schedule,
    pub timeout: Duration,
    pub labels: Arc<BTreeMap<String, String>>,
    pub steps: Vec<Step>,
    pub redactor: Redactor,
    /// Run once per replica address of a host (`fan_out`).
    pub fan_out: Option<FanOut>,
}

/// Per-replica fan-out: the journey runs once against every address of
/// `host`, keeping the name for HTTP `Host`, TLS SNI and the browser.
#[derive(Debug, Clone)]
pub struct FanOut {
    pub host: String,
    /// Fixed addresses, for hosts DNS cannot enumerate; `None` resolves A
    /// and AAAA on every run, so new replicas appear by themselves.
    pub addresses: Option<Vec<std::net::IpAddr>>,
}

#[derive(Clone, Debug)]
pub enum Schedule {
    Every(Duration),
    Cron(Arc<CronSchedule>),
}

/// A parsed cron expression (UTC) with its source text for display.
#[derive(Debug)]
pub struct CronSchedule {
    pub text: String,
    pub cron: croner::Cron,
}

impl Schedule {
    /// The nominal gap between runs (for cron, the gap after `now`).
    pub fn describe(&self) -> String {
        match self {
            Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => format!("cron \"{}\"", c.text),
        }
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Schedule::Every(a), Schedule::Every(b)) => a == b,
            (Schedule::Cron(a), Schedule::Cron(b)) => a.text == b.text,
            _ => false,
        }
    }
}

#[derive(Debug)]
pub struct Step {
    pub name: Arc<str>,
    pub timeout: Option<Duration>,
    pub continue_on_failure: bool,
    pub action: Action,
    pub expect: Vec<Expectation>,
    pub extract: Vec<(String, Extraction)>,
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    /// An agent holds ten thousand steps and more for its whole life; a
    /// rare, large action kind must be boxed rather than widen them all.
    #[test]
    fn a_step_stays_small() {
        let step = size_of::<super::Step>();
        let action = size_of::<crate::probes::Action>();
        let http = size_of::<crate::probes::http::HttpRequest>();
        assert!(
            action <= http + 8,
            "Action is {action} bytes against an HTTP request's {http}: box the larger kind"
        );
        assert!(step <= 360, "a Step is {step} bytes; keep it under 360");
    }
}
