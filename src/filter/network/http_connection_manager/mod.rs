//! `envoy.filters.network.http_connection_manager` (HCM): HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge) on hyper, Envoy's request/response header handling, the route table, local
//! replies and the per-request HTTP filter chain.
//!
//! # Layout
//! - [`config`]: the `HttpConnectionManager` and `RouteConfiguration` serde structs;
//! - [`route`]: the built route table (virtual hosts, matchers, header mutations);
//! - [`headers`]: Envoy's request header mutations (`x-forwarded-*`, `x-request-id`, hop-by-hop);
//! - [`local_reply`]: local replies, plain and gRPC;
//! - `stream`: one request's lifecycle (decode → router → encode, abort and timeouts);
//! - `codec`: the connection: codec detection, hyper setup, idle timeout, drain, and Envoy's
//!   answers to malformed HTTP/1.1.
//!
//! ```text
//! TCP ─► codec (AUTO: preface sniff) ─► hyper http1/http2 ─► stream::handle (per request)
//!        prepare (checks, normalise, x-forwarded-*, x-request-id) ─► route match
//!        ─► decode: ext_proc* ─► router ─► cluster pool ─► upstream
//!        ◄─ encode: ext_proc* (reverse) ◄─ date/server ◄─ response
//! ```

mod codec;
pub mod config;
mod downstream_io;
pub mod headers;
mod http1_guard;
pub mod local_reply;
pub mod route;
mod stream;

use crate::config::{self as cfg, ConfigError, RawAny};
use crate::filter::http::{self as http_filter, ext_proc, router, HttpFilter};
use crate::stats::{Counter, Gauge, Store};
use config::{CodecType, HttpConnectionManager, ServerHeaderTransformation};
use headers::RequestHeaderPolicy;
use http::HeaderValue;
use route::RouteTable;
use std::sync::Arc;
use std::time::Duration;
use stream::ServerHeader;

/// Extension name.
pub const NAME: &str = "envoy.filters.network.http_connection_manager";
/// `@type` of the typed config.
pub const TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Envoy's default `stream_idle_timeout`.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Envoy's default connection `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default `drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters and gauges under `http.<stat_prefix>.`.
#[derive(Debug)]
pub struct HcmStats {
    downstream_cx_total: Counter,
    downstream_cx_active: Gauge,
    downstream_cx_http1_total: Counter,
    downstream_cx_http2_total: Counter,
    downstream_cx_http1_active: Gauge,
    downstream_cx_http2_active: Gauge,
    downstream_cx_destroy: Counter,
    downstream_cx_protocol_error: Counter,
    downstream_cx_idle_timeout: Counter,
    downstream_cx_rx_bytes_total: Counter,
    downstream_cx_tx_bytes_total: Counter,
    downstream_rq_total: Counter,
    downstream_rq_http1_total: Counter,
    downstream_rq_http2_total: Counter,
    downstream_rq_active: Gauge,
    downstream_rq_completed: Counter,
    /// `downstream_rq_1xx` … `downstream_rq_5xx`.
    downstream_rq_class: [Counter; 5],
    downstream_rq_timeout: Counter,
    downstream_rq_idle_timeout: Counter,
    downstream_rq_header_timeout: Counter,
    downstream_rq_failed_path_normalization: Counter,
    downstream_rq_tx_reset: Counter,
}

impl HcmStats {
    fn new(store: &Store, prefix: &str) -> Self {
        let c = |s: &str| store.counter(&format!("http.{prefix}.{s}"));
        let g = |s: &str| store.gauge(&format!("http.{prefix}.{s}"));
        HcmStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_http1_active: g("downstream_cx_http1_active"),
            downstream_cx_http2_active: g("downstream_cx_http2_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_class: [
                c("downstream_rq_1xx"),
                c("downstream_rq_2xx"),
                c("downstream_rq_3xx"),
                c("downstream_rq_4xx"),
                c("downstream_rq_5xx"),
            ],
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_rq_failed_path_normalization: c("downstream_rq_failed_path_normalization"),
            downstream_rq_tx_reset: c("downstream_rq_tx_reset"),
        }
    }
}

/// HTTP/2 codec settings of the downstream side.
#[derive(Debug, Clone, Copy, Default)]
struct Http2Settings {
    header_table_size: Option<u32>,
    max_concurrent_streams: Option<u32>,
    initial_stream_window_size: Option<u32>,
    initial_connection_window_size: Option<u32>,
    keepalive_interval: Option<Duration>,
    keepalive_timeout: Option<Duration>,
}

/// Maps `http2_protocol_options` onto h2's settings; see [`config::Http2ProtocolOptions`] for
/// the fields accepted because h2 protects the same way, and the ones refused.
fn http2_settings(
    o: config::Http2ProtocolOptions,
    path: &str,
) -> Result<Http2Settings, ConfigError> {
    let config::Http2ProtocolOptions {
        hpack_table_size,
        max_concurrent_streams,
        initial_stream_window_size,
        initial_connection_window_size,
        allow_connect,
        allow_metadata,
        max_outbound_frames: _, // h2: back-pressure bounds queued frames
        max_outbound_control_frames: _, // h2: one pending ACK, reading stops until written
        max_consecutive_inbound_frames_with_empty_payload,
        max_inbound_priority_frames_per_stream: _, // h2 ignores PRIORITY
        max_inbound_window_update_frames_per_data_frame_sent: _, // a counter update in h2
        stream_error_on_invalid_http_messaging,
        override_stream_error_on_invalid_http_message,
        custom_settings_parameters,
        connection_keepalive,
        use_oghttp2_codec,
        max_metadata_size,
    } = o;
    let unsupported =
        |field: &str, why: &str| Err(ConfigError::new(format!("{path}.{field}"), why.to_string()));
    if allow_connect {
        return unsupported("allow_connect", "extended CONNECT is not supported");
    }
    if allow_metadata {
        return unsupported("allow_metadata", "METADATA frames are not supported");
    }
    if max_consecutive_inbound_frames_with_empty_payload.is_some() {
        return unsupported(
            "max_consecutive_inbound_frames_with_empty_payload",
            "not supported by the HTTP/2 codec (h2)",
        );
    }
    if stream_error_on_invalid_http_messaging.is_some() {
        return unsupported(
            "stream_error_on_invalid_http_messaging",
            "not supported by the HTTP/2 codec (h2)",
        );
    }
    if override_stream_error_on_invalid_http_message.is_some() {
        return unsupported(
            "override_stream_error_on_invalid_http_message",
            "not supported by the HTTP/2 codec (h2)",
        );
    }
    if !custom_settings_parameters.is_empty() {
        return unsupported(
            "custom_settings_parameters",
            "not supported by the HTTP/2 codec (h2)",
        );
    }
    if use_oghttp2_codec.is_some() {
        return unsupported("use_oghttp2_codec", "extproxy's HTTP/2 codec is h2");
    }
    if max_metadata_size.is_some() {
        return unsupported("max_metadata_size", "METADATA frames are not supported");
    }
    let (mut keepalive_interval, mut keepalive_timeout) = (None, None);
    if let Some(config::KeepaliveSettings {
        interval,
        timeout,
        interval_jitter,
        connection_idle_interval,
    }) = connection_keepalive
    {
        if interval_jitter.is_some() {
            return unsupported("connection_keepalive.interval_jitter", "not supported");
        }
        if connection_idle_interval.is_some() {
            return unsupported(
                "connection_keepalive.connection_idle_interval",
                "not supported",
            );
        }
        keepalive_interval = interval.map(|d| d.get()).filter(|d| !d.is_zero());
        keepalive_timeout = timeout.map(|d| d.get());
    }
    Ok(Http2Settings {
        header_table_size: hpack_table_size,
        max_concurrent_streams,
        initial_stream_window_size,
        initial_connection_window_size,
        keepalive_interval,
        keepalive_timeout,
    })
}

/// The built filter, shared by all connections of a listener.
#[derive(Debug)]
pub struct Filter {
    stat_prefix: Arc<str>,
    codec: CodecType,
    routes: RouteTable,
    /// HTTP filters in order; the last is the router.
    filters: Vec<HttpFilter>,
    router: Arc<router::Router>,
    request_timeout: Option<Duration>,
    request_headers_timeout: Option<Duration>,
    stream_idle_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    /// How long a connection drained by the idle timeout may take to end (the server's
    /// `--drain-time-s` applies on shutdown).
    drain_timeout: Duration,
    max_request_headers_bytes: usize,
    max_headers_count: usize,
    /// `http_protocol_options.allow_chunked_length`.
    allow_chunked_length: bool,
    /// `http_protocol_options.enable_trailers`: HTTP/1.1 trailers in both directions.
    enable_trailers: bool,
    header_policy: RequestHeaderPolicy,
    always_set_request_id_in_response: bool,
    server_name: HeaderValue,
    server_header: ServerHeader,
    http2: Http2Settings,
    stats: HcmStats,
}

fn opt_timeout(d: Option<cfg::Duration>, default: Option<Duration>) -> Option<Duration> {
    match d {
        None => default,
        Some(d) if d.get().is_zero() => None,
        Some(d) => Some(d.get()),
    }
}

/// Builds the filter from its typed config.
pub fn build(
    any: &RawAny,
    path: &str,
    ctx: &super::BuildContext<'_>,
) -> Result<Arc<Filter>, ConfigError> {
    let hcm: HttpConnectionManager = cfg::decode_any(any, path)?;
    let HttpConnectionManager {
        stat_prefix,
        codec_type,
        route_config,
        http_filters,
        request_timeout,
        request_headers_timeout,
        stream_idle_timeout,
        max_request_headers_kb,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        use_remote_address,
        xff_num_trusted_hops,
        skip_xff_append,
        server_name,
        server_header_transformation,
        access_log,
        drain_timeout,
        delayed_close_timeout: _, // connections close right after the last write
    } = hcm;
    if stat_prefix.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.stat_prefix"),
            "stat_prefix is required",
        ));
    }
    if !access_log.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.access_log"),
            "access logs are not supported",
        ));
    }
    let config::Http1ProtocolOptions {
        accept_http_10,
        allow_chunked_length,
        enable_trailers,
    } = http_protocol_options.unwrap_or_default();
    if accept_http_10 {
        return Err(ConfigError::new(
            format!("{path}.http_protocol_options.accept_http_10"),
            "HTTP/1.0 is not supported",
        ));
    }
    let route_config = route_config.ok_or_else(|| {
        ConfigError::new(
            format!("{path}.route_config"),
            "route_config is required (RDS is not supported)",
        )
    })?;
    let routes = RouteTable::build(&route_config, &format!("{path}.route_config"), ctx.clusters)?;
    let internal_only_headers = route_config
        .internal_only_headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                ConfigError::new(
                    format!("{path}.route_config.internal_only_headers[{i}]"),
                    format!("invalid header name {h:?}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    fn hctx<'a>(
        name: &'a str,
        prefix: &'a str,
        ctx: &super::BuildContext<'a>,
    ) -> http_filter::BuildContext<'a> {
        http_filter::BuildContext {
            filter_name: name,
            hcm_stat_prefix: prefix,
            clusters: ctx.clusters,
            stats: ctx.stats,
            buffer_limit: ctx.buffer_limit,
        }
    }
    let mut filters = Vec::new();
    let mut the_router = None;
    for (i, hf) in http_filters.iter().enumerate() {
        let fpath = format!("{path}.http_filters[{i}]");
        if the_router.is_some() {
            return Err(ConfigError::new(
                format!("{fpath}.name"),
                format!("terminal filter named {} of type {} must be the last filter in a http filter chain", router::NAME, router::NAME),
            ));
        }
        let tpath = format!("{fpath}.typed_config");
        let ty = match &hf.typed_config {
            Some(any) => Some(cfg::any_type(any, &tpath)?),
            None => None,
        };
        let kind = match ty.as_deref() {
            Some(router::TYPE) => router::NAME,
            Some(ext_proc::TYPE) => ext_proc::NAME,
            Some(other) => {
                return Err(ConfigError::new(
                    format!("{tpath}.@type"),
                    format!(
                        "unsupported HTTP filter type {other} (supported: {}, {})",
                        ext_proc::TYPE,
                        router::TYPE
                    ),
                ))
            }
            None => hf.name.as_str(),
        };
        match kind {
            router::NAME => {
                let r = router::build(
                    hf.typed_config.as_ref(),
                    &tpath,
                    &hctx(&hf.name, &stat_prefix, ctx),
                )?;
                filters.push(HttpFilter::Router(r.clone()));
                the_router = Some(r);
            }
            ext_proc::NAME => {
                let any = hf.typed_config.as_ref().ok_or_else(|| {
                    ConfigError::new(
                        tpath.clone(),
                        format!("typed_config is required for {}", hf.name),
                    )
                })?;
                filters.push(HttpFilter::ExtProc(ext_proc::build(
                    any,
                    &tpath,
                    &hctx(&hf.name, &stat_prefix, ctx),
                )?));
            }
            other => {
                return Err(ConfigError::new(
                    format!("{fpath}.name"),
                    format!(
                        "unsupported HTTP filter {other} (supported: {}, {})",
                        ext_proc::NAME,
                        router::NAME
                    ),
                ))
            }
        }
    }
    let router = the_router.ok_or_else(|| {
        ConfigError::new(
            format!("{path}.http_filters"),
            format!("the HTTP filter chain must end with {}", router::NAME),
        )
    })?;
    let (idle_timeout, max_headers_count) = match common_http_protocol_options {
        Some(config::HttpProtocolOptions {
            idle_timeout,
            max_headers_count,
            max_stream_duration,
        }) => {
            if max_stream_duration.is_some() {
                return Err(ConfigError::new(
                    format!("{path}.common_http_protocol_options.max_stream_duration"),
                    "not supported",
                ));
            }
            (
                opt_timeout(idle_timeout, Some(DEFAULT_IDLE_TIMEOUT)),
                max_headers_count.map(|n| n as usize).unwrap_or(100),
            )
        }
        None => (Some(DEFAULT_IDLE_TIMEOUT), 100),
    };
    let max_kb = max_request_headers_kb.unwrap_or(60);
    if !(1..=8192).contains(&max_kb) {
        return Err(ConfigError::new(
            format!("{path}.max_request_headers_kb"),
            "must be between 1 and 8192",
        ));
    }
    let server_name = HeaderValue::from_str(server_name.as_deref().unwrap_or("envoy"))
        .map_err(|_| ConfigError::new(format!("{path}.server_name"), "invalid header value"))?;
    let http2 = http2_settings(
        http2_protocol_options.unwrap_or_default(),
        &format!("{path}.http2_protocol_options"),
    )?;
    let stats = HcmStats::new(ctx.stats, &stat_prefix);
    Ok(Arc::new(Filter {
        stat_prefix: stat_prefix.as_str().into(),
        codec: codec_type.unwrap_or(CodecType::Auto),
        routes,
        filters,
        router,
        request_timeout: opt_timeout(request_timeout, None),
        request_headers_timeout: opt_timeout(request_headers_timeout, None),
        stream_idle_timeout: opt_timeout(stream_idle_timeout, Some(DEFAULT_STREAM_IDLE_TIMEOUT)),
        idle_timeout,
        drain_timeout: drain_timeout
            .map(|d| d.get())
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        max_request_headers_bytes: max_kb as usize * 1024,
        max_headers_count,
        allow_chunked_length,
        enable_trailers,
        header_policy: RequestHeaderPolicy {
            use_remote_address: use_remote_address.unwrap_or(false),
            xff_num_trusted_hops,
            skip_xff_append,
            generate_request_id: generate_request_id.unwrap_or(true),
            preserve_external_request_id,
            internal_only_headers,
        },
        always_set_request_id_in_response,
        server_name,
        server_header: match server_header_transformation
            .unwrap_or(ServerHeaderTransformation::Overwrite)
        {
            ServerHeaderTransformation::Overwrite => ServerHeader::Overwrite,
            ServerHeaderTransformation::AppendIfAbsent => ServerHeader::AppendIfAbsent,
            ServerHeaderTransformation::PassThrough => ServerHeader::PassThrough,
        },
        http2,
        stats,
    }))
}

/// Serves HTTP on one downstream connection.
pub async fn serve(conn: crate::listener::Connection, filter: &Arc<Filter>) {
    codec::serve(conn, filter.clone()).await
}
