//! Test-support library for Vantage's integration tests.
//!
//! - [`otlp`]: a real OTLP receiver (gRPC and HTTP/protobuf) that flattens
//!   what it receives into [`FlatSpan`]s and [`FlatMetric`]s.
//! - [`faults`]: loopback HTTP servers that misbehave on purpose.
//! - [`tls`]: HTTPS servers with run-time generated certificates.
//! - [`agent`]: the `vantage` binary as a supervised child process.
//! - [`workspace_root`] / [`vantage_bin`]: paths for tests that spawn the
//!   agent binary.
//!
//! This crate deliberately does not depend on the agent itself.

pub mod agent;
pub mod faults;
pub mod otlp;
mod server;
pub mod tls;

use std::path::{Path, PathBuf};

pub use faults::{
    FaultServer, RecordedRequest, refused_addr, start_echo, start_oversized,
    start_oversized_with_length, start_redirect_loop, start_silent, start_stall_mid_body,
};
pub use otlp::{Attributes, FlatMetric, FlatPoint, FlatSpan, Protocol, Receiver};
pub use tls::{TestCa, TlsKind, TlsServer};

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// The workspace target directory: `$CARGO_TARGET_DIR` (relative paths are
/// taken relative to the workspace root) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Path of the debug `vantage` agent binary, `<target dir>/debug/vantage`
/// (see [`target_dir`]). This only computes the path; the binary must have
/// been built (`cargo build -p vantage`).
pub fn vantage_bin() -> PathBuf {
    target_dir()
        .join("debug")
        .join(format!("vantage{}", std::env::consts::EXE_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_point_into_the_workspace() {
        let root = workspace_root();
        assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
        assert!(root.join("tests").join("Cargo.toml").is_file());
        let bin = vantage_bin();
        assert!(bin.ends_with(format!("debug/vantage{}", std::env::consts::EXE_SUFFIX)));
        assert!(bin.starts_with(target_dir()));
    }
}
