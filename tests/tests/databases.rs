//! SQL and Redis steps against the real PostgreSQL, MariaDB and Redis on the
//! machine (see `/work/shared/MACHINE.md`), run in-process through
//! `journey::build` and `journey::runner`.
//!
//! For PostgreSQL and MariaDB alike it proves: a passing check (`scalar`,
//! `rows`, `json` on `$[0].col`) with a failing control; an unreachable port
//! is `connect`; wrong credentials are `auth`; a query slower than its
//! statement timeout (or than its step deadline) is a `timeout` naming the
//! query phase, ends well before the query would have, and leaves no such
//! query on the server (`pg_stat_activity`, `information_schema.processlist`);
//! a hostile extracted value bound as a parameter changes nothing; a write
//! without `write: true` fails as `query` saying the step is read-only;
//! `rollback: true` leaves the table unchanged; `write: true` persists.
//!
//! The shared PostgreSQL trusts every connection from 127.0.0.1, so a wrong
//! password cannot fail there. Wrong passwords and a server restart between
//! runs are therefore tested on a private throw-away cluster (`initdb` with
//! scram-sha-256 on a free port, as the `postgres` user when run as root),
//! which can be stopped and started without disturbing anyone else's tests.
//! On the shared server a role without LOGIN is `auth`, and a missing
//! database is reported in the connect phase.
//!
//! One SQL journey also runs through the `vantage` binary with OTLP to a real
//! receiver: its CLIENT spans carry the semconv database attributes
//! (`db.query.text` only when the statement has parameters) and
//! `db.client.operation.duration` arrives in seconds.
//!
//! Redis: PING, GET of a prepared key and SET of an extracted value, TTL, LLEN,
//! an unreachable port, wrong passwords (default user without a password,
//! and an ACL user), and a blocking command that legitimately takes a second.
//!
//! Every table, role, user and key is named after the process id and a
//! counter, and is removed by a drop guard, so these tests run in parallel
//! with each other and with other test binaries.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use vantage::journey::Journey;
use vantage::journey::build::{BuildOptions, load_and_build};
use vantage::journey::runner::{self, RunEnv};
use vantage::probes::ProbeEnv;
use vantage::report::{
    CallDetail, DbCall, ErrorKind, JourneyReport, Outcome, Phase, StepError, StepOutcome,
};
use vantage_tests::agent::free_port;
use vantage_tests::{Receiver, refused_addr, vantage_bin};

// ---------------------------------------------------------------------------
// Helpers: names, journeys, runs
// ---------------------------------------------------------------------------

/// A name no other test (or test process) uses: `prefix_<pid>_<n>`.
fn unique(prefix: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// `s` as a YAML double-quoted scalar (JSON strings are valid YAML).
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Builds `yaml` with `env` as the only environment; panics on errors.
fn build_with_env(yaml: &str, env: &[(&str, &str)]) -> Journey {
    match try_build(yaml, env) {
        Ok(j) => j,
        Err(errors) => panic!("journey does not build: {errors}\n{yaml}"),
    }
}

fn build(yaml: &str) -> Journey {
    build_with_env(yaml, &[])
}

/// Builds `yaml`; the build errors joined by newlines otherwise.
fn try_build(yaml: &str, env: &[(&str, &str)]) -> Result<Journey, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journey.yaml");
    std::fs::write(&path, yaml).unwrap();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let lookup = move |name: &str| env.get(name).cloned();
    let opts = BuildOptions {
        env: &lookup,
        vars: BTreeMap::new(),
    };
    match load_and_build(&[path], &opts) {
        Ok(mut js) => {
            assert_eq!(js.len(), 1, "{yaml}");
            Ok(js.remove(0))
        }
        Err(errors) => Err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

async fn run(journey: &Journey) -> JourneyReport {
    let env = RunEnv {
        location: "test".into(),
        probes: Arc::new(ProbeEnv::new().expect("system resolver configuration")),
    };
    runner::run(journey, &env, None, &CancellationToken::new()).await
}

/// Runs `journey` once and returns the report with the wall time it took.
async fn timed_run(journey: &Journey) -> (JourneyReport, Duration) {
    let started = Instant::now();
    let report = run(journey).await;
    (report, started.elapsed())
}

fn assert_passed(report: &JourneyReport) {
    assert_eq!(
        report.outcome,
        Outcome::Passed,
        "expected a pass, got {:?}\n{report:#?}",
        report.error()
    );
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.outcome == StepOutcome::Passed && s.error.is_none()),
        "{report:#?}"
    );
}

/// The error of the failed step, after checking the run failed there.
fn failure(report: &JourneyReport) -> &StepError {
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    let i = report.failed_step.expect("a failed run names its step");
    assert_eq!(report.steps[i].outcome, StepOutcome::Failed, "{report:#?}");
    report.error().expect("a failed step has an error")
}

/// The single database call of step `step`.
fn db_call(report: &JourneyReport, step: usize) -> &DbCall {
    let calls = &report.steps[step].calls;
    assert_eq!(calls.len(), 1, "{report:#?}");
    match &calls[0].detail {
        CallDetail::Db(d) => d,
        other => panic!("not a database call: {other:?}"),
    }
}

/// A journey named `name` (timeout 30s) made of `steps`.
fn journey(name: &str, steps: &[String]) -> String {
    format!("name: {name}\ntimeout: 30s\nsteps:\n{}", steps.concat())
}

// ---------------------------------------------------------------------------
// Helpers: the two SQL servers
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Db {
    Pg,
    Maria,
}

impl Db {
    fn driver(self) -> &'static str {
        match self {
            Db::Pg => "postgres",
            Db::Maria => "mysql",
        }
    }

    /// The shared server, as its administrator.
    fn dsn(self) -> String {
        self.dsn_at(self.port())
    }

    fn dsn_at(self, port: u16) -> String {
        match self {
            Db::Pg => format!("postgres://postgres@127.0.0.1:{port}/test"),
            Db::Maria => format!("mysql://root@127.0.0.1:{port}/test"),
        }
    }

    fn port(self) -> u16 {
        match self {
            Db::Pg => 5432,
            Db::Maria => 3306,
        }
    }

    /// The `db.system.name` values acceptable for this server. Semconv names
    /// MariaDB `mariadb`; the `mysql` driver alone cannot tell it from MySQL,
    /// so `mysql` is accepted too.
    fn systems(self) -> &'static [&'static str] {
        match self {
            Db::Pg => &["postgresql"],
            Db::Maria => &["mariadb", "mysql"],
        }
    }

    /// The `i`th (1-based) parameter placeholder.
    fn param(self, i: usize) -> String {
        match self {
            Db::Pg => format!("${i}"),
            Db::Maria => "?".into(),
        }
    }

    /// A statement that takes five seconds.
    fn sleep5(self) -> &'static str {
        match self {
            Db::Pg => "pg_sleep(5)",
            Db::Maria => "sleep(5)",
        }
    }

    /// SQLSTATE of a statement cancelled by the server's timeout.
    fn timeout_state(self) -> &'static str {
        match self {
            Db::Pg => "57014",
            Db::Maria => "70100",
        }
    }

    /// Runs `sql` with the command-line client, synchronously (for drop
    /// guards, which cannot await). Failures are printed, not raised.
    fn cli(self, sql: &str) {
        let out = match self {
            Db::Pg => std::process::Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c", sql])
                .output(),
            Db::Maria => std::process::Command::new("mariadb")
                .args(["-uroot", "-h127.0.0.1", "test", "-e", sql])
                .output(),
        };
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cleanup `{sql}` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cleanup `{sql}` could not run: {e}"),
        }
    }
}

/// The test's own administrative connection to the shared server.
enum Admin {
    Pg(sqlx::PgConnection),
    Maria(sqlx::MySqlConnection),
}

impl Admin {
    async fn connect(db: Db) -> Self {
        let dsn = db.dsn();
        let conn = match db {
            Db::Pg => sqlx::PgConnection::connect(&dsn).await.map(Admin::Pg),
            Db::Maria => sqlx::MySqlConnection::connect(&dsn).await.map(Admin::Maria),
        };
        conn.unwrap_or_else(|e| {
            panic!("cannot reach the shared {db:?} server at {dsn} (see MACHINE.md): {e}")
        })
    }

    async fn exec(&mut self, sql: &str) {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Admin::Pg(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
            Admin::Maria(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
        }
        .unwrap();
    }

    /// A one-number query with text parameters.
    async fn number(&mut self, sql: &str, args: &[&str]) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Admin::Pg(c) => {
                let mut q = sqlx::query_scalar::<_, i64>(sql);
                for a in args {
                    q = q.bind(*a);
                }
                q.fetch_one(c).await.unwrap()
            }
            Admin::Maria(c) => {
                let mut q = sqlx::query_scalar::<_, i64>(sql);
                for a in args {
                    q = q.bind(*a);
                }
                q.fetch_one(c).await.unwrap()
            }
        }
    }

    async fn rows_in(&mut self, t: &Table) -> i64 {
        self.number(&format!("SELECT count(*) FROM {}", t.name), &[])
            .await
    }

    /// Polls the server until no session shows a statement containing
    /// `marker` (other than this connection's own). The server's state can
    /// only be polled; the deadline bounds the wait.
    async fn wait_until_no_statement_like(&mut self, db: Db, marker: &str, within: Duration) {
        let sql = match db {
            // Any state: the backend must be gone, not merely idle, because
            // the probe closes its connection after every run.
            Db::Pg => {
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()"
            }
            Db::Maria => {
                "SELECT count(*) FROM information_schema.processlist WHERE info LIKE ? AND id <> connection_id()"
            }
        };
        let pattern = format!("%{marker}%");
        let deadline = Instant::now() + within;
        loop {
            let n = self.number(sql, &[&pattern]).await;
            if n == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} session(s) still show the statement `{marker}` {within:?} after the step failed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A table `vantage_t_<pid>_<n> (id, name, score)` with rows 1 alpha 2.5,
/// 2 beta 3.5, 3 gamma NULL. Dropped (with the CLI) when the guard drops.
struct Table {
    db: Db,
    name: String,
}

impl Table {
    async fn create(db: Db, admin: &mut Admin) -> Table {
        let t = Table {
            db,
            name: unique("vantage_t"),
        };
        admin
            .exec(&format!(
                "CREATE TABLE {} (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, score DOUBLE PRECISION)",
                t.name
            ))
            .await;
        admin
            .exec(&format!(
                "INSERT INTO {} (id, name, score) VALUES (1, 'alpha', 2.5), (2, 'beta', 3.5), (3, 'gamma', NULL)",
                t.name
            ))
            .await;
        t
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        self.db.cli(&format!("DROP TABLE IF EXISTS {}", self.name));
    }
}

/// Runs `sql` with the CLI when dropped (roles, users).
struct Cleanup(Db, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.cli(&self.1);
    }
}

/// One SQL step named `name` (step timeout 10s): `sql: { driver, dsn, FIELDS }`
/// followed by `more`, further step keys indented by four spaces.
fn sql_step(db: Db, dsn: &str, name: &str, fields: &str, more: &str) -> String {
    format!(
        "  - name: {name}\n    timeout: 10s\n    sql: {{ driver: {}, dsn: {}, {fields} }}\n{more}",
        db.driver(),
        q(dsn)
    )
}

// ---------------------------------------------------------------------------
// A passing check, and its failing control
// ---------------------------------------------------------------------------

async fn passing_check(db: Db) {
    let mut admin = Admin::connect(db).await;
    let t = Table::create(db, &mut admin).await;
    let by_id = format!(
        "SELECT name, score FROM {} WHERE id = {}",
        t.name,
        db.param(1)
    );
    let all = format!("SELECT id, name FROM {} ORDER BY id", t.name);
    let yaml = journey(
        "sql-ok",
        &[
            sql_step(
                db,
                &db.dsn(),
                "by id",
                &format!("query: {}, params: [2]", q(&by_id)),
                "    expect:\n      scalar: beta\n      rows: 1\n      json: { \"$[0].name\": beta, \"$[0].score\": 3.5 }\n",
            ),
            sql_step(
                db,
                &db.dsn(),
                "all",
                &format!("query: {}", q(&all)),
                "    expect:\n      rows: 3\n      json: { \"$[0].id\": 1, \"$[2].name\": gamma }\n      latency_below: 5s\n",
            ),
        ],
    );
    let report = run(&build(&yaml)).await;
    assert_passed(&report);

    let c = db_call(&report, 0);
    assert!(db.systems().contains(&c.system), "{}", c.system);
    assert_eq!(c.operation, "SELECT");
    assert_eq!(c.rows, Some(1));
    assert_eq!(c.namespace.as_deref(), Some("test"));
    assert_eq!(
        (c.server_address.as_str(), c.server_port),
        ("127.0.0.1", db.port())
    );
    assert_eq!(
        c.query_text.as_deref(),
        Some(by_id.as_str()),
        "parameterised: the text is exported"
    );
    assert!(c.response_status.is_none());
    let c = db_call(&report, 1);
    assert_eq!(c.rows, Some(3));
    assert_eq!(
        c.query_text, None,
        "no parameters: the text may hold values"
    );

    // Control: the same query with expectations that do not hold.
    let yaml = journey(
        "sql-wrong",
        &[sql_step(
            db,
            &db.dsn(),
            "all",
            &format!("query: {}", q(&all)),
            "    expect: { rows: 5, json: { \"$[0].name\": zeta } }\n",
        )],
    );
    let report = run(&build(&yaml)).await;
    let e = failure(&report);
    assert_eq!(e.kind, ErrorKind::Assertion, "{e:?}");
    assert!(
        e.message.contains("rows: expected 5, got 3"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("\"zeta\"") && e.message.contains("\"alpha\""),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn pg_passing_check_and_failing_control() {
    passing_check(Db::Pg).await;
}

#[tokio::test]
async fn mariadb_passing_check_and_failing_control() {
    passing_check(Db::Maria).await;
}

// ---------------------------------------------------------------------------
// Unreachable port
// ---------------------------------------------------------------------------

async fn unreachable_port(db: Db) {
    let port = refused_addr().port();
    let yaml = journey(
        "sql-refused",
        &[sql_step(
            db,
            &db.dsn_at(port),
            "select",
            "query: \"SELECT 1\"",
            "",
        )],
    );
    let (report, took) = timed_run(&build(&yaml)).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Connect, Some(Phase::Connect)),
        "{e:?}"
    );
    assert!(
        e.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        e.message
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let c = db_call(&report, 0);
    assert_eq!(c.rows, None);
    assert_eq!(
        report.steps[0].calls[0].error_type.as_deref(),
        Some("connect")
    );
}

#[tokio::test]
async fn pg_unreachable_port_is_connect() {
    unreachable_port(Db::Pg).await;
}

#[tokio::test]
async fn mariadb_unreachable_port_is_connect() {
    unreachable_port(Db::Maria).await;
}

// ---------------------------------------------------------------------------
// Slow queries: cancelled on the server, in the query phase
// ---------------------------------------------------------------------------

async fn slow_query(db: Db) {
    let mut admin = Admin::connect(db).await;

    // 1. The statement timeout fires: the server cancels the statement.
    let marker = unique("vantage_slow");
    let yaml = journey(
        "sql-slow",
        &[sql_step(
            db,
            &db.dsn(),
            "slow",
            &format!(
                "query: {}, statement_timeout: 500ms",
                q(&format!("SELECT {} AS {marker}", db.sleep5()))
            ),
            "",
        )],
    );
    let (report, took) = timed_run(&build(&yaml)).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Timeout, Some(Phase::Query)),
        "{e:?}"
    );
    assert!(
        e.message.contains("500ms") && e.message.contains("query phase"),
        "{}",
        e.message
    );
    assert!(
        took < Duration::from_millis(2500),
        "a 500ms statement timeout took {took:?}"
    );
    assert_eq!(
        db_call(&report, 0).response_status.as_deref(),
        Some(db.timeout_state())
    );
    admin
        .wait_until_no_statement_like(db, &marker, Duration::from_secs(3))
        .await;

    // 2. The step deadline (1s) comes before the default 10s statement
    // timeout: the server is given the deadline, so it still cancels.
    let marker = unique("vantage_slow");
    let yaml = format!(
        "name: sql-deadline\ntimeout: 30s\nsteps:\n  - name: slow\n    timeout: 1s\n    sql: {{ driver: {}, dsn: {}, query: {} }}\n",
        db.driver(),
        q(&db.dsn()),
        q(&format!("SELECT {} AS {marker}", db.sleep5()))
    );
    let (report, took) = timed_run(&build(&yaml)).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Timeout, Some(Phase::Query)),
        "{e:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "a 1s step deadline took {took:?}"
    );
    admin
        .wait_until_no_statement_like(db, &marker, Duration::from_secs(3))
        .await;
    // The 10s statement timeout is not what stopped a query after 1s.
    assert!(
        !e.message.contains("statement timeout 10s"),
        "the message names a limit that did not fire: {}",
        e.message
    );
}

#[tokio::test]
async fn pg_slow_query_is_a_query_phase_timeout_and_cancelled_on_the_server() {
    slow_query(Db::Pg).await;
}

#[tokio::test]
async fn mariadb_slow_query_is_a_query_phase_timeout_and_cancelled_on_the_server() {
    slow_query(Db::Maria).await;
}

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mariadb_wrong_password_is_auth() {
    let mut admin = Admin::connect(Db::Maria).await;
    let user = unique("vantage_u");
    let _drop_user = Cleanup(Db::Maria, format!("DROP USER IF EXISTS '{user}'@'%'"));
    admin
        .exec(&format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY 'right-pw'"
        ))
        .await;
    admin
        .exec(&format!("GRANT SELECT ON test.* TO '{user}'@'%'"))
        .await;
    let yaml = journey(
        "mariadb-auth",
        &[sql_step(
            Db::Maria,
            &format!("mysql://{user}:${{env:DB_PASSWORD}}@127.0.0.1:3306/test"),
            "select",
            "query: \"SELECT 1 AS one\"",
            "    expect: { scalar: 1 }\n",
        )],
    );
    // Control: the right password passes.
    let report = run(&build_with_env(&yaml, &[("DB_PASSWORD", "right-pw")])).await;
    assert_passed(&report);

    let report = run(&build_with_env(&yaml, &[("DB_PASSWORD", "wrong-pw-7f3a")])).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Auth, Some(Phase::Connect)),
        "{e:?}"
    );
    assert!(e.message.contains("Access denied"), "{}", e.message);
    assert!(!e.message.contains("wrong-pw-7f3a"), "{}", e.message);
    assert_eq!(
        db_call(&report, 0).response_status.as_deref(),
        Some("28000")
    );
}

#[tokio::test]
async fn pg_wrong_password_is_auth_on_a_private_scram_cluster() {
    let pg = PrivatePg::start("right-pw").await;
    let yaml = journey(
        "pg-auth",
        &[sql_step(
            Db::Pg,
            &format!(
                "postgres://postgres:${{env:DB_PASSWORD}}@127.0.0.1:{}/postgres",
                pg.port
            ),
            "select",
            "query: \"SELECT 1 AS one\"",
            "    expect: { scalar: 1 }\n",
        )],
    );
    let report = run(&build_with_env(&yaml, &[("DB_PASSWORD", "right-pw")])).await;
    assert_passed(&report);

    let report = run(&build_with_env(&yaml, &[("DB_PASSWORD", "wrong-pw-7f3a")])).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Auth, Some(Phase::Connect)),
        "{e:?}"
    );
    assert!(
        e.message.contains("password authentication failed"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("wrong-pw-7f3a"), "{}", e.message);
    assert_eq!(
        db_call(&report, 0).response_status.as_deref(),
        Some("28P01")
    );
}

/// On the shared (trust) server: a role that may not log in is refused with
/// SQLSTATE 28000, which is `auth`. A database that does not exist
/// (3D000) is reported as `query` in the connect phase: there is no kind
/// for a wrong setting, and it is not a credential failure.
#[tokio::test]
async fn pg_role_without_login_is_auth_and_a_missing_database_is_named() {
    let mut admin = Admin::connect(Db::Pg).await;
    let role = unique("vantage_nologin");
    let _drop_role = Cleanup(Db::Pg, format!("DROP ROLE IF EXISTS {role}"));
    admin.exec(&format!("CREATE ROLE {role} NOLOGIN")).await;
    let select = |dsn: &str| {
        journey(
            "pg-login",
            &[sql_step(Db::Pg, dsn, "select", "query: \"SELECT 1\"", "")],
        )
    };
    let report = run(&build(&select(&format!(
        "postgres://{role}:any@127.0.0.1:5432/test"
    ))))
    .await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Auth, Some(Phase::Connect)),
        "{e:?}"
    );
    assert!(
        e.message.contains("not permitted to log in"),
        "{}",
        e.message
    );
    assert_eq!(
        db_call(&report, 0).response_status.as_deref(),
        Some("28000")
    );

    let missing = unique("vantage_nodb");
    let report = run(&build(&select(&format!(
        "postgres://postgres@127.0.0.1:5432/{missing}"
    ))))
    .await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Query, Some(Phase::Connect)),
        "{e:?}"
    );
    assert!(
        e.message.contains(&missing) && e.message.contains("does not exist"),
        "{}",
        e.message
    );
    assert_eq!(
        db_call(&report, 0).response_status.as_deref(),
        Some("3D000")
    );
}

// ---------------------------------------------------------------------------
// A restart between runs
// ---------------------------------------------------------------------------

/// The same built journey, as the scheduler would run it: passes, fails with
/// `connect` while the server is down, and passes again once it is back and
/// after a restart. Nothing of the old connection survives into a run.
#[tokio::test]
async fn pg_restart_between_runs_then_the_next_run_recovers() {
    let pg = PrivatePg::start("pw").await;
    let j = build(&journey(
        "pg-restart",
        &[sql_step(
            Db::Pg,
            &format!("postgres://postgres:pw@127.0.0.1:{}/postgres", pg.port),
            "select",
            "query: \"SELECT 1 AS one\"",
            "    expect: { scalar: 1 }\n",
        )],
    ));
    assert_passed(&run(&j).await);
    assert_passed(&run(&j).await);

    pg.pg_ctl(&["stop", "-m", "fast"]).await;
    let report = run(&j).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Connect, Some(Phase::Connect)),
        "{e:?}"
    );

    pg.start_server().await;
    assert_passed(&run(&j).await);

    pg.pg_ctl(&["restart", "-m", "fast"]).await;
    assert_passed(&run(&j).await);
}

/// A throw-away PostgreSQL cluster on a free loopback port, password
/// (scram-sha-256) authentication over TCP. Stopped and deleted on drop.
struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePg {
    async fn start(password: &str) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, p)| p.join("initdb").exists())
            .max()
            .map(|(_, p)| p)
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        // PostgreSQL refuses to run as root: run it as `postgres` then.
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), password).unwrap();
        if as_postgres {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let pg = PrivatePg {
            dir,
            bin,
            port: free_port(),
            as_postgres,
        };
        let data = pg.dir.path().join("data");
        let pwfile = pg.dir.path().join("pw");
        pg.tool(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-N",
                "-U",
                "postgres",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                &format!("--pwfile={}", pwfile.display()),
            ],
        )
        .await;
        pg.start_server().await;
        pg
    }

    async fn tool(&self, tool: &str, args: &[&str]) {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            tokio::process::Command::new(&path)
        };
        let out = cmd.args(args).output().await.unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl -D DATA -w -t 30 ARGS`: `-w` waits until the server accepts
    /// connections (or has stopped), with a deadline.
    async fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let mut all = vec![
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "-w",
            "-t",
            "30",
        ];
        all.extend_from_slice(args);
        self.tool("pg_ctl", &all).await;
    }

    async fn start_server(&self) {
        self.pg_ctl(&["start"]).await;
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let path = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let _ = cmd
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

// ---------------------------------------------------------------------------
// A hostile extracted value
// ---------------------------------------------------------------------------

async fn hostile_value(db: Db) {
    let mut admin = Admin::connect(db).await;
    let t = Table::create(db, &mut admin).await;
    let hostile = format!("x'; DROP TABLE {}; --", t.name);
    let lookup = format!(
        "SELECT count(*) AS n FROM {} WHERE name = {}",
        t.name,
        db.param(1)
    );
    let yaml = journey(
        "sql-injection",
        &[
            // The hostile text arrives as data, as an API response would carry it.
            sql_step(
                db,
                &db.dsn(),
                "hostile",
                &format!(
                    "query: {}",
                    q(&format!("SELECT '{}' AS v", hostile.replace('\'', "''")))
                ),
                "    extract: { evil: { json: \"$[0].v\" } }\n",
            ),
            sql_step(
                db,
                &db.dsn(),
                "lookup",
                &format!("query: {}, params: [\"${{evil}}\"]", q(&lookup)),
                "    expect: { scalar: 0 }\n",
            ),
        ],
    );
    let report = run(&build(&yaml)).await;
    assert_passed(&report);
    assert_eq!(admin.rows_in(&t).await, 3, "the table is intact");
    let c = db_call(&report, 1);
    assert_eq!(
        c.query_text.as_deref(),
        Some(lookup.as_str()),
        "only the statement, never the value"
    );

    // And a value can never be spliced into the SQL text at all.
    let spliced = journey(
        "sql-splice",
        &[sql_step(
            db,
            &db.dsn(),
            "spliced",
            &format!(
                "query: {}",
                q(&format!(
                    "SELECT count(*) FROM {} WHERE name = '${{evil}}'",
                    t.name
                ))
            ),
            "",
        )],
    );
    let Err(errors) = try_build(&spliced, &[]) else {
        panic!("a `${{...}}` in a query must not build:\n{spliced}");
    };
    assert!(errors.contains("put values in `params`"), "{errors}");
}

#[tokio::test]
async fn pg_hostile_extracted_value_is_bound_and_harmless() {
    hostile_value(Db::Pg).await;
}

#[tokio::test]
async fn mariadb_hostile_extracted_value_is_bound_and_harmless() {
    hostile_value(Db::Maria).await;
}

// ---------------------------------------------------------------------------
// Writes: read-only by default, rollback, commit
// ---------------------------------------------------------------------------

async fn write_modes(db: Db) {
    let mut admin = Admin::connect(db).await;
    let t = Table::create(db, &mut admin).await;
    let insert = format!(
        "INSERT INTO {} (id, name) VALUES ({}, {}) RETURNING id",
        t.name,
        db.param(1),
        db.param(2)
    );
    let step = |id: u32, mode: &str| {
        journey(
            "sql-write",
            &[sql_step(
                db,
                &db.dsn(),
                "insert",
                &format!("query: {}, params: [{id}, \"row{id}\"]{mode}", q(&insert)),
                &format!("    expect: {{ scalar: {id}, rows: 1 }}\n"),
            )],
        )
    };
    let has = format!(
        "SELECT count(*) FROM {} WHERE name = {}",
        t.name,
        db.param(1)
    );
    assert_eq!(admin.rows_in(&t).await, 3);

    // Read-only by default: the server refuses the write.
    let report = run(&build(&step(102, ""))).await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Query, Some(Phase::Query)),
        "{e:?}"
    );
    assert!(e.message.contains("read-only"), "{}", e.message);
    assert!(e.message.contains("write: true"), "{}", e.message);
    assert_eq!(
        db_call(&report, 0).response_status.as_deref(),
        Some("25006")
    );
    assert_eq!(admin.rows_in(&t).await, 3);

    // Rollback: the insert happens (it returns its row) and is undone.
    let report = run(&build(&step(101, ", rollback: true"))).await;
    assert_passed(&report);
    assert_eq!(db_call(&report, 0).operation, "INSERT");
    assert_eq!(admin.rows_in(&t).await, 3, "rollback left a row behind");
    assert_eq!(admin.number(&has, &["row101"]).await, 0);

    // Write: committed.
    let report = run(&build(&step(100, ", write: true"))).await;
    assert_passed(&report);
    assert_eq!(admin.rows_in(&t).await, 4, "the write was not committed");
    assert_eq!(admin.number(&has, &["row100"]).await, 1);
}

#[tokio::test]
async fn pg_writes_need_opt_in_and_rollback_leaves_the_table_unchanged() {
    write_modes(Db::Pg).await;
}

#[tokio::test]
async fn mariadb_writes_need_opt_in_and_rollback_leaves_the_table_unchanged() {
    write_modes(Db::Maria).await;
}

// ---------------------------------------------------------------------------
// Spans and metrics through the binary
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_client_spans_and_duration_metric_over_otlp() {
    let mut admin = Admin::connect(Db::Pg).await;
    let t = Table::create(Db::Pg, &mut admin).await;
    let rx = Receiver::grpc().await;
    let secret = "pw-never-exported-5d1c";
    let dsn = "postgres://postgres:${env:VANTAGE_TEST_PG_PASSWORD}@127.0.0.1:5432/test";
    let by_id = format!("SELECT name FROM {} WHERE id = $1", t.name);
    let count = format!("SELECT count(*) FROM {}", t.name);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("db.yaml"),
        journey(
            "db-spans",
            &[
                sql_step(
                    Db::Pg,
                    dsn,
                    "by id",
                    &format!("query: {}, params: [1]", q(&by_id)),
                    "    expect: { scalar: alpha }\n",
                ),
                sql_step(
                    Db::Pg,
                    dsn,
                    "count",
                    &format!("query: {}", q(&count)),
                    "    expect: { scalar: 3 }\n",
                ),
            ],
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(vantage_bin())
        .args(["once", "--json"])
        .arg(dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("VANTAGE_TEST_PG_PASSWORD", secret)
        .output()
        .await
        .expect("run vantage once (build it with `cargo build -p vantage`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let reports: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let trace_id = reports[0]["trace_id"].as_str().unwrap().to_owned();

    // Root, two steps, two CLIENT spans.
    let spans = rx
        .wait_for_span_count(|s| s.trace_id == trace_id, 5, Duration::from_secs(20))
        .await
        .unwrap();
    let step_span = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == format!("step {name}"))
            .unwrap_or_else(|| panic!("no step span {name}: {spans:#?}"))
    };
    let client_of = |name: &str| {
        let parent = &step_span(name).span_id;
        let clients: Vec<_> = spans
            .iter()
            .filter(|s| s.is_client() && &s.parent_span_id == parent)
            .collect();
        assert_eq!(clients.len(), 1, "{spans:#?}");
        clients[0]
    };
    for (step, text, rows) in [("by id", Some(by_id.as_str()), 1), ("count", None, 1)] {
        let c = client_of(step);
        assert_eq!(c.name, "SELECT test");
        assert_eq!(c.attr_str("db.system.name"), Some("postgresql"), "{c:#?}");
        assert_eq!(c.attr_str("db.operation.name"), Some("SELECT"));
        assert_eq!(c.attr_str("db.namespace"), Some("test"));
        assert_eq!(c.attr_str("server.address"), Some("127.0.0.1"));
        assert_eq!(c.attr_i64("server.port"), Some(5432));
        assert_eq!(c.attr_i64("db.response.returned_rows"), Some(rows));
        assert_eq!(
            c.attr_str("db.query.text"),
            text,
            "db.query.text only when parameterised: {c:#?}"
        );
        assert!(c.attr("error.type").is_none());
    }

    let m = rx
        .wait_for_metric("db.client.operation.duration", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(m.unit, "s");
    assert_eq!(m.kind, "histogram");
    for step in ["by id", "count"] {
        let points: Vec<_> = m
            .points_with("vantage.step", step)
            .into_iter()
            .filter(|p| p.attr_str("vantage.journey") == Some("db-spans"))
            .collect();
        assert_eq!(points.len(), 1, "{m:#?}");
        let p = points[0];
        assert_eq!(p.count, Some(1));
        assert_eq!(p.attr_str("db.system.name"), Some("postgresql"));
        assert_eq!(p.attr_str("db.operation.name"), Some("SELECT"));
        assert!(p.sum.unwrap() > 0.0 && p.sum.unwrap() < 5.0, "{p:?}");
    }

    // The password in the DSN appears nowhere.
    let everything = format!("{stdout}{stderr}{:?}{:?}", rx.spans(), rx.metrics());
    assert!(!everything.contains(secret), "the DSN password leaked");
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

const REDIS: &str = "redis://127.0.0.1:6379";

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at {REDIS} (see MACHINE.md): {e}"))
}

async fn redis_cmd(con: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(con).await.unwrap()
}

/// Deletes keys (and ACL users) with `redis-cli` when dropped.
struct RedisCleanup(Vec<Vec<String>>);

impl Drop for RedisCleanup {
    fn drop(&mut self) {
        for args in &self.0 {
            let _ = std::process::Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", "6379"])
                .args(args)
                .output();
        }
    }
}

/// One Redis step; `command` is a flow value (`PING`, `"GET k"`, `[LLEN, k]`).
fn redis_step(url: &str, name: &str, command: &str, more: &str) -> String {
    format!(
        "  - name: {name}\n    timeout: 5s\n    redis: {{ url: {}, command: {command} }}\n{more}",
        q(url)
    )
}

#[tokio::test]
async fn redis_ping_get_set_ttl_and_llen() {
    let mut con = redis().await;
    let [src, copy, ttl, list, plain] = ["src", "copy", "ttl", "list", "plain"].map(unique);
    let _cleanup = RedisCleanup(vec![vec![
        "DEL".into(),
        src.clone(),
        copy.clone(),
        ttl.clone(),
        list.clone(),
        plain.clone(),
    ]]);
    redis_cmd(&mut con, &["SET", &src, "prepared-value"]).await;
    redis_cmd(&mut con, &["SET", &ttl, "v", "EX", "100"]).await;
    redis_cmd(&mut con, &["RPUSH", &list, "a", "b", "c"]).await;
    redis_cmd(&mut con, &["SET", &plain, "v"]).await;

    let yaml = journey(
        "redis-ok",
        &[
            redis_step(REDIS, "ping", "PING", "    expect: { scalar: PONG }\n"),
            redis_step(
                REDIS,
                "get",
                &q(&format!("GET {src}")),
                "    expect: { scalar: prepared-value }\n    extract: { v: { json: \"$\" } }\n",
            ),
            redis_step(
                REDIS,
                "set",
                &format!("[SET, {copy}, \"${{v}} copy\"]"),
                "    expect: { scalar: OK }\n",
            ),
            redis_step(
                REDIS,
                "get copy",
                &format!("[GET, {copy}]"),
                "    expect: { scalar: \"prepared-value copy\" }\n",
            ),
            redis_step(
                REDIS,
                "ttl",
                &q(&format!("TTL {ttl}")),
                "    expect: { scalar: { gt: 0, lte: 100 } }\n",
            ),
            redis_step(
                REDIS,
                "llen",
                &format!("[LLEN, {list}]"),
                "    expect: { scalar: 3 }\n",
            ),
        ],
    );
    let report = run(&build(&yaml)).await;
    assert_passed(&report);
    assert_eq!(
        redis_cmd(&mut con, &["GET", &copy]).await,
        redis::Value::BulkString(b"prepared-value copy".to_vec()),
        "the SET step wrote the extracted value"
    );
    let c = db_call(&report, 0);
    assert_eq!((c.system, c.operation.as_str()), ("redis", "PING"));
    assert_eq!(
        (c.server_address.as_str(), c.server_port),
        ("127.0.0.1", 6379)
    );
    assert_eq!(c.query_text, None, "arguments are values: never exported");
    assert_eq!(db_call(&report, 4).operation, "TTL");

    // Control: a key without expiry has TTL -1.
    let report = run(&build(&journey(
        "redis-ttl",
        &[redis_step(
            REDIS,
            "ttl",
            &q(&format!("TTL {plain}")),
            "    expect: { scalar: { gt: 0 } }\n",
        )],
    )))
    .await;
    let e = failure(&report);
    assert_eq!(e.kind, ErrorKind::Assertion, "{e:?}");
    assert!(
        e.message.contains("scalar: expected > 0, got -1"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn redis_unreachable_port_is_connect() {
    let port = refused_addr().port();
    let report = run(&build(&journey(
        "redis-refused",
        &[redis_step(
            &format!("redis://127.0.0.1:{port}"),
            "ping",
            "PING",
            "",
        )],
    )))
    .await;
    let e = failure(&report);
    assert_eq!(
        (e.kind, e.phase),
        (ErrorKind::Connect, Some(Phase::Connect)),
        "{e:?}"
    );
    assert!(
        e.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        e.message
    );
}

/// Against the default user, which has no password, `AUTH wrong` is refused;
/// against an ACL user with a password, the wrong one is `WRONGPASS`. Both
/// are credential failures: `auth`.
#[tokio::test]
async fn redis_wrong_password_is_auth() {
    let mut con = redis().await;
    let user = unique("vantage_acl");
    let _cleanup = RedisCleanup(vec![vec!["ACL".into(), "DELUSER".into(), user.clone()]]);
    redis_cmd(
        &mut con,
        &["ACL", "SETUSER", &user, "on", ">right-pw", "+ping"],
    )
    .await;
    let ping = |url: &str| journey("redis-auth", &[redis_step(url, "ping", "PING", "")]);

    // Control: the ACL user with the right password.
    assert_passed(
        &run(&build(&ping(&format!(
            "redis://{user}:right-pw@127.0.0.1:6379"
        ))))
        .await,
    );

    for url in [
        format!("redis://{user}:wrong-pw@127.0.0.1:6379"),
        "redis://:wrong-pw@127.0.0.1:6379".to_owned(),
    ] {
        let report = run(&build(&ping(&url))).await;
        let e = failure(&report);
        assert_eq!(
            (e.kind, e.phase),
            (ErrorKind::Auth, Some(Phase::Connect)),
            "{url}: {e:?}"
        );
        assert!(!e.message.contains("wrong-pw"), "{}", e.message);
    }
}

/// A blocking command that waits one second for an empty list must be
/// allowed its second: only the step's deadline (5s) bounds it.
#[tokio::test]
async fn redis_blocking_command_runs_until_its_own_timeout() {
    let key = unique("queue");
    let _cleanup = RedisCleanup(vec![vec!["DEL".into(), key.clone()]]);
    let (report, took) = timed_run(&build(&journey(
        "redis-blpop",
        &[redis_step(
            REDIS,
            "blpop",
            &format!("[BLPOP, {key}, \"1\"]"),
            "",
        )],
    )))
    .await;
    assert_passed(&report);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "BLPOP with a 1s timeout took {took:?}"
    );
}
