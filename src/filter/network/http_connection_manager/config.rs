//! `HttpConnectionManager` and its inline `RouteConfiguration` as plain serde data, with Envoy's
//! field names. A field that is not here is rejected with its path (`deny_unknown_fields`).

use crate::config::core::HeaderValueOption;
use crate::config::{Duration, RawAny};
use crate::filter::common::string_matcher::{RegexMatcherConfig, StringMatcherConfig};
use crate::proto_enum;
use serde::Deserialize;
use std::collections::BTreeMap;

proto_enum!(
    /// `HttpConnectionManager.CodecType`.
    CodecType "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.CodecType" {
        Auto = ("AUTO", 0),
        Http1 = ("HTTP1", 1),
        Http2 = ("HTTP2", 2),
    }
);

proto_enum!(
    /// `HttpConnectionManager.ServerHeaderTransformation`.
    ServerHeaderTransformation "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.ServerHeaderTransformation" {
        Overwrite = ("OVERWRITE", 0),
        AppendIfAbsent = ("APPEND_IF_ABSENT", 1),
        PassThrough = ("PASS_THROUGH", 2),
    }
);

/// `envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectionManager {
    /// Stats live under `http.<stat_prefix>.` (required).
    pub stat_prefix: String,
    /// Downstream codec (default AUTO: HTTP/1.1, or HTTP/2 when the client sends the preface).
    pub codec_type: Option<CodecType>,
    /// The inline route table (RDS is not supported).
    pub route_config: Option<RouteConfiguration>,
    /// HTTP filters in order; the last one must be `envoy.filters.http.router`.
    #[serde(default)]
    pub http_filters: Vec<HttpFilterConfig>,
    /// Time to receive the whole request (default: disabled).
    pub request_timeout: Option<Duration>,
    /// Time to receive the request headers (default: disabled).
    pub request_headers_timeout: Option<Duration>,
    /// Time a stream may see no activity (default 5 min; 0 disables).
    pub stream_idle_timeout: Option<Duration>,
    /// Largest request header block in KiB (default 60).
    pub max_request_headers_kb: Option<u32>,
    /// Connection-level protocol options.
    pub common_http_protocol_options: Option<HttpProtocolOptions>,
    /// `http_protocol_options` (HTTP/1.1); only `accept_http_10: false` is accepted.
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    /// `http2_protocol_options`: settings and flood limits of the downstream HTTP/2 codec.
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    /// Add `x-request-id` when absent (default true).
    pub generate_request_id: Option<bool>,
    /// Keep the client's `x-request-id` on edge requests.
    #[serde(default)]
    pub preserve_external_request_id: bool,
    /// Echo `x-request-id` in responses.
    #[serde(default)]
    pub always_set_request_id_in_response: bool,
    /// Treat the peer address as the client address: append it to `x-forwarded-for`.
    pub use_remote_address: Option<bool>,
    /// Trusted proxies in front of this one (`x-forwarded-for` hops to skip).
    #[serde(default)]
    pub xff_num_trusted_hops: u32,
    /// Do not append to `x-forwarded-for` even with `use_remote_address`.
    #[serde(default)]
    pub skip_xff_append: bool,
    /// The `server` response header value (default `envoy`).
    pub server_name: Option<String>,
    /// What to do with an upstream `server` header (default OVERWRITE).
    pub server_header_transformation: Option<ServerHeaderTransformation>,
    /// Access logs are not supported; an empty list is accepted.
    #[serde(default)]
    pub access_log: Vec<serde_json::Value>,
    /// How long a connection drained by the idle timeout may take to close (on shutdown the
    /// server's drain time applies).
    pub drain_timeout: Option<Duration>,
    /// Accepted for compatibility; the connection is closed right after the last write.
    pub delayed_close_timeout: Option<Duration>,
}

/// `config.core.v3.HttpProtocolOptions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProtocolOptions {
    /// Close a connection without streams after this long (default 1 h; 0 disables).
    pub idle_timeout: Option<Duration>,
    /// Most request headers accepted (default 100) → 431.
    pub max_headers_count: Option<u32>,
    /// Longest stream lifetime (default: unlimited).
    pub max_stream_duration: Option<Duration>,
}

/// `config.core.v3.Http1ProtocolOptions` (the accepted subset).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http1ProtocolOptions {
    /// HTTP/1.0 support is not implemented: only `false` is accepted (HTTP/1.0 gets 426).
    #[serde(default)]
    pub accept_http_10: bool,
    /// Accept `Content-Length` together with `Transfer-Encoding: chunked` (the length is
    /// dropped); otherwise such a request gets 400.
    #[serde(default)]
    pub allow_chunked_length: bool,
    /// Read a client's request trailers and write response trailers (otherwise both are
    /// dropped, as by Envoy's HTTP/1 codec).
    #[serde(default)]
    pub enable_trailers: bool,
}

/// `config.core.v3.Http2ProtocolOptions` as the downstream codec (h2) applies it. Fields whose
/// protection h2 gives in its own way are accepted (see `docs/envoy-differences.md`); fields
/// with no equivalent are errors naming their path.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2ProtocolOptions {
    /// SETTINGS_HEADER_TABLE_SIZE we announce.
    pub hpack_table_size: Option<u32>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS we announce (h2 refuses streams over it).
    pub max_concurrent_streams: Option<u32>,
    /// Initial stream flow-control window.
    pub initial_stream_window_size: Option<u32>,
    /// Initial connection flow-control window.
    pub initial_connection_window_size: Option<u32>,
    /// Extended CONNECT; only `false` (not supported).
    #[serde(default)]
    pub allow_connect: bool,
    /// METADATA frames; only `false` (not supported).
    #[serde(default)]
    pub allow_metadata: bool,
    /// Envoy's cap on queued outbound frames. Accepted: h2 bounds what it queues by
    /// back-pressure (`max_send_buf_size` per stream, one pending PING/SETTINGS ACK) instead.
    pub max_outbound_frames: Option<u32>,
    /// Envoy's cap on queued PING/SETTINGS/RST_STREAM ACKs. Accepted: h2 holds one pending ACK
    /// and stops reading until it is written; RST_STREAM floods are cut by the reset limits.
    pub max_outbound_control_frames: Option<u32>,
    /// Envoy's cap on consecutive frames with an empty payload: no h2 equivalent (error).
    pub max_consecutive_inbound_frames_with_empty_payload: Option<u32>,
    /// Envoy's cap on PRIORITY frames per stream. Accepted: h2 ignores PRIORITY frames and
    /// keeps no state for them.
    pub max_inbound_priority_frames_per_stream: Option<u32>,
    /// Envoy's cap on WINDOW_UPDATE frames per DATA frame sent. Accepted: a WINDOW_UPDATE only
    /// adjusts a counter in h2 (nothing is queued or allocated).
    pub max_inbound_window_update_frames_per_data_frame_sent: Option<u32>,
    /// Stream errors instead of connection errors: not supported (error).
    pub stream_error_on_invalid_http_messaging: Option<bool>,
    /// Not supported (error).
    pub override_stream_error_on_invalid_http_message: Option<bool>,
    /// Not supported (error).
    #[serde(default)]
    pub custom_settings_parameters: Vec<serde_json::Value>,
    /// PING keepalive.
    pub connection_keepalive: Option<KeepaliveSettings>,
    /// Not supported (error).
    pub use_oghttp2_codec: Option<bool>,
    /// Not supported (error).
    pub max_metadata_size: Option<u64>,
}

/// `config.core.v3.KeepaliveSettings`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSettings {
    /// Send a PING this often.
    pub interval: Option<Duration>,
    /// Close when a PING is not answered within this.
    pub timeout: Option<Duration>,
    /// Not supported (error).
    pub interval_jitter: Option<serde_json::Value>,
    /// Not supported (error).
    pub connection_idle_interval: Option<Duration>,
}

/// An `http_filters` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFilterConfig {
    /// The filter's name (key of `typed_per_filter_config`).
    pub name: String,
    /// The filter's config.
    pub typed_config: Option<RawAny>,
}

/// `config.route.v3.RouteConfiguration`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteConfiguration {
    /// Name (informational).
    #[serde(default)]
    pub name: String,
    /// Virtual hosts, selected by `:authority`.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Headers added to every request (applied after virtual host and route).
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// Headers removed from every request.
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    /// Headers added to every response.
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Headers removed from every response.
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    /// Accepted; clusters are always checked at build time.
    pub validate_clusters: Option<bool>,
    /// Headers only internal requests may carry.
    #[serde(default)]
    pub internal_only_headers: Vec<String>,
}

/// `config.route.v3.VirtualHost`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Name (used in stats by Envoy; informational here).
    pub name: String,
    /// Host names: exact, `*`, `*.suffix`, `prefix.*`.
    pub domains: Vec<String>,
    /// Routes, matched in order.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Headers added to requests of this virtual host.
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// Headers removed from requests of this virtual host.
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    /// Headers added to responses of this virtual host.
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Headers removed from responses of this virtual host.
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    /// Per-filter config by filter name.
    #[serde(default)]
    pub typed_per_filter_config: BTreeMap<String, RawAny>,
}

/// `config.route.v3.Route`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Route name.
    #[serde(default)]
    pub name: String,
    /// What the request must look like.
    #[serde(rename = "match")]
    pub match_: RouteMatch,
    /// Forward to a cluster.
    pub route: Option<RouteAction>,
    /// Answer directly.
    pub direct_response: Option<DirectResponseAction>,
    /// Headers added to requests of this route.
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    /// Headers removed from requests of this route.
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    /// Headers added to responses of this route.
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    /// Headers removed from responses of this route.
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    /// Per-filter config by filter name.
    #[serde(default)]
    pub typed_per_filter_config: BTreeMap<String, RawAny>,
}

/// `config.route.v3.RouteMatch`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Path prefix.
    pub prefix: Option<String>,
    /// Exact path (query excluded).
    pub path: Option<String>,
    /// Full-match regex on the path (query excluded).
    pub safe_regex: Option<RegexMatcherConfig>,
    /// Case-sensitive `prefix` / `path` (default true).
    pub case_sensitive: Option<bool>,
    /// All must match.
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
}

/// `config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    /// Header name (pseudo-headers `:path`, `:method`, `:authority`, `:scheme` allowed).
    pub name: String,
    /// Match the value.
    pub string_match: Option<StringMatcherConfig>,
    /// Header present (`true`) or absent (`false`).
    pub present_match: Option<bool>,
    /// Deprecated forms.
    pub exact_match: Option<String>,
    /// Deprecated.
    pub prefix_match: Option<String>,
    /// Deprecated.
    pub suffix_match: Option<String>,
    /// Deprecated.
    pub contains_match: Option<String>,
    /// Deprecated.
    pub safe_regex_match: Option<RegexMatcherConfig>,
    /// Invert the result.
    #[serde(default)]
    pub invert_match: bool,
    /// A missing header matches as the empty string.
    #[serde(default)]
    pub treat_missing_header_as_empty: bool,
}

/// `config.route.v3.RouteAction`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    /// Target cluster.
    pub cluster: Option<String>,
    /// Replace the matched prefix (or whole path for `path` matches).
    pub prefix_rewrite: Option<String>,
    /// Upstream timeout, from the end of the request to the end of the response (default
    /// 15 s; `0s` disables).
    pub timeout: Option<Duration>,
    /// Stream idle timeout for this route (overrides the HCM's).
    pub idle_timeout: Option<Duration>,
    /// Replace `:authority` with this value.
    pub host_rewrite_literal: Option<String>,
}

/// `config.route.v3.DirectResponseAction`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseAction {
    /// Status.
    pub status: u16,
    /// Body.
    pub body: Option<DataSource>,
}

/// `config.core.v3.DataSource` (inline forms only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// Inline text.
    pub inline_string: Option<String>,
    /// Inline bytes (base64).
    #[serde(default, with = "crate::config::core::base64_bytes")]
    pub inline_bytes: Vec<u8>,
}
