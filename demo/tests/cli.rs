//! The real binary and the in-process server over real sockets: both subcommands print a
//! "listening" line with the actual port, serve, and end cleanly on SIGTERM; bad flags are
//! usage errors.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A minimal HTTP/1.1 GET; the demo is the only server these tests talk to.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to demo");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
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

/// Starts the binary and returns it with the address from its "listening" line, which
/// must start with `prefix`.
fn spawn(args: &[&str], envs: &[(&str, &str)], prefix: &str) -> (Child, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vantage-demo"));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for name in [
        "DEMO_LISTEN",
        "DEMO_FRONTEND_LISTEN",
        "DEMO_BACKEND_URL",
        "DEMO_REPLICA_NAME",
        "DEMO_DATABASE_URL",
        "DEMO_DB_SCHEMA",
    ] {
        command.env_remove(name);
    }
    command.envs(envs.iter().copied());
    let mut child = command.spawn().expect("start vantage-demo");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read first line");
    let Some(addr) = line.trim_end().strip_prefix(prefix) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("unexpected line {line:?}, wanted {prefix:?}");
    };
    let addr: SocketAddr = addr.parse().expect("line ends with an address");
    assert_ne!(addr.port(), 0, "the real port is printed");
    (child, addr)
}

/// Sends SIGTERM and asserts a clean exit within a few seconds.
fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("poll child") {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vantage-demo did not exit on SIGTERM");
        }
        // Polling a child process: there is no exit notification to await here.
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}

/// Runs the binary to completion and returns its exit code and stdout + stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vantage-demo"))
        .args(args)
        .env_remove("DEMO_BACKEND_URL")
        .env_remove("DEMO_DATABASE_URL")
        .env_remove("DEMO_DB_SCHEMA")
        .output()
        .expect("run vantage-demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn binary_prints_its_address_serves_and_stops_on_sigterm() {
    let (child, addr) = spawn(
        &["--listen", "127.0.0.1:0"],
        &[],
        "demo backend listening on http://",
    );
    let response = get(addr, "/");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\"OK\""), "{response}");
    terminate(child);
}

#[test]
fn backend_subcommand_serves_the_backend() {
    // The variable also feeds the top-level --listen; it must not conflict with the
    // subcommand.
    let (child, addr) = spawn(
        &["backend"],
        &[("DEMO_LISTEN", "127.0.0.1:0")],
        "demo backend listening on http://",
    );
    let response = get(addr, "/phase");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"ChatSuccess\""), "{response}");
    terminate(child);
}

#[test]
fn frontend_subcommand_serves_the_page_with_its_backend_and_name() {
    let (child, addr) = spawn(
        &[
            "frontend",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "http://backend.invalid:8081/",
            "--name",
            "replica-b",
        ],
        &[],
        "demo frontend listening on http://",
    );
    let health = get(addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("x-replica: replica-b\r\n"), "{health}");
    let page = get(addr, "/login");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains(r#"window.MOVIE_GURU_BACKEND = "http://backend.invalid:8081";"#),
        "{page}"
    );
    terminate(child);
}

#[test]
fn frontend_subcommand_takes_its_settings_from_the_environment() {
    let (child, addr) = spawn(
        &["frontend"],
        &[
            ("DEMO_FRONTEND_LISTEN", "127.0.0.1:0"),
            ("DEMO_BACKEND_URL", "http://127.0.0.1:9"),
        ],
        "demo frontend listening on http://",
    );
    let health = get(addr, "/healthz");
    assert!(health.contains("x-replica: frontend\r\n"), "{health}");
    terminate(child);
}

#[test]
fn bad_frontend_flags_are_usage_errors() {
    let (code, text) = run(&["frontend", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--backend <URL>"), "{text}");

    let (code, text) = run(&["frontend", "--backend", "ftp://x"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("the scheme must be http or https"), "{text}");

    let (code, text) = run(&["frontend", "--backend", "http://x", "--name", "a b"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("replica name"), "{text}");

    // Backend flags before a subcommand would be silently ignored; refuse them instead.
    let (code, text) = run(&[
        "--listen",
        "127.0.0.1:0",
        "frontend",
        "--backend",
        "http://x",
    ]);
    assert_eq!(code, Some(2), "{text}");
}

#[test]
fn help_lists_both_servers() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for wanted in ["backend", "frontend", "--listen"] {
        assert!(text.contains(wanted), "--help lacks {wanted}: {text}");
    }
    let (code, text) = run(&["backend", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for wanted in [
        "--database-url <URL>",
        "DEMO_DATABASE_URL",
        "--db-schema <NAME>",
        "movieguru_preferences",
        "[default: public]",
    ] {
        assert!(
            text.contains(wanted),
            "backend --help lacks {wanted}: {text}"
        );
    }
    let (code, text) = run(&["frontend", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for wanted in ["--backend <URL>", "--name", "DEMO_BACKEND_URL", "x-replica"] {
        assert!(
            text.contains(wanted),
            "frontend --help lacks {wanted}: {text}"
        );
    }
}

#[test]
fn an_unusable_database_stops_the_backend_at_startup_without_printing_the_url() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let url = format!("postgres://postgres:hunter2@{closed}/test");
    let (code, text) = run(&["backend", "--listen", "127.0.0.1:0", "--database-url", &url]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot connect to the database"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("listening"), "{text}");

    let (code, text) = run(&["--database-url", &url, "--db-schema", "Bad-Name"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("lowercase"), "{text}");
    let (code, text) = run(&["--db-schema", "x"]);
    assert_eq!(code, Some(2), "--db-schema needs --database-url: {text}");
}

#[tokio::test]
async fn in_process_server_serves_and_shuts_down() {
    let server = vantage_demo::DemoServer::start(([127, 0, 0, 1], 0).into())
        .await
        .expect("bind");
    let addr = server.addr();
    assert_eq!(server.base_url(), format!("http://{addr}"));
    let response = tokio::task::spawn_blocking(move || get(addr, "/phase"))
        .await
        .expect("request task");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"ChatSuccess\":1.0"), "{response}");
    assert_eq!(server.state().metrics().responses_by_status()[&200], 1);
    server.shutdown().await.expect("clean shutdown");
    assert!(TcpStream::connect(addr).is_err(), "listener is closed");
}
