//! Every journey-file rule has an `invalid-*.yaml` fixture, and its exact
//! message (line:column: key path: text) is pinned here. A valid file next
//! to them proves the fixtures fail for their own reason.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vantage::journey::build::{BuildOptions, load_and_build};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Loads one fixture with no environment and renders its errors without the
/// file name, in order.
fn errors_of(file: &str) -> Vec<String> {
    let env = |_: &str| None;
    let opts = BuildOptions {
        env: &env,
        vars: Default::default(),
    };
    match load_and_build(&[fixtures().join(file)], &opts) {
        Ok(j) => panic!("{file} built {} journey(s) but should be invalid", j.len()),
        Err(errors) => errors
            .iter()
            .map(|e| {
                assert!(e.file.ends_with(file), "{} is not {file}", e.file);
                let dir = format!("{}/", fixtures().display());
                e.to_string()[e.file.len() + 1..].replace(&dir, "")
            })
            .collect(),
    }
}

#[test]
fn invalid_fixtures_report_their_exact_errors() {
    let table: &[(&str, &str)] = &[
        (
            "invalid-ca-and-insecure.yaml",
            r#"4:65: steps[0].http.ca_file: `ca_file` and `insecure: true` contradict each other"#,
        ),
        (
            "invalid-cron.yaml",
            r#"2:11: schedule.cron: invalid cron expression `*/5 * * *`: Invalid pattern: Pattern must have between 5 and 7 fields."#,
        ),
        (
            "invalid-duplicate-name.yaml",
            r#"5:9: [1].name: duplicate journey name `same` (first defined at invalid-duplicate-name.yaml:1)"#,
        ),
        (
            "invalid-duration.yaml",
            r#"2:10: timeout: invalid duration `fast` (use a number and a unit, e.g. 500ms, 30s, 5m, 1h)"#,
        ),
        (
            "invalid-extract.yaml",
            r#"6:14: steps[0].extract.token: give exactly one of `json`, `regex`, `header` or `cookie`"#,
        ),
        (
            "invalid-interval.yaml",
            r#"2:11: schedule.every: interval 10ms is below the minimum of 100ms"#,
        ),
        (
            "invalid-jsonpath.yaml",
            r#"6:27: steps[0].expect.json["$.items["]: invalid JSONPath `$.items[`: at position 7, parser error"#,
        ),
        (
            "invalid-label-reserved.yaml",
            r#"2:20: labels.journey: label name `journey` is reserved (Vantage sets it); choose another"#,
        ),
        (
            "invalid-label.yaml",
            r#"2:22: labels.team-name: label name `team-name` must match [a-zA-Z_][a-zA-Z0-9_]*"#,
        ),
        (
            "invalid-many-errors.yaml",
            r#"3:10: timeout: invalid duration `soon` (use a number and a unit, e.g. 500ms, 30s, 5m, 1h)"#,
        ),
        (
            "invalid-many-errors.yaml",
            r#"4:11: schedule.every: invalid duration `never` (use a number and a unit, e.g. 500ms, 30s, 5m, 1h)"#,
        ),
        (
            "invalid-many-errors.yaml",
            r#"7:18: steps[0].http.url: invalid URL: relative URL without a base in `not a url`"#,
        ),
        (
            "invalid-many-errors.yaml",
            r#"9:22: steps[0].expect.latency_below: invalid duration `quick` (use a number and a unit, e.g. 500ms, 30s, 5m, 1h)"#,
        ),
        (
            "invalid-many-errors.yaml",
            r#"10:11: steps[1].name: duplicate step name `a` (also steps[0])"#,
        ),
        (
            "invalid-many-errors.yaml",
            r#"11:18: steps[1].http.url: undefined variable `nope` (not in `vars` and not extracted by an earlier step)"#,
        ),
        (
            "invalid-matcher.yaml",
            r#"6:26: steps[0].expect.json["$.count"]: unknown comparison; use equals, not_equals, exists, contains, matches, gt, gte, lt, lte or length (to compare with an object, write `equals: {...}`)"#,
        ),
        (
            "invalid-max-body.yaml",
            r#"4:49: steps[0].http.max_body: invalid size unit in `10 parsecs` (use B, KiB, MiB, GiB, KB, MB, GB)"#,
        ),
        (
            "invalid-method.yaml",
            r#"4:47: steps[0].http.method: invalid HTTP method `GE T`"#,
        ),
        ("invalid-missing-name.yaml", r#"1:1: missing field `name`"#),
        (
            "invalid-no-action.yaml",
            r#"3:11: steps[0]: a step needs exactly one action: http, browser, sql, redis, tcp, dns or tls"#,
        ),
        (
            "invalid-two-actions.yaml",
            r#"3:11: steps[0]: a step has exactly one action; this one has http and tcp"#,
        ),
        (
            "invalid-expect-kind.yaml",
            r#"3:11: steps[0].expect.status: `status` does not apply to a redis step"#,
        ),
        (
            "invalid-expect-kind.yaml",
            r#"3:11: steps[0].expect.rows: `rows` does not apply to a redis step"#,
        ),
        (
            "invalid-sql-splice.yaml",
            r#"5:71: steps[0].sql.query: put values in `params` (bound, never spliced into the SQL), not `${...}` in the query"#,
        ),
        (
            "invalid-sql-driver.yaml",
            r#"4:20: steps[0].sql.driver: unknown driver `oracle` (use postgres or mysql)"#,
        ),
        (
            "invalid-sql-dsn.yaml",
            r#"2:14: vars.dsn: environment variable `VANTAGE_TEST_DSN` is not set"#,
        ),
        (
            "invalid-sql-dsn.yaml",
            r#"5:35: steps[0].sql.dsn: invalid PostgreSQL DSN: error with configuration: invalid port number"#,
        ),
        (
            "invalid-sql-dsn.yaml",
            r#"5:90: steps[0].sql.rollback: `write` commits and `rollback` undoes: choose one"#,
        ),
        (
            "invalid-dns-type.yaml",
            r#"4:37: steps[0].dns.type: unknown record type `AAAAA`"#,
        ),
        (
            "invalid-dns-type.yaml",
            r#"4:79: steps[0].dns.transport: unknown transport `quic` (use udp or tcp)"#,
        ),
        (
            "invalid-no-steps.yaml",
            r#"1:7: steps: a journey needs at least one step"#,
        ),
        (
            "invalid-reference-kind.yaml",
            r#"4:59: steps[0].http.headers.X-Token: unknown reference kind `vault:` in `${vault:secret/x}` (use `env:` or `file:`)"#,
        ),
        (
            "invalid-regex.yaml",
            r#"6:13: steps[0].expect.body.matches: invalid regex: regex parse error: ([a-z ^ error: unclosed character class"#,
        ),
        (
            "invalid-schedule-both.yaml",
            r#"2:11: schedule: give exactly one of `every` (e.g. 1m) or `cron` (e.g. "*/5 * * * *")"#,
        ),
        (
            "invalid-status.yaml",
            r#"5:23: steps[0].expect.status: invalid status `2xy` (use a code such as 200 or a class such as "2xx")"#,
        ),
        ("invalid-type.yaml", r#"4:49: invalid boolean"#),
        (
            "invalid-undefined-var.yaml",
            r#"5:18: steps[0].http.url: undefined variable `token` (not in `vars` and not extracted by an earlier step)"#,
        ),
        (
            "invalid-unknown-key.yaml",
            r#"4:39: unknown field `methd`, expected one of method, url, headers, query, body, follow_redirects, max_redirects, insecure, ca_file, max_body"#,
        ),
        (
            "invalid-unset-env.yaml",
            r#"2:19: vars.password: environment variable `VANTAGE_TEST_UNSET` is not set"#,
        ),
        (
            "invalid-url-scheme.yaml",
            r#"4:18: steps[0].http.url: unsupported URL scheme `ftp` (use http or https) in `ftp://example.com/file`"#,
        ),
        (
            "invalid-url.yaml",
            r#"8:18: steps[2].http.url: invalid URL: relative URL without a base in `htp//example.com`"#,
        ),
        (
            "invalid-version.yaml",
            r#"1:10: version: unsupported format version 2 (this agent reads version 1)"#,
        ),
        (
            "invalid-yaml-syntax.yaml",
            r#"4:5: invalid indentation in multiline quoted scalar"#,
        ),
    ];
    let mut expected: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (file, msg) in table {
        expected.entry(file).or_default().push(msg.to_string());
    }
    // Every fixture on disk is in the table, and every table entry is on disk.
    let on_disk: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("invalid-"))
        .collect();
    for f in &on_disk {
        assert!(
            expected.contains_key(f.as_str()),
            "fixture {f} has no row in the table"
        );
    }
    assert_eq!(on_disk.len(), expected.len());
    let mut mismatches = Vec::new();
    for (file, want) in &expected {
        let got = errors_of(file);
        if &got != want {
            mismatches.push(format!("{file}:\n  want {want:#?}\n  got  {got:#?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn valid_example_journeys_build() {
    let env = |_: &str| None;
    let opts = BuildOptions {
        env: &env,
        vars: Default::default(),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../journeys");
    let journeys = load_and_build(&[root], &opts).unwrap_or_else(|e| {
        panic!(
            "examples invalid: {}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(journeys.iter().any(|j| j.name.as_ref() == "movie-guru-api"));
}

#[test]
fn secrets_are_redacted_in_errors_and_registered() {
    let dir = std::env::temp_dir().join(format!("vantage-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "file-secret-value\n").unwrap();
    std::fs::write(
        dir.join("j.yaml"),
        "name: s\nvars:\n  pw: ${env:PW}\n  tok: ${file:token}\nsteps:\n  - name: a\n    http: { url: \"http://u:${pw}@127.0.0.1:1/${tok}\" }\n",
    )
    .unwrap();
    let env = |k: &str| (k == "PW").then(|| "env-secret-value".to_string());
    let opts = BuildOptions {
        env: &env,
        vars: Default::default(),
    };
    let journeys = load_and_build(&[dir.join("j.yaml")], &opts).unwrap();
    let r = &journeys[0].redactor;
    assert_eq!(
        r.redact("a env-secret-value b file-secret-value"),
        "a *** b ***",
        "the file secret loses its trailing newline and both are registered"
    );
    // A broken URL that embeds a secret is reported as written, not resolved.
    std::fs::write(
        dir.join("j.yaml"),
        "name: s\nvars:\n  pw: ${env:PW}\nsteps:\n  - name: a\n    http: { url: \"ht tp://${pw}\" }\n",
    )
    .unwrap();
    let errors = load_and_build(&[dir.join("j.yaml")], &opts).unwrap_err();
    let text: String = errors.iter().map(|e| e.to_string()).collect();
    assert!(text.contains("${pw}"), "{text}");
    assert!(!text.contains("env-secret-value"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn committed_schema_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/journey-v1.schema.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        committed == vantage::config::json_schema(),
        "schema/journey-v1.schema.json is stale: run `cargo run -p vantage -- schema > schema/journey-v1.schema.json`"
    );
}
