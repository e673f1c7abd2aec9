//! `envoy.extensions.transport_sockets.tls.v3` as config data: the subset extproxy supports.
//! Any other field is refused by `deny_unknown_fields`, naming its path.

use crate::config::ConfigError;
use crate::filter::common::string_matcher::StringMatcherConfig;
use crate::proto_enum;
use serde::Deserialize;

/// `DownstreamTlsContext`: the listener side.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DownstreamTlsContext {
    /// Certificates, validation, ALPN, protocol versions.
    pub common_tls_context: Option<CommonTlsContext>,
    /// Refuse clients without a valid certificate (mTLS); needs `validation_context.trusted_ca`.
    pub require_client_certificate: Option<bool>,
}

/// `UpstreamTlsContext`: the cluster side.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsContext {
    /// Client certificate (mTLS), validation of the server, ALPN, protocol versions.
    pub common_tls_context: Option<CommonTlsContext>,
    /// Server name sent in the ClientHello; none when empty.
    #[serde(default)]
    pub sni: String,
}

/// `CommonTlsContext`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CommonTlsContext {
    /// Protocol versions.
    pub tls_params: Option<TlsParameters>,
    /// Our certificate chain and key (at most one is supported).
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    /// How the peer's certificate is validated.
    pub validation_context: Option<CertificateValidationContext>,
    /// ALPN protocols offered (upstream) or accepted in preference order (downstream).
    #[serde(default)]
    pub alpn_protocols: Vec<String>,
}

proto_enum!(
    /// `TlsParameters.TlsProtocol`.
    TlsProtocol "extensions.transport_sockets.tls.v3.TlsParameters.TlsProtocol" {
        Auto = ("TLS_AUTO", 0),
        V1_0 = ("TLSv1_0", 1),
        V1_1 = ("TLSv1_1", 2),
        V1_2 = ("TLSv1_2", 3),
        V1_3 = ("TLSv1_3", 4),
    }
);

/// `TlsParameters` (versions only; cipher suites and curves are rustls's defaults).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsParameters {
    /// Lowest version accepted (default TLSv1_2).
    pub tls_minimum_protocol_version: Option<TlsProtocol>,
    /// Highest version accepted (default TLSv1_3).
    pub tls_maximum_protocol_version: Option<TlsProtocol>,
}

/// `TlsCertificate`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// PEM certificate chain, leaf first.
    pub certificate_chain: Option<DataSource>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: Option<DataSource>,
}

/// `CertificateValidationContext`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CertificateValidationContext {
    /// PEM bundle of trusted CAs; without it the peer's certificate is not verified.
    pub trusted_ca: Option<DataSource>,
    /// The peer's certificate must carry one subject alt name matching one of these.
    #[serde(default)]
    pub match_typed_subject_alt_names: Vec<SubjectAltNameMatcher>,
}

proto_enum!(
    /// `SubjectAltNameMatcher.SanType`.
    SanType "extensions.transport_sockets.tls.v3.SubjectAltNameMatcher.SanType" {
        Unspecified = ("SAN_TYPE_UNSPECIFIED", 0),
        Email = ("EMAIL", 1),
        Dns = ("DNS", 2),
        Uri = ("URI", 3),
        IpAddress = ("IP_ADDRESS", 4),
        OtherName = ("OTHER_NAME", 5),
    }
);

/// `SubjectAltNameMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectAltNameMatcher {
    /// Which kind of subject alt name to match (DNS and IP_ADDRESS are supported).
    pub san_type: SanType,
    /// The matcher applied to each name of that kind.
    pub matcher: StringMatcherConfig,
}

/// `config.core.v3.DataSource`: exactly one of the fields.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// Read from this file at config time.
    pub filename: Option<String>,
    /// The bytes themselves, as text.
    pub inline_string: Option<String>,
    /// The bytes themselves, base64 (proto JSON `bytes`).
    pub inline_bytes: Option<String>,
    /// Read from this environment variable.
    pub environment_variable: Option<String>,
}

impl DataSource {
    /// The bytes, read once at config time.
    pub fn load(&self, path: &str) -> Result<Vec<u8>, ConfigError> {
        use base64::Engine as _;
        let DataSource {
            filename,
            inline_string,
            inline_bytes,
            environment_variable,
        } = self;
        match (filename, inline_string, inline_bytes, environment_variable) {
            (Some(f), None, None, None) => std::fs::read(f)
                .map_err(|e| ConfigError::new(format!("{path}.filename"), format!("unable to read file: {f}: {e}"))),
            (None, Some(s), None, None) => Ok(s.as_bytes().to_vec()),
            (None, None, Some(b), None) => base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| ConfigError::new(format!("{path}.inline_bytes"), format!("invalid base64: {e}"))),
            (None, None, None, Some(v)) => std::env::var(v).map(String::into_bytes).map_err(|_| {
                ConfigError::new(format!("{path}.environment_variable"), format!("environment variable {v} is not set"))
            }),
            _ => Err(ConfigError::new(
                path,
                "exactly one of filename, inline_string, inline_bytes or environment_variable must be set",
            )),
        }
    }
}
