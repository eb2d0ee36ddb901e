//! The PostgreSQL store: a small connection pool whose sessions use one schema (the
//! `search_path`), the tables created at startup when missing, and one parameterised
//! statement or short transaction per call. A login adds a row to `movieguru_sessions`;
//! preferences are one `jsonb` row per user; history rows are pruned to the last
//! [`HISTORY_LEN`] on write and limited to them on read.
//!
//! Values from requests are always bound parameters. The only SQL built from text is
//! `CREATE SCHEMA`, whose name [`SchemaName`] has already restricted to `[a-z0-9_]`. This
//! module never logs or returns the database URL: it may carry a password.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Connection as _, Postgres, Transaction};

use super::{HISTORY_LEN, Message, PreferenceList, Profile, Role, StoreError};

/// The schema used when none is given.
pub const DEFAULT_SCHEMA: &str = "public";
/// A demo serves a handful of probes; more connections would only hide a slow database.
const MAX_CONNECTIONS: u32 = 4;
/// How long a request waits for a free connection before it is answered 500.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// The server cancels any statement running longer, so a stuck query cannot hold a
/// connection (and a request) forever.
const STATEMENT_TIMEOUT: &str = "5s";
/// Login rows kept per user; older ones are deleted on login so the table stays small
/// under a probe that logs in every few seconds.
const SESSIONS_KEPT: i64 = 100;
/// Serialises table creation between backends starting at the same time on one database
/// (`CREATE TABLE IF NOT EXISTS` alone can still collide). Any constant works.
const MIGRATION_LOCK: i64 = 0x6d6f_7669_6567_7572; // "movieguru"

const CREATE_TABLES: &str = r"
CREATE TABLE IF NOT EXISTS movieguru_users (
    email        text PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS movieguru_sessions (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL REFERENCES movieguru_users (email) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS movieguru_sessions_by_email ON movieguru_sessions (email, id);
CREATE TABLE IF NOT EXISTS movieguru_preferences (
    email      text PRIMARY KEY REFERENCES movieguru_users (email) ON DELETE CASCADE,
    likes      jsonb NOT NULL,
    dislikes   jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS movieguru_history (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL REFERENCES movieguru_users (email) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('user', 'agent')),
    content    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS movieguru_history_by_email ON movieguru_history (email, id);
";

/// A PostgreSQL schema name the store may create and use: 1 to 63 lowercase ASCII
/// letters, digits or `_`, not starting with a digit. Such a name needs no quoting, so it
/// means the same in `search_path`, in SQL and to a person typing it into `psql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for SchemaName {
    fn default() -> Self {
        SchemaName(DEFAULT_SCHEMA.to_owned())
    }
}

impl FromStr for SchemaName {
    type Err = StoreError;

    fn from_str(name: &str) -> Result<Self, StoreError> {
        let valid = (1..=63).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(SchemaName(name.to_owned()))
        } else {
            Err(StoreError::InvalidSchema(name.to_owned()))
        }
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the PostgreSQL store keeps its tables.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/database?...`; never logged.
    pub url: String,
    /// Created if missing, and the only schema the store's sessions see.
    pub schema: SchemaName,
}

impl PgSettings {
    pub fn new(url: impl Into<String>, schema: SchemaName) -> Self {
        PgSettings {
            url: url.into(),
            schema,
        }
    }
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &"<hidden>")
            .field("schema", &self.schema)
            .finish()
    }
}

/// The store on a PostgreSQL connection pool.
pub struct PgStore {
    pool: PgPool,
    schema: SchemaName,
    /// `host:port/database`, without credentials, for logs.
    target: String,
}

impl PgStore {
    /// Connects once right away (so a wrong URL or a database that is down fails at
    /// startup, with the server's own reason), creates the schema and tables if they are
    /// missing, and opens the pool.
    pub async fn connect(settings: &PgSettings) -> Result<Self, StoreError> {
        if !["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| settings.url.starts_with(scheme))
        {
            return Err(StoreError::InvalidUrl(
                "it must start with postgres:// or postgresql://".to_owned(),
            ));
        }
        let options = PgConnectOptions::from_str(&settings.url)
            // sqlx's parse errors describe the problem without echoing the URL.
            .map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let options = options.application_name("vantage-demo").options([
            ("search_path", settings.schema.as_str()),
            ("statement_timeout", STATEMENT_TIMEOUT),
        ]);
        // A pool retries a failing connect until its acquire timeout and then reports only
        // the timeout; a single connection reports why (refused, auth, no such database).
        let mut conn = tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Connect(sqlx::Error::PoolTimedOut))?
            .map_err(StoreError::Connect)?;
        let created = create_tables(&mut conn, &settings.schema).await;
        let _ = conn.close().await;
        created.map_err(|error| StoreError::Migrate {
            schema: settings.schema.to_string(),
            error,
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(PgStore {
            pool,
            schema: settings.schema.clone(),
            target,
        })
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// `host:port/database`, without credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub(super) async fn login(&self, user: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        touch_user(&mut tx, user).await?;
        sqlx::query("INSERT INTO movieguru_sessions (email) VALUES ($1)")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM movieguru_sessions WHERE email = $1 AND id <= (
                 SELECT id FROM movieguru_sessions WHERE email = $1
                 ORDER BY id DESC OFFSET $2 LIMIT 1)",
        )
        .bind(user)
        .bind(SESSIONS_KEPT)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn preferences(&self, user: &str) -> Result<Profile, StoreError> {
        let row: Option<(Json<PreferenceList>, Json<PreferenceList>)> =
            sqlx::query_as("SELECT likes, dislikes FROM movieguru_preferences WHERE email = $1")
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .map(|(Json(likes), Json(dislikes))| Profile { likes, dislikes })
            .unwrap_or_default())
    }

    pub(super) async fn set_preferences(
        &self,
        user: &str,
        profile: &Profile,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        touch_user(&mut tx, user).await?;
        sqlx::query(
            "INSERT INTO movieguru_preferences (email, likes, dislikes) VALUES ($1, $2, $3)
             ON CONFLICT (email) DO UPDATE
             SET likes = EXCLUDED.likes, dislikes = EXCLUDED.dislikes, updated_at = now()",
        )
        .bind(user)
        .bind(Json(&profile.likes))
        .bind(Json(&profile.dislikes))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn history(&self, user: &str) -> Result<Vec<Message>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT role, content FROM (
                 SELECT id, role, content FROM movieguru_history WHERE email = $1
                 ORDER BY id DESC LIMIT $2) AS recent
             ORDER BY id",
        )
        .bind(user)
        .bind(HISTORY_LEN as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(role, content)| Ok(Message::new(role.parse::<Role>()?, content)))
            .collect()
    }

    pub(super) async fn clear_history(&self, user: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM movieguru_history WHERE email = $1")
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn record_chat(
        &self,
        user: &str,
        messages: &[Message],
    ) -> Result<Profile, StoreError> {
        let mut tx = self.pool.begin().await?;
        touch_user(&mut tx, user).await?;
        for message in messages {
            sqlx::query("INSERT INTO movieguru_history (email, role, content) VALUES ($1, $2, $3)")
                .bind(user)
                .bind(message.role.as_str())
                .bind(&message.content)
                .execute(&mut *tx)
                .await?;
        }
        // Reads only ever see the last HISTORY_LEN; older rows would just pile up.
        sqlx::query(
            "DELETE FROM movieguru_history WHERE email = $1 AND id <= (
                 SELECT id FROM movieguru_history WHERE email = $1
                 ORDER BY id DESC OFFSET $2 LIMIT 1)",
        )
        .bind(user)
        .bind(HISTORY_LEN as i64)
        .execute(&mut *tx)
        .await?;
        let row: Option<(Json<PreferenceList>, Json<PreferenceList>)> =
            sqlx::query_as("SELECT likes, dislikes FROM movieguru_preferences WHERE email = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(row
            .map(|(Json(likes), Json(dislikes))| Profile { likes, dislikes })
            .unwrap_or_default())
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the user, or marks an existing one as just seen.
async fn touch_user(tx: &mut Transaction<'_, Postgres>, user: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO movieguru_users (email) VALUES ($1)
         ON CONFLICT (email) DO UPDATE SET last_seen_at = now()",
    )
    .bind(user)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates the schema (when missing) and the tables, under a transaction-scoped advisory
/// lock so that backends starting together do not race.
async fn create_tables(conn: &mut PgConnection, schema: &SchemaName) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    // Checked first because `CREATE SCHEMA IF NOT EXISTS` needs the CREATE privilege on
    // the database even when the schema exists, and a user may have only the schema.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema.as_str())
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        // An identifier cannot be a bound parameter. `SchemaName` admits only
        // `[a-z0-9_]`, so the quoted name cannot end the identifier early.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(&mut *tx)
            .await?;
    }
    // The connection's search_path names this schema, so unqualified names land in it.
    sqlx::raw_sql(CREATE_TABLES).execute(&mut *tx).await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_lowercase_identifiers() {
        for good in ["public", "_x", "demo_test_42", &"a".repeat(63)] {
            assert_eq!(
                good.parse::<SchemaName>().map(|s| s.0).ok(),
                Some(good.into())
            );
        }
        for bad in [
            "",
            "Public",
            "9lives",
            "a-b",
            "a b",
            "a\"b",
            "x;drop",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<SchemaName>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn settings_never_show_the_url() {
        let settings = PgSettings::new("postgres://u:hunter2@db/x", SchemaName::default());
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
