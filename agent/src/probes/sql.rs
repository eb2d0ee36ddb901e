//! SQL steps for PostgreSQL and MySQL/MariaDB: one connection per run,
//! always closed; parameters always bound; read-only unless the step opts in
//! to writes; a `rollback` mode for write checks that must leave nothing
//! behind; and a statement timeout enforced by the server itself, so a slow
//! query is cancelled there and not merely abandoned.
//!
//! The statement runs in a transaction (`READ ONLY` by default) as a
//! prepared statement, which also means a single statement: an extracted
//! value bound as a parameter can never change the SQL.

use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sqlx::{Column, ConnectOptions, Connection, Row, TypeInfo, ValueRef};
use tokio::time::Instant;

use super::{Ctx, ProbeError};
use crate::journey::{Template, Vars};
use crate::report::{CallDetail, DbCall, ErrorKind, Phase};

/// Rows kept from a result; a check needs a few, never a table dump.
pub const DEFAULT_MAX_ROWS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Postgres,
    Mysql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `BEGIN READ ONLY`; a write fails the step.
    ReadOnly,
    /// Writes are committed.
    Write,
    /// Writes happen and are rolled back: the check leaves nothing behind.
    Rollback,
}

/// A parameter: typed from the YAML, or text from a template.
#[derive(Debug)]
pub enum Param {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Template),
}

#[derive(Debug)]
pub enum ConnectOpts {
    Postgres(sqlx::postgres::PgConnectOptions),
    Mysql(sqlx::mysql::MySqlConnectOptions),
}

#[derive(Debug)]
pub struct SqlCheck {
    pub driver: Driver,
    pub connect: ConnectOpts,
    pub server_address: String,
    pub server_port: u16,
    pub database: Option<String>,
    pub query: String,
    /// `SELECT`, `INSERT`, ... (semconv `db.operation.name`).
    pub operation: String,
    pub params: Vec<Param>,
    pub mode: Mode,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    pub max_rows: usize,
}

#[derive(Debug)]
pub struct SqlResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// More rows existed than `max_rows`.
    pub truncated: bool,
    pub elapsed: Duration,
}

impl SqlResult {
    /// Rows as JSON objects, for JSONPath expectations.
    pub fn document(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    for (c, v) in self.columns.iter().zip(r) {
                        m.insert(c.clone(), v.clone());
                    }
                    Value::Object(m)
                })
                .collect(),
        )
    }

    pub fn scalar(&self) -> Option<Value> {
        self.rows.first().and_then(|r| r.first()).cloned()
    }
}

/// Parses a DSN at build time. Errors never echo the DSN (it holds a password).
pub fn parse_dsn(
    driver: Driver,
    dsn: &str,
) -> Result<(ConnectOpts, String, u16, Option<String>), String> {
    match driver {
        Driver::Postgres => {
            let o = sqlx::postgres::PgConnectOptions::from_str(dsn)
                .map_err(|e| format!("invalid PostgreSQL DSN: {}", scrub(&e.to_string(), dsn)))?;
            let (host, port, db) = (
                o.get_host().to_string(),
                o.get_port(),
                o.get_database().map(str::to_string),
            );
            // Statement logging would put query text in our logs.
            let o = o.disable_statement_logging();
            Ok((ConnectOpts::Postgres(o), host, port, db))
        }
        Driver::Mysql => {
            let o = sqlx::mysql::MySqlConnectOptions::from_str(dsn)
                .map_err(|e| format!("invalid MySQL DSN: {}", scrub(&e.to_string(), dsn)))?;
            let (host, port, db) = (
                o.get_host().to_string(),
                o.get_port(),
                o.get_database().map(str::to_string),
            );
            let o = o.disable_statement_logging();
            Ok((ConnectOpts::Mysql(o), host, port, db))
        }
    }
}

fn scrub(msg: &str, dsn: &str) -> String {
    if dsn.is_empty() {
        msg.to_string()
    } else {
        msg.replace(dsn, "***")
    }
}

pub async fn run(check: &SqlCheck, ctx: Ctx<'_>) -> Result<SqlResult, ProbeError> {
    let start = Instant::now();
    let system = match (check.driver, &check.connect) {
        (Driver::Postgres, _) => "postgresql",
        (Driver::Mysql, _) => "mysql",
    };
    ctx.rec.begin_call(CallDetail::Db(DbCall {
        system,
        operation: check.operation.clone(),
        query_text: (!check.params.is_empty()).then(|| check.query.clone()),
        namespace: check.database.clone(),
        server_address: check.server_address.clone(),
        server_port: check.server_port,
        response_status: None,
        rows: None,
    }));
    let result = match &check.connect {
        ConnectOpts::Postgres(o) => run_pg(check, o, ctx.vars, ctx.deadline, &mut *ctx.rec).await,
        ConnectOpts::Mysql(o) => run_mysql(check, o, ctx.vars, ctx.deadline, &mut *ctx.rec).await,
    };
    if let Some(CallDetail::Db(d)) = ctx.rec.detail_mut() {
        match &result {
            Ok(r) => d.rows = Some(r.len() as u64),
            Err((_, code)) => d.response_status = code.clone(),
        }
    }
    ctx.rec.end_call(
        result
            .as_ref()
            .err()
            .map(|(e, _)| e.kind.as_str().into_owned()),
    );
    let (columns, rows, truncated) = match result {
        Ok(r) => r.into_parts(),
        Err((e, _)) => return Err(e),
    };
    Ok(SqlResult {
        columns,
        rows,
        truncated,
        elapsed: start.elapsed(),
    })
}

struct Fetched {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    truncated: bool,
}

impl Fetched {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn into_parts(self) -> (Vec<String>, Vec<Vec<Value>>, bool) {
        (self.columns, self.rows, self.truncated)
    }
}

/// An error with the server's SQLSTATE when there is one.
type Failed = (ProbeError, Option<String>);

/// How long the server may run the statement: the configured limit, but
/// never past the step's deadline (less a margin so the server's own
/// cancellation, with its clear error, arrives before ours).
fn server_timeout(check: &SqlCheck, deadline: Instant) -> Duration {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(Duration::from_millis(50));
    check
        .statement_timeout
        .min(left)
        .max(Duration::from_millis(1))
}

/// Why the server's limit was what it was, for the timeout message.
fn limit_text(check: &SqlCheck, sent: Duration) -> String {
    if sent < check.statement_timeout {
        format!(
            "the step deadline (statement limit {}) was reached",
            humantime::format_duration(Duration::from_millis(sent.as_millis() as u64))
        )
    } else {
        format!(
            "statement timeout {} reached",
            humantime::format_duration(check.statement_timeout)
        )
    }
}

fn classify(e: sqlx::Error, phase: Phase, check: &SqlCheck) -> Failed {
    classify_with(e, phase, check, check.statement_timeout)
}

fn classify_with(e: sqlx::Error, phase: Phase, check: &SqlCheck, sent: Duration) -> Failed {
    let target = format!("{}:{}", check.server_address, check.server_port);
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string());
            let msg = db.message().to_string();
            let (kind, text) = match code.as_deref() {
                Some("28P01" | "28000") => (
                    ErrorKind::Auth,
                    format!("authentication failed at {target}: {msg}"),
                ),
                // PostgreSQL statement_timeout; MariaDB max_statement_time; MySQL max_execution_time.
                Some("57014" | "70100" | "HY000") if is_timeout(&msg) => (
                    ErrorKind::Timeout,
                    format!(
                        "{} during the query phase; the server cancelled the statement ({msg})",
                        limit_text(check, sent)
                    ),
                ),
                Some("3D000") => (
                    ErrorKind::Query,
                    format!("database does not exist at {target}: {msg}"),
                ),
                Some("25006") => (
                    ErrorKind::Query,
                    format!(
                        "the statement writes but the step is read-only (set `write: true` or `rollback: true`): {msg}"
                    ),
                ),
                _ => (
                    ErrorKind::Query,
                    format!("the server rejected the statement: {msg}"),
                ),
            };
            (ProbeError::new(kind, Some(phase), text), code)
        }
        sqlx::Error::Io(io) => {
            let kind = if phase == Phase::Connect {
                ErrorKind::Connect
            } else {
                ErrorKind::Protocol
            };
            (
                ProbeError::new(
                    kind,
                    Some(phase),
                    format!("connection to {target} failed: {io}"),
                ),
                None,
            )
        }
        sqlx::Error::Tls(t) => (
            ProbeError::new(
                ErrorKind::Tls,
                Some(Phase::Tls),
                format!("TLS with {target} failed: {t}"),
            ),
            None,
        ),
        other => {
            let text = other.to_string();
            // sqlx reports a refused or reset socket during connect in prose.
            let kind = if phase == Phase::Connect {
                ErrorKind::Connect
            } else {
                ErrorKind::Protocol
            };
            (
                ProbeError::new(kind, Some(phase), format!("{target}: {text}")),
                None,
            )
        }
    }
}

fn is_timeout(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("statement timeout")
        || m.contains("max_statement_time")
        || m.contains("max_execution_time")
        || m.contains("canceling statement")
}

fn connect_timeout_error(check: &SqlCheck) -> Failed {
    (
        ProbeError::new(
            ErrorKind::Timeout,
            Some(Phase::Connect),
            format!(
                "connect timeout {} reached connecting to {}:{}",
                humantime::format_duration(check.connect_timeout),
                check.server_address,
                check.server_port
            ),
        ),
        None,
    )
}

fn render_text(t: &Template, vars: &Vars) -> Result<String, Failed> {
    t.render(vars)
        .map_err(|e| (ProbeError::new(ErrorKind::InvalidRequest, None, e), None))
}

macro_rules! bind_all {
    ($q:expr, $params:expr, $vars:expr) => {{
        let mut q = $q;
        for p in $params {
            q = match p {
                Param::Null => q.bind(None::<String>),
                Param::Bool(b) => q.bind(*b),
                Param::Int(i) => q.bind(*i),
                Param::Float(f) => q.bind(*f),
                Param::Text(t) => q.bind(render_text(t, $vars)?),
            };
        }
        q
    }};
}

/// Connects within the connect timeout (both drivers).
macro_rules! connect {
    ($conn:ty, $opts:expr, $check:expr) => {
        match tokio::time::timeout($check.connect_timeout, <$conn>::connect_with($opts)).await {
            Err(_) => return Err(connect_timeout_error($check)),
            Ok(r) => r.map_err(|e| classify(e, Phase::Connect, $check))?,
        }
    };
}

/// Runs the statement in the open transaction, commits or rolls it back, and
/// closes the connection (both drivers). A truncated result is abandoned with
/// its connection: the server rolls the transaction back when the socket
/// closes.
macro_rules! run_and_close {
    ($conn:expr, $check:expr, $vars:expr, $sent:expr, $decode:expr) => {{
        let q = bind_all!(
            sqlx::query(sqlx::AssertSqlSafe($check.query.clone())),
            &$check.params,
            $vars
        );
        let fetched = fetch_rows(q.fetch(&mut $conn), $check.max_rows, $decode)
            .await
            .map_err(|e| classify_with(e, Phase::Query, $check, $sent))?;
        if !fetched.truncated {
            let end = if $check.mode == Mode::Write {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            sqlx::raw_sql(end)
                .execute(&mut $conn)
                .await
                .map_err(|e| classify(e, Phase::Query, $check))?;
            let _ = $conn.close().await;
        }
        Ok(fetched)
    }};
}

async fn run_pg(
    check: &SqlCheck,
    opts: &sqlx::postgres::PgConnectOptions,
    vars: &Vars,
    deadline: Instant,
    rec: &mut super::Recorder,
) -> Result<Fetched, Failed> {
    rec.enter(Phase::Connect);
    let mut conn = connect!(sqlx::PgConnection, opts, check);
    rec.enter(Phase::Query);
    let sent = server_timeout(check, deadline);
    let setup = format!("SET statement_timeout = {}", sent.as_millis());
    let begin = match check.mode {
        Mode::ReadOnly => "BEGIN READ ONLY",
        Mode::Write | Mode::Rollback => "BEGIN",
    };
    let result = async {
        sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
            .execute(&mut conn)
            .await?;
        sqlx::raw_sql(begin).execute(&mut conn).await?;
        Ok::<(), sqlx::Error>(())
    }
    .await;
    result.map_err(|e| classify(e, Phase::Query, check))?;
    run_and_close!(conn, check, vars, sent, decode_pg)
}

async fn run_mysql(
    check: &SqlCheck,
    opts: &sqlx::mysql::MySqlConnectOptions,
    vars: &Vars,
    deadline: Instant,
    rec: &mut super::Recorder,
) -> Result<Fetched, Failed> {
    rec.enter(Phase::Connect);
    let mut conn = connect!(sqlx::MySqlConnection, opts, check);
    rec.enter(Phase::Query);
    let sent = server_timeout(check, deadline);
    // MariaDB's limit is in seconds (fractional); MySQL's is in milliseconds.
    let mariadb = format!("SET SESSION max_statement_time = {:.3}", sent.as_secs_f64());
    if sqlx::raw_sql(sqlx::AssertSqlSafe(mariadb))
        .execute(&mut conn)
        .await
        .is_err()
    {
        let mysql = format!("SET SESSION max_execution_time = {}", sent.as_millis());
        sqlx::raw_sql(sqlx::AssertSqlSafe(mysql))
            .execute(&mut conn)
            .await
            .map_err(|e| classify(e, Phase::Query, check))?;
    }
    let begin = match check.mode {
        Mode::ReadOnly => "START TRANSACTION READ ONLY",
        Mode::Write | Mode::Rollback => "START TRANSACTION",
    };
    sqlx::raw_sql(begin)
        .execute(&mut conn)
        .await
        .map_err(|e| classify(e, Phase::Query, check))?;
    run_and_close!(conn, check, vars, sent, decode_mysql)
}

async fn fetch_rows<R, S>(
    mut stream: S,
    max_rows: usize,
    decode: fn(&R, usize) -> Value,
) -> Result<Fetched, sqlx::Error>
where
    R: Row,
    S: futures_util::Stream<Item = Result<R, sqlx::Error>> + Unpin,
{
    use futures_util::StreamExt;
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    let mut truncated = false;
    while let Some(row) = stream.next().await {
        let row = row?;
        if columns.is_empty() {
            columns = row.columns().iter().map(|c| c.name().to_string()).collect();
        }
        if rows.len() >= max_rows {
            truncated = true;
            break;
        }
        rows.push((0..row.len()).map(|i| decode(&row, i)).collect());
    }
    Ok(Fetched {
        columns,
        rows,
        truncated,
    })
}

/// A column value as JSON, by the server's type name. Unknown types show as
/// `"<TYPE>"`: cast in SQL (`::text`, `CAST(x AS CHAR)`) to compare them.
fn decode_pg(row: &sqlx::postgres::PgRow, i: usize) -> Value {
    let Some(ty) = type_name(row, i) else {
        return Value::Null;
    };
    let v: Option<Value> = match ty.as_str() {
        "INT2" => row.try_get::<i16, _>(i).ok().map(|v| json!(v)),
        "INT4" => row.try_get::<i32, _>(i).ok().map(|v| json!(v)),
        "INT8" => row.try_get::<i64, _>(i).ok().map(|v| json!(v)),
        "FLOAT4" => row.try_get::<f32, _>(i).ok().map(|v| json!(v)),
        "FLOAT8" => row.try_get::<f64, _>(i).ok().map(|v| json!(v)),
        "BOOL" => row.try_get::<bool, _>(i).ok().map(|v| json!(v)),
        "JSON" | "JSONB" => row.try_get::<Value, _>(i).ok(),
        "UUID" => row
            .try_get::<uuid::Uuid, _>(i)
            .ok()
            .map(|v| json!(v.to_string())),
        "TIMESTAMPTZ" => row
            .try_get::<chrono::DateTime<chrono::Utc>, _>(i)
            .ok()
            .map(|v| json!(v.to_rfc3339())),
        "TIMESTAMP" => row
            .try_get::<chrono::NaiveDateTime, _>(i)
            .ok()
            .map(|v| json!(v.to_string())),
        "DATE" => row
            .try_get::<chrono::NaiveDate, _>(i)
            .ok()
            .map(|v| json!(v.to_string())),
        _ => None,
    };
    v.or_else(|| row.try_get::<String, _>(i).ok().map(Value::String))
        .unwrap_or_else(|| Value::String(format!("<{ty}>")))
}

fn decode_mysql(row: &sqlx::mysql::MySqlRow, i: usize) -> Value {
    let Some(ty) = type_name(row, i) else {
        return Value::Null;
    };
    let v: Option<Value> = match ty.as_str() {
        "BOOLEAN" => row.try_get::<bool, _>(i).ok().map(|v| json!(v)),
        "TINYINT" => row.try_get::<i8, _>(i).ok().map(|v| json!(v)),
        "SMALLINT" => row.try_get::<i16, _>(i).ok().map(|v| json!(v)),
        "INT" | "MEDIUMINT" => row.try_get::<i32, _>(i).ok().map(|v| json!(v)),
        "BIGINT" => row.try_get::<i64, _>(i).ok().map(|v| json!(v)),
        t if t.ends_with(" UNSIGNED") => row.try_get::<u64, _>(i).ok().map(|v| json!(v)),
        "FLOAT" => row.try_get::<f32, _>(i).ok().map(|v| json!(v)),
        "DOUBLE" => row.try_get::<f64, _>(i).ok().map(|v| json!(v)),
        "JSON" => row.try_get::<Value, _>(i).ok(),
        "DATETIME" => row
            .try_get::<chrono::NaiveDateTime, _>(i)
            .ok()
            .map(|v| json!(v.to_string())),
        "TIMESTAMP" => row
            .try_get::<chrono::DateTime<chrono::Utc>, _>(i)
            .ok()
            .map(|v| json!(v.to_rfc3339())),
        "DATE" => row
            .try_get::<chrono::NaiveDate, _>(i)
            .ok()
            .map(|v| json!(v.to_string())),
        _ => None,
    };
    v.or_else(|| row.try_get::<String, _>(i).ok().map(Value::String))
        .unwrap_or_else(|| Value::String(format!("<{ty}>")))
}

/// The column's type name, or `None` for SQL NULL.
fn type_name<R: Row>(row: &R, i: usize) -> Option<String>
where
    usize: sqlx::ColumnIndex<R>,
{
    let raw = row.try_get_raw(i).ok()?;
    if raw.is_null() {
        return None;
    }
    Some(raw.type_info().name().to_ascii_uppercase())
}
