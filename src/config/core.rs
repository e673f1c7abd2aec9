//! `envoy.config.core.v3` types shared by listeners, clusters and filters.

use super::value::Duration;
use super::ConfigError;
use crate::proto_enum;
use serde::Deserialize;

/// `config.core.v3.Address`: a TCP socket address or a Unix socket (`pipe`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// TCP address.
    pub socket_address: Option<SocketAddress>,
    /// Unix domain socket.
    pub pipe: Option<Pipe>,
}

proto_enum!(
    /// `SocketAddress.Protocol`.
    Protocol "config.core.v3.SocketAddress.Protocol" { Tcp = ("TCP", 0) }
);

/// `config.core.v3.SocketAddress`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SocketAddress {
    /// IP address or, for DNS clusters, a host name.
    pub address: String,
    /// Port; 0 binds an ephemeral port (listeners only).
    #[serde(default)]
    pub port_value: u16,
    /// Only TCP is supported (UDP listeners are not).
    pub protocol: Option<Protocol>,
    /// Accepted for compatibility; must be false (IPv4-mapped dual stack is the OS default).
    #[serde(default)]
    pub ipv4_compat: bool,
}

/// `config.core.v3.Pipe`: a Unix socket path.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pipe {
    /// Filesystem path (abstract sockets `@name` are not supported).
    pub path: String,
    /// File mode for listeners.
    #[serde(default)]
    pub mode: u32,
}

/// `config.core.v3.TransportSocket`: how bytes are carried on a connection (plain or TLS). Its
/// `typed_config` is decoded by `crate::transport_socket`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSocket {
    /// Extension name: `envoy.transport_sockets.tls` or `envoy.transport_sockets.raw_buffer`.
    pub name: String,
    /// `DownstreamTlsContext` (listeners) or `UpstreamTlsContext` (clusters).
    pub typed_config: Option<super::RawAny>,
}

/// A resolved address: where to bind or connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResolvedAddress {
    /// An IP socket address, or a host name still to resolve (for DNS clusters).
    Tcp {
        /// IP literal or host name.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket path.
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for ResolvedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolvedAddress::Tcp { host, port } if host.contains(':') => {
                write!(f, "[{host}]:{port}")
            }
            ResolvedAddress::Tcp { host, port } => write!(f, "{host}:{port}"),
            ResolvedAddress::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Address {
    /// Checks that exactly one form is set and returns it.
    pub fn resolve(&self, path: &str) -> Result<ResolvedAddress, ConfigError> {
        match (&self.socket_address, &self.pipe) {
            (Some(sa), None) => {
                if sa.ipv4_compat {
                    return Err(ConfigError::new(
                        format!("{path}.socket_address.ipv4_compat"),
                        "not supported",
                    ));
                }
                Ok(ResolvedAddress::Tcp {
                    host: sa.address.clone(),
                    port: sa.port_value,
                })
            }
            (None, Some(p)) => {
                if p.path.starts_with('@') {
                    return Err(ConfigError::new(
                        format!("{path}.pipe.path"),
                        "abstract Unix sockets are not supported",
                    ));
                }
                Ok(ResolvedAddress::Unix(p.path.clone().into()))
            }
            _ => Err(ConfigError::new(
                path,
                "exactly one of socket_address or pipe must be set",
            )),
        }
    }
}

/// `config.core.v3.HeaderValue`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    /// Header name.
    pub key: String,
    /// Header value as text.
    #[serde(default)]
    pub value: String,
    /// Header value as bytes (base64 in JSON/YAML); wins over `value` when set.
    #[serde(default, with = "base64_bytes")]
    pub raw_value: Vec<u8>,
}

impl HeaderValue {
    /// The value bytes: `raw_value` if set, else `value`.
    pub fn bytes(&self) -> &[u8] {
        if self.raw_value.is_empty() {
            self.value.as_bytes()
        } else {
            &self.raw_value
        }
    }
}

proto_enum!(
    /// `HeaderValueOption.HeaderAppendAction`.
    HeaderAppendAction "config.core.v3.HeaderValueOption.HeaderAppendAction" {
        AppendIfExistsOrAdd = ("APPEND_IF_EXISTS_OR_ADD", 0),
        AddIfAbsent = ("ADD_IF_ABSENT", 1),
        OverwriteIfExistsOrAdd = ("OVERWRITE_IF_EXISTS_OR_ADD", 2),
        OverwriteIfExists = ("OVERWRITE_IF_EXISTS", 3),
    }
);

/// `config.core.v3.HeaderValueOption` (used by `request_headers_to_add` and friends).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    /// The header.
    pub header: HeaderValue,
    /// Legacy append flag (deprecated in Envoy in favour of `append_action`).
    pub append: Option<bool>,
    /// What to do when the header exists.
    pub append_action: Option<HeaderAppendAction>,
    /// Keep the header even if its value is empty.
    #[serde(default)]
    pub keep_empty_value: bool,
}

/// `config.core.v3.GrpcService`: the side-stream target of the ext_proc filters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrpcService {
    /// Envoy's own gRPC client, pointed at a cluster. (`google_grpc` is not supported.)
    pub envoy_grpc: Option<EnvoyGrpc>,
    /// Per-stream timeout (deadline of the whole gRPC stream); unset means none.
    pub timeout: Option<Duration>,
    /// Extra request headers on every side stream.
    #[serde(default)]
    pub initial_metadata: Vec<HeaderValue>,
}

/// `GrpcService.EnvoyGrpc`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvoyGrpc {
    /// Name of the cluster that hosts the gRPC service (must speak HTTP/2).
    pub cluster_name: String,
    /// `:authority` of the side streams; defaults to the cluster name.
    #[serde(default)]
    pub authority: String,
    /// Largest response message accepted; 0 means the default (unlimited in Envoy; 4 GiB here).
    #[serde(default)]
    pub max_receive_message_length: Option<u32>,
    /// Do not add `x-envoy-internal` / `x-forwarded-for` to side streams.
    #[serde(default)]
    pub skip_envoy_headers: bool,
}

impl GrpcService {
    /// The Envoy gRPC target, which is required (`google_grpc` is rejected by deserialization).
    pub fn envoy_grpc(&self, path: &str) -> Result<&EnvoyGrpc, ConfigError> {
        self.envoy_grpc
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{path}.envoy_grpc"), "envoy_grpc is required"))
    }
}

/// serde helper: protobuf `bytes` fields are base64 in JSON.
pub mod base64_bytes {
    use serde::{de, Deserialize, Deserializer};

    /// Decodes standard or URL-safe base64, with or without padding.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).ok_or_else(|| de::Error::custom("invalid base64 in bytes field"))
    }

    /// Base64 decoding (RFC 4648, both alphabets); a hand-rolled 20 lines beats a dependency here.
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let mut acc: u32 = 0;
        let mut bits = 0;
        for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' | b'-' => 62,
                b'/' | b'_' => 63,
                _ => return None,
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn decodes_base64() {
            assert_eq!(super::decode("aGVsbG8=").unwrap(), b"hello");
            assert_eq!(super::decode("aGVsbG8").unwrap(), b"hello");
            assert!(super::decode("a*b").is_none());
        }
    }
}
