//! `envoy.transport_sockets.tls`: rustls server and client configs built once from
//! `DownstreamTlsContext` / `UpstreamTlsContext`, the handshakes, and the `ssl.*` stats.

use super::config::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    TlsParameters, TlsProtocol, UpstreamTlsContext,
};
use crate::config::ConfigError;
use crate::stats::{Counter, Store};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tokio::net::TcpStream;

/// `<scope>.ssl.*` counters, as Envoy names them.
#[derive(Debug, Clone)]
pub struct SslStats {
    /// `ssl.handshake`: handshakes completed.
    pub handshake: Counter,
    /// `ssl.connection_error`: handshakes that failed for another reason than verification.
    pub connection_error: Counter,
    /// `ssl.no_certificate`: handshakes completed without a peer certificate.
    pub no_certificate: Counter,
    /// `ssl.fail_verify_no_cert`: a required peer certificate was missing.
    pub fail_verify_no_cert: Counter,
    /// `ssl.fail_verify_error`: the peer's certificate did not verify.
    pub fail_verify_error: Counter,
    /// `<scope>.ssl.` for the per-version / per-cipher counters made on first use.
    prefix: String,
    store: Store,
}

impl SslStats {
    /// Registers the counters Envoy shows (as zeros) under `<scope>.ssl.`.
    pub fn new(store: &Store, scope: &str) -> Self {
        let prefix = format!("{scope}.ssl.");
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        // Registered so they render as in Envoy; extproxy never bumps them.
        for s in [
            "fail_verify_cert_hash",
            "fail_verify_san",
            "session_reused",
            "ocsp_staple_failed",
            "ocsp_staple_omitted",
            "ocsp_staple_requests",
            "ocsp_staple_responses",
        ] {
            c(s);
        }
        SslStats {
            handshake: c("handshake"),
            connection_error: c("connection_error"),
            no_certificate: c("no_certificate"),
            fail_verify_no_cert: c("fail_verify_no_cert"),
            fail_verify_error: c("fail_verify_error"),
            prefix,
            store: store.clone(),
        }
    }

    /// Counts a completed handshake: `handshake`, `versions.*`, `ciphers.*`, `curves.*`.
    fn on_handshake(&self, conn: &rustls::CommonState) {
        self.handshake.inc();
        if conn.peer_certificates().is_none_or(|c| c.is_empty()) {
            self.no_certificate.inc();
        }
        // Envoy makes these on first use; so do we (a lookup per handshake, not per byte).
        if let Some(v) = conn.protocol_version().and_then(version_name) {
            self.store
                .counter(&format!("{}versions.{v}", self.prefix))
                .inc();
        }
        if let Some(suite) = conn.negotiated_cipher_suite() {
            let name = cipher_name(suite.suite());
            self.store
                .counter(&format!("{}ciphers.{name}", self.prefix))
                .inc();
        }
        if let Some(group) = conn.negotiated_key_exchange_group() {
            let name = match group.name() {
                rustls::NamedGroup::X25519 => "X25519".to_string(),
                rustls::NamedGroup::secp256r1 => "P-256".to_string(),
                rustls::NamedGroup::secp384r1 => "P-384".to_string(),
                other => format!("{other:?}"),
            };
            self.store
                .counter(&format!("{}curves.{name}", self.prefix))
                .inc();
        }
    }

    /// Counts a failed handshake under Envoy's counter for its cause.
    fn on_failure(&self, e: &std::io::Error) {
        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::NoCertificatesPresented) => self.fail_verify_no_cert.inc(),
            Some(rustls::Error::InvalidCertificate(_)) => self.fail_verify_error.inc(),
            _ => self.connection_error.inc(),
        }
    }
}

/// The TLS version as Envoy's `ssl.versions.*` names it.
pub fn version_name(v: rustls::ProtocolVersion) -> Option<&'static str> {
    match v {
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        _ => None,
    }
}

/// The cipher suite as BoringSSL names it (Envoy's `ssl.ciphers.*`).
fn cipher_name(s: rustls::CipherSuite) -> String {
    use rustls::CipherSuite as C;
    match s {
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        other => return format!("{other:?}"),
    }
    .to_string()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The versions allowed by `tls_params` (Envoy's defaults: TLSv1_2 to TLSv1_3).
fn versions(
    params: &Option<TlsParameters>,
    path: &str,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, ConfigError> {
    let TlsParameters {
        tls_minimum_protocol_version,
        tls_maximum_protocol_version,
    } = params.clone().unwrap_or_default();
    let rank = |v: Option<TlsProtocol>, default: u8, field: &str| -> Result<u8, ConfigError> {
        match v.unwrap_or(TlsProtocol::Auto) {
            TlsProtocol::Auto => Ok(default),
            TlsProtocol::V1_2 => Ok(2),
            TlsProtocol::V1_3 => Ok(3),
            TlsProtocol::V1_0 | TlsProtocol::V1_1 => Err(ConfigError::new(
                format!("{path}.tls_params.{field}"),
                "TLSv1_0 and TLSv1_1 are not supported (rustls implements TLSv1_2 and TLSv1_3)",
            )),
        }
    };
    let min = rank(
        tls_minimum_protocol_version,
        2,
        "tls_minimum_protocol_version",
    )?;
    let max = rank(
        tls_maximum_protocol_version,
        3,
        "tls_maximum_protocol_version",
    )?;
    if min > max {
        return Err(ConfigError::new(
            format!("{path}.tls_params"),
            "tls_minimum_protocol_version is above tls_maximum_protocol_version",
        ));
    }
    Ok([(2, &rustls::version::TLS12), (3, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(r, _)| (min..=max).contains(r))
        .map(|(_, v)| v)
        .collect())
}

/// Our certificate chain and key (`tls_certificates`, at most one).
fn identity(
    certs: &[TlsCertificate],
    path: &str,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, ConfigError> {
    let cert = match certs {
        [] => return Ok(None),
        [one] => one,
        _ => {
            return Err(ConfigError::new(
                format!("{path}.tls_certificates"),
                "more than one certificate is not supported",
            ))
        }
    };
    let path = format!("{path}.tls_certificates[0]");
    let TlsCertificate {
        certificate_chain,
        private_key,
    } = cert;
    let chain_path = format!("{path}.certificate_chain");
    let pem = certificate_chain
        .as_ref()
        .ok_or_else(|| ConfigError::new(&chain_path, "certificate_chain is required"))?
        .load(&chain_path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(&chain_path, format!("invalid PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(ConfigError::new(&chain_path, "no certificate found in PEM"));
    }
    let key_path = format!("{path}.private_key");
    let pem = private_key
        .as_ref()
        .ok_or_else(|| ConfigError::new(&key_path, "private_key is required"))?
        .load(&key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| ConfigError::new(&key_path, format!("invalid PEM private key: {e}")))?;
    Ok(Some((chain, key)))
}

/// The trusted CAs of a validation context, if any.
fn trusted_roots(
    v: &Option<CertificateValidationContext>,
    path: &str,
) -> Result<Option<RootCertStore>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let path = format!("{path}.validation_context");
    let CertificateValidationContext {
        trusted_ca,
        match_typed_subject_alt_names,
    } = v;
    if !match_typed_subject_alt_names.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.match_typed_subject_alt_names"),
            "subject alt name matching is not supported",
        ));
    }
    let Some(ca) = trusted_ca else {
        return Ok(None);
    };
    let ca_path = format!("{path}.trusted_ca");
    let pem = ca.load(&ca_path)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| ConfigError::new(&ca_path, format!("invalid PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ConfigError::new(&ca_path, format!("invalid CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ConfigError::new(&ca_path, "no certificate found in PEM"));
    }
    Ok(Some(roots))
}

fn alpn(protocols: &[String]) -> Vec<Vec<u8>> {
    protocols.iter().map(|p| p.as_bytes().to_vec()).collect()
}

fn rustls_error(path: &str, e: rustls::Error) -> ConfigError {
    ConfigError::new(path, e.to_string())
}

/// A listener's TLS: the rustls server config, built once, and the listener's `ssl.*` stats.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    stats: SslStats,
}

impl ServerTls {
    /// Builds from a `DownstreamTlsContext`; `scope` is the listener's stat scope.
    pub fn build(
        ctx: &DownstreamTlsContext,
        path: &str,
        store: &Store,
        scope: &str,
    ) -> Result<Self, ConfigError> {
        let DownstreamTlsContext {
            common_tls_context,
            require_client_certificate,
        } = ctx;
        let common_path = format!("{path}.common_tls_context");
        let CommonTlsContext {
            tls_params,
            tls_certificates,
            validation_context,
            alpn_protocols,
        } = common_tls_context.clone().unwrap_or_default();
        let versions = versions(&tls_params, &common_path)?;
        let (chain, key) = identity(&tls_certificates, &common_path)?.ok_or_else(|| {
            ConfigError::new(
                format!("{common_path}.tls_certificates"),
                "a server certificate is required",
            )
        })?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| rustls_error(path, e))?;
        let require = require_client_certificate.unwrap_or(false);
        let builder = match trusted_roots(&validation_context, &common_path)? {
            Some(roots) => {
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let v = if require {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                let v = v
                    .build()
                    .map_err(|e| ConfigError::new(&common_path, e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
            None if require => {
                return Err(ConfigError::new(
                    format!("{path}.require_client_certificate"),
                    "requires common_tls_context.validation_context.trusted_ca",
                ))
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| rustls_error(&format!("{common_path}.tls_certificates[0]"), e))?;
        config.alpn_protocols = alpn(&alpn_protocols);
        Ok(ServerTls {
            config: Arc::new(config),
            stats: SslStats::new(store, scope),
        })
    }

    /// Runs the server handshake on an accepted socket, counting the outcome.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        match tokio_rustls::TlsAcceptor::from(self.config.clone())
            .accept(tcp)
            .await
        {
            Ok(s) => {
                self.stats.on_handshake(s.get_ref().1);
                Ok(s)
            }
            Err(e) => {
                self.stats.on_failure(&e);
                Err(e)
            }
        }
    }
}

/// A cluster's TLS: the rustls client config, built once, the SNI and the cluster's `ssl.*` stats.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// `sni`, if set; otherwise no SNI is sent.
    sni: Option<ServerName<'static>>,
    stats: SslStats,
}

impl ClientTls {
    /// Builds from an `UpstreamTlsContext`; `default_alpn` is offered when `alpn_protocols` is
    /// empty (Envoy offers `h2` to HTTP/2 clusters).
    pub fn build(
        ctx: &UpstreamTlsContext,
        path: &str,
        store: &Store,
        scope: &str,
        default_alpn: &[&str],
    ) -> Result<Self, ConfigError> {
        let UpstreamTlsContext {
            common_tls_context,
            sni,
        } = ctx;
        let common_path = format!("{path}.common_tls_context");
        let CommonTlsContext {
            tls_params,
            tls_certificates,
            validation_context,
            alpn_protocols,
        } = common_tls_context.clone().unwrap_or_default();
        let versions = versions(&tls_params, &common_path)?;
        let provider = provider();
        let roots = trusted_roots(&validation_context, &common_path)?;
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            Some(roots) => {
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| ConfigError::new(&common_path, e.to_string()))?;
                Arc::new(ChainOnly { inner })
            }
            None => Arc::new(NoVerification {
                provider: provider.clone(),
            }),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| rustls_error(path, e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match identity(&tls_certificates, &common_path)? {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| rustls_error(&format!("{common_path}.tls_certificates[0]"), e))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = if alpn_protocols.is_empty() {
            default_alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
        } else {
            alpn(&alpn_protocols)
        };
        let sni = if sni.is_empty() {
            // rustls needs a name for the handshake; with SNI disabled it is not sent.
            config.enable_sni = false;
            None
        } else {
            Some(ServerName::try_from(sni.clone()).map_err(|e| {
                ConfigError::new(format!("{path}.sni"), format!("invalid server name: {e}"))
            })?)
        };
        Ok(ClientTls {
            config: Arc::new(config),
            sni,
            stats: SslStats::new(store, scope),
        })
    }

    /// Runs the client handshake on a connected socket, counting the outcome.
    pub async fn connect(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = match &self.sni {
            Some(n) => n.clone(),
            None => ServerName::IpAddress(tcp.peer_addr()?.ip().into()),
        };
        match tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
        {
            Ok(s) => {
                self.stats.on_handshake(s.get_ref().1);
                Ok(s)
            }
            Err(e) => {
                self.stats.on_failure(&e);
                Err(e)
            }
        }
    }
}

/// Envoy verifies the server's chain against `trusted_ca` but not its name unless SAN matchers
/// are configured: webpki's name check is the only error forgiven.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Without `trusted_ca` Envoy accepts any server certificate; the handshake signatures are
/// still checked, so the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct NoVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
