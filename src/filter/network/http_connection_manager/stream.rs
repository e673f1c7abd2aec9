//! One HTTP stream through the HCM: request checks and normalisation, route match, `decode`
//! through the HTTP filters, the router, `encode` in reverse, and the response's last headers.
//!
//! For the whole life of the stream one "watch" future races the work: the filters' abort
//! signal ([`StreamAbort`]), the stream idle timeout and the request timeout. Before the
//! response head is returned a firing watch becomes a local reply; afterwards the response body
//! ends with an error, which resets the stream (HTTP/2 RST_STREAM, HTTP/1 connection close).

use super::headers::{date_header, mutate_request_headers, strip_request_hop_by_hop};
use super::local_reply;
use super::route::{Action, RequestView, RouteEntry};
use super::Filter;
use crate::filter::http::router::http1_trailers::Slot;
use crate::filter::http::{
    Abort, Body, BoxError, ConnectionInfo, LocalReply, StreamAbort, StreamContext, StreamFilter,
};
use crate::stats::GaugeGuard;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, DATE, HOST, SERVER};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// State shared by the streams of one downstream connection.
#[derive(Debug)]
pub(super) struct ConnShared {
    /// The HCM.
    pub filter: Arc<Filter>,
    /// Addresses and id.
    pub info: ConnectionInfo,
    /// HTTP/2 (else HTTP/1.1).
    pub is_h2: bool,
    /// The downstream connection is TLS: `:scheme` and `x-forwarded-proto` are `https`.
    pub tls: bool,
    /// Open streams, for the connection idle timeout.
    pub streams: Arc<OpenStreams>,
    /// HTTP/1.1 with `enable_trailers`: where a response's trailers go for the connection's
    /// writer, and whether the request being answered is a `HEAD`.
    pub h1_trailers: Option<(Slot, Arc<AtomicBool>)>,
}

/// Counts a connection's open streams and wakes the idle-timeout watcher on changes.
#[derive(Debug, Default)]
pub(super) struct OpenStreams {
    /// Streams open now.
    pub count: AtomicUsize,
    /// Streams opened since the connection started.
    pub started: AtomicUsize,
    /// Part of an HTTP/1.1 request head is held, its stream not started yet. Envoy's codec
    /// opens the stream on the message's first byte, so the connection is not idle.
    pub head_pending: AtomicBool,
    /// Notified when `count` or `head_pending` changes.
    pub changed: Notify,
}

impl OpenStreams {
    /// No stream is open and no request has begun: the connection idle timer runs.
    pub fn idle(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0 && !self.head_pending.load(Ordering::Acquire)
    }
}

/// Lives as long as a stream: the active gauges and the completion counter.
struct StreamGuard {
    conn: Arc<ConnShared>,
    _active: GaugeGuard,
}

impl StreamGuard {
    fn new(conn: &Arc<ConnShared>) -> Self {
        conn.streams.count.fetch_add(1, Ordering::AcqRel);
        conn.streams.started.fetch_add(1, Ordering::AcqRel);
        conn.streams.changed.notify_waiters();
        StreamGuard {
            conn: conn.clone(),
            _active: GaugeGuard::new(&conn.filter.stats.downstream_rq_active),
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.conn.filter.stats.downstream_rq_completed.inc();
        self.conn.streams.count.fetch_sub(1, Ordering::AcqRel);
        self.conn.streams.changed.notify_waiters();
    }
}

/// When the stream last moved bytes, and whether the request has ended.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last frame in either direction.
    last_ms: AtomicU64,
    request_done: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            request_done: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

type Watch = Pin<Box<dyn Future<Output = Abort> + Send>>;

/// Races the filters' abort signal with the stream idle and request timeouts.
fn watch(
    abort: StreamAbort,
    activity: Arc<Activity>,
    idle: Option<Duration>,
    request_timeout: Option<Duration>,
    filter: Arc<Filter>,
) -> Watch {
    Box::pin(async move {
        let idle_fired = async {
            let Some(d) = idle else {
                return std::future::pending().await;
            };
            loop {
                let deadline = activity.last() + d;
                tokio::time::sleep_until(deadline).await;
                if activity.last() + d <= Instant::now() {
                    return;
                }
            }
        };
        let request_fired = async {
            let Some(d) = request_timeout else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(activity.start + d).await;
            if activity.request_done.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            a = abort.wait() => a,
            _ = idle_fired => {
                filter.stats.downstream_rq_idle_timeout.inc();
                // Envoy: 504 once the request is complete, else 408.
                let status = if activity.request_done.load(Ordering::Acquire) { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::REQUEST_TIMEOUT };
                Abort::LocalReply(LocalReply::new(status, "stream timeout", "stream_idle_timeout"))
            }
            _ = request_fired => {
                filter.stats.downstream_rq_timeout.inc();
                Abort::LocalReply(LocalReply::new(StatusCode::REQUEST_TIMEOUT, "request timeout", "request_overall_timeout"))
            }
        }
    })
}

/// Serves one request (hyper's service function).
pub(super) async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnShared>,
) -> Result<Response<Body>, BoxError> {
    let f = conn.filter.clone();
    if let Some((_, head)) = &conn.h1_trailers {
        // hyper reads the next request only once this one's response is written.
        head.store(req.method() == http::Method::HEAD, Ordering::Release);
    }
    f.stats.downstream_rq_total.inc();
    if conn.is_h2 {
        f.stats.downstream_rq_http2_total.inc();
    } else {
        f.stats.downstream_rq_http1_total.inc();
    }
    let guard = StreamGuard::new(&conn);
    let activity = Arc::new(Activity::new());
    let is_grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let (parts, body) = req.into_parts();
    let body = RequestBody {
        inner: body,
        activity: activity.clone(),
        drop_trailers: !conn.is_h2 && !f.enable_trailers,
    };
    let body = if body.inner.is_end_stream() {
        activity.request_done.store(true, Ordering::Release);
        body.boxed_unsync()
    } else {
        body.boxed_unsync()
    };
    let parts = match prepare(parts, &conn) {
        Ok(p) => p,
        Err(failed) => {
            let (reply, close) = *failed;
            let resp = local_reply::render(reply, None, is_grpc);
            return Ok(finish(
                resp, &conn, None, close, guard, None, activity, None,
            ));
        }
    };
    let request_id = parts.headers.get("x-request-id").cloned();
    let req = Request::from_parts(parts, body);
    let entry = f.routes.route(&RequestView::of(&req));
    let idle = match entry.as_deref().map(|e| &e.action) {
        Some(Action::Forward {
            idle_timeout: Some(t),
            ..
        }) => Some(*t),
        _ => f.stream_idle_timeout,
    }
    .filter(|d| !d.is_zero());
    let mut cx = StreamContext {
        connection: conn.info.clone(),
        stat_prefix: f.stat_prefix.clone(),
        route: entry.as_ref().map(|e| e.info.clone()),
        route_cache_cleared: false,
        dynamic_metadata: Default::default(),
        response_code_details: None,
        is_grpc,
        abort: StreamAbort::default(),
    };
    let mut watch = watch(
        cx.abort.clone(),
        activity.clone(),
        idle,
        f.request_timeout,
        f.clone(),
    );
    let mut filters: Vec<StreamFilter> = f.filters.iter().map(|h| h.new_stream()).collect();
    let mut current = entry.clone();
    let (resp, watch) = {
        let head = run_head(req, &mut filters, &mut cx, &mut current, &f);
        tokio::select! {
            r = head => (r, Some(watch)),
            a = watch.as_mut() => match a {
                Abort::LocalReply(lr) => (local_reply::render(lr, current.as_deref(), is_grpc), None),
                Abort::Reset(why) => {
                    f.stats.downstream_rq_tx_reset.inc();
                    return Err(why.into());
                }
            },
        }
    };
    let keep = Box::new((filters, cx));
    Ok(finish(
        resp,
        &conn,
        request_id,
        false,
        guard,
        watch,
        activity,
        Some(keep),
    ))
}

/// Checks and normalises the request head (see the contract in `filter::http`). A failure is a
/// local reply, and whether the connection must close.
fn prepare(
    mut parts: http::request::Parts,
    conn: &ConnShared,
) -> Result<http::request::Parts, Box<(LocalReply, bool)>> {
    let f = &conn.filter;
    if !conn.is_h2 && parts.version < Version::HTTP_11 {
        return Err(Box::new((
            LocalReply::new(
                StatusCode::UPGRADE_REQUIRED,
                "Upgrade Required",
                "low_version",
            ),
            true,
        )));
    }
    if parts.headers.len() > f.max_headers_count {
        return Err(Box::new((
            LocalReply::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
                "too_many_headers",
            ),
            true,
        )));
    }
    // hyper accepts codings before `chunked`; Envoy implements none of them (and forwarding
    // the body without its coding would corrupt it).
    let other_coding = parts
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| !t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    if !conn.is_h2 && other_coding {
        return Err(Box::new((
            LocalReply::new(
                StatusCode::NOT_IMPLEMENTED,
                "Not Implemented",
                "unsupported_transfer_encoding",
            ),
            true,
        )));
    }
    if parts.method == http::Method::CONNECT {
        return Err(Box::new((
            LocalReply::new(StatusCode::NOT_FOUND, Bytes::new(), "route_not_found"),
            true,
        )));
    }
    let authority = match parts.uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string(),
    };
    if authority.is_empty() {
        return Err(Box::new((
            LocalReply::new(StatusCode::BAD_REQUEST, Bytes::new(), "missing_host_header"),
            true,
        )));
    }
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    if !pq.starts_with('/') && pq != "*" {
        return Err(Box::new((
            LocalReply::new(StatusCode::BAD_REQUEST, "Bad Request", "http1.codec_error"),
            true,
        )));
    }
    let scheme = if conn.tls { "https" } else { "http" };
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(authority.as_str())
        .path_and_query(pq)
        .build();
    match uri {
        Ok(uri) => parts.uri = uri,
        Err(_) => {
            return Err(Box::new((
                LocalReply::new(StatusCode::BAD_REQUEST, "Bad Request", "invalid_authority"),
                true,
            )))
        }
    }
    strip_request_hop_by_hop(&mut parts.headers);
    mutate_request_headers(&mut parts.headers, &f.header_policy, conn.info.peer, scheme);
    Ok(parts)
}

/// Decode through the filters, the router, encode in reverse; every failure is a rendered
/// local reply. `entry` follows the route as it is re-matched.
async fn run_head(
    mut req: Request<Body>,
    filters: &mut [StreamFilter],
    cx: &mut StreamContext,
    entry: &mut Option<Arc<RouteEntry>>,
    f: &Filter,
) -> Response<Body> {
    let mut decoded = 0;
    while decoded < filters.len() && !matches!(filters[decoded], StreamFilter::Router) {
        match filters[decoded].decode(req, cx).await {
            Ok(r) => {
                req = r;
                decoded += 1;
            }
            Err(lr) => {
                let resp = lr_render(Some(lr), cx, entry.as_deref());
                return encode_reply(resp, filters, decoded, cx, entry.as_deref()).await;
            }
        }
    }
    if cx.route_cache_cleared {
        *entry = f.routes.route(&RequestView::of(&req));
        cx.route = entry.as_ref().map(|e| e.info.clone());
        cx.route_cache_cleared = false;
    }
    let resp = match f.router.forward(req, entry.as_deref()).await {
        Ok(resp) => resp,
        Err(lr) => lr_render(Some(lr), cx, entry.as_deref()),
    };
    encode_reply(resp, filters, decoded, cx, entry.as_deref()).await
}

fn lr_render(
    lr: Option<LocalReply>,
    cx: &mut StreamContext,
    entry: Option<&RouteEntry>,
) -> Response<Body> {
    let lr = lr.unwrap_or_default();
    cx.response_code_details = Some(lr.details.clone());
    local_reply::render(lr, entry, cx.is_grpc)
}

/// Runs `encode` on the first `decoded` filters in reverse; a local reply from one of them is
/// sent as is.
async fn encode_reply(
    mut resp: Response<Body>,
    filters: &mut [StreamFilter],
    decoded: usize,
    cx: &mut StreamContext,
    entry: Option<&RouteEntry>,
) -> Response<Body> {
    for filt in filters[..decoded].iter_mut().rev() {
        match filt.encode(resp, cx).await {
            Ok(r) => resp = r,
            Err(lr) => return lr_render(Some(lr), cx, entry),
        }
    }
    resp
}

/// The last response headers (`date`, `server`, …), stats, and the body wrapper that keeps the
/// stream's state alive and watching until the body ends.
#[allow(clippy::too_many_arguments)]
fn finish(
    resp: Response<Body>,
    conn: &ConnShared,
    request_id: Option<HeaderValue>,
    close: bool,
    guard: StreamGuard,
    watch: Option<Watch>,
    activity: Arc<Activity>,
    keep: Option<Box<(Vec<StreamFilter>, StreamContext)>>,
) -> Response<Body> {
    let f = &conn.filter;
    let (mut parts, body) = resp.into_parts();
    let headers = &mut parts.headers;
    headers.insert(DATE, date_header());
    match f.server_header {
        ServerHeader::Overwrite => {
            headers.insert(SERVER, f.server_name.clone());
        }
        ServerHeader::AppendIfAbsent => {
            if !headers.contains_key(SERVER) {
                headers.insert(SERVER, f.server_name.clone());
            }
        }
        ServerHeader::PassThrough => {}
    }
    if f.always_set_request_id_in_response {
        if let Some(id) = request_id {
            headers.insert("x-request-id", id);
        }
    }
    // Hop-by-hop headers a filter or a local reply set are removed, as Envoy's
    // `mutateResponseHeaders` does (the router already drops the upstream's).
    for name in crate::filter::http::router::HOP_BY_HOP {
        headers.remove(name);
    }
    // Envoy closes an HTTP/1.1 connection whose response starts before the request ended.
    let close = close || !activity.request_done.load(Ordering::Acquire);
    if close && !conn.is_h2 {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    parts.version = Version::HTTP_11;
    if let Some(c) = f
        .stats
        .downstream_rq_class
        .get(usize::from(parts.status.as_u16() / 100).wrapping_sub(1))
    {
        c.inc();
    }
    let trailers = conn.h1_trailers.as_ref().map(|(slot, _)| slot.clone());
    let body = DownstreamBody {
        inner: body,
        watch,
        activity,
        trailers,
        _guard: guard,
        _keep: keep,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServerHeader {
    /// Always `server: <server_name>`.
    Overwrite,
    /// Only when the upstream sent none.
    AppendIfAbsent,
    /// Leave as is.
    PassThrough,
}

/// The downstream request body: records activity and the end of the request.
struct RequestBody {
    inner: Incoming,
    activity: Arc<Activity>,
    /// HTTP/1.1 without `http_protocol_options.enable_trailers`: the trailers are dropped, as
    /// Envoy's HTTP/1 codec ignores them.
    drop_trailers: bool,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut res = Pin::new(&mut this.inner).poll_frame(cx);
        if this.drop_trailers && matches!(&res, Poll::Ready(Some(Ok(f))) if f.is_trailers()) {
            // Trailers are the last frame: the body ends here.
            this.activity.touch();
            res = Poll::Ready(None);
        }
        match &res {
            Poll::Ready(None) => this.activity.request_done.store(true, Ordering::Release),
            Poll::Ready(Some(Ok(frame))) => {
                this.activity.touch();
                // Trailers are the last frame, and a reader (hyper's client) stops after them
                // without polling for the end: the request has ended.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.activity.request_done.store(true, Ordering::Release);
                }
            }
            _ => {}
        }
        res.map(|o| o.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body as sent downstream.
struct DownstreamBody {
    inner: Body,
    watch: Option<Watch>,
    activity: Arc<Activity>,
    /// HTTP/1.1 with `enable_trailers`: the trailers also go here, for the connection's writer.
    trailers: Option<Slot>,
    _guard: StreamGuard,
    /// The filters and context live until the response ends (their body tasks may use them).
    _keep: Option<Box<(Vec<StreamFilter>, StreamContext)>>,
}

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
#[error("stream reset: {0}")]
pub struct StreamReset(String);

impl http_body::Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(w) = this.watch.as_mut() {
            if let Poll::Ready(a) = w.as_mut().poll(cx) {
                this.watch = None;
                this._guard.conn.filter.stats.downstream_rq_tx_reset.inc();
                let why = match a {
                    Abort::Reset(why) => why,
                    Abort::LocalReply(lr) => lr.details,
                };
                return Poll::Ready(Some(Err(Box::new(StreamReset(why)))));
            }
        }
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(f))) => {
                this.activity.touch();
                if let (Some(slot), Some(t)) = (&this.trailers, f.trailers_ref()) {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this._guard.conn.filter.stats.downstream_rq_tx_reset.inc();
                this.watch = None;
            }
            Poll::Ready(None) => this.watch = None,
            Poll::Pending => {}
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
