//! HTTP filters, run per request by the HTTP connection manager (HCM).
//!
//! # The filter contract
//!
//! Filters are a closed set ([`HttpFilter`]). For each request the HCM:
//! 1. matches the route and fills a [`StreamContext`];
//! 2. calls [`HttpFilter::decode`] on each filter in config order, passing the request along
//!    (a filter returns a new `Request<Body>`, typically wrapping the body in a stream that
//!    transforms it chunk by chunk, or `Err(LocalReply)` to answer directly);
//! 3. hands the request to the router (the last filter), which re-resolves the route if a filter
//!    cleared the route cache, and gets the upstream response;
//! 4. calls [`HttpFilter::encode`] on each filter in reverse order with the response.
//!
//! # What filters see
//! - Requests are normalised before the first filter: `req.uri()` is absolute
//!   (`http://<authority><path?query>`; `:scheme`, `:authority` and `:path` come from it), there
//!   is no `host` header, hop-by-hop headers are gone, and the HCM's own headers are in place
//!   (`x-forwarded-proto`, `x-request-id`, `x-forwarded-for` with `use_remote_address`). The
//!   router reads the same URI, so a filter that changes `:authority` or `:path` changes the URI.
//! - Responses reaching `encode` carry the upstream headers (minus hop-by-hop), the router's
//!   `x-envoy-upstream-service-time` and the route's `response_headers_to_add`; `date` and
//!   `server` are added after the last encoder, as Envoy does.
//! - A [`LocalReply`] returned by `decode` of filter *i* is rendered by the HCM and passes
//!   through `encode` of filters *i-1 … 0* (those that decoded); one returned by `encode` is sent
//!   as is. A late abort is sent as is, or resets the stream once the response has started.
//!
//! A [`LocalReply`] may carry a streamed body ([`LocalReply::stream`], ext_proc's
//! `StreamedImmediateResponse`): the HCM then sends the status and headers as given (no
//! `content-length`, no `content-type`, no gRPC rewriting) and relays the body's data and
//! trailers frames as they come, in place of `body`.
//!
//! Body streams created by filters run after `decode` returned, so they report late failures
//! through [`StreamContext::abort`]: a local reply if the response has not started, otherwise a
//! stream reset. The HCM watches that signal for the whole life of the stream.

pub mod ext_proc;
pub mod router;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Errors carried by body streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every filter sees: request and response bodies, boxed once per message.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body of one buffer.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response the proxy generates itself (Envoy's `sendLocalReply`).
#[derive(Debug, Clone, Default)]
pub struct LocalReply {
    /// HTTP status.
    pub status: StatusCode,
    /// Extra headers (e.g. from an ext_proc immediate response).
    pub headers: HeaderMap,
    /// Body; a non-empty body without a `content-type` header gets `text/plain`.
    pub body: Bytes,
    /// `%RESPONSE_CODE_DETAILS%`, e.g. `ext_proc_error_per-message_timeout_exceeded`.
    pub details: String,
    /// For gRPC requests: answer HTTP 200 trailers-only with this `grpc-status`.
    pub grpc_status: Option<u32>,
    /// A streamed body (data and trailers frames), sent instead of `body` and without the
    /// local-reply header defaults (see the module docs).
    pub stream: Option<LocalBody>,
}

/// The streamed body of a [`LocalReply`]: a handle shared by the reply's clones, taken once by
/// the HCM when it renders the reply (the lock is taken once per reply, never per frame).
#[derive(Clone, Default)]
pub struct LocalBody(Arc<Mutex<Option<Body>>>);

impl LocalBody {
    /// Wraps a body.
    pub fn new(body: Body) -> Self {
        LocalBody(Arc::new(Mutex::new(Some(body))))
    }

    /// Takes the body; `None` if it was already taken.
    pub fn take(&self) -> Option<Body> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for LocalBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalBody")
    }
}

impl LocalReply {
    /// A local reply with a status, a body and response-code details.
    pub fn new(status: StatusCode, body: impl Into<Bytes>, details: impl Into<String>) -> Self {
        LocalReply {
            status,
            body: body.into(),
            details: details.into(),
            ..Default::default()
        }
    }
}

/// Per-route configuration of an HTTP filter (`typed_per_filter_config`), decoded once by the
/// filter's module when the route table is built.
#[derive(Debug, Clone)]
pub enum PerFilterConfig {
    /// `envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute`.
    ExtProc(Arc<ext_proc::PerRoute>),
}

/// Decodes a `typed_per_filter_config` entry for the filter named `filter_name` (the key in the
/// map, which is the filter's config `name`). Called by the HCM's route-table builder.
pub fn build_per_filter_config(
    filter_name: &str,
    any: &crate::config::RawAny,
    path: &str,
) -> Result<PerFilterConfig, crate::config::ConfigError> {
    let ty = crate::config::any_type(any, path)?;
    match ty.as_str() {
        ext_proc::PER_ROUTE_TYPE => Ok(PerFilterConfig::ExtProc(ext_proc::build_per_route(
            any, path,
        )?)),
        other => Err(crate::config::ConfigError::new(
            path,
            format!("unsupported typed_per_filter_config {other} for {filter_name}"),
        )),
    }
}

/// What filters see of the route selected for a request.
#[derive(Debug, Clone, Default)]
pub struct RouteInfo {
    /// Route name (may be empty).
    pub name: String,
    /// Target cluster.
    pub cluster: String,
    /// Route `timeout` (default 15 s; zero disables).
    pub timeout: Option<Duration>,
    /// `typed_per_filter_config` entries by filter name, least specific first
    /// (virtual host, then route): filters merge them in this order.
    pub per_filter: Vec<(String, PerFilterConfig)>,
}

impl RouteInfo {
    /// The per-route configs for the filter named `name`, least specific first.
    pub fn per_filter_config<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a PerFilterConfig> + 'a {
        self.per_filter
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, c)| c)
    }
}

/// The downstream connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Connection id.
    pub id: u64,
    /// Client address.
    pub peer: SocketAddr,
    /// Local (listener) address.
    pub local: SocketAddr,
}

/// How a stream ends early, reported by a filter's body task.
#[derive(Debug, Clone)]
pub enum Abort {
    /// Send this local reply (if the response has not started; otherwise reset).
    LocalReply(LocalReply),
    /// Reset the stream (HTTP/2 RST_STREAM; HTTP/1 closes the connection).
    Reset(String),
}

/// A one-shot, shareable "end this stream" signal. The first abort wins.
#[derive(Debug, Clone, Default)]
pub struct StreamAbort {
    inner: Arc<(Mutex<Option<Abort>>, Notify)>,
}

impl StreamAbort {
    /// Requests the end of the stream; ignored if an abort was already requested.
    pub fn abort(&self, why: Abort) {
        let mut slot = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(why);
            self.inner.1.notify_waiters();
        }
    }

    /// The requested abort, if any.
    pub fn get(&self) -> Option<Abort> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until an abort is requested.
    pub async fn wait(&self) -> Abort {
        loop {
            let notified = self.inner.1.notified();
            if let Some(a) = self.get() {
                return a;
            }
            notified.await;
        }
    }
}

/// Per-request state shared by the filters of one stream (Envoy's StreamInfo and callbacks).
#[derive(Debug)]
pub struct StreamContext {
    /// The downstream connection.
    pub connection: ConnectionInfo,
    /// The HCM's `stat_prefix`.
    pub stat_prefix: Arc<str>,
    /// The selected route, or `None` when none matched or a filter cleared the route cache
    /// (the router then matches again against the current headers).
    pub route: Option<Arc<RouteInfo>>,
    /// Set when a filter cleared the route cache.
    pub route_cache_cleared: bool,
    /// Dynamic metadata by namespace (a `google.protobuf.Struct` per namespace).
    pub dynamic_metadata: BTreeMap<String, prost_types::Struct>,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub response_code_details: Option<String>,
    /// True for gRPC requests (`content-type: application/grpc*`), which get gRPC local replies.
    pub is_grpc: bool,
    /// Late-failure signal from body streams (see module docs).
    pub abort: StreamAbort,
}

impl StreamContext {
    /// Clears the route cache: the router will match the route again.
    pub fn clear_route_cache(&mut self) {
        self.route = None;
        self.route_cache_cleared = true;
    }
}

/// What an HTTP filter needs while it is built from config.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    /// The filter's config `name` (key of its `typed_per_filter_config` and filter state).
    pub filter_name: &'a str,
    /// The HCM's `stat_prefix`; filter stats live under `http.<stat_prefix>.`.
    pub hcm_stat_prefix: &'a str,
    /// All clusters.
    pub clusters: &'a Arc<crate::cluster::ClusterManager>,
    /// The stats store.
    pub stats: &'a crate::stats::Store,
    /// Per-connection buffer limit of the listener (bounds buffered bodies).
    pub buffer_limit: usize,
}

/// One configured HTTP filter, shared by all streams of an HCM.
#[derive(Debug, Clone)]
pub enum HttpFilter {
    /// `envoy.filters.http.ext_proc`.
    ExtProc(Arc<ext_proc::Filter>),
    /// `envoy.filters.http.router` (always last).
    Router(Arc<router::Router>),
}

impl HttpFilter {
    /// A filter instance for one request (Envoy creates one per stream too).
    pub fn new_stream(&self) -> StreamFilter {
        match self {
            HttpFilter::ExtProc(f) => {
                StreamFilter::ExtProc(Box::new(ext_proc::StreamFilter::new(f.clone())))
            }
            HttpFilter::Router(_) => StreamFilter::Router,
        }
    }
}

/// A filter instance serving one request; it lives from decode to the end of encode.
#[derive(Debug)]
pub enum StreamFilter {
    /// `envoy.filters.http.ext_proc` (boxed: it carries the side-stream state).
    ExtProc(Box<ext_proc::StreamFilter>),
    /// The router's work is done by the HCM; nothing to keep per stream.
    Router,
}

impl StreamFilter {
    /// Request path: returns the (possibly transformed) request or a local reply.
    pub async fn decode(
        &mut self,
        req: http::Request<Body>,
        cx: &mut StreamContext,
    ) -> Result<http::Request<Body>, LocalReply> {
        match self {
            StreamFilter::ExtProc(f) => f.decode(req, cx).await,
            StreamFilter::Router => Ok(req),
        }
    }

    /// Response path: returns the (possibly transformed) response or a local reply.
    pub async fn encode(
        &mut self,
        resp: http::Response<Body>,
        cx: &mut StreamContext,
    ) -> Result<http::Response<Body>, LocalReply> {
        match self {
            StreamFilter::ExtProc(f) => f.encode(resp, cx).await,
            StreamFilter::Router => Ok(resp),
        }
    }
}
