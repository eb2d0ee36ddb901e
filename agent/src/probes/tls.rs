//! TLS steps: a handshake on a fresh connection, the presented chain, its
//! earliest expiry, the negotiated protocol, and whether the chain verifies
//! for the host.
//!
//! The handshake itself accepts any chain (signatures are still checked), so
//! an expired or wrong-host certificate still yields its figures; the chain
//! is then verified with webpki against the step's roots, and a failure
//! fails the step with the reason. The figures are what
//! `probe_ssl_earliest_cert_expiry` is made of.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};

use super::{Ctx, ProbeError};
use crate::report::{CallDetail, ErrorKind, Phase, TlsCall};

/// A built TLS step.
#[derive(Debug)]
pub struct TlsCheck {
    pub host: String,
    pub port: u16,
    /// SNI and the name the certificate must match (default: `host`).
    pub server_name: String,
    /// Verifies the chain after the handshake; `None` when `insecure`.
    pub verifier: Option<Arc<dyn ServerCertVerifier>>,
}

/// What the handshake showed.
#[derive(Debug)]
pub struct TlsResult {
    pub protocol_version: Option<String>,
    pub cipher: Option<String>,
    pub chain: Vec<CertInfo>,
    pub earliest_expiry: Option<i64>,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
}

impl TlsResult {
    /// Days until the earliest expiry in the chain (negative once expired).
    pub fn days_left(&self) -> Option<f64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        self.earliest_expiry.map(|t| (t - now) as f64 / 86_400.0)
    }

    pub fn document(&self) -> Value {
        json!({
            "protocol_version": self.protocol_version,
            "cipher": self.cipher,
            "earliest_expiry": self.earliest_expiry,
            "days_left": self.days_left(),
            "chain": self.chain.iter().map(|c| json!({
                "subject": c.subject,
                "issuer": c.issuer,
                "not_before": c.not_before,
                "not_after": c.not_after,
                "dns_names": c.dns_names,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Parses a DER certificate's figures.
pub fn cert_info(der: &CertificateDer<'_>) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let dns_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => Some(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        dns_names,
    })
}

/// The earliest `notAfter` of a presented chain, unix seconds.
pub fn earliest_expiry(chain: &[CertificateDer<'_>]) -> Option<i64> {
    chain
        .iter()
        .filter_map(cert_info)
        .map(|c| c.not_after)
        .min()
}

/// A webpki verifier with the platform's web roots plus `extra_ca` (PEM).
pub fn verifier(extra_ca: Option<&[u8]>) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let roots = super::http::root_store(extra_ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .map_err(|e| e.to_string())
}

pub async fn run(check: &TlsCheck, ctx: Ctx<'_>) -> Result<TlsResult, ProbeError> {
    let start = tokio::time::Instant::now();
    ctx.rec.begin_call(CallDetail::Tls(TlsCall {
        server_address: check.host.clone(),
        server_port: check.port,
        peer: None,
        protocol_version: None,
        cipher: None,
        earliest_expiry: None,
        verified: None,
    }));
    let result = handshake(check, &mut *ctx.rec, ctx.env, start).await;
    ctx.rec
        .end_call(result.as_ref().err().map(|e| e.kind.as_str().into_owned()));
    result
}

async fn handshake(
    check: &TlsCheck,
    rec: &mut super::Recorder,
    env: &super::ProbeEnv,
    start: tokio::time::Instant,
) -> Result<TlsResult, ProbeError> {
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
    if let Some(CallDetail::Tls(t)) = rec.detail_mut() {
        t.peer = Some(addr);
    }
    rec.enter(Phase::Tls);
    let name = ServerName::try_from(check.server_name.clone()).map_err(|_| {
        ProbeError::new(
            ErrorKind::Tls,
            Some(Phase::Tls),
            format!("`{}` is not a valid TLS server name", check.server_name),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(super::shared_tls(true));
    let stream = connector.connect(name.clone(), tcp).await.map_err(|e| {
        ProbeError::new(
            ErrorKind::Tls,
            Some(Phase::Tls),
            format!(
                "TLS handshake with {}:{} failed: {e}",
                check.host, check.port
            ),
        )
    })?;
    let conn = stream.get_ref().1;
    let chain: Vec<CertificateDer<'static>> = conn
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let protocol_version = conn.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "1.3".to_string(),
        rustls::ProtocolVersion::TLSv1_2 => "1.2".to_string(),
        other => format!("{other:?}"),
    });
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()));
    let infos: Vec<CertInfo> = chain.iter().filter_map(cert_info).collect();
    let earliest = infos.iter().map(|c| c.not_after).min();
    let verify = match (&check.verifier, chain.split_first()) {
        (None, _) => None,
        (Some(_), None) => Some(Err("the server presented no certificate".to_string())),
        (Some(v), Some((leaf, intermediates))) => Some(
            v.verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
                .map(|_| ())
                .map_err(|e| e.to_string()),
        ),
    };
    if let Some(CallDetail::Tls(t)) = rec.detail_mut() {
        t.protocol_version = protocol_version.clone();
        t.cipher = cipher.clone();
        t.earliest_expiry = earliest;
        t.verified = verify.as_ref().map(Result::is_ok);
    }
    if let Some(Err(e)) = verify {
        return Err(ProbeError::new(
            ErrorKind::Tls,
            Some(Phase::Tls),
            format!(
                "certificate of {}:{} rejected for `{}`: {e}",
                check.host, check.port, check.server_name
            ),
        ));
    }
    Ok(TlsResult {
        protocol_version,
        cipher,
        chain: infos,
        earliest_expiry: earliest,
        elapsed: start.elapsed(),
    })
}
