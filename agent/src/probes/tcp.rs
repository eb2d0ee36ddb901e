//! TCP steps: connect (optionally with TLS), optionally send a payload, and
//! read what the server says until EOF, a marker, the size cap or a quiet
//! spell. Expectations on the received text live in `journey::assert`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Ctx, ProbeError};
use crate::journey::Template;
use crate::report::{CallDetail, ErrorKind, Phase, TcpCall};

/// Most bytes kept from a TCP conversation.
pub const MAX_RECEIVE: usize = 64 * 1024;

#[derive(Debug)]
pub struct TcpCheck {
    pub host: String,
    pub port: u16,
    /// TLS on top of the connection (verified with this config), or plain.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub send: Option<Template>,
    /// Stop reading once this text has arrived.
    pub read_until: Option<String>,
    /// Stop reading after this long without new bytes (not a failure).
    pub idle: Duration,
    /// Whether to read at all (true when something is expected of the reply).
    pub read: bool,
}

#[derive(Debug)]
pub struct TcpResult {
    pub received: Vec<u8>,
    pub elapsed: Duration,
}

pub async fn run(check: &TcpCheck, ctx: Ctx<'_>) -> Result<TcpResult, ProbeError> {
    let start = tokio::time::Instant::now();
    ctx.rec.begin_call(CallDetail::Tcp(TcpCall {
        server_address: check.host.clone(),
        server_port: check.port,
        peer: None,
        tls: check.tls.is_some(),
        bytes_received: 0,
    }));
    let result = converse(check, ctx.env, ctx.vars, &mut *ctx.rec).await;
    ctx.rec
        .end_call(result.as_ref().err().map(|e| e.kind.as_str().into_owned()));
    result.map(|received| TcpResult {
        received,
        elapsed: start.elapsed(),
    })
}

async fn converse(
    check: &TcpCheck,
    env: &super::ProbeEnv,
    vars: &crate::journey::Vars,
    rec: &mut super::Recorder,
) -> Result<Vec<u8>, ProbeError> {
    let payload = match &check.send {
        Some(t) => Some(
            t.render(vars)
                .map_err(|e| ProbeError::new(ErrorKind::InvalidRequest, None, e))?,
        ),
        None => None,
    };
    let ip = super::resolve_host(env, rec, &check.host).await?;
    let addr = SocketAddr::new(ip, check.port);
    rec.enter(Phase::Connect);
    let tcp = super::connect(addr).await.map_err(|e| {
        ProbeError::new(
            ErrorKind::Connect,
            Some(Phase::Connect),
            format!("cannot connect to {addr}: {e}"),
        )
    })?;
    let _ = tcp.set_nodelay(true);
    if let Some(CallDetail::Tcp(t)) = rec.detail_mut() {
        t.peer = Some(addr);
    }
    match &check.tls {
        None => exchange(tcp, check, payload, rec).await,
        Some(cfg) => {
            rec.enter(Phase::Tls);
            let name =
                rustls::pki_types::ServerName::try_from(check.host.clone()).map_err(|_| {
                    ProbeError::new(
                        ErrorKind::Tls,
                        Some(Phase::Tls),
                        format!("`{}` is not a valid TLS server name", check.host),
                    )
                })?;
            let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    ProbeError::new(
                        ErrorKind::Tls,
                        Some(Phase::Tls),
                        format!(
                            "TLS handshake with {}:{} failed: {e}",
                            check.host, check.port
                        ),
                    )
                })?;
            exchange(stream, check, payload, rec).await
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    check: &TcpCheck,
    payload: Option<String>,
    rec: &mut super::Recorder,
) -> Result<Vec<u8>, ProbeError> {
    rec.enter(Phase::Processing);
    if let Some(p) = payload {
        stream.write_all(p.as_bytes()).await.map_err(|e| {
            ProbeError::new(
                ErrorKind::Protocol,
                Some(Phase::Processing),
                format!("cannot send to {}:{}: {e}", check.host, check.port),
            )
        })?;
        let _ = stream.flush().await;
    }
    let mut received = Vec::new();
    if !check.read {
        return Ok(received);
    }
    let mut buf = [0u8; 8192];
    loop {
        let n = match tokio::time::timeout(check.idle, stream.read(&mut buf)).await {
            Err(_) => break, // quiet: the server said what it had to say
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                return Err(ProbeError::new(
                    ErrorKind::Protocol,
                    Some(Phase::Transfer),
                    format!(
                        "connection to {}:{} broke after {} bytes: {e}",
                        check.host,
                        check.port,
                        received.len()
                    ),
                ));
            }
        };
        if received.is_empty() {
            rec.enter(Phase::Transfer);
        }
        let room = MAX_RECEIVE - received.len();
        received.extend_from_slice(&buf[..n.min(room)]);
        if let Some(CallDetail::Tcp(t)) = rec.detail_mut() {
            t.bytes_received = received.len() as u64;
        }
        if received.len() >= MAX_RECEIVE {
            break;
        }
        if let Some(marker) = &check.read_until
            && String::from_utf8_lossy(&received).contains(marker.as_str())
        {
            break;
        }
    }
    Ok(received)
}
