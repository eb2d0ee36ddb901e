//! DNS steps: one query of a given type to a given server (the system's
//! first nameserver by default), over UDP or TCP, with no cache and no
//! retry. Reports the rcode and every section, like blackbox_exporter's dns
//! prober, for `probe_dns_*`.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{Ctx, ProbeError};
use crate::report::{CallDetail, DnsCall, ErrorKind, Phase};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug)]
pub struct DnsQuery {
    pub name: Name,
    pub record_type: RecordType,
    pub server: SocketAddr,
    pub transport: Transport,
    pub recursion_desired: bool,
}

#[derive(Debug)]
pub struct DnsResult {
    pub rcode: String,
    pub answers: Vec<String>,
    pub authorities: Vec<String>,
    pub additionals: Vec<String>,
    pub elapsed: Duration,
}

impl DnsResult {
    pub fn document(&self) -> Value {
        json!({
            "rcode": self.rcode,
            "answers": self.answers,
            "authorities": self.authorities,
            "additionals": self.additionals,
        })
    }
}

/// The first nameserver of the system configuration, for `server` left out.
pub fn system_server() -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or_else(|| "no nameserver in /etc/resolv.conf; give `server`".into())
}

/// The rcode as written in zone files and dig output (`NOERROR`, `NXDOMAIN`).
pub fn rcode_name(code: hickory_proto::op::ResponseCode) -> String {
    use hickory_proto::op::ResponseCode as R;
    match code {
        R::NoError => "NOERROR".into(),
        R::FormErr => "FORMERR".into(),
        R::ServFail => "SERVFAIL".into(),
        R::NXDomain => "NXDOMAIN".into(),
        R::NotImp => "NOTIMP".into(),
        R::Refused => "REFUSED".into(),
        R::YXDomain => "YXDOMAIN".into(),
        R::YXRRSet => "YXRRSET".into(),
        R::NXRRSet => "NXRRSET".into(),
        R::NotAuth => "NOTAUTH".into(),
        R::NotZone => "NOTZONE".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

fn show(r: &hickory_proto::rr::Record) -> String {
    // Answers as their data (`1.2.3.4`, `mail.example.com.`), as a user writes them.
    r.data.to_string()
}

pub async fn run(q: &DnsQuery, ctx: Ctx<'_>) -> Result<DnsResult, ProbeError> {
    let start = tokio::time::Instant::now();
    ctx.rec.begin_call(CallDetail::Dns(DnsCall {
        question: q.name.to_string(),
        record_type: q.record_type.to_string(),
        server: q.server,
        transport: match q.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        },
        rcode: None,
        answers: 0,
        authorities: 0,
        additionals: 0,
    }));
    let result = exchange(q, &mut *ctx.rec).await;
    if let (Ok(m), Some(CallDetail::Dns(d))) = (&result, ctx.rec.detail_mut()) {
        d.rcode = Some(rcode_name(m.metadata.response_code));
        d.answers = m.answers.len() as u32;
        d.authorities = m.authorities.len() as u32;
        d.additionals = m.additionals.len() as u32;
    }
    ctx.rec
        .end_call(result.as_ref().err().map(|e| e.kind.as_str().into_owned()));
    let m = result?;
    Ok(DnsResult {
        rcode: rcode_name(m.metadata.response_code),
        answers: m.answers.iter().map(show).collect(),
        authorities: m.authorities.iter().map(show).collect(),
        additionals: m.additionals.iter().map(show).collect(),
        elapsed: start.elapsed(),
    })
}

async fn exchange(q: &DnsQuery, rec: &mut super::Recorder) -> Result<Message, ProbeError> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = q.recursion_desired;
    msg.add_query(Query::query(q.name.clone(), q.record_type));
    let id = msg.metadata.id;
    let bytes = msg.to_vec().map_err(|e| {
        ProbeError::new(
            ErrorKind::InvalidRequest,
            None,
            format!("cannot encode the query: {e}"),
        )
    })?;
    let proto = |m: String| ProbeError::new(ErrorKind::Protocol, Some(Phase::Processing), m);
    let server = q.server;
    let answer = match q.transport {
        Transport::Udp => {
            let bind: SocketAddr = if server.is_ipv4() {
                "0.0.0.0:0".parse().unwrap_or(server)
            } else {
                "[::]:0".parse().unwrap_or(server)
            };
            rec.enter(Phase::Connect);
            let sock = UdpSocket::bind(bind).await.map_err(|e| {
                ProbeError::new(ErrorKind::Connect, Some(Phase::Connect), e.to_string())
            })?;
            sock.connect(server).await.map_err(|e| {
                ProbeError::new(
                    ErrorKind::Connect,
                    Some(Phase::Connect),
                    format!("cannot reach {server}: {e}"),
                )
            })?;
            rec.enter(Phase::Processing);
            sock.send(&bytes).await.map_err(|e| {
                ProbeError::new(
                    ErrorKind::Connect,
                    Some(Phase::Processing),
                    format!("cannot send to {server}: {e}"),
                )
            })?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = sock.recv(&mut buf).await.map_err(|e| {
                    // A refused UDP port shows up here as ICMP port unreachable.
                    ProbeError::new(
                        ErrorKind::Connect,
                        Some(Phase::Processing),
                        format!("no answer from {server}: {e}"),
                    )
                })?;
                let m = Message::from_vec(&buf[..n])
                    .map_err(|e| proto(format!("malformed answer from {server}: {e}")))?;
                // Ignore stray datagrams that answer something else.
                if m.metadata.id == id {
                    break m;
                }
            }
        }
        Transport::Tcp => {
            rec.enter(Phase::Connect);
            let mut s = TcpStream::connect(server).await.map_err(|e| {
                ProbeError::new(
                    ErrorKind::Connect,
                    Some(Phase::Connect),
                    format!("cannot connect to {server}: {e}"),
                )
            })?;
            rec.enter(Phase::Processing);
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            s.write_all(&framed)
                .await
                .map_err(|e| proto(format!("cannot send to {server}: {e}")))?;
            let len = s
                .read_u16()
                .await
                .map_err(|e| proto(format!("no answer from {server}: {e}")))?;
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf)
                .await
                .map_err(|e| proto(format!("answer from {server} broke off: {e}")))?;
            Message::from_vec(&buf)
                .map_err(|e| proto(format!("malformed answer from {server}: {e}")))?
        }
    };
    Ok(answer)
}
