//! `envoy.filters.http.router`: the terminal HTTP filter. It finalises the request for its route
//! (timeout headers, `request_headers_to_add`, `prefix_rewrite`), sends it through the cluster's
//! connection [`pool`], and turns upstream failures into Envoy's local replies:
//! `404` (no route), `503 no healthy upstream`, `503 upstream connect error or disconnect/reset
//! before headers. reset reason: …`, `504 upstream request timeout`.
//!
//! Bodies stream both ways without buffering; hyper's flow control gives backpressure.

pub mod http1_trailers;
pub mod pool;

use crate::cluster::UpstreamProtocol;
use crate::config::{self as cfg, ConfigError, RawAny};
use crate::filter::http::{Body, BoxError, BuildContext, LocalReply};
use crate::filter::network::http_connection_manager::route::{Action, RouteEntry};
use crate::stats::Counter;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use pool::{Pool, UpstreamError};
use serde::Deserialize;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;

/// Extension name.
pub const NAME: &str = "envoy.filters.http.router";
/// `@type` of the config.
pub const TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";

/// Response headers that describe one hop only (never forwarded).
pub const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// `envoy.extensions.filters.http.router.v3.Router` (the accepted subset).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // accepted-but-inert fields are read only by serde
struct RouterConfig {
    /// Accepted; per-code cluster stats are always on.
    dynamic_stats: Option<bool>,
    /// Accepted; there is no tracing.
    #[serde(default)]
    start_child_span: bool,
    /// Do not add `x-envoy-*` headers (expected timeout, upstream service time, original path).
    #[serde(default)]
    suppress_envoy_headers: bool,
}

/// The router: forwards the request to the route's cluster.
#[derive(Debug)]
pub struct Router {
    suppress_envoy_headers: bool,
    pools: HashMap<String, Arc<Pool>>,
    /// `http.<prefix>.rq_total`: requests routed to a cluster.
    rq_total: Counter,
    /// `http.<prefix>.no_route`.
    no_route: Counter,
    /// `http.<prefix>.no_cluster`.
    no_cluster: Counter,
    /// `http.<prefix>.rq_direct_response`.
    rq_direct_response: Counter,
}

/// Builds the router; `any` is its `typed_config` (optional in Envoy).
pub fn build(
    any: Option<&RawAny>,
    path: &str,
    ctx: &BuildContext<'_>,
) -> Result<Arc<Router>, ConfigError> {
    let config: RouterConfig = match any {
        Some(any) => cfg::decode_any(any, path)?,
        None => RouterConfig::default(),
    };
    let RouterConfig {
        dynamic_stats: _,
        start_child_span: _,
        suppress_envoy_headers,
    } = config;
    let mut pools = HashMap::new();
    for name in ctx.clusters.names() {
        if let Some(c) = ctx.clusters.get(name) {
            pools.insert(name.to_string(), Arc::new(Pool::new(c, ctx.stats)));
        }
    }
    let c = |s: &str| {
        ctx.stats
            .counter(&format!("http.{}.{s}", ctx.hcm_stat_prefix))
    };
    Ok(Arc::new(Router {
        suppress_envoy_headers,
        pools,
        rq_total: c("rq_total"),
        no_route: c("no_route"),
        no_cluster: c("no_cluster"),
        rq_direct_response: c("rq_direct_response"),
    }))
}

/// Removes hop-by-hop headers, including those the `connection` header nominates (except
/// `te`, which the request path handles).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().to_ascii_lowercase().as_bytes()).ok())
        .filter(|n| n != http::header::TE)
        .collect();
    retain_headers(headers, |n| {
        !HOP_BY_HOP.contains(&n.as_str()) && !nominated.contains(n)
    });
}

/// Keeps the headers whose name passes `keep`, preserving the order of the rest
/// (`HeaderMap::remove` moves the last header into the hole).
pub fn retain_headers(headers: &mut HeaderMap, mut keep: impl FnMut(&HeaderName) -> bool) {
    if headers.keys().all(&mut keep) {
        return;
    }
    let old = std::mem::take(headers);
    headers.reserve(old.len());
    let mut last: Option<HeaderName> = None;
    for (name, value) in old {
        if let Some(n) = name {
            last = Some(n);
        }
        if let Some(n) = &last {
            if keep(n) {
                headers.append(n.clone(), value);
            }
        }
    }
}

impl Router {
    /// Forwards `req` (absolute URI, no `host` header) along `route`; `None` means no route
    /// matched (404).
    pub async fn forward(
        &self,
        req: Request<Body>,
        route: Option<&RouteEntry>,
    ) -> Result<Response<Body>, LocalReply> {
        let Some(route) = route else {
            self.no_route.inc();
            return Err(LocalReply::new(
                StatusCode::NOT_FOUND,
                Bytes::new(),
                "route_not_found",
            ));
        };
        let host_rewrite = match &route.action {
            Action::Direct { status, body } => {
                self.rq_direct_response.inc();
                return Err(LocalReply::new(*status, body.clone(), "direct_response"));
            }
            Action::Forward { host_rewrite, .. } => host_rewrite,
        };
        let Some(pool) = self.pools.get(&route.info.cluster) else {
            self.no_cluster.inc();
            return Err(LocalReply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::new(),
                "cluster_not_found",
            ));
        };
        self.rq_total.inc();
        let (mut parts, body) = req.into_parts();
        let timeout = self.finalize_request(&mut parts, route, host_rewrite.as_ref());
        let (end_tx, end_rx) = oneshot::channel();
        let body = EndSignal {
            inner: body,
            end: Some(end_tx),
        };
        let body = if body.inner.is_end_stream() {
            body.fire().boxed_unsync()
        } else {
            body.boxed_unsync()
        };
        let req = to_upstream(parts, body, pool.protocol());
        // The route timeout runs from the end of the request to the end of the response.
        let mut deadline: pool::Deadline = timeout.map(|t| {
            Box::pin(async move {
                if end_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(t).await;
            }) as Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        });
        let started = tokio::time::Instant::now();
        let sent = match deadline.as_mut() {
            Some(d) => tokio::select! {
                r = pool.send(req) => r,
                _ = d.as_mut() => {
                    pool.stats.timeout.inc();
                    pool.stats.response(504);
                    return Err(LocalReply::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout", "upstream_response_timeout"));
                }
            },
            None => pool.send(req).await,
        };
        let (resp, checkout) = match sent {
            Ok(r) => r,
            Err(UpstreamError::NoHealthyUpstream) => {
                pool.stats.response(503);
                return Err(LocalReply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy upstream",
                    "no_healthy_upstream",
                ));
            }
            Err(UpstreamError::Overflow(_)) => {
                // A circuit breaker: Envoy's overflow reply, marked as dropped (`x-envoy-overloaded`).
                pool.stats.response(503);
                let mut reply = LocalReply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                    "upstream_reset_before_response_started{overflow}",
                );
                if !self.suppress_envoy_headers {
                    reply
                        .headers
                        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
                }
                return Err(reply);
            }
            Err(e) => {
                pool.stats.response(503);
                return Err(LocalReply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("upstream connect error or disconnect/reset before headers. reset reason: {e}"),
                    format!("upstream_reset_before_response_started{{{}}}", e.to_string().replace(' ', "_")),
                ));
            }
        };
        let (mut parts, body) = resp.into_parts();
        pool.stats.response(parts.status.as_u16());
        strip_hop_by_hop(&mut parts.headers);
        parts.version = http::Version::HTTP_11;
        if !self.suppress_envoy_headers {
            parts.headers.insert(
                "x-envoy-upstream-service-time",
                HeaderValue::from(started.elapsed().as_millis() as u64),
            );
        }
        route.apply_response_headers(&mut parts.headers);
        let body = pool::UpstreamBody::new(body, checkout, deadline, pool);
        Ok(Response::from_parts(parts, body.boxed_unsync()))
    }

    /// Applies the route to the request head; returns the upstream timeout.
    fn finalize_request(
        &self,
        parts: &mut http::request::Parts,
        route: &RouteEntry,
        host_rewrite: Option<&HeaderValue>,
    ) -> Option<Duration> {
        let headers = &mut parts.headers;
        let mut timeout = route.info.timeout;
        if let Some(v) = headers.remove("x-envoy-upstream-rq-timeout-ms") {
            if let Some(ms) = v.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
                timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
        }
        headers.remove("x-envoy-upstream-rq-per-try-timeout-ms");
        if !self.suppress_envoy_headers {
            if let Some(t) = timeout {
                headers.insert(
                    "x-envoy-expected-rq-timeout-ms",
                    HeaderValue::from(t.as_millis() as u64),
                );
            }
        }
        route.apply_request_headers(headers);
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let new_path = route.rewrite_path(&path);
        let authority = host_rewrite
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.as_str().to_string()));
        if new_path.is_some() || host_rewrite.is_some() {
            let mut b = Uri::builder().scheme(parts.uri.scheme_str().unwrap_or("http"));
            if let Some(a) = &authority {
                b = b.authority(a.as_str());
            }
            if let Ok(uri) = b
                .path_and_query(new_path.as_deref().unwrap_or(&path))
                .build()
            {
                parts.uri = uri;
                if new_path.is_some() && !self.suppress_envoy_headers {
                    if let Ok(v) = HeaderValue::from_str(&path) {
                        parts.headers.insert("x-envoy-original-path", v);
                    }
                }
            }
        }
        timeout
    }
}

/// Puts the request in the form the upstream codec wants: origin-form URI with `host` first
/// for HTTP/1.1; absolute URI (`:authority`) for HTTP/2.
fn to_upstream(
    mut parts: http::request::Parts,
    body: Body,
    protocol: UpstreamProtocol,
) -> Request<Body> {
    match protocol {
        UpstreamProtocol::Http1 => {
            let authority = parts
                .uri
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_default();
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            if let Ok(uri) = pq.parse() {
                parts.uri = uri;
            }
            parts.version = http::Version::HTTP_11;
            // Envoy sends `host` first; rebuild the map so it leads.
            let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
            if let Ok(v) = HeaderValue::from_str(&authority) {
                headers.insert(HOST, v);
            }
            let mut last: Option<HeaderName> = None;
            for (name, value) in std::mem::take(&mut parts.headers) {
                if let Some(n) = name {
                    last = Some(n);
                }
                if let Some(n) = &last {
                    headers.append(n.clone(), value);
                }
            }
            // hyper sends no body for GET/HEAD without framing headers; Envoy streams it.
            if !body.is_end_stream() && !headers.contains_key(http::header::CONTENT_LENGTH) {
                headers.insert(
                    http::header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            parts.headers = headers;
        }
        UpstreamProtocol::Http2 => {
            parts.version = http::Version::HTTP_2;
            parts.headers.remove(HOST);
        }
    }
    Request::from_parts(parts, body)
}

/// Passes a body through and signals when it has ended (the start of the route timeout).
struct EndSignal {
    inner: Body,
    end: Option<oneshot::Sender<()>>,
}

impl EndSignal {
    fn fire(mut self) -> Self {
        if let Some(tx) = self.end.take() {
            let _ = tx.send(());
        }
        self
    }
}

impl http_body::Body for EndSignal {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &res {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(tx) = this.end.take() {
                let _ = tx.send(());
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
