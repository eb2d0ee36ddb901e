//! The Movie-Guru-like JSON API as an axum [`Router`] value, and the state behind it: the
//! [`Store`] (users, logins, history and preferences, in memory or in PostgreSQL), the
//! fault phase, counters and the last trace headers. [`router`] never binds a socket, so
//! tests drive it with `oneshot`. The control endpoints (`/phase`, `/metrics`,
//! `/debug/last-request`) live here because they share the state; they need no `user`
//! header and are not recorded as the "last request". Handlers draw their injected fault
//! before touching the store, so an injected failure writes nothing. Request bodies are
//! small and bounded; a store failure is a 500 whose body says nothing about the database.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::cors;
use crate::metrics::{ChatOutcome, Metrics};
use crate::movies::{self, Movie};
use crate::phase::{self, Call, Phase, PhaseError};
pub use crate::store::{
    HISTORY_LEN, MAX_USERS, Message, PreferenceList, Profile, Role, Store, StoreError,
};

/// Longest chat message accepted, in characters, as in Movie Guru.
pub const MAX_CHAT_CHARS: usize = 1000;
/// Every legitimate body is well under this; anything bigger is refused before parsing.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longer than any valid e-mail address, short enough to bound the stored keys.
const MAX_USER_CHARS: usize = 320;
const MAX_PREF_ENTRIES: usize = 50;
const MAX_PREF_ENTRY_CHARS: usize = 200;

/// Shared state of one demo backend. Cloning is cheap and shares everything.
#[derive(Clone, Default)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    phase: RwLock<Phase>,
    store: Store,
    metrics: Metrics,
    last_request: Mutex<LastRequest>,
}

impl AppState {
    /// A healthy backend with no users, keeping its data in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A healthy backend keeping its data in `store`.
    pub fn with_store(store: Store) -> Self {
        AppState {
            inner: Arc::new(Inner {
                phase: RwLock::default(),
                store,
                metrics: Metrics::default(),
                last_request: Mutex::default(),
            }),
        }
    }

    /// Where users, logins, history and preferences are kept.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The current fault phase.
    pub fn phase(&self) -> Phase {
        self.inner
            .phase
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the fault phase, for in-process tests that skip `POST /phase`.
    pub fn set_phase(&self, phase: Phase) {
        *self
            .inner
            .phase
            .write()
            .unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// Applies a `POST /phase` patch under the write lock, so concurrent patches never
    /// overwrite each other with stale copies.
    pub fn update_phase(&self, patch: &Value) -> Result<Phase, PhaseError> {
        let mut phase = self
            .inner
            .phase
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let next = phase.apply(patch)?;
        *phase = next.clone();
        Ok(next)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Trace headers of the last API request (control endpoints and preflights excluded).
    pub fn last_request(&self) -> LastRequest {
        self.inner
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What `GET /debug/last-request` reports; `None` fields serialize as `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LastRequest {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub path: Option<String>,
}

/// An error answer: a status and `{"error": reason}`. Reasons are written for the caller
/// and never carry internal details.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: String,
}

impl ApiError {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.into(),
        }
    }

    fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }

    /// An injected failure of a non-chat call.
    fn injected(call: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{call} failed (injected fault)"),
        )
    }
}

/// A store failure: logged here with its cause, answered as a bare 500, because a
/// caller has no use for the database's error text (and it may name tables or hosts).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        warn!(error = %e, "storage call failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "storage unavailable")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.reason }))).into_response()
    }
}

/// The caller's identity from the `user` header; 401 without it, like Movie Guru.
pub struct User(pub String);

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let user = parts
            .headers
            .get("user")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .unwrap_or_default();
        if user.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing user header",
            ));
        }
        if user.chars().count() > MAX_USER_CHARS {
            return Err(ApiError::bad_request("user header is too long"));
        }
        Ok(User(user))
    }
}

/// Refuses profiles that would make the stored row or a later answer large.
fn validate(profile: &Profile) -> Result<(), ApiError> {
    let lists = [&profile.likes, &profile.dislikes]
        .into_iter()
        .flat_map(|p| [&p.genres, &p.actors, &p.director, &p.other]);
    for list in lists {
        if list.len() > MAX_PREF_ENTRIES
            || list
                .iter()
                .any(|e| e.chars().count() > MAX_PREF_ENTRY_CHARS)
        {
            return Err(ApiError::bad_request(format!(
                "a preference list may hold {MAX_PREF_ENTRIES} entries of at most \
                 {MAX_PREF_ENTRY_CHARS} characters"
            )));
        }
        if list.iter().any(|e| e.contains('\0')) {
            return Err(ApiError::bad_request(
                "preferences must not contain NUL characters",
            ));
        }
    }
    Ok(())
}

/// Parses a JSON body whatever its `Content-Type`: curl-style callers often omit it, and
/// the real frontend always sends JSON anyway.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

/// Draws the configured outcome of `call` and sleeps its latency. Returns whether the call
/// should succeed.
async fn inject(state: &AppState, call: Call) -> bool {
    let fault = *state.phase().fault(call);
    let (ok, delay) = fault.draw(&mut rand::rng());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    ok
}

/// The body of `/startup` and `/chat`.
#[derive(Debug, Serialize)]
struct ChatResponse {
    answer: String,
    relevant_movies: Vec<&'static Movie>,
    context: Vec<&'static Movie>,
    error_message: String,
    result: &'static str,
    preferences: Profile,
}

#[derive(Deserialize)]
struct ChatRequest {
    content: String,
}

#[derive(Deserialize)]
struct PreferencesUpdate {
    content: Profile,
}

/// Builds the whole backend: API routes, control endpoints, CORS and counting.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/login", post(login))
        .route("/startup", get(startup))
        .route("/history", get(history).delete(clear_history))
        .route("/chat", post(chat))
        .route("/preferences", get(preferences).post(update_preferences))
        .route("/logout", get(logout))
        .route("/phase", get(get_phase).post(set_phase))
        .route("/metrics", get(metrics))
        .route("/debug/last-request", get(last_request))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_last_request,
        ))
        // CORS sits outside the recorder so preflights (which never carry trace headers)
        // do not overwrite the request they precede, and around the handlers so a
        // preflight needs no `user` header.
        .layer(middleware::from_fn(cors::cors))
        // Outermost, so every response is counted, preflights and rejections included.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

async fn root() -> Json<&'static str> {
    Json("OK")
}

async fn login(State(state): State<AppState>, User(user): User) -> Result<Json<Value>, ApiError> {
    state.metrics().login_attempts.inc();
    if !inject(&state, Call::Login).await {
        return Err(ApiError::injected("login"));
    }
    state.store().login(&user).await?;
    state.metrics().login_success.inc();
    Ok(Json(json!({ "login": "success" })))
}

async fn startup(
    State(state): State<AppState>,
    User(user): User,
) -> Result<Json<ChatResponse>, ApiError> {
    state.metrics().startup_attempts.inc();
    if !inject(&state, Call::Startup).await {
        return Err(ApiError::injected("startup"));
    }
    let preferences = state.store().preferences(&user).await?;
    state.metrics().startup_success.inc();
    Ok(Json(ChatResponse {
        answer: String::new(),
        relevant_movies: Vec::new(),
        context: movies::featured(&mut rand::rng(), 5),
        error_message: String::new(),
        result: ChatOutcome::Success.result(),
        preferences,
    }))
}

async fn history(
    State(state): State<AppState>,
    User(user): User,
) -> Result<Json<Vec<Message>>, ApiError> {
    Ok(Json(state.store().history(&user).await?))
}

async fn clear_history(
    State(state): State<AppState>,
    User(user): User,
) -> Result<StatusCode, ApiError> {
    state.store().clear_history(&user).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn chat(
    State(state): State<AppState>,
    User(user): User,
    body: Bytes,
) -> Result<Json<ChatResponse>, ApiError> {
    state.metrics().chat_calls.inc();
    let ChatRequest { content } = parse(&body)?;
    if content.chars().count() > MAX_CHAT_CHARS {
        return Err(ApiError::bad_request(format!(
            "content is longer than {MAX_CHAT_CHARS} characters"
        )));
    }
    // PostgreSQL text cannot hold NUL, and no real message has one: refuse it in both
    // stores alike rather than answer 500 from one of them.
    if content.contains('\0') {
        return Err(ApiError::bad_request(
            "content must not contain NUL characters",
        ));
    }

    // Everything random is drawn before the sleep: the thread-local RNG must not live
    // across an await point.
    let phase = state.phase();
    let (ok, delay, flagged, picks) = {
        let mut rng = rand::rng();
        let (ok, delay) = phase.chat.draw(&mut rng);
        let flagged = phase::chance(&mut rng, phase.chat_safety_issue);
        (ok, delay, flagged, movies::recommend(&content, &mut rng))
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let outcome = match (ok, flagged) {
        (false, _) => ChatOutcome::Error,
        (true, true) => ChatOutcome::Unsafe,
        (true, false) => ChatOutcome::Success,
    };
    state.metrics().chat_outcome(outcome).inc();

    let (answer, relevant_movies, error_message) = match outcome {
        ChatOutcome::Success => (movies::answer_for(&picks), picks, String::new()),
        ChatOutcome::Error => (
            String::new(),
            Vec::new(),
            "The model failed to answer (injected fault).".to_owned(),
        ),
        // The real frontend shows its own text for UNSAFE and ignores `answer`.
        ChatOutcome::Unsafe => (String::new(), Vec::new(), String::new()),
    };
    let mut exchange = vec![Message::new(Role::User, content)];
    if outcome == ChatOutcome::Success {
        exchange.push(Message::new(Role::Agent, answer.clone()));
    }
    let preferences = state.store().record_chat(&user, &exchange).await?;
    Ok(Json(ChatResponse {
        answer,
        context: relevant_movies.clone(),
        relevant_movies,
        error_message,
        result: outcome.result(),
        preferences,
    }))
}

async fn preferences(
    State(state): State<AppState>,
    User(user): User,
) -> Result<Json<Profile>, ApiError> {
    state.metrics().prefget_attempts.inc();
    if !inject(&state, Call::PrefGet).await {
        return Err(ApiError::injected("reading preferences"));
    }
    let profile = state.store().preferences(&user).await?;
    state.metrics().prefget_success.inc();
    Ok(Json(profile))
}

async fn update_preferences(
    State(state): State<AppState>,
    User(user): User,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    state.metrics().prefupdate_attempts.inc();
    let PreferencesUpdate { content } = parse(&body)?;
    validate(&content)?;
    // The fault is drawn before the store is touched: an injected failure writes nothing.
    if !inject(&state, Call::PrefUpdate).await {
        return Err(ApiError::injected("updating preferences"));
    }
    state.store().set_preferences(&user, &content).await?;
    state.metrics().prefupdate_success.inc();
    Ok(Json(json!({ "update": "success" })))
}

async fn logout(_user: User) -> Json<Value> {
    Json(json!({ "logout": "success" }))
}

async fn get_phase(State(state): State<AppState>) -> Json<Value> {
    Json(state.phase().to_json())
}

async fn set_phase(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let patch: Value = parse(&body)?;
    let phase = state
        .update_phase(&patch)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let current = phase.to_json();
    info!(phase = %current, "fault phase updated");
    Ok(Json(current))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics().render(),
    )
}

async fn last_request(State(state): State<AppState>) -> Json<LastRequest> {
    Json(state.last_request())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not found")
}

fn is_control_path(path: &str) -> bool {
    path == "/phase" || path == "/metrics" || path.starts_with("/debug/")
}

/// Remembers the trace headers of each API request so tests can check propagation.
async fn record_last_request(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if !is_control_path(path) {
        let headers = request.headers();
        let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        // W3C allows tracestate to be split over several header lines; they join with ",".
        let tracestate: Vec<String> = headers.get_all("tracestate").iter().map(text).collect();
        let seen = LastRequest {
            traceparent: headers.get("traceparent").map(text),
            tracestate: (!tracestate.is_empty()).then(|| tracestate.join(",")),
            path: Some(path.to_owned()),
        };
        *state
            .inner
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = seen;
    }
    next.run(request).await
}

async fn count_responses(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    state.metrics().record_response(status.as_u16());
    debug!(%method, %path, status = status.as_u16(), "request served");
    response
}
