//! The demo's Movie-Guru-like single-page frontend, server side: a [`router`] that serves
//! the embedded page (`assets/index.html`, `app.js`, `app.css`) with this replica's fixed
//! backend URL written into the HTML, answers every unknown `GET` with the page (the
//! browser routes `/` and `/login` itself), and tags every response with `x-replica`.
//!
//! Like the real app's build-time `VITE_CHAT_SERVER_URL`, the backend URL is fixed per
//! process: the page cannot choose it, and this server never calls it. That is the point
//! of the broken-rollout scenario: `/healthz` stays green whatever the URL, because a
//! health check of the frontend says nothing about whether browsers can reach the backend.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use thiserror::Error;

/// Response header naming the replica that served a response, so a test behind one name
/// can tell two frontends apart.
pub const REPLICA_HEADER: HeaderName = HeaderName::from_static("x-replica");
/// The replica name used when none is given.
pub const DEFAULT_REPLICA_NAME: &str = "frontend";
/// Longest replica name accepted; it becomes a header value and a label.
pub const MAX_REPLICA_NAME_CHARS: usize = 63;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
/// Replaced in `index.html` by the script that fixes this replica's settings.
const CONFIG_MARKER: &str = "<!--vantage:config-->";

/// An absolute `http` or `https` base URL of the backend, without a trailing slash, query
/// or credentials: the page appends `/login`, `/chat`, … to it, like the real app does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl(String);

/// Why a backend URL or replica name was refused; the messages are shown by the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrontendConfigError {
    #[error("backend URL {url:?} is not usable: {reason}")]
    BackendUrl { url: String, reason: &'static str },
    #[error(
        "replica name {name:?} must be 1 to {MAX_REPLICA_NAME_CHARS} ASCII letters, digits, '.', '_' or '-'"
    )]
    ReplicaName { name: String },
}

impl BackendUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BackendUrl {
    type Err = FrontendConfigError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let refuse = |reason| FrontendConfigError::BackendUrl {
            url: raw.to_owned(),
            reason,
        };
        // `Uri` drops a fragment silently; refuse it instead of serving a different URL.
        if raw.contains('#') {
            return Err(refuse("it must not have a fragment"));
        }
        let uri: Uri = raw.parse().map_err(|_| refuse("it is not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some(scheme @ ("http" | "https")) => scheme,
            Some(_) => return Err(refuse("the scheme must be http or https")),
            None => return Err(refuse("it must be absolute, like http://host:port")),
        };
        let authority = uri.authority().ok_or_else(|| refuse("it has no host"))?;
        if authority.host().is_empty() {
            return Err(refuse("it has no host"));
        }
        // fetch() refuses URLs with credentials, so every call would fail in a confusing way.
        if authority.as_str().contains('@') {
            return Err(refuse("it must not contain credentials"));
        }
        if uri.query().is_some() {
            return Err(refuse("it must not have a query"));
        }
        let path = uri.path().trim_end_matches('/');
        Ok(BackendUrl(format!("{scheme}://{authority}{path}")))
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A replica's name, safe as a header value and inside the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaName(String);

impl ReplicaName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ReplicaName {
    fn default() -> Self {
        ReplicaName(DEFAULT_REPLICA_NAME.to_owned())
    }
}

impl FromStr for ReplicaName {
    type Err = FrontendConfigError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_REPLICA_NAME_CHARS
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(ReplicaName(raw.to_owned()))
        } else {
            Err(FrontendConfigError::ReplicaName {
                name: raw.to_owned(),
            })
        }
    }
}

impl fmt::Display for ReplicaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything that differs between two frontend replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendConfig {
    pub backend_url: BackendUrl,
    pub name: ReplicaName,
}

impl FrontendConfig {
    /// Parses both settings; the error names the one that is wrong.
    pub fn new(backend_url: &str, name: &str) -> Result<Self, FrontendConfigError> {
        Ok(FrontendConfig {
            backend_url: backend_url.parse()?,
            name: name.parse()?,
        })
    }
}

/// The frontend's state: its config and the page rendered once for it. Cheap to clone.
#[derive(Clone)]
pub struct FrontendState {
    inner: Arc<Rendered>,
}

struct Rendered {
    config: FrontendConfig,
    index: Bytes,
    replica: HeaderValue,
}

impl FrontendState {
    pub fn new(config: FrontendConfig) -> Self {
        let index = Bytes::from(render_index(&config));
        let replica = HeaderValue::from_str(config.name.as_str())
            .expect("a validated replica name is a valid header value");
        FrontendState {
            inner: Arc::new(Rendered {
                config,
                index,
                replica,
            }),
        }
    }

    pub fn config(&self) -> &FrontendConfig {
        &self.inner.config
    }
}

/// `index.html` with this replica's settings in a script that runs before `app.js`.
fn render_index(config: &FrontendConfig) -> String {
    let script = format!(
        "<script>window.MOVIE_GURU_BACKEND = {};\n    window.MOVIE_GURU_REPLICA = {};</script>",
        js_string(config.backend_url.as_str()),
        js_string(config.name.as_str()),
    );
    INDEX_HTML.replacen(CONFIG_MARKER, &script, 1)
}

/// A JavaScript string literal that is also safe inside an HTML `<script>` element.
fn js_string(text: &str) -> String {
    Value::String(text.to_owned())
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Builds the frontend: the page, its two assets, `/healthz`, and the `x-replica` tag.
pub fn router(state: FrontendState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/assets/app.js", get(app_js))
        .route("/assets/app.css", get(app_css))
        .fallback(page)
        // Outermost, so 404s and 405s carry the replica too.
        .layer(middleware::map_response_with_state(
            state.clone(),
            tag_replica,
        ))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidate rather than cache blindly: a new build must show up on reload.
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The single-page app for any other `GET`, so `/login` and deep links load the page and
/// its script routes them. A missing file under `/assets/` is a 404 instead: answering a
/// script request with HTML only hides the mistake.
async fn page(State(state): State<FrontendState>, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(ALLOW, HeaderValue::from_static("GET, HEAD"))],
            "method not allowed",
        )
            .into_response();
    }
    if uri.path().starts_with("/assets/") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            // The page carries this replica's settings; a cache must not hand it to a user
            // whose next request goes to the other replica.
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        state.inner.index.clone(),
    )
        .into_response()
}

async fn tag_replica(State(state): State<FrontendState>, mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(REPLICA_HEADER, state.inner.replica.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_exactly_one_config_marker() {
        assert_eq!(INDEX_HTML.matches(CONFIG_MARKER).count(), 1);
        let config = FrontendConfig::new("http://127.0.0.1:8081", "a").expect("valid");
        assert!(!render_index(&config).contains(CONFIG_MARKER));
    }

    #[test]
    fn js_strings_cannot_close_the_script_element() {
        assert_eq!(
            js_string("</script><b>\"&"),
            r#""\u003c/script\u003e\u003cb\u003e\"\u0026""#
        );
    }
}
