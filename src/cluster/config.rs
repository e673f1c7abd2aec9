//! Cluster protocol options: `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`.

use crate::config::{self as cfg, ConfigError, RawAny};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The HTTP protocol a cluster's endpoints speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2 with prior knowledge (h2c), required for gRPC processor clusters.
    Http2,
}

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// `HttpProtocolOptions` (the subset that selects the protocol).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpProtocolOptions {
    explicit_http_config: Option<ExplicitHttpConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplicitHttpConfig {
    http_protocol_options: Option<Http1ProtocolOptions>,
    http2_protocol_options: Option<Http2ProtocolOptions>,
}

/// `config.core.v3.Http1ProtocolOptions` (the accepted subset).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Http1ProtocolOptions {
    /// Send request trailers and read response trailers (otherwise both are dropped, as by
    /// Envoy's HTTP/1 codec).
    #[serde(default)]
    enable_trailers: bool,
}

/// What a cluster's HTTP/1.1 connections do beyond the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Http1Settings {
    /// `http_protocol_options.enable_trailers`.
    pub enable_trailers: bool,
}

/// `config.core.v3.Http2ProtocolOptions`: accepted window and stream settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2ProtocolOptions {
    /// SETTINGS_MAX_CONCURRENT_STREAMS we announce.
    pub max_concurrent_streams: Option<u32>,
    /// Initial stream flow-control window.
    pub initial_stream_window_size: Option<u32>,
    /// Initial connection flow-control window.
    pub initial_connection_window_size: Option<u32>,
}

/// Reads the protocol from `typed_extension_protocol_options` (or the deprecated
/// `http2_protocol_options` cluster field), with the HTTP/1.1 settings.
pub fn protocol(
    options: &BTreeMap<String, RawAny>,
    legacy_http2: &Option<serde_json::Value>,
    path: &str,
) -> Result<(UpstreamProtocol, Http1Settings), ConfigError> {
    let mut http1 = Http1Settings::default();
    let mut protocol = if legacy_http2.is_some() {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    for (key, any) in options {
        let p = format!("{path}.typed_extension_protocol_options.{key}");
        let ty = cfg::any_type(any, &p)?;
        if key != HTTP_PROTOCOL_OPTIONS || ty != HTTP_PROTOCOL_OPTIONS {
            return Err(ConfigError::new(
                p,
                format!("unsupported protocol options {key} ({ty})"),
            ));
        }
        let opts: HttpProtocolOptions = cfg::decode_any(any, &p)?;
        match opts.explicit_http_config {
            Some(ExplicitHttpConfig { http2_protocol_options: Some(_), http_protocol_options: None }) => {
                protocol = UpstreamProtocol::Http2;
            }
            Some(ExplicitHttpConfig { http_protocol_options: Some(o), http2_protocol_options: None }) => {
                let Http1ProtocolOptions { enable_trailers } = o;
                protocol = UpstreamProtocol::Http1;
                http1 = Http1Settings { enable_trailers };
            }
            Some(_) => {
                return Err(ConfigError::new(
                    format!("{p}.explicit_http_config"),
                    "exactly one of http_protocol_options or http2_protocol_options must be set",
                ))
            }
            None => {
                return Err(ConfigError::new(
                    format!("{p}.explicit_http_config"),
                    "explicit_http_config is required (auto_config and use_downstream_protocol_config are not supported)",
                ))
            }
        }
    }
    Ok((protocol, http1))
}
