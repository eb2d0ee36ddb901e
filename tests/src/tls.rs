//! HTTPS test servers with certificates generated at run time by rcgen.
//!
//! [`TestCa::new`] creates a throw-away CA; give [`TestCa::ca_pem`] to the
//! client as its trusted root. [`TlsServer::start`] serves a certificate of
//! the requested [`TlsKind`] — signed by a CA (valid, expiring soon, expired,
//! for the wrong host, ...) or self-signed — and answers every HTTP/1.1
//! request with `200 ok`.
//!
//! Only the ring crypto provider is used.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::server::{Counter, ServerTask, bind, loopback_any};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Installs ring as the process-wide rustls provider (if none is yet) and
/// returns it.
pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throw-away certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA (`CN=Vantage Test CA <unique suffix>`, valid 1975–4096).
    ///
    /// Every CA gets a distinct name, so a certificate issued by another
    /// `TestCa` fails verification with `UnknownIssuer`, not `BadSignature`.
    pub fn new() -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!(
                "Vantage Test CA {}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
        );
        dn.push(DnType::OrganizationName, "Vantage tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generating CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signing CA");
        Self { issuer }
    }

    /// The CA certificate in PEM form, for the client's trust store.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate in DER form.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A rustls root store containing only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der())
            .expect("adding test CA to root store");
        roots
    }

    /// Writes [`ca_pem`](Self::ca_pem) to `path`.
    pub fn write_pem(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.ca_pem()).with_context(|| format!("writing {}", path.display()))
    }

    /// Issues a server certificate for `hosts` (DNS names or IP literals)
    /// valid in `[not_before, not_after]`. Returns `(cert DER, PKCS#8 key DER)`.
    pub fn issue(
        &self,
        hosts: &[String],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>)> {
        let params = leaf_params(hosts, not_before, not_after)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        ))
    }
}

fn leaf_params(
    hosts: &[String],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(hosts.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        hosts.first().map_or("vantage-test", String::as_str),
    );
    params.distinguished_name = dn;
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// What certificate a [`TlsServer`] presents.
#[derive(Debug, Clone)]
pub enum TlsKind<'a> {
    /// A self-signed leaf for `host` (valid from yesterday for a year),
    /// not trusted by any [`TestCa`].
    SelfSigned { host: String },
    /// A leaf for `hosts` signed by `ca`, valid in `[not_before, not_after]`.
    SignedBy {
        ca: &'a TestCa,
        hosts: Vec<String>,
        not_before: SystemTime,
        not_after: SystemTime,
    },
}

impl<'a> TlsKind<'a> {
    /// Signed by `ca` for `localhost` and `127.0.0.1`, valid from yesterday
    /// for a year.
    pub fn valid(ca: &'a TestCa) -> Self {
        Self::valid_for(ca, &["localhost", "127.0.0.1"])
    }

    /// Signed by `ca` for `hosts`, valid from yesterday for a year. Use a
    /// host other than `localhost` for wrong-host tests.
    pub fn valid_for(ca: &'a TestCa, hosts: &[&str]) -> Self {
        let now = SystemTime::now();
        Self::SignedBy {
            ca,
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            not_before: now - DAY,
            not_after: now + 365 * DAY,
        }
    }

    /// Signed by `ca` for `localhost` and `127.0.0.1`, expiring `in_` from now.
    pub fn expiring_in(ca: &'a TestCa, in_: Duration) -> Self {
        let now = SystemTime::now();
        Self::SignedBy {
            ca,
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            not_before: now - 30 * DAY,
            not_after: now + in_,
        }
    }

    /// Signed by `ca` for `localhost` and `127.0.0.1`, expired yesterday.
    pub fn expired(ca: &'a TestCa) -> Self {
        let now = SystemTime::now();
        Self::SignedBy {
            ca,
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            not_before: now - 60 * DAY,
            not_after: now - DAY,
        }
    }

    /// Signed by `ca` for `wrong.example` only.
    pub fn wrong_host(ca: &'a TestCa) -> Self {
        Self::valid_for(ca, &["wrong.example"])
    }

    /// Self-signed for `localhost`.
    pub fn self_signed() -> Self {
        Self::SelfSigned {
            host: "localhost".into(),
        }
    }
}

/// An HTTPS server on `127.0.0.1:<free port>` answering `200 ok`.
/// Stopped when dropped.
#[derive(Debug)]
pub struct TlsServer {
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    handshakes: Counter,
    requests: Counter,
    connections: Counter,
    _server: ServerTask,
}

impl TlsServer {
    /// Generates the certificate and starts serving. Panics on failure.
    pub async fn start(kind: TlsKind<'_>) -> Self {
        Self::try_start(kind).await.expect("starting TLS server")
    }

    pub async fn try_start(kind: TlsKind<'_>) -> Result<Self> {
        let provider = ring_provider();
        let (cert, key) = match kind {
            TlsKind::SelfSigned { host } => {
                let now = SystemTime::now();
                let params = leaf_params(&[host], now - DAY, now + 365 * DAY)?;
                let key = KeyPair::generate()?;
                let cert = params.self_signed(&key)?;
                (
                    cert.der().clone(),
                    PrivatePkcs8KeyDer::from(key.serialize_der()),
                )
            }
            TlsKind::SignedBy {
                ca,
                hosts,
                not_before,
                not_after,
            } => ca.issue(&hosts, not_before, not_after)?,
        };
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key))?;
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = bind(loopback_any()).await?;
        let addr = listener.local_addr()?;
        let handshakes = Counter::default();
        let requests = Counter::default();
        let connections = Counter::default();
        let server = {
            let (handshakes, requests) = (handshakes.clone(), requests.clone());
            ServerTask::spawn(listener, connections.clone(), move |stream| {
                let acceptor = acceptor.clone();
                let (handshakes, requests) = (handshakes.clone(), requests.clone());
                async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    handshakes.incr();
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        requests.incr();
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        resp.headers_mut().insert(
                            header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain"),
                        );
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                }
            })
        };
        Ok(Self {
            addr,
            cert,
            handshakes,
            requests,
            connections,
            _server: server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `https://localhost:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        self.url_for("localhost", path)
    }

    /// `https://{host}:PORT{path}` (the host must resolve to 127.0.0.1).
    pub fn url_for(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port())
    }

    /// The leaf certificate the server presents (DER).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// TLS handshakes completed successfully.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.get()
    }

    /// HTTP requests answered.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// TCP connections accepted (whether or not the handshake succeeded).
    pub fn connections(&self) -> u64 {
        self.connections.get()
    }

    /// Waits until [`handshakes`](Self::handshakes) reaches `n`.
    pub async fn wait_for_handshakes(&self, n: u64, timeout: Duration) -> Result<u64> {
        self.handshakes.wait_for(n, timeout, "TLS handshakes").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    const WAIT: Duration = Duration::from_secs(10);

    fn connector(ca: &TestCa) -> TlsConnector {
        let config = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(ca.root_store())
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    /// Handshakes as `localhost`, sends one GET and returns the response.
    async fn fetch(ca: &TestCa, server: &TlsServer) -> Result<String, rustls::Error> {
        let tcp = TcpStream::connect(server.addr())
            .await
            .expect("tcp connect");
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = connector(ca).connect(name, tcp).await.map_err(|e| {
            e.get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned()
                .unwrap_or_else(|| panic!("not a TLS error: {e}"))
        })?;
        tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .expect("write request");
        let mut resp = String::new();
        tls.read_to_string(&mut resp).await.expect("read response");
        Ok(resp)
    }

    fn cert_error(e: rustls::Error) -> CertificateError {
        match e {
            rustls::Error::InvalidCertificate(c) => c,
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn ca_signed_server_is_trusted() {
        let ca = TestCa::new();
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let server = TlsServer::start(TlsKind::valid(&ca)).await;
        let resp = fetch(&ca, &server)
            .await
            .expect("handshake with trusted CA");
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nok"), "{resp}");
        server.wait_for_handshakes(1, WAIT).await.expect("counted");
        assert_eq!(server.requests(), 1);
        assert!(server.url("/x").starts_with("https://localhost:"));

        // Expiring soon is still valid.
        let soon = TlsServer::start(TlsKind::expiring_in(&ca, 3 * DAY)).await;
        fetch(&ca, &soon)
            .await
            .expect("cert expiring in 3 days is valid");
    }

    #[tokio::test]
    async fn self_signed_server_is_rejected() {
        let ca = TestCa::new();
        let server = TlsServer::start(TlsKind::self_signed()).await;
        let err = fetch(&ca, &server).await.expect_err("self-signed");
        assert_eq!(cert_error(err), CertificateError::UnknownIssuer);
        assert_eq!(server.handshakes(), 0);
        assert_eq!(server.connections(), 1);

        // Signed by a different CA: also unknown.
        let other = TestCa::new();
        let server = TlsServer::start(TlsKind::valid(&other)).await;
        let err = fetch(&ca, &server).await.expect_err("foreign CA");
        assert_eq!(cert_error(err), CertificateError::UnknownIssuer);
    }

    #[tokio::test]
    async fn expired_and_wrong_host_are_rejected() {
        let ca = TestCa::new();
        let server = TlsServer::start(TlsKind::expired(&ca)).await;
        let err = cert_error(fetch(&ca, &server).await.expect_err("expired"));
        assert!(
            matches!(
                err,
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ),
            "{err:?}"
        );

        let server = TlsServer::start(TlsKind::wrong_host(&ca)).await;
        let err = cert_error(fetch(&ca, &server).await.expect_err("wrong host"));
        assert!(
            matches!(
                err,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ),
            "{err:?}"
        );
    }
}
