//! The frontend router driven with `oneshot` requests (no socket, no browser): the page at
//! every client-side route with this replica's settings written in, the assets with their
//! content types, `x-replica` everywhere, `/healthz`, the config rules as a table, and the
//! backend's CORS answer to the exact preflight a browser sends for this page. One test
//! runs a replica over a real socket through `start_frontend`.

use std::io;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use tower::ServiceExt as _;
use vantage_demo::frontend::{self, FrontendConfig, FrontendConfigError, FrontendState};

/// A backend URL only a cluster can resolve, as in the workshop's broken rollout.
const CLUSTER_BACKEND: &str = "http://server-service.movie-guru.svc.cluster.local";

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn app(backend: &str, name: &str) -> Router {
    let config = FrontendConfig::new(backend, name).expect("valid config");
    frontend::router(FrontendState::new(config))
}

async fn send(app: &Router, method: Method, path: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .expect("valid request");
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body readable");
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
    }
}

#[tokio::test]
async fn every_page_route_serves_the_app_with_this_replicas_settings() {
    let app = app("http://127.0.0.1:8081/", "replica-a");
    for path in ["/", "/login", "/some/deep/link?x=1"] {
        let reply = send(&app, Method::GET, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(
            reply.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{path}");
        assert_eq!(reply.header("x-replica"), Some("replica-a"), "{path}");
        assert!(
            reply.body.contains("<title>The Movie Guru</title>"),
            "{path}"
        );
        // The trailing slash is gone, so the page's `BACKEND + '/chat'` has no `//`.
        assert!(
            reply
                .body
                .contains(r#"window.MOVIE_GURU_BACKEND = "http://127.0.0.1:8081";"#),
            "{}",
            reply.body
        );
        assert!(
            reply
                .body
                .contains(r#"window.MOVIE_GURU_REPLICA = "replica-a";"#),
            "{}",
            reply.body
        );
        // The settings must exist before the app script runs.
        let config_at = reply.body.find("MOVIE_GURU_BACKEND").expect("config");
        let script_at = reply.body.find("/assets/app.js").expect("script tag");
        assert!(config_at < script_at, "config comes first");
    }
}

#[tokio::test]
async fn each_replica_serves_its_own_backend_url() {
    let good = send(&app("http://127.0.0.1:8081", "good"), Method::GET, "/").await;
    let broken = send(&app(CLUSTER_BACKEND, "broken"), Method::GET, "/").await;
    assert!(good.body.contains("\"http://127.0.0.1:8081\""));
    assert!(!good.body.contains(CLUSTER_BACKEND));
    assert!(broken.body.contains(&format!("\"{CLUSTER_BACKEND}\"")));
    assert_eq!(good.header("x-replica"), Some("good"));
    assert_eq!(broken.header("x-replica"), Some("broken"));
}

#[tokio::test]
async fn assets_have_their_content_types() {
    let app = app(CLUSTER_BACKEND, "a");
    let cases = [
        (
            "/assets/app.js",
            "text/javascript; charset=utf-8",
            "#thinkingDots",
        ),
        ("/assets/app.css", "text/css; charset=utf-8", ".self-start"),
    ];
    for (path, content_type, excerpt) in cases {
        let reply = send(&app, Method::GET, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        assert_eq!(reply.header("x-replica"), Some("a"), "{path}");
        assert!(reply.body.contains(excerpt), "{path} lacks {excerpt}");
    }
    // A missing asset is an honest 404, not the page dressed up as a script.
    let missing = send(&app, Method::GET, "/assets/missing.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.header("x-replica"), Some("a"));
}

#[tokio::test]
async fn the_page_and_script_carry_the_movie_guru_texts() {
    let app = app(CLUSTER_BACKEND, "a");
    let page = send(&app, Method::GET, "/").await.body;
    assert!(page.contains("THE MOVIE GURU"));
    let script = send(&app, Method::GET, "/assets/app.js").await.body;
    for text in [
        "Enter your email here and click on sign in...",
        "Something went wrong... Enter your email and try again.",
        "Type your message and press ENTER to send...",
        "Oops! Something went wrong. Try again.",
        "That was a naughty query. I cannot answer that question.",
        "'Sign in'",
        "'Clear Chat'",
        "'Sign out'",
        "'Featured films'",
        "chat-container",
        "error_message",
        "credentials: 'include'",
        "'Content-Type': 'application/json'",
        "STORE_KEY = 'vuex'",
    ] {
        assert!(script.contains(text), "app.js lacks {text:?}");
    }
}

#[tokio::test]
async fn healthz_is_ok_even_when_the_backend_is_unreachable() {
    let reply = send(&app(CLUSTER_BACKEND, "broken"), Method::GET, "/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ok");
    assert_eq!(reply.header("x-replica"), Some("broken"));
}

#[tokio::test]
async fn only_get_and_head_are_served() {
    let app = app(CLUSTER_BACKEND, "a");
    let head = send(&app, Method::HEAD, "/login").await;
    assert_eq!(head.status, StatusCode::OK);
    for (method, path) in [(Method::POST, "/"), (Method::DELETE, "/login")] {
        let reply = send(&app, method.clone(), path).await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(reply.header("allow"), Some("GET, HEAD"), "{method} {path}");
        assert_eq!(reply.header("x-replica"), Some("a"), "{method} {path}");
    }
    let reply = send(&app, Method::POST, "/healthz").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("x-replica"), Some("a"));
}

#[test]
fn backend_urls_are_normalized() {
    let cases = [
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081"),
        (
            "https://api.example/movie-guru/",
            "https://api.example/movie-guru",
        ),
        (CLUSTER_BACKEND, CLUSTER_BACKEND),
        ("http://[::1]:8081", "http://[::1]:8081"),
    ];
    for (raw, expected) in cases {
        let config = FrontendConfig::new(raw, "a").unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(config.backend_url.as_str(), expected, "{raw}");
    }
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    let url = |url: &str, reason| {
        Err(FrontendConfigError::BackendUrl {
            url: url.to_owned(),
            reason,
        })
    };
    let name = |name: &str| {
        Err(FrontendConfigError::ReplicaName {
            name: name.to_owned(),
        })
    };
    let cases = [
        ("", "a", url("", "it is not a URL")),
        (
            "127.0.0.1:8081",
            "a",
            url(
                "127.0.0.1:8081",
                "it must be absolute, like http://host:port",
            ),
        ),
        (
            "/api",
            "a",
            url("/api", "it must be absolute, like http://host:port"),
        ),
        (
            "ftp://host",
            "a",
            url("ftp://host", "the scheme must be http or https"),
        ),
        (
            "http://u:p@host",
            "a",
            url("http://u:p@host", "it must not contain credentials"),
        ),
        (
            "http://host/?x=1",
            "a",
            url("http://host/?x=1", "it must not have a query"),
        ),
        (
            "http://host/#top",
            "a",
            url("http://host/#top", "it must not have a fragment"),
        ),
        ("http://host", "", name("")),
        ("http://host", "replica a", name("replica a")),
        ("http://host", "répliqua", name("répliqua")),
        ("http://host", &"x".repeat(64), name(&"x".repeat(64))),
    ];
    for (backend, replica, expected) in cases {
        assert_eq!(
            FrontendConfig::new(backend, replica),
            expected,
            "{backend:?} {replica:?}"
        );
    }
    assert_eq!(
        FrontendConfig::new("ftp://host", "a")
            .expect_err("refused")
            .to_string(),
        r#"backend URL "ftp://host" is not usable: the scheme must be http or https"#
    );
    assert_eq!(
        FrontendConfig::new("http://host", "a b")
            .expect_err("refused")
            .to_string(),
        r#"replica name "a b" must be 1 to 63 ASCII letters, digits, '.', '_' or '-'"#
    );
}

/// The page's calls are cross-origin with a `user` header, so Chromium preflights each
/// one exactly like this; the backend must allow it with credentials.
#[tokio::test]
async fn the_backend_allows_the_frontends_preflight() {
    let backend = vantage_demo::router(vantage_demo::AppState::new());
    let origin = "http://127.0.0.2:8080";
    for (method, path) in [
        ("POST", "/login"),
        ("GET", "/history"),
        ("DELETE", "/history"),
    ] {
        let preflight = Request::builder()
            .method(Method::OPTIONS)
            .uri(path)
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, method)
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type,user")
            .body(Body::empty())
            .expect("valid request");
        let response = backend
            .clone()
            .oneshot(preflight)
            .await
            .expect("router is infallible");
        let headers = response.headers();
        let value = |name| headers.get(name).and_then(|v| v.to_str().ok());
        assert!(response.status().is_success(), "{method} {path}");
        assert_eq!(value(header::ACCESS_CONTROL_ALLOW_ORIGIN), Some(origin));
        assert_eq!(
            value(header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
            Some("true")
        );
        let allowed_headers = value(header::ACCESS_CONTROL_ALLOW_HEADERS)
            .expect("allowed headers")
            .to_ascii_lowercase();
        for wanted in ["content-type", "user"] {
            assert!(
                allowed_headers.split(',').any(|h| h.trim() == wanted),
                "{wanted} not in {allowed_headers}"
            );
        }
        let allowed_methods = value(header::ACCESS_CONTROL_ALLOW_METHODS).expect("methods");
        assert!(
            allowed_methods.split(',').any(|m| m.trim() == method),
            "{method} not in {allowed_methods}"
        );
    }
}

#[tokio::test]
async fn start_frontend_serves_over_a_socket_and_shuts_down() {
    let server = vantage_demo::start_frontend(([127, 0, 0, 1], 0).into(), CLUSTER_BACKEND, "b")
        .await
        .expect("bind");
    let addr = server.addr();
    assert_ne!(addr.port(), 0);
    assert_eq!(server.base_url(), format!("http://{addr}"));
    assert_eq!(server.backend_url(), CLUSTER_BACKEND);
    assert_eq!(server.name(), "b");
    let response = tokio::task::spawn_blocking(move || raw_get(addr, "/healthz"))
        .await
        .expect("request task");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("x-replica: b\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nok"), "{response}");
    server.shutdown().await.expect("clean shutdown");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener is closed"
    );
}

#[tokio::test]
async fn start_frontend_refuses_bad_settings_before_binding() {
    let error = vantage_demo::start_frontend(([127, 0, 0, 1], 0).into(), "ftp://x", "a")
        .await
        .err()
        .expect("refused");
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("http or https"), "{error}");
}

fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("set timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}
