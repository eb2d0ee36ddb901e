//! Where the backend keeps users, logins, preferences and chat history: in memory (the
//! default, bounded, gone on restart) or in PostgreSQL (`--database-url`). [`Store`] is the
//! one type handlers call, and both variants answer the same calls with the same results,
//! so a handler never knows which one it has.
//!
//! This module owns the data model both variants share. It knows nothing of HTTP, fault
//! injection or counters, and never decides that a call should fail: a handler draws its
//! injected fault first and only then touches the store, so an injected failure writes
//! nothing.

mod memory;
mod postgres;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use memory::{MAX_USERS, MemoryStore};
pub use postgres::{DEFAULT_SCHEMA, PgSettings, PgStore, SchemaName};

/// Messages returned by `GET /history`: the most recent ones, oldest first.
pub const HISTORY_LEN: usize = 10;

/// One entry of the chat history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// Who wrote a message. Movie Guru also has `system`, which this demo never writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Agent,
}

impl Role {
    /// The name in the API and in the database's `role` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "user" => Ok(Role::User),
            "agent" => Ok(Role::Agent),
            other => Err(StoreError::UnknownRole(other.to_owned())),
        }
    }
}

/// A user's profile in Movie Guru's shape. Never sent as `null`: the real home page
/// crashes on that, so an unknown user gets empty lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub likes: PreferenceList,
    pub dislikes: PreferenceList,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreferenceList {
    pub genres: Vec<String>,
    pub actors: Vec<String>,
    pub director: Vec<String>,
    pub other: Vec<String>,
}

/// Why the store could not be opened or could not answer. The messages never hold the
/// database URL (it may carry a password); handlers log them and answer a bare 500. Each
/// message already includes its cause, so none is chained as a `source` as well.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "schema name {0:?} must be 1 to 63 lowercase ASCII letters, digits or '_', not \
         starting with a digit"
    )]
    InvalidSchema(String),
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    #[error("cannot create the tables in schema {schema:?}: {error}")]
    Migrate { schema: String, error: sqlx::Error },
    #[error("database call failed: {0}")]
    Database(sqlx::Error),
    #[error("the database holds a chat role {0:?} that this backend does not know")]
    UnknownRole(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

/// The backend's storage, in memory or in PostgreSQL. Every call takes the user's
/// identity (the `user` header, an e-mail address in Movie Guru) as given.
pub enum Store {
    Memory(MemoryStore),
    Postgres(PgStore),
}

impl Default for Store {
    fn default() -> Self {
        Store::Memory(MemoryStore::default())
    }
}

impl Store {
    /// An empty in-memory store.
    pub fn memory() -> Self {
        Store::default()
    }

    /// Connects to PostgreSQL and creates the schema and tables if they are missing.
    pub async fn postgres(settings: &PgSettings) -> Result<Self, StoreError> {
        PgStore::connect(settings).await.map(Store::Postgres)
    }

    /// `memory` or `postgres`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Records a login: creates the user if needed and adds a session.
    pub async fn login(&self, user: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.login(user);
                Ok(())
            }
            Store::Postgres(p) => p.login(user).await,
        }
    }

    /// The user's profile; empty lists for an unknown user.
    pub async fn preferences(&self, user: &str) -> Result<Profile, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.preferences(user)),
            Store::Postgres(p) => p.preferences(user).await,
        }
    }

    /// Replaces the user's profile, creating the user if needed.
    pub async fn set_preferences(&self, user: &str, profile: &Profile) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.set_preferences(user, profile);
                Ok(())
            }
            Store::Postgres(p) => p.set_preferences(user, profile).await,
        }
    }

    /// The last [`HISTORY_LEN`] messages, oldest first; empty for an unknown user.
    pub async fn history(&self, user: &str) -> Result<Vec<Message>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.history(user)),
            Store::Postgres(p) => p.history(user).await,
        }
    }

    /// Forgets the user's messages; nothing happens for an unknown user.
    pub async fn clear_history(&self, user: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.clear_history(user);
                Ok(())
            }
            Store::Postgres(p) => p.clear_history(user).await,
        }
    }

    /// Appends one chat exchange to the history, creating the user if needed, and returns
    /// the user's profile (a chat answer carries it), all in one step.
    pub async fn record_chat(
        &self,
        user: &str,
        messages: &[Message],
    ) -> Result<Profile, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.record_chat(user, messages)),
            Store::Postgres(p) => p.record_chat(user, messages).await,
        }
    }

    /// Closes the database connections, waiting for calls in flight. A no-op in memory.
    pub async fn close(&self) {
        if let Store::Postgres(p) = self {
            p.close().await;
        }
    }
}
