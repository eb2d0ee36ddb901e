//! Redis steps: one command (PING, GET, TTL, LLEN, ...) on a fresh
//! connection, its reply as JSON for expectations.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Ctx, ProbeError};
use crate::journey::Template;
use crate::report::{CallDetail, DbCall, ErrorKind, Phase};

#[derive(Debug)]
pub struct RedisCheck {
    pub client: redis::Client,
    pub server_address: String,
    pub server_port: u16,
    pub database: i64,
    /// The command name, upper-case.
    pub command: String,
    pub args: Vec<Template>,
    pub connect_timeout: Duration,
}

#[derive(Debug)]
pub struct RedisResult {
    pub reply: Value,
    pub elapsed: Duration,
}

/// A reply as JSON: strings, integers, `null`, arrays; a status as its text.
pub fn to_json(v: &redis::Value) -> Value {
    use redis::Value as R;
    match v {
        R::Nil => Value::Null,
        R::Int(i) => json!(i),
        R::BulkString(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        R::SimpleString(s) => Value::String(s.clone()),
        R::Okay => Value::String("OK".into()),
        R::Array(a) | R::Set(a) => Value::Array(a.iter().map(to_json).collect()),
        R::Map(m) => Value::Array(
            m.iter()
                .map(|(k, v)| Value::Array(vec![to_json(k), to_json(v)]))
                .collect(),
        ),
        R::Double(d) => json!(d),
        R::Boolean(b) => json!(b),
        R::VerbatimString { text, .. } => Value::String(text.clone()),
        other => Value::String(format!("{other:?}")),
    }
}

pub async fn run(check: &RedisCheck, ctx: Ctx<'_>) -> Result<RedisResult, ProbeError> {
    let start = tokio::time::Instant::now();
    ctx.rec.begin_call(CallDetail::Db(DbCall {
        system: "redis",
        operation: check.command.clone(),
        // Arguments are values; only the command name is exported.
        query_text: None,
        namespace: Some(check.database.to_string()),
        server_address: check.server_address.clone(),
        server_port: check.server_port,
        response_status: None,
        rows: None,
    }));
    let result = command(check, ctx.vars, ctx.deadline, &mut *ctx.rec).await;
    if let (Err((_, Some(code))), Some(CallDetail::Db(d))) = (&result, ctx.rec.detail_mut()) {
        d.response_status = Some(code.clone());
    }
    ctx.rec.end_call(
        result
            .as_ref()
            .err()
            .map(|(e, _)| e.kind.as_str().into_owned()),
    );
    result.map_err(|(e, _)| e).map(|reply| RedisResult {
        reply,
        elapsed: start.elapsed(),
    })
}

async fn command(
    check: &RedisCheck,
    vars: &crate::journey::Vars,
    deadline: tokio::time::Instant,
    rec: &mut super::Recorder,
) -> Result<Value, (ProbeError, Option<String>)> {
    let target = format!("{}:{}", check.server_address, check.server_port);
    let mut args = Vec::with_capacity(check.args.len());
    for a in &check.args {
        args.push(
            a.render(vars)
                .map_err(|e| (ProbeError::new(ErrorKind::InvalidRequest, None, e), None))?,
        );
    }
    rec.enter(Phase::Connect);
    let config =
        redis::AsyncConnectionConfig::new().set_connection_timeout(Some(check.connect_timeout));
    let mut con = check
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| {
            (
                classify(&e, Phase::Connect, &target),
                e.code().map(|c| c.to_string()),
            )
        })?;
    // The client's own response timeout (500ms by default) would cut a
    // BLPOP short: the step deadline is the one limit.
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    con.set_response_timeout(left + Duration::from_millis(100));
    rec.enter(Phase::Query);
    let mut cmd = redis::cmd(&check.command);
    for a in &args {
        cmd.arg(a);
    }
    let reply: redis::Value = cmd.query_async(&mut con).await.map_err(|e| {
        (
            classify(&e, Phase::Query, &target),
            e.code().map(|c| c.to_string()),
        )
    })?;
    if let redis::Value::ServerError(e) = &reply {
        return Err((
            ProbeError::new(
                ErrorKind::Query,
                Some(Phase::Query),
                format!("{target} answered an error: {e:?}"),
            ),
            Some(e.code().to_string()),
        ));
    }
    Ok(to_json(&reply))
}

fn classify(e: &redis::RedisError, phase: Phase, target: &str) -> ProbeError {
    use redis::ErrorKind as K;
    let kind = match e.kind() {
        K::AuthenticationFailed => ErrorKind::Auth,
        K::Io if e.is_timeout() => ErrorKind::Timeout,
        K::Io if phase == Phase::Connect => ErrorKind::Connect,
        K::Io => ErrorKind::Protocol,
        _ if e.code() == Some("NOAUTH") || e.code() == Some("WRONGPASS") => ErrorKind::Auth,
        _ if phase == Phase::Connect && e.is_connection_refusal() => ErrorKind::Connect,
        _ => ErrorKind::Query,
    };
    ProbeError::new(kind, Some(phase), format!("redis at {target}: {e}"))
}
