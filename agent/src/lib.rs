//! Vantage: a synthetic and real-user monitoring probe agent.
//!
//! Data flows one way: `config` (wire types) → `journey::build` (the model)
//! → `scheduler` → `journey::runner` + `probes` → `report` → consumers
//! (`telemetry`, the CLI). See ARCHITECTURE.md for the map and invariants.

pub mod app;
pub mod cli;
pub mod config;
pub mod journey;
pub mod probes;
pub mod report;
pub mod scheduler;
pub mod server;
pub mod telemetry;
