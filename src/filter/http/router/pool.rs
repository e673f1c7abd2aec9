//! Upstream HTTP connection pools, one per cluster: HTTP/1.1 keeps idle connections for reuse
//! (one request at a time per connection); HTTP/2 multiplexes every request over one
//! connection. Connections are made with [`Cluster::connect`] (connect timeout, stats).
//!
//! The cluster's circuit breakers apply as in Envoy's pools: a request without a ready
//! connection is pending (`max_pending_requests`); a connection past `max_connections` is not
//! made (`upstream_cx_overflow`) and the request waits for one to free up, unless the pool has
//! no connection at all; every active request holds a `max_requests` unit until its response
//! ends; the pool itself takes a `max_connection_pools` unit on first use. Overflow is the
//! router's `503 ... reset reason: overflow` with `x-envoy-overloaded`.

use super::http1_trailers::{Current, Side, Slot, TrailerIo, TrailerTap};
use crate::cluster::circuit_breaker::{Overflow, ResourceGuard};
use crate::cluster::{Cluster, ConnectError, UpstreamProtocol};
use crate::filter::http::{Body, BoxError};
use crate::stats::{Counter, GaugeGuard, Store};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

/// Why an upstream request failed before a response arrived; the names are Envoy's reset
/// reasons, which appear in the 503 body.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The cluster has no endpoint.
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// The TCP connect failed.
    #[error("remote connection failure")]
    ConnectFailure,
    /// The TCP connect timed out.
    #[error("connection timeout")]
    ConnectTimeout,
    /// The connection closed before the response headers.
    #[error("connection termination")]
    ConnectionTermination,
    /// The upstream reset the stream (HTTP/2 RST_STREAM).
    #[error("remote reset")]
    RemoteReset,
    /// The upstream sent something that is not HTTP.
    #[error("protocol error")]
    ProtocolError,
    /// A circuit breaker refused the request (Envoy's `overflow` reset reason).
    #[error("overflow")]
    Overflow(Overflow),
}

impl From<Overflow> for UpstreamError {
    fn from(o: Overflow) -> Self {
        UpstreamError::Overflow(o)
    }
}

impl UpstreamError {
    fn from_hyper(e: &hyper::Error) -> Self {
        if e.is_parse() || e.is_parse_status() {
            return UpstreamError::ProtocolError;
        }
        // h2's errors are not nameable without depending on h2; its RST_STREAM error reads
        // "stream error received: <reason>".
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if s.to_string().starts_with("stream error received") {
                return UpstreamError::RemoteReset;
            }
            source = s.source();
        }
        UpstreamError::ConnectionTermination
    }
}

/// Counters by response code under `cluster.<name>.`.
#[derive(Debug)]
pub struct UpstreamStats {
    /// `upstream_rq_<N>xx`, index N-1.
    classes: [Counter; 5],
    /// `upstream_rq_completed`.
    completed: Counter,
    /// `upstream_rq_timeout`.
    pub timeout: Counter,
    /// `upstream_rq_pending_total`: requests that waited for a new connection.
    pending_total: Counter,
    /// `upstream_rq_<code>`, created on first use (Envoy shows them only once seen).
    codes: Box<[OnceLock<Counter>]>,
    scope: String,
    store: Store,
}

impl UpstreamStats {
    fn new(store: &Store, cluster: &str) -> Self {
        let scope = format!("cluster.{cluster}");
        let c = |s: &str| store.counter(&format!("{scope}.{s}"));
        UpstreamStats {
            classes: [
                c("upstream_rq_1xx"),
                c("upstream_rq_2xx"),
                c("upstream_rq_3xx"),
                c("upstream_rq_4xx"),
                c("upstream_rq_5xx"),
            ],
            completed: c("upstream_rq_completed"),
            timeout: c("upstream_rq_timeout"),
            pending_total: c("upstream_rq_pending_total"),
            codes: (0..600).map(|_| OnceLock::new()).collect(),
            scope,
            store: store.clone(),
        }
    }

    /// Counts a response (upstream or the router's own 503/504) with status `code`.
    pub fn response(&self, code: u16) {
        if let Some(c) = self.classes.get(usize::from(code / 100).wrapping_sub(1)) {
            c.inc();
        }
        if let Some(slot) = self.codes.get(usize::from(code)) {
            slot.get_or_init(|| {
                self.store
                    .counter(&format!("{}.upstream_rq_{code}", self.scope))
            })
            .inc();
        }
        self.completed.inc();
    }
}

/// A cluster's pool.
#[derive(Debug)]
pub struct Pool {
    /// The cluster (endpoints, connect timeout, stats).
    pub cluster: Arc<Cluster>,
    /// Response-code stats.
    pub stats: UpstreamStats,
    kind: Kind,
    /// This pool's `max_connection_pools` unit, taken on first use and kept.
    counted: OnceLock<ResourceGuard>,
    /// Connections this pool has open (Envoy's exception to `max_connections`: a pool with none
    /// may always make one).
    connections: Arc<AtomicUsize>,
    /// Woken when a connection goes idle or closes, for requests waiting at `max_connections`.
    available: Arc<tokio::sync::Notify>,
}

#[derive(Debug)]
enum Kind {
    /// Idle HTTP/1.1 connections, most recently used last.
    Http1(Mutex<Vec<Http1Conn>>),
    /// The shared HTTP/2 connection; the async mutex makes concurrent first requests share one
    /// connect.
    Http2(tokio::sync::Mutex<Option<http2::SendRequest<Body>>>),
}

/// An HTTP/1.1 connection of the pool.
#[derive(Debug)]
struct Http1Conn {
    sender: http1::SendRequest<Body>,
    /// With `enable_trailers`: where the connection's writer finds the current request's
    /// trailers.
    trailers: Option<Current>,
}

/// What an active request holds until its response ends: its `max_requests` unit and, for
/// HTTP/1.1, the connection, which goes back to the pool when the response body ends.
#[derive(Debug)]
pub struct Checkout {
    sender: Option<Http1Conn>,
    pool: Arc<Pool>,
    _request: ResourceGuard,
}

/// Held by a connection's task: gives back the `max_connections` unit and the pool's count,
/// and wakes a waiting request, when the connection closes.
#[derive(Debug)]
struct ConnectionSlot {
    _cx: ResourceGuard,
    connections: Arc<AtomicUsize>,
    available: Arc<tokio::sync::Notify>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        self.available.notify_one();
    }
}

impl Pool {
    /// A pool for `cluster`; connects lazily.
    pub fn new(cluster: Arc<Cluster>, store: &Store) -> Self {
        let kind = match cluster.protocol {
            UpstreamProtocol::Http1 => Kind::Http1(Mutex::new(Vec::new())),
            UpstreamProtocol::Http2 => Kind::Http2(tokio::sync::Mutex::new(None)),
        };
        Pool {
            stats: UpstreamStats::new(store, &cluster.name),
            cluster,
            kind,
            counted: OnceLock::new(),
            connections: Arc::new(AtomicUsize::new(0)),
            available: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The protocol spoken to the endpoints.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.cluster.protocol
    }

    async fn connect(&self) -> Result<TokioIo<crate::transport_socket::Stream>, UpstreamError> {
        self.stats.pending_total.inc();
        match self.cluster.connect().await {
            Ok(s) => Ok(TokioIo::new(s)),
            Err(ConnectError::NoHealthyUpstream) => Err(UpstreamError::NoHealthyUpstream),
            Err(ConnectError::Timeout) => Err(UpstreamError::ConnectTimeout),
            Err(_) => Err(UpstreamError::ConnectFailure),
        }
    }

    /// Sends a request (already in upstream form) and waits for the response head.
    pub async fn send(
        self: &Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<(http::Response<Incoming>, Option<Checkout>), UpstreamError> {
        self.count_pool()?;
        let breakers = &self.cluster.circuit_breakers;
        match &self.kind {
            Kind::Http1(_) => {
                // With `enable_trailers` the body hands its trailers to the connection's writer.
                let slot: Option<Slot> = self.cluster.http1.enable_trailers.then(Slot::default);
                let mut req = match &slot {
                    Some(s) if !req.body().is_end_stream() => {
                        req.map(|b| TrailerTap::new(b, s.clone()).boxed_unsync())
                    }
                    _ => req,
                };
                let mut counted = false;
                // A reused connection may have been closed by the upstream just now; hyper then
                // hands the request back unsent, and it is safe to retry on a new connection.
                loop {
                    let (mut conn, fresh) = match self.pop_idle().await {
                        Some(s) => (s, false),
                        None => {
                            let _pending = breakers.pending()?;
                            self.wait_http1().await?
                        }
                    };
                    let request = match breakers.request() {
                        Ok(r) => r,
                        Err(o) => {
                            self.make_idle(conn);
                            return Err(o.into());
                        }
                    };
                    if let Some(current) = &conn.trailers {
                        *current.lock().unwrap_or_else(|e| e.into_inner()) = slot.clone();
                    }
                    if !counted {
                        counted = true;
                        self.cluster.stats.upstream_rq_total.inc();
                    }
                    match conn.sender.try_send_request(req).await {
                        Ok(resp) => {
                            let checkout = Checkout {
                                sender: Some(conn),
                                pool: self.clone(),
                                _request: request,
                            };
                            return Ok((resp, Some(checkout)));
                        }
                        Err(mut e) => match e.take_message() {
                            Some(back) if !fresh => req = back,
                            _ => return Err(UpstreamError::from_hyper(e.error())),
                        },
                    }
                }
            }
            Kind::Http2(shared) => {
                // While another request connects, this one is pending too.
                let mut pending = None;
                let mut slot = match shared.try_lock() {
                    Ok(slot) => slot,
                    Err(_) => {
                        pending = Some(breakers.pending()?);
                        shared.lock().await
                    }
                };
                let mut sender = match slot.as_ref() {
                    Some(s) if !s.is_closed() => s.clone(),
                    _ => {
                        if pending.is_none() {
                            pending = Some(breakers.pending()?);
                        }
                        let s = self.connect_http2().await?;
                        *slot = Some(s.clone());
                        s
                    }
                };
                drop(slot);
                drop(pending);
                let request = breakers.request()?;
                self.cluster.stats.upstream_rq_total.inc();
                sender
                    .ready()
                    .await
                    .map_err(|e| UpstreamError::from_hyper(&e))?;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| UpstreamError::from_hyper(&e))?;
                Ok((
                    resp,
                    Some(Checkout {
                        sender: None,
                        pool: self.clone(),
                        _request: request,
                    }),
                ))
            }
        }
    }

    /// Takes this pool's `max_connection_pools` unit on first use.
    fn count_pool(&self) -> Result<(), Overflow> {
        if self.counted.get().is_none() {
            // Two first requests may both take a unit; the loser's drops at once.
            let _ = self.counted.set(self.cluster.circuit_breakers.pool()?);
        }
        Ok(())
    }

    /// Puts an HTTP/1.1 connection back for the next request.
    fn make_idle(&self, conn: Http1Conn) {
        if let Kind::Http1(idle) = &self.kind {
            if !conn.sender.is_closed() {
                idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                self.available.notify_one();
            }
        }
    }

    /// An idle HTTP/1.1 connection that is still usable.
    async fn pop_idle(&self) -> Option<Http1Conn> {
        let Kind::Http1(idle) = &self.kind else {
            return None;
        };
        loop {
            let mut c = idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if !c.sender.is_closed() && c.sender.ready().await.is_ok() {
                return Some(c);
            }
        }
    }

    /// A connection for a pending HTTP/1.1 request: a new one while `max_connections` allows
    /// (or the pool has none), otherwise the next one to go idle. `true` = freshly connected.
    async fn wait_http1(&self) -> Result<(Http1Conn, bool), UpstreamError> {
        let mut counted_overflow = false;
        loop {
            let notified = self.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(s) = self.pop_idle().await {
                return Ok((s, false));
            }
            match self.connection_slot(!counted_overflow) {
                Some(slot) => return Ok((self.connect_http1(slot).await?, true)),
                None => {
                    counted_overflow = true;
                    notified.await;
                }
            }
        }
    }

    /// A `max_connections` unit for a new connection; counts `upstream_cx_overflow` (when
    /// `count` is set) at the limit, and goes past it if this pool has no connection at all.
    fn connection_slot(&self, count: bool) -> Option<ConnectionSlot> {
        let cx = &self.cluster.circuit_breakers.default.connections;
        let guard = match cx.try_acquire() {
            Some(g) => g,
            None => {
                if count {
                    self.cluster
                        .circuit_breakers
                        .stats
                        .upstream_cx_overflow
                        .inc();
                }
                if self.connections.load(Ordering::Acquire) > 0 {
                    return None;
                }
                cx.acquire_anyway()
            }
        };
        self.connections.fetch_add(1, Ordering::AcqRel);
        Some(ConnectionSlot {
            _cx: guard,
            connections: self.connections.clone(),
            available: self.available.clone(),
        })
    }

    async fn connect_http1(&self, slot: ConnectionSlot) -> Result<Http1Conn, UpstreamError> {
        let io = self.connect().await?;
        if !self.cluster.http1.enable_trailers {
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::from_hyper(&e))?;
            self.spawn_connection(slot, conn);
            return Ok(Http1Conn {
                sender,
                trailers: None,
            });
        }
        let current = Current::default();
        let io = TokioIo::new(TrailerIo::new(
            io.into_inner(),
            Side::Requests,
            current.clone(),
        ));
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::from_hyper(&e))?;
        self.spawn_connection(slot, conn);
        Ok(Http1Conn {
            sender,
            trailers: Some(current),
        })
    }

    /// Runs a connection's I/O until it closes, holding its `max_connections` unit.
    fn spawn_connection(
        &self,
        slot: ConnectionSlot,
        conn: impl std::future::Future + Send + 'static,
    ) {
        let active = self.cluster.stats.upstream_cx_active.clone();
        tokio::spawn(async move {
            let _active = GaugeGuard::new(&active);
            let _slot = slot;
            let _ = conn.await;
        });
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<Body>, UpstreamError> {
        let Some(slot) = self.connection_slot(true) else {
            // Unreachable: this pool has no open connection when it connects, so it may.
            return Err(UpstreamError::Overflow(Overflow::Connections));
        };
        let io = self.connect().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(
                u32::try_from(self.cluster.buffer_limit)
                    .unwrap_or(u32::MAX)
                    .max(65_535),
            )
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::from_hyper(&e))?;
        self.spawn_connection(slot, conn);
        Ok(sender)
    }
}

impl Checkout {
    /// Returns the connection to the pool (called when the response body ended cleanly).
    fn release(self) {
        let Checkout {
            sender,
            pool,
            _request,
        } = self;
        if let Some(sender) = sender {
            pool.make_idle(sender);
        }
    }
}

/// A deadline for the rest of the response (the route timeout), or `None`.
pub type Deadline = Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

/// The upstream response body: returns the connection to the pool at its end and resets the
/// stream when the route timeout fires mid-body.
pub struct UpstreamBody {
    inner: Incoming,
    checkout: Option<Checkout>,
    deadline: Deadline,
    timeout_stat: Option<Counter>,
    /// HTTP/1.1 without `enable_trailers`: the response trailers are dropped, as Envoy's
    /// HTTP/1 codec ignores them.
    drop_trailers: bool,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// Wraps an upstream response body from `pool`.
    pub fn new(
        inner: Incoming,
        checkout: Option<Checkout>,
        deadline: Deadline,
        pool: &Pool,
    ) -> Self {
        let drop_trailers =
            pool.protocol() == UpstreamProtocol::Http1 && !pool.cluster.http1.enable_trailers;
        let mut checkout = checkout;
        // An empty body may never be polled: the connection is free as soon as the head is in.
        if http_body::Body::is_end_stream(&inner) {
            if let Some(c) = checkout.take() {
                c.release();
            }
        }
        UpstreamBody {
            inner,
            checkout,
            deadline,
            timeout_stat: Some(pool.stats.timeout.clone()),
            drop_trailers,
        }
    }
}

/// The error a body yields when the route timeout fires after the response started.
#[derive(Debug, thiserror::Error)]
#[error("upstream request timeout")]
pub struct ResponseTimeout;

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                this.deadline = None;
                this.checkout = None;
                if let Some(c) = this.timeout_stat.take() {
                    c.inc();
                }
                return Poll::Ready(Some(Err(Box::new(ResponseTimeout))));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.deadline = None;
                if let Some(c) = this.checkout.take() {
                    c.release();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.checkout = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(f))) if f.is_trailers() && this.drop_trailers => {
                // Trailers are the last frame: the body ends here.
                this.deadline = None;
                if let Some(c) = this.checkout.take() {
                    c.release();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(f))) => {
                if this.inner.is_end_stream() {
                    this.deadline = None;
                    if let Some(c) = this.checkout.take() {
                        c.release();
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
