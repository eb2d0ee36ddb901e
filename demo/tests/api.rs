//! The backend router driven with `oneshot` requests, no sockets: every route, the `user`
//! check, fault injection through `/phase`, CORS and the counters.

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use vantage_demo::{AppState, router};

const USER: &str = "probe@example.com";

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body readable")
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

fn request(method: Method, path: &str, user: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(user) = user {
        builder = builder.header("user", user);
    }
    let body = match body {
        Some(body) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    builder.body(body).expect("valid request")
}

async fn call(app: &Router, method: Method, path: &str, body: Option<Value>) -> Reply {
    send(app, request(method, path, Some(USER), body)).await
}

async fn set_phase(app: &Router, patch: Value) -> Reply {
    send(app, request(Method::POST, "/phase", None, Some(patch))).await
}

fn app() -> (AppState, Router) {
    let state = AppState::new();
    (state.clone(), router(state))
}

/// The value of an exact series line in the `/metrics` text.
async fn metric(app: &Router, series: &str) -> u64 {
    let text = send(app, request(Method::GET, "/metrics", None, None))
        .await
        .text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .expect("counter value is an integer")
}

#[tokio::test]
async fn root_says_ok() {
    let (_, app) = app();
    let reply = send(&app, request(Method::GET, "/", None, None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!("OK"));
}

#[tokio::test]
async fn login_needs_the_user_header() {
    let (_, app) = app();
    let reply = call(&app, Method::POST, "/login", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"login": "success"}));

    let reply = send(&app, request(Method::POST, "/login", None, None)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json(), json!({"error": "missing user header"}));

    let reply = send(&app, request(Method::POST, "/login", Some("  "), None)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_api_call_but_root_needs_the_user_header() {
    let (_, app) = app();
    for (method, path) in [
        (Method::GET, "/startup"),
        (Method::GET, "/history"),
        (Method::DELETE, "/history"),
        (Method::POST, "/chat"),
        (Method::GET, "/preferences"),
        (Method::POST, "/preferences"),
        (Method::GET, "/logout"),
    ] {
        let reply = send(
            &app,
            request(method.clone(), path, None, Some(json!({"content": "x"}))),
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(reply.json()["error"].is_string(), "{method} {path}");
    }
}

#[tokio::test]
async fn startup_has_five_movies_and_preferences() {
    let (_, app) = app();
    let reply = call(&app, Method::GET, "/startup", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["result"], "SUCCESS");
    assert_eq!(body["answer"], "");
    assert_eq!(body["error_message"], "");
    assert_eq!(body["relevant_movies"], json!([]));
    let context = body["context"].as_array().expect("context is a list");
    assert_eq!(context.len(), 5);
    for movie in context {
        for key in [
            "title",
            "runtime_minutes",
            "genres",
            "rating",
            "plot",
            "released",
            "director",
            "actors",
            "poster",
            "tconst",
        ] {
            assert!(movie.get(key).is_some(), "movie lacks {key}: {movie}");
        }
        assert!(movie["genres"].is_array() && movie["actors"].is_array());
    }
    let empty = json!({"genres": [], "actors": [], "director": [], "other": []});
    assert_eq!(
        body["preferences"],
        json!({"likes": empty, "dislikes": empty})
    );
}

#[tokio::test]
async fn chat_answers_and_fills_history() {
    let (_, app) = app();
    let reply = call(
        &app,
        Method::POST,
        "/chat",
        Some(json!({"content": "any horror films?"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["result"], "SUCCESS");
    assert_eq!(body["error_message"], "");
    assert_eq!(body["relevant_movies"][0]["title"], "Whisper Network");
    assert!(
        body["answer"]
            .as_str()
            .is_some_and(|a| a.contains("Whisper Network")),
        "{body}"
    );
    assert!(body["preferences"].is_object());

    let history = call(&app, Method::GET, "/history", None).await;
    assert_eq!(history.status, StatusCode::OK);
    let history = history.json();
    assert_eq!(
        history[0],
        json!({"role": "user", "content": "any horror films?"})
    );
    assert_eq!(history[1]["role"], "agent");
    assert_eq!(history[1]["content"], body["answer"]);

    let cleared = call(&app, Method::DELETE, "/history", None).await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    assert!(cleared.body.is_empty());
    assert_eq!(
        call(&app, Method::GET, "/history", None).await.json(),
        json!([])
    );
}

#[tokio::test]
async fn history_returns_only_the_last_ten() {
    let (_, app) = app();
    for i in 0..6 {
        let reply = call(
            &app,
            Method::POST,
            "/chat",
            Some(json!({"content": i.to_string()})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let history = call(&app, Method::GET, "/history", None).await.json();
    let history = history.as_array().expect("history is a list");
    assert_eq!(history.len(), 10);
    // 12 messages were written; the first user/agent pair ("0" and its answer) is gone.
    assert_eq!(history[0], json!({"role": "user", "content": "1"}));
}

#[tokio::test]
async fn chat_limit_is_1000_characters() {
    let (_, app) = app();
    // Multi-byte characters: the limit counts characters, not bytes.
    let at_limit = "é".repeat(1000);
    let reply = call(
        &app,
        Method::POST,
        "/chat",
        Some(json!({"content": at_limit})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);

    let reply = call(
        &app,
        Method::POST,
        "/chat",
        Some(json!({"content": "a".repeat(1001)})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.json(),
        json!({"error": "content is longer than 1000 characters"})
    );

    let reply = call(&app, Method::POST, "/chat", Some(json!({"text": "hi"}))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn preferences_round_trip() {
    let (_, app) = app();
    let profile = json!({
        "likes": {"genres": ["Comedy"], "actors": ["Priya Nair"], "director": [], "other": ["short films"]},
        "dislikes": {"genres": ["Horror"], "actors": [], "director": [], "other": []},
    });
    let reply = call(
        &app,
        Method::POST,
        "/preferences",
        Some(json!({"content": profile})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"update": "success"}));

    let reply = call(&app, Method::GET, "/preferences", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), profile);
    let startup = call(&app, Method::GET, "/startup", None).await.json();
    assert_eq!(startup["preferences"], profile);

    let too_many = json!({"content": {"likes": {"genres": vec!["x"; 51]}}});
    let reply = call(&app, Method::POST, "/preferences", Some(too_many)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn logout_succeeds() {
    let (_, app) = app();
    let reply = call(&app, Method::GET, "/logout", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"logout": "success"}));
}

#[tokio::test]
async fn phase_defaults_and_updates() {
    let (state, app) = app();
    let reply = send(&app, request(Method::GET, "/phase", None, None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let phase = reply.json();
    assert_eq!(phase["ChatSuccess"], json!(1.0));
    assert_eq!(phase["ChatSafetyIssue"], json!(0.0));
    assert_eq!(phase["LoginLatencyMaxMS"], json!(0));

    let reply = set_phase(&app, json!({"ChatSuccess": 0.5, "ChatLatencyMaxMS": 10})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["ChatSuccess"], json!(0.5));
    assert_eq!(state.phase().chat.success, 0.5);
    assert_eq!(state.phase().chat.latency_max_ms, 10);
    assert_eq!(state.phase().login.success, 1.0);
}

#[tokio::test]
async fn phase_rejects_unknown_keys_and_out_of_range_values() {
    let (state, app) = app();
    for (patch, reason) in [
        (json!({"ChatSucess": 0.5}), "unknown key \"ChatSucess\""),
        (
            json!({"LoginSuccess": 1.01}),
            "LoginSuccess must be a number between 0.0 and 1.0",
        ),
        (
            json!({"ChatLatencyMinMS": -5}),
            "ChatLatencyMinMS must be a whole number of milliseconds between 0 and 300000",
        ),
        (
            json!({"StartupLatencyMinMS": 20, "StartupLatencyMaxMS": 10}),
            "StartupLatencyMinMS must not be greater than StartupLatencyMaxMS",
        ),
    ] {
        let reply = set_phase(&app, patch.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{patch}");
        assert_eq!(reply.json(), json!({"error": reason}), "{patch}");
    }
    // A rejected patch changes nothing, even its valid keys.
    let reply = set_phase(&app, json!({"ChatSuccess": 0.0, "Bogus": 1})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(state.phase(), vantage_demo::Phase::default());

    let reply = send(
        &app,
        Request::post("/phase")
            .body(Body::from("not json"))
            .expect("valid request"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn chat_failure_is_200_with_result_error() {
    let (_, app) = app();
    assert_eq!(
        set_phase(&app, json!({"ChatSuccess": 0})).await.status,
        StatusCode::OK
    );
    let reply = call(&app, Method::POST, "/chat", Some(json!({"content": "hi"}))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["result"], "ERROR");
    assert!(
        body["error_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(body["relevant_movies"], json!([]));
    assert!(body["preferences"].is_object());
    assert_eq!(
        metric(
            &app,
            "movieguru_chat_outcome_counter_total{Outcome=\"error\"}"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn chat_safety_issue_gives_unsafe() {
    let (_, app) = app();
    set_phase(&app, json!({"ChatSafetyIssue": 1.0})).await;
    let reply = call(&app, Method::POST, "/chat", Some(json!({"content": "hi"}))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["result"], "UNSAFE");
}

#[tokio::test]
async fn non_chat_failures_are_500_with_a_json_body() {
    let (_, app) = app();
    set_phase(
        &app,
        json!({"LoginSuccess": 0, "StartupSuccess": 0, "PrefGetSuccess": 0, "PrefUpdateSuccess": 0}),
    )
    .await;
    for (method, path, body) in [
        (Method::POST, "/login", None),
        (Method::GET, "/startup", None),
        (Method::GET, "/preferences", None),
        (Method::POST, "/preferences", Some(json!({"content": {}}))),
    ] {
        let reply = call(&app, method.clone(), path, body).await;
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {path}"
        );
        assert!(reply.json()["error"].is_string(), "{method} {path}");
    }
    assert_eq!(metric(&app, "movieguru_login_attempts_total").await, 1);
    assert_eq!(metric(&app, "movieguru_login_success_total").await, 0);
    assert_eq!(
        metric(&app, "movieguru_http_requests_total{code=\"500\"}").await,
        4
    );
}

#[tokio::test(start_paused = true)]
async fn latency_is_slept_before_answering() {
    let (_, app) = app();
    set_phase(
        &app,
        json!({"LoginLatencyMinMS": 400, "LoginLatencyMaxMS": 400}),
    )
    .await;
    let started = tokio::time::Instant::now();
    let reply = call(&app, Method::POST, "/login", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let elapsed = started.elapsed().as_millis();
    assert!((400..500).contains(&elapsed), "{elapsed} ms");
}

#[tokio::test]
async fn cors_preflight_echoes_the_origin() {
    let (_, app) = app();
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/chat")
        .header(header::ORIGIN, "http://frontend.example:5173")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "user,content-type")
        .body(Body::empty())
        .expect("valid request");
    let reply = send(&app, preflight).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("http://frontend.example:5173")
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("user, Content-Type")
    );
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET, POST, DELETE, OPTIONS")
    );

    // Actual responses carry the echo too, errors included, so the browser can read them.
    let unauthorized = Request::post("/login")
        .header(header::ORIGIN, "https://other.example")
        .body(Body::empty())
        .expect("valid request");
    let reply = send(&app, unauthorized).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://other.example")
    );
    let no_origin = send(&app, request(Method::GET, "/", None, None)).await;
    assert_eq!(no_origin.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn counters_move() {
    let (state, app) = app();
    call(&app, Method::POST, "/login", None).await;
    call(&app, Method::GET, "/startup", None).await;
    call(
        &app,
        Method::POST,
        "/chat",
        Some(json!({"content": "comedy"})),
    )
    .await;
    call(&app, Method::GET, "/preferences", None).await;
    call(
        &app,
        Method::POST,
        "/preferences",
        Some(json!({"content": {}})),
    )
    .await;
    send(&app, request(Method::GET, "/history", None, None)).await;

    for series in [
        "movieguru_login_attempts_total",
        "movieguru_login_success_total",
        "movieguru_startup_attempts_total",
        "movieguru_startup_success_total",
        "movieguru_chat_calls_total",
        "movieguru_chat_outcome_counter_total{Outcome=\"success\"}",
        "movieguru_prefget_attempts_total",
        "movieguru_prefget_success_total",
        "movieguru_prefupdate_attempts_total",
        "movieguru_prefupdate_success_total",
        "movieguru_http_requests_total{code=\"401\"}",
    ] {
        assert_eq!(metric(&app, series).await, 1, "{series}");
    }
    assert_eq!(
        metric(
            &app,
            "movieguru_chat_outcome_counter_total{Outcome=\"unsafe\"}"
        )
        .await,
        0
    );
    // Five API calls plus the /metrics scrapes above; no server errors.
    let by_status = state.metrics().responses_by_status();
    assert!(by_status[&200] >= 5, "{by_status:?}");
    assert!(by_status.keys().all(|code| *code < 500), "{by_status:?}");

    let reply = send(&app, request(Method::GET, "/metrics", None, None)).await;
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
}

#[tokio::test]
async fn last_request_records_trace_headers() {
    let (_, app) = app();
    let empty = send(
        &app,
        request(Method::GET, "/debug/last-request", None, None),
    )
    .await;
    assert_eq!(
        empty.json(),
        json!({"traceparent": null, "tracestate": null, "path": null})
    );

    let traced = Request::get("/startup")
        .header("user", USER)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "vantage=1")
        .header("tracestate", "other=2")
        .body(Body::empty())
        .expect("valid request");
    send(&app, traced).await;
    // Control endpoints and preflights must not overwrite what the probe sent.
    send(&app, request(Method::GET, "/metrics", None, None)).await;
    send(&app, request(Method::OPTIONS, "/chat", None, None)).await;
    let reply = send(
        &app,
        request(Method::GET, "/debug/last-request", None, None),
    )
    .await;
    assert_eq!(
        reply.json(),
        json!({
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "vantage=1,other=2",
            "path": "/startup",
        })
    );

    call(&app, Method::GET, "/history", None).await;
    let reply = send(
        &app,
        request(Method::GET, "/debug/last-request", None, None),
    )
    .await;
    assert_eq!(
        reply.json(),
        json!({"traceparent": null, "tracestate": null, "path": "/history"})
    );
}

#[tokio::test]
async fn unknown_paths_are_json_404() {
    let (_, app) = app();
    let reply = send(&app, request(Method::GET, "/nope", None, None)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json(), json!({"error": "not found"}));
}
