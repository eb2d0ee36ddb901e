//! The real binary and the in-process server over real sockets: the "listening" line
//! carries the actual port, the server answers, and SIGTERM ends the process cleanly.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
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

#[test]
fn binary_prints_its_address_serves_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vantage-demo"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("DEMO_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vantage-demo");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read first line");
    let addr: SocketAddr = line
        .trim_end()
        .strip_prefix("demo backend listening on http://")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .expect("line ends with an address");
    assert_ne!(addr.port(), 0, "the real port is printed");

    let response = get(addr, "/");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\"OK\""), "{response}");

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
            panic!("vantage-demo did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
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
