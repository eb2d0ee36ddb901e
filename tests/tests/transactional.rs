//! The transactional example journeys, run by the `vantage` binary against the demo
//! backend on the real PostgreSQL (127.0.0.1:5432, database `test`; override with
//! `VANTAGE_TEST_DATABASE_URL`), each test in a schema of its own that is dropped at the
//! end, even when the test fails.
//!
//! - `journeys/movie-guru-transactional.yaml` is green, and the row it saved is really in
//!   the table; told to fail preference writes (`POST /phase`), the demo answers 500, the
//!   journey is red at the save step with kind `"500"` and a message naming the injected
//!   fault, the later steps are skipped, and the row is untouched.
//! - A backend whose API says "saved" while its database never sees the write (the demo
//!   in memory, checked against a database holding an older row) is red at the database
//!   step: the very failure a transactional check exists to catch.
//! - `journeys/movie-guru-page-and-query.yaml` (page, then an API call that runs a query)
//!   is green without any database credentials, and red when that query fails.
//!
//! The DSN is a secret: it must not appear in the JSON report.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use vantage_demo::sqlx::postgres::PgConnectOptions;
use vantage_demo::sqlx::{self, AssertSqlSafe, Connection as _, PgConnection};
use vantage_demo::{DemoServer, PgSettings, SchemaName, start_frontend};
use vantage_tests::{vantage_bin, workspace_root};

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The user the transactional journey logs in as (its `user` var).
const PROBE_USER: &str = "probe-transactional@example.com";
const TRANSACTIONAL: &str = "movie-guru-transactional.yaml";
const PAGE_AND_QUERY: &str = "movie-guru-page-and-query.yaml";

fn any_loopback_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A schema for one test, dropped with everything in it when this is dropped.
struct TestDb {
    url: String,
    schema: SchemaName,
}

impl TestDb {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let schema = format!(
            "vantage_tx_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        TestDb {
            url: std::env::var("VANTAGE_TEST_DATABASE_URL")
                .unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned()),
            schema: schema.parse().unwrap(),
        }
    }

    /// What the demo backend is started with.
    fn settings(&self) -> PgSettings {
        PgSettings::new(self.url.clone(), self.schema.clone())
    }

    /// `MOVIE_GURU_DB_DSN` for the journey: the same database, with this schema first on
    /// the search path so the journey's unqualified query finds the demo's tables.
    fn dsn(&self) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-csearch_path%3D{}",
            self.url, self.schema
        )
    }

    /// A connection of our own, to check what the demo wrote.
    async fn connect(&self) -> PgConnection {
        let options: PgConnectOptions = self.url.parse().unwrap();
        PgConnection::connect_with(&options.options([("search_path", self.schema.as_str())]))
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", self.url))
    }

    /// The probe user's preferences row as `(likes, updated_at)`, if there is one.
    async fn preferences_row(&self) -> Option<(Value, String)> {
        let mut conn = self.connect().await;
        let row = sqlx::query_as(
            "SELECT likes, updated_at::text FROM movieguru_preferences WHERE email = $1",
        )
        .bind(PROBE_USER)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        row
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be the one dropping us: clean up
        // on a thread with a runtime of its own.
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&url).await?;
                // A validated `SchemaName`: only lowercase letters, digits and '_'.
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
    }
}

/// One `vantage once --json` run of a journey file.
struct Run {
    code: i32,
    stdout: String,
    report: Value,
    stderr: String,
}

impl Run {
    fn step(&self, i: usize) -> &Value {
        &self.report["steps"][i]
    }

    fn outcomes(&self) -> Vec<&str> {
        self.report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["outcome"].as_str().unwrap_or("?"))
            .collect()
    }
}

/// Runs `journeys/FILE` once with `--var` overrides and, when given, the DSN.
async fn vantage_once(file: &str, vars: &[(&str, &str)], dsn: Option<&str>) -> Run {
    let mut command = tokio::process::Command::new(vantage_bin());
    command
        .args(["once", "--json", "--location", "test"])
        .arg(workspace_root().join("journeys").join(file))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("MOVIE_GURU_DB_DSN")
        .kill_on_drop(true);
    for (name, value) in vars {
        command.args(["--var", &format!("{name}={value}")]);
    }
    if let Some(dsn) = dsn {
        command.env("MOVIE_GURU_DB_DSN", dsn);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("vantage once finished within a minute")
        .unwrap_or_else(|e| panic!("run {} ({e})", vantage_bin().display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let reports: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}):\n{stdout}\n{stderr}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        report: reports[0].clone(),
        stdout,
        stderr,
    }
}

/// `POST PATH` with a JSON body to the demo; returns the status.
async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

/// A value no earlier run can have saved.
fn unique_tag(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{label}-{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn transactional_journey_is_green_then_red_when_preference_writes_fail() {
    let db = TestDb::new();
    let demo = DemoServer::start_postgres(any_loopback_port(), &db.settings())
        .await
        .unwrap_or_else(|e| panic!("demo on PostgreSQL at {}: {e}", db.url));
    let api = demo.base_url();
    let dsn = db.dsn();

    let tag = unique_tag("green");
    let green = vantage_once(
        TRANSACTIONAL,
        &[("api", api.as_str()), ("tag", tag.as_str())],
        Some(&dsn),
    )
    .await;
    assert_eq!(
        (green.code, green.report["outcome"].as_str()),
        (0, Some("passed")),
        "the journey should pass:\n{}\n{}",
        green.stdout,
        green.stderr
    );
    assert_eq!(green.outcomes(), ["passed"; 4]);
    assert_eq!(green.step(3)["name"], "row is in the database");
    assert_eq!(green.step(3)["kind"], "sql");
    assert!(!green.stdout.contains(&dsn), "the DSN is a secret");

    // The row really is there, with this run's value.
    let (likes, saved_at) = db.preferences_row().await.expect("a preferences row");
    let genre = likes["genres"][0].as_str().unwrap();
    assert!(genre.starts_with(&format!("{tag} ")), "{likes}");
    assert_eq!(likes["genres"].as_array().map(Vec::len), Some(1));

    // Preference writes fail from now on.
    assert_eq!(
        post_json(demo.addr(), "/phase", &json!({"PrefUpdateSuccess": 0})).await,
        200
    );
    let red = vantage_once(
        TRANSACTIONAL,
        &[("api", api.as_str()), ("tag", &unique_tag("red"))],
        Some(&dsn),
    )
    .await;
    assert_eq!(red.code, 1, "{}\n{}", red.stdout, red.stderr);
    assert_eq!(red.report["outcome"], "failed");
    assert_eq!(red.report["failed_step"], 1);
    assert_eq!(red.outcomes(), ["passed", "failed", "skipped", "skipped"]);
    let error = &red.step(1)["error"];
    assert_eq!(red.step(1)["name"], "save preferences");
    assert_eq!(error["kind"], "500", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("expected status 200, got 500")
            && message.contains("updating preferences failed (injected fault)"),
        "the message should say what failed: {message}"
    );
    assert!(!red.stdout.contains(&dsn), "the DSN is a secret");

    // The failed write changed nothing.
    assert_eq!(
        db.preferences_row().await,
        Some((likes, saved_at)),
        "the row must be untouched"
    );
    demo.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_write_that_never_reaches_the_database_is_caught() {
    let db = TestDb::new();
    let dsn = db.dsn();
    // A first, honest run leaves a row behind.
    let on_postgres = DemoServer::start_postgres(any_loopback_port(), &db.settings())
        .await
        .unwrap_or_else(|e| panic!("demo on PostgreSQL at {}: {e}", db.url));
    let first = vantage_once(
        TRANSACTIONAL,
        &[
            ("api", on_postgres.base_url().as_str()),
            ("tag", &unique_tag("first")),
        ],
        Some(&dsn),
    )
    .await;
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    on_postgres.shutdown().await.unwrap();
    let before = db.preferences_row().await;

    // Now the API keeps data in memory: it says "saved" and reads it back, but the
    // database still holds the first run's row.
    let in_memory = DemoServer::start(any_loopback_port()).await.unwrap();
    let run = vantage_once(
        TRANSACTIONAL,
        &[
            ("api", in_memory.base_url().as_str()),
            ("tag", &unique_tag("lost")),
        ],
        Some(&dsn),
    )
    .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.outcomes(), ["passed", "passed", "passed", "failed"]);
    let error = &run.step(3)["error"];
    assert_eq!(error["kind"], "assertion", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("$[0].saved: expected true, got false"),
        "the message should name the failed check: {error}"
    );
    assert_eq!(db.preferences_row().await, before);
    in_memory.shutdown().await.unwrap();
}

#[tokio::test]
async fn page_and_query_journey_needs_no_credentials_and_fails_with_the_query() {
    let db = TestDb::new();
    let demo = DemoServer::start_postgres(any_loopback_port(), &db.settings())
        .await
        .unwrap_or_else(|e| panic!("demo on PostgreSQL at {}: {e}", db.url));
    let frontend = start_frontend(any_loopback_port(), &demo.base_url(), "frontend")
        .await
        .unwrap();
    let vars = [
        ("app", frontend.base_url()),
        ("api", demo.base_url()),
        ("user", "page-probe@example.com".to_owned()),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let green = vantage_once(PAGE_AND_QUERY, &vars, None).await;
    assert_eq!(green.code, 0, "{}\n{}", green.stdout, green.stderr);
    assert_eq!(green.outcomes(), ["passed", "passed"]);

    assert_eq!(
        post_json(demo.addr(), "/phase", &json!({"PrefGetSuccess": 0})).await,
        200
    );
    let red = vantage_once(PAGE_AND_QUERY, &vars, None).await;
    assert_eq!(red.code, 1, "{}\n{}", red.stdout, red.stderr);
    assert_eq!(red.outcomes(), ["passed", "failed"]);
    assert_eq!(red.step(1)["error"]["kind"], "500");

    frontend.shutdown().await.unwrap();
    demo.shutdown().await.unwrap();
}
