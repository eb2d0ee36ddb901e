//! Fault-injection settings ("phases", as the workshop's mock server calls them): a success
//! probability and a latency range per backend call, plus the chance that a chat is flagged
//! unsafe. This module owns the values, their flat JSON form for `GET /phase` and the
//! validation of `POST /phase` patches. It never sleeps and never touches request state;
//! handlers draw from it and act on the draw.

use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value};

/// Upper bound for any injected latency. Long enough to push a probe past its deadline,
/// short enough that a typo cannot park a connection for hours.
pub const MAX_LATENCY_MS: u64 = 300_000;

/// A backend call that can be slowed down or made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Login,
    Startup,
    Chat,
    PrefGet,
    PrefUpdate,
}

impl Call {
    pub const ALL: [Call; 5] = [
        Call::Login,
        Call::Startup,
        Call::Chat,
        Call::PrefGet,
        Call::PrefUpdate,
    ];

    /// The key prefix the workshop's mock server uses for this call.
    pub fn key_prefix(self) -> &'static str {
        match self {
            Call::Login => "Login",
            Call::Startup => "Startup",
            Call::Chat => "Chat",
            Call::PrefGet => "PrefGet",
            Call::PrefUpdate => "PrefUpdate",
        }
    }
}

/// Success probability and latency range of one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// Probability in `0.0..=1.0` that the call succeeds.
    pub success: f64,
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
}

impl Default for Fault {
    fn default() -> Self {
        Fault {
            success: 1.0,
            latency_min_ms: 0,
            latency_max_ms: 0,
        }
    }
}

impl Fault {
    /// Draws whether this call succeeds and how long to wait before answering.
    pub fn draw(&self, rng: &mut impl Rng) -> (bool, Duration) {
        let ms = if self.latency_max_ms > self.latency_min_ms {
            rng.random_range(self.latency_min_ms..=self.latency_max_ms)
        } else {
            self.latency_min_ms
        };
        (chance(rng, self.success), Duration::from_millis(ms))
    }
}

/// `true` with probability `p`. `random()` is in `[0, 1)`, so 1.0 always and 0.0 never hit.
pub fn chance(rng: &mut impl Rng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// The whole fault configuration. The default is a healthy backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub login: Fault,
    pub startup: Fault,
    pub chat: Fault,
    pub pref_get: Fault,
    pub pref_update: Fault,
    /// Probability in `0.0..=1.0` that a chat which did not fail is answered `UNSAFE`.
    pub chat_safety_issue: f64,
}

impl Default for Phase {
    fn default() -> Self {
        Phase {
            login: Fault::default(),
            startup: Fault::default(),
            chat: Fault::default(),
            pref_get: Fault::default(),
            pref_update: Fault::default(),
            chat_safety_issue: 0.0,
        }
    }
}

/// Why a `POST /phase` body was refused. The message is returned to the caller as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PhaseError {
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("{0} must be a number between 0.0 and 1.0")]
    BadProbability(String),
    #[error("{0} must be a whole number of milliseconds between 0 and {MAX_LATENCY_MS}")]
    BadLatency(String),
    #[error("{0}LatencyMinMS must not be greater than {0}LatencyMaxMS")]
    MinAboveMax(&'static str),
}

impl Phase {
    pub fn fault(&self, call: Call) -> &Fault {
        match call {
            Call::Login => &self.login,
            Call::Startup => &self.startup,
            Call::Chat => &self.chat,
            Call::PrefGet => &self.pref_get,
            Call::PrefUpdate => &self.pref_update,
        }
    }

    fn fault_mut(&mut self, call: Call) -> &mut Fault {
        match call {
            Call::Login => &mut self.login,
            Call::Startup => &mut self.startup,
            Call::Chat => &mut self.chat,
            Call::PrefGet => &mut self.pref_get,
            Call::PrefUpdate => &mut self.pref_update,
        }
    }

    /// The flat JSON object served by `GET /phase`, with every key `apply` accepts.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        for call in Call::ALL {
            let prefix = call.key_prefix();
            let fault = self.fault(call);
            map.insert(format!("{prefix}Success"), fault.success.into());
            map.insert(format!("{prefix}LatencyMinMS"), fault.latency_min_ms.into());
            map.insert(format!("{prefix}LatencyMaxMS"), fault.latency_max_ms.into());
        }
        map.insert("ChatSafetyIssue".into(), self.chat_safety_issue.into());
        Value::Object(map)
    }

    /// Returns a copy with the keys of `patch` applied. Keys not in the patch keep their
    /// value. The whole patch is rejected on the first bad key, so a half-applied phase
    /// never goes live.
    pub fn apply(&self, patch: &Value) -> Result<Phase, PhaseError> {
        let Value::Object(patch) = patch else {
            return Err(PhaseError::NotAnObject);
        };
        let mut next = self.clone();
        for (key, value) in patch {
            next.set(key, value)?;
        }
        // Checked after all keys, so a patch may move both ends of a range at once.
        for call in Call::ALL {
            let fault = next.fault(call);
            if fault.latency_min_ms > fault.latency_max_ms {
                return Err(PhaseError::MinAboveMax(call.key_prefix()));
            }
        }
        Ok(next)
    }

    fn set(&mut self, key: &str, value: &Value) -> Result<(), PhaseError> {
        if key == "ChatSafetyIssue" {
            self.chat_safety_issue = probability(key, value)?;
            return Ok(());
        }
        for call in Call::ALL {
            let Some(field) = key.strip_prefix(call.key_prefix()) else {
                continue;
            };
            match field {
                "Success" => self.fault_mut(call).success = probability(key, value)?,
                "LatencyMinMS" => self.fault_mut(call).latency_min_ms = latency(key, value)?,
                "LatencyMaxMS" => self.fault_mut(call).latency_max_ms = latency(key, value)?,
                // No prefix is a prefix of another today; keep looking rather than
                // rely on that.
                _ => continue,
            }
            return Ok(());
        }
        Err(PhaseError::UnknownKey(key.to_owned()))
    }
}

fn probability(key: &str, value: &Value) -> Result<f64, PhaseError> {
    match value.as_f64() {
        Some(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(PhaseError::BadProbability(key.to_owned())),
    }
}

fn latency(key: &str, value: &Value) -> Result<u64, PhaseError> {
    // Accept `250.0` as well as `250`: other tools in the workshop send floats.
    let ms = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX_LATENCY_MS as f64)
            .map(|f| f as u64)
    });
    match ms {
        Some(ms) if ms <= MAX_LATENCY_MS => Ok(ms),
        _ => Err(PhaseError::BadLatency(key.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_is_healthy_and_round_trips() {
        let phase = Phase::default();
        let json = phase.to_json();
        assert_eq!(json["LoginSuccess"], json!(1.0));
        assert_eq!(json["ChatSafetyIssue"], json!(0.0));
        assert_eq!(json["PrefUpdateLatencyMaxMS"], json!(0));
        assert_eq!(json.as_object().map(|m| m.len()), Some(16));
        assert_eq!(phase.apply(&json), Ok(phase));
    }

    #[test]
    fn applies_a_subset_and_keeps_the_rest() {
        let next = Phase::default()
            .apply(&json!({"ChatSuccess": 0.25, "PrefGetLatencyMinMS": 10, "PrefGetLatencyMaxMS": 20.0}))
            .expect("valid patch");
        assert_eq!(next.chat.success, 0.25);
        assert_eq!(next.pref_get.latency_min_ms, 10);
        assert_eq!(next.pref_get.latency_max_ms, 20);
        assert_eq!(next.login, Fault::default());
    }

    #[test]
    fn rejects_bad_patches_with_a_reason() {
        let cases = [
            (json!([1]), "body must be a JSON object"),
            (json!({"ChatSucces": 1}), "unknown key \"ChatSucces\""),
            (json!({"PrefGet": 1}), "unknown key \"PrefGet\""),
            (
                json!({"ChatSuccess": 1.5}),
                "ChatSuccess must be a number between 0.0 and 1.0",
            ),
            (
                json!({"LoginSuccess": "1"}),
                "LoginSuccess must be a number between 0.0 and 1.0",
            ),
            (
                json!({"ChatSafetyIssue": -0.1}),
                "ChatSafetyIssue must be a number between 0.0 and 1.0",
            ),
            (
                json!({"ChatLatencyMaxMS": -1}),
                "ChatLatencyMaxMS must be a whole number of milliseconds between 0 and 300000",
            ),
            (
                json!({"ChatLatencyMaxMS": 1.5}),
                "ChatLatencyMaxMS must be a whole number of milliseconds between 0 and 300000",
            ),
            (
                json!({"StartupLatencyMaxMS": 300_001}),
                "StartupLatencyMaxMS must be a whole number of milliseconds between 0 and 300000",
            ),
            (
                json!({"LoginLatencyMinMS": 5}),
                "LoginLatencyMinMS must not be greater than LoginLatencyMaxMS",
            ),
        ];
        for (patch, message) in cases {
            let err = Phase::default()
                .apply(&patch)
                .expect_err(&format!("{patch} must be rejected"));
            assert_eq!(err.to_string(), message, "patch {patch}");
        }
    }

    #[test]
    fn draw_honours_extremes_and_range() {
        let mut rng = rand::rng();
        let always = Fault {
            success: 1.0,
            latency_min_ms: 5,
            latency_max_ms: 7,
        };
        let never = Fault {
            success: 0.0,
            ..Fault::default()
        };
        for _ in 0..200 {
            let (ok, delay) = always.draw(&mut rng);
            assert!(ok);
            assert!((5..=7).contains(&delay.as_millis()), "{delay:?}");
            assert_eq!(never.draw(&mut rng), (false, Duration::ZERO));
        }
    }
}
