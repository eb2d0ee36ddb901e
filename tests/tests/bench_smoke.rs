//! The benchmark harness (`scripts/bench`, issue 5) at tiny scale, so it cannot rot:
//! it must run every figure end to end, exit 0 and print every figure's row. It never
//! asserts on a timing — the figures are for people, not for CI.
//!
//! It uses the debug binaries `scripts/test` has just built (`--profile debug
//! --no-build`), so it adds no release build to CI. blackbox_exporter and wrk are
//! installed by the script when missing; when that is impossible the rows still appear,
//! with the baseline as n/a.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;

/// The row ids the harness prints, one per figure (or per half of one); `bench/bench.py`
/// keeps the same list in `ROW_IDS`.
const ROWS: &[&str] = &[
    "1a-bb", "1a-wrk", "1b-bb", "1b-wrk", "2", "3a", "3b", "4a", "4b", "5a", "5b", "5c", "6", "6b",
];

#[test]
fn bench_smoke_runs_every_figure() {
    let root = vantage_tests::workspace_root();
    let target = vantage_tests::target_dir();
    for bin in ["vantage", "vantage-demo"] {
        let path = target.join("debug").join(bin);
        assert!(
            path.is_file(),
            "{} is missing: build the workspace first (scripts/test does)",
            path.display()
        );
    }
    let out = Command::new(root.join("scripts").join("bench"))
        .args(["--smoke", "--profile", "debug", "--no-build"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run scripts/bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/bench --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for id in ROWS {
        let prefix = format!("| {id} |");
        assert!(
            stdout.lines().any(|l| l.starts_with(&prefix)),
            "no row for figure {id} in the table:\n{stdout}\n{stderr}"
        );
    }
}
