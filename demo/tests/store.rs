//! The backend's two stores, memory and PostgreSQL, driven through the router with the
//! same scenarios (login, preferences, history, injected write failures): both must answer
//! alike. Then what only PostgreSQL has: a session row per login, pruned history rows,
//! data that outlives the backend, bound parameters, and a clean 500 when the database
//! fails.
//!
//! The PostgreSQL cases use the server at 127.0.0.1:5432, database `test` (override with
//! `DEMO_TEST_DATABASE_URL`), each in a schema of its own that is dropped at the end,
//! even when the test fails.

use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use vantage_demo::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use vantage_demo::sqlx::{self, AssertSqlSafe, Connection as _, PgConnection, PgPool};
use vantage_demo::{AppState, PgSettings, SchemaName, Store, StoreError, router};

const USER: &str = "probe@example.com";
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn database_url() -> String {
    std::env::var("DEMO_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// A schema no other test uses; dropped with everything in it when this is dropped.
struct TestSchema {
    name: SchemaName,
    url: String,
}

impl TestSchema {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!(
            "demo_store_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        TestSchema {
            name: name.parse().expect("a valid schema name"),
            url: database_url(),
        }
    }

    fn settings(&self) -> PgSettings {
        PgSettings::new(self.url.clone(), self.name.clone())
    }

    /// A pool of our own whose sessions see this schema's tables.
    fn pool(&self) -> PgPool {
        let options: PgConnectOptions = self.url.parse().expect("valid database URL");
        PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options.options([("search_path", self.name.as_str())]))
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be the one dropping us: clean up
        // on a thread with a runtime of its own.
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&url).await?;
                // The name is a validated `SchemaName`: plain lowercase letters, digits, '_'.
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}

/// A router over one store, plus the schema it lives in when it is PostgreSQL.
struct Backend {
    state: AppState,
    app: Router,
    schema: Option<TestSchema>,
}

impl Backend {
    fn memory() -> Self {
        let state = AppState::new();
        Backend {
            app: router(state.clone()),
            state,
            schema: None,
        }
    }

    async fn postgres() -> Self {
        let schema = TestSchema::new();
        let store = Store::postgres(&schema.settings())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", schema.url));
        let state = AppState::with_store(store);
        Backend {
            app: router(state.clone()),
            state,
            schema: Some(schema),
        }
    }

    async fn call(&self, method: Method, path: &str, user: &str, body: Option<Value>) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        if !user.is_empty() {
            builder = builder.header("user", user);
        }
        let body = match body {
            Some(body) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let request = builder.body(body).expect("valid request");
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body readable");
        Reply {
            status,
            body: body.to_vec(),
        }
    }

    async fn get(&self, path: &str, user: &str) -> Reply {
        self.call(Method::GET, path, user, None).await
    }

    async fn post(&self, path: &str, user: &str, body: Value) -> Reply {
        self.call(Method::POST, path, user, Some(body)).await
    }

    /// Closes the store's connections; the schema goes when `self` is dropped.
    async fn finish(self) {
        self.state.store().close().await;
    }
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The JSON body of a 2xx answer.
    fn ok(&self) -> Value {
        assert!(self.status.is_success(), "{}: {}", self.status, self.json());
        self.json()
    }
}

fn profile(liked_genre: &str) -> Value {
    json!({
        "likes": {"genres": [liked_genre], "actors": ["Ada Lane"], "director": [], "other": []},
        "dislikes": {"genres": ["musical"], "actors": [], "director": [], "other": ["spoilers"]},
    })
}

fn empty_profile() -> Value {
    let empty = json!({"genres": [], "actors": [], "director": [], "other": []});
    json!({"likes": empty, "dislikes": empty})
}

// Scenarios: each runs against both stores (see `both!` below).

async fn login_starts_an_empty_profile_and_history(b: &Backend) {
    assert_eq!(
        b.post("/login", USER, json!(null)).await.ok(),
        json!({"login": "success"})
    );
    assert_eq!(b.get("/preferences", USER).await.ok(), empty_profile());
    assert_eq!(b.get("/history", USER).await.ok(), json!([]));
    assert_eq!(
        b.get("/startup", USER).await.ok()["preferences"],
        empty_profile()
    );
}

async fn preferences_are_saved_replaced_and_kept_per_user(b: &Backend) {
    b.post("/login", USER, json!(null)).await.ok();
    let saved = b
        .post("/preferences", USER, json!({"content": profile("noir")}))
        .await;
    assert_eq!(saved.ok(), json!({"update": "success"}));
    assert_eq!(b.get("/preferences", USER).await.ok(), profile("noir"));

    // A second save replaces the first, and /startup and /chat carry it too.
    b.post("/preferences", USER, json!({"content": profile("western")}))
        .await
        .ok();
    assert_eq!(b.get("/preferences", USER).await.ok(), profile("western"));
    assert_eq!(
        b.get("/startup", USER).await.ok()["preferences"],
        profile("western")
    );
    let chat = b.post("/chat", USER, json!({"content": "hi"})).await.ok();
    assert_eq!(chat["preferences"], profile("western"));

    // A missing list is saved as empty; another user sees nothing of this one's.
    b.post(
        "/preferences",
        "other@example.com",
        json!({"content": {"likes": {"genres": ["drama"]}}}),
    )
    .await
    .ok();
    let mut other = empty_profile();
    other["likes"]["genres"] = json!(["drama"]);
    assert_eq!(b.get("/preferences", "other@example.com").await.ok(), other);
    assert_eq!(b.get("/preferences", USER).await.ok(), profile("western"));
}

async fn history_keeps_the_last_ten_in_order_and_clears(b: &Backend) {
    b.post("/login", USER, json!(null)).await.ok();
    for i in 0..7 {
        let chat = b
            .post("/chat", USER, json!({"content": format!("m{i}")}))
            .await
            .ok();
        assert_eq!(chat["result"], "SUCCESS");
    }
    let history = b.get("/history", USER).await.ok();
    let history = history.as_array().expect("a list");
    assert_eq!(history.len(), 10);
    // 14 messages were written; the first two exchanges are gone, the order is kept.
    assert_eq!(history[0], json!({"role": "user", "content": "m2"}));
    assert_eq!(history[1]["role"], "agent");
    assert_eq!(history[8], json!({"role": "user", "content": "m6"}));
    assert_eq!(history[9]["role"], "agent");

    // A failed chat keeps the question, not an answer.
    b.post("/phase", "", json!({"ChatSuccess": 0})).await.ok();
    let failed = b.post("/chat", USER, json!({"content": "lost"})).await.ok();
    assert_eq!(failed["result"], "ERROR");
    let history = b.get("/history", USER).await.ok();
    assert_eq!(history[9], json!({"role": "user", "content": "lost"}));
    assert_eq!(history[8]["role"], "agent");

    // Another user's history is separate; clearing is per user.
    assert_eq!(b.get("/history", "other@example.com").await.ok(), json!([]));
    let cleared = b.call(Method::DELETE, "/history", USER, None).await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    assert_eq!(b.get("/history", USER).await.ok(), json!([]));
    // Clearing an unknown user's history is not an error.
    let cleared = b.call(Method::DELETE, "/history", "nobody@x", None).await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
}

async fn an_injected_preference_failure_writes_nothing(b: &Backend) {
    b.post("/preferences", USER, json!({"content": profile("noir")}))
        .await
        .ok();
    b.post("/phase", "", json!({"PrefUpdateSuccess": 0}))
        .await
        .ok();
    let failed = b
        .post("/preferences", USER, json!({"content": profile("western")}))
        .await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        failed.json(),
        json!({"error": "updating preferences failed (injected fault)"})
    );
    // Nor does a first write for a user the store has never seen create them.
    let failed = b
        .post(
            "/preferences",
            "new@example.com",
            json!({"content": profile("x")}),
        )
        .await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);

    b.post("/phase", "", json!({"PrefUpdateSuccess": 1}))
        .await
        .ok();
    assert_eq!(b.get("/preferences", USER).await.ok(), profile("noir"));
    assert_eq!(
        b.get("/preferences", "new@example.com").await.ok(),
        empty_profile()
    );
}

async fn hostile_values_are_stored_as_text(b: &Backend) {
    let user = "x'); DROP TABLE movieguru_users; --";
    let genre = "'; DELETE FROM movieguru_preferences; --";
    b.post("/login", user, json!(null)).await.ok();
    b.post("/preferences", user, json!({"content": profile(genre)}))
        .await
        .ok();
    b.post("/chat", user, json!({"content": "$1 \\' ok"}))
        .await
        .ok();
    assert_eq!(b.get("/preferences", user).await.ok(), profile(genre));
    assert_eq!(
        b.get("/history", user).await.ok()[0]["content"],
        "$1 \\' ok"
    );
}

async fn nul_characters_are_refused_before_storing(b: &Backend) {
    // PostgreSQL text cannot hold NUL; both stores refuse it alike, as bad input.
    let chat = b.post("/chat", USER, json!({"content": "a\u{0}b"})).await;
    assert_eq!(chat.status, StatusCode::BAD_REQUEST, "{}", chat.json());
    let prefs = b
        .post("/preferences", USER, json!({"content": profile("a\u{0}b")}))
        .await;
    assert_eq!(prefs.status, StatusCode::BAD_REQUEST, "{}", prefs.json());
    assert_eq!(b.get("/history", USER).await.ok(), json!([]));
    assert_eq!(b.get("/preferences", USER).await.ok(), empty_profile());
}

/// One `#[tokio::test]` per scenario and store: `memory::NAME` and `postgres::NAME`.
macro_rules! both {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let backend = super::Backend::memory();
                    super::$scenario(&backend).await;
                    backend.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let backend = super::Backend::postgres().await;
                    super::$scenario(&backend).await;
                    backend.finish().await;
                }
            )*
        }
    };
}

both!(
    login_starts_an_empty_profile_and_history,
    preferences_are_saved_replaced_and_kept_per_user,
    history_keeps_the_last_ten_in_order_and_clears,
    an_injected_preference_failure_writes_nothing,
    hostile_values_are_stored_as_text,
    nul_characters_are_refused_before_storing,
);

/// `SELECT count(*) ...` with one bound text parameter, in `schema`.
async fn count(pool: &PgPool, sql: &'static str, param: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(param)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn postgres_rows_are_what_the_api_wrote() {
    let backend = Backend::postgres().await;
    let pool = backend
        .schema
        .as_ref()
        .expect("a PostgreSQL backend")
        .pool();
    for _ in 0..3 {
        backend.post("/login", USER, json!(null)).await.ok();
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM movieguru_users WHERE email = $1",
            USER
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM movieguru_sessions WHERE email = $1",
            USER
        )
        .await,
        3,
        "a session row per login"
    );

    backend
        .post("/preferences", USER, json!({"content": profile("noir")}))
        .await
        .ok();
    let (likes, dislikes): (Value, Value) =
        sqlx::query_as("SELECT likes, dislikes FROM movieguru_preferences WHERE email = $1")
            .bind(USER)
            .fetch_one(&pool)
            .await
            .expect("a preferences row");
    assert_eq!(
        json!({"likes": likes, "dislikes": dislikes}),
        profile("noir")
    );

    for i in 0..8 {
        backend
            .post("/chat", USER, json!({"content": format!("m{i}")}))
            .await
            .ok();
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM movieguru_history WHERE email = $1",
            USER
        )
        .await,
        10,
        "older history rows are pruned on write"
    );
    pool.close().await;
    backend.finish().await;
}

#[tokio::test]
async fn postgres_data_outlives_the_backend() {
    let schema = TestSchema::new();
    let first = AppState::with_store(
        Store::postgres(&schema.settings())
            .await
            .expect("PostgreSQL"),
    );
    let app = router(first.clone());
    let before = Backend {
        state: first,
        app,
        schema: None,
    };
    before
        .post("/preferences", USER, json!({"content": profile("noir")}))
        .await
        .ok();
    before
        .post("/chat", USER, json!({"content": "remember me"}))
        .await
        .ok();
    before.finish().await;

    // A new backend on the same schema: the tables exist already and keep their rows.
    let state = AppState::with_store(
        Store::postgres(&schema.settings())
            .await
            .expect("PostgreSQL"),
    );
    let after = Backend {
        app: router(state.clone()),
        state,
        schema: Some(schema),
    };
    assert_eq!(after.get("/preferences", USER).await.ok(), profile("noir"));
    assert_eq!(
        after.get("/history", USER).await.ok()[0]["content"],
        "remember me"
    );
    after.finish().await;
}

#[tokio::test]
async fn postgres_failures_are_a_500_that_names_nothing_inside() {
    let backend = Backend::postgres().await;
    let pool = backend
        .schema
        .as_ref()
        .expect("a PostgreSQL backend")
        .pool();
    sqlx::raw_sql("DROP TABLE movieguru_preferences")
        .execute(&pool)
        .await
        .expect("drop the table under the backend");
    pool.close().await;
    for reply in [
        backend.get("/preferences", USER).await,
        backend.get("/startup", USER).await,
        backend
            .post("/preferences", USER, json!({"content": profile("noir")}))
            .await,
    ] {
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.json(), json!({"error": "storage unavailable"}));
    }
    // Calls that do not need the table still work.
    backend.post("/login", USER, json!(null)).await.ok();
    backend.get("/history", USER).await.ok();
    backend.finish().await;
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_fails_at_startup_without_the_password() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    // The listener is gone: nothing accepts on that port now.
    let url = format!("postgres://postgres:hunter2@{refused}/test");
    let Err(e) = Store::postgres(&PgSettings::new(url, SchemaName::default())).await else {
        panic!("connected to a closed port");
    };
    assert!(matches!(e, StoreError::Connect(_)), "{e:?}");
    assert!(!e.to_string().contains("hunter2"), "{e}");

    let bad = PgSettings::new("mysql://root@127.0.0.1/test", SchemaName::default());
    let Err(e) = Store::postgres(&bad).await else {
        panic!("accepted a MySQL URL");
    };
    assert!(matches!(e, StoreError::InvalidUrl(_)), "{e:?}");
}
