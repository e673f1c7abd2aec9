//! TLS test kit: a throwaway PKI made with rcgen at test time, TLS clients, and TLS upstreams
//! (HTTPS echo, TCP echo) that record what the handshake saw.
#![allow(dead_code, clippy::unwrap_used)]

pub mod yaml;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use testenv::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that issues leaf certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = issuer.pem();
        Ca { issuer, pem }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Identity {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Everything a test needs, also written to files for `filename` data sources.
pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
    /// `localhost`, `127.0.0.1`, `upstream.test`, `processor.test`.
    pub server: Identity,
    pub client: Identity,
    /// An unrelated CA and a client certificate it issued.
    pub other_ca: Ca,
    pub other_client: Identity,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Ca::new("extproxy test ca");
        let server = ca.issue(&["localhost", "127.0.0.1", "upstream.test", "processor.test"]);
        let client = ca.issue(&["client.test"]);
        let other_ca = Ca::new("other ca");
        let other_client = other_ca.issue(&["client.test"]);
        let dir = TempDir::new("extproxy-tls").unwrap();
        for (name, text) in [
            ("ca.pem", &ca.pem),
            ("other_ca.pem", &other_ca.pem),
            ("server.pem", &server.cert_pem),
            ("server.key", &server.key_pem),
            ("client.pem", &client.cert_pem),
            ("client.key", &client.key_pem),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Pki {
            dir,
            ca,
            server,
            client,
            other_ca,
            other_client,
        }
    }

    /// The path of a file written by [`Pki::new`].
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting `ca_pem`, presenting `identity` if given, offering `alpn`.
pub fn client_config(
    ca_pem: &str,
    identity: Option<&Identity>,
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem) {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => b
            .with_client_auth_cert(certs(&id.cert_pem), key(&id.key_pem))
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// A server config with `identity`, requiring client certificates from `client_ca` if given.
pub fn server_config(
    identity: &Identity,
    client_ca: Option<&str>,
    alpn: &[&str],
) -> Arc<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca) {
                roots.add(c).unwrap();
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    let mut cfg = b
        .with_single_cert(certs(&identity.cert_pem), key(&identity.key_pem))
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// Connects and handshakes with `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// A response as the test client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The ALPN protocol the client negotiated.
    pub alpn: Option<Vec<u8>>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTPS request over a fresh connection; HTTP/2 if ALPN says h2, else HTTP/1.1.
pub async fn https_request(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: &'static str,
) -> anyhow::Result<Response> {
    let tls = tls_connect(addr, cfg, "localhost").await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        parts.uri = path.parse()?;
        send.send_request(http::Request::from_parts(parts, body))
            .await?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
        alpn,
    })
}

/// What an upstream's handshakes saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub sni: Vec<Option<String>>,
    pub alpn: Vec<Option<Vec<u8>>>,
    pub client_cert: Vec<bool>,
}

/// A TLS upstream (HTTPS echo or TCP echo) on a loopback port.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TlsUpstream {
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    async fn start<F, Fut>(cfg: Arc<rustls::ServerConfig>, serve: F) -> TlsUpstream
    where
        F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let (s, st) = (seen.clone(), stop.clone());
        let serve = Arc::new(serve);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = st.cancelled() => return,
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                let (s, serve) = (s.clone(), serve.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    {
                        let conn = tls.get_ref().1;
                        let mut s = s.lock().unwrap();
                        s.sni.push(conn.server_name().map(str::to_string));
                        s.alpn.push(conn.alpn_protocol().map(<[u8]>::to_vec));
                        s.client_cert
                            .push(conn.peer_certificates().is_some_and(|c| !c.is_empty()));
                    }
                    serve(tls).await;
                });
            }
        });
        TlsUpstream { addr, seen, stop }
    }

    /// HTTPS (h1 or h2 by ALPN) answering 200 with the request body, `x-seen-proto` (the
    /// request's `x-forwarded-proto`) and `x-seen-version`.
    pub async fn https_echo(cfg: Arc<rustls::ServerConfig>) -> TlsUpstream {
        TlsUpstream::start(cfg, |tls| async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let proto = req.headers().get("x-forwarded-proto").cloned();
                    let version = format!("{:?}", req.version());
                    let body = req.into_body().collect().await?.to_bytes();
                    let mut resp = http::Response::new(Full::new(body));
                    if let Some(p) = proto {
                        resp.headers_mut().insert("x-seen-proto", p);
                    }
                    resp.headers_mut()
                        .insert("x-seen-version", version.parse().unwrap());
                    Ok::<_, hyper::Error>(resp)
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        })
        .await
    }

    /// Echoes bytes until the client's close_notify/FIN, then half-closes (close_notify + FIN).
    pub async fn tcp_echo(cfg: Arc<rustls::ServerConfig>) -> TlsUpstream {
        TlsUpstream::start(cfg, |mut tls| async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tls.shutdown().await;
        })
        .await
    }
}

/// The proxy, in process, bound to port-0 listeners.
pub struct TestProxy {
    listeners: BTreeMap<String, SocketAddr>,
    pub stats: extproxy::stats::Store,
    shutdown: CancellationToken,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestProxy {
    pub async fn start(yaml: &str) -> TestProxy {
        let bootstrap = extproxy::config::parse(yaml).unwrap_or_else(|e| panic!("config: {e}"));
        let server = extproxy::Server::bind(&bootstrap, extproxy::Options::default())
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let mut listeners = BTreeMap::new();
        for l in &bootstrap.static_resources.listeners {
            if let Some(a) = server.listener_addr(&l.name) {
                listeners.insert(l.name.clone(), a);
            }
        }
        let stats = server.stats();
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(shutdown.clone()));
        TestProxy {
            listeners,
            stats,
            shutdown,
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.stats.counter(name).value()
    }

    /// Waits until counter `name` reaches `at_least` (stats are bumped by connection tasks).
    pub async fn wait_counter(&self, name: &str, at_least: u64) {
        let c = self.stats.counter(name);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while c.value() < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} = {} < {at_least}",
                c.value()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
