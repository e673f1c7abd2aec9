//! Side-stream gRPC channels to processor clusters.
//!
//! Every ext_proc stream (one per HTTP request or per TCP connection) is an HTTP/2 stream on a
//! shared connection, never a TCP connection of its own. Each endpoint gets one lazily-connected
//! HTTP/2 connection per worker thread, picked round-robin, so streams spread over connections
//! (and cores) and no single connection's `SETTINGS_MAX_CONCURRENT_STREAMS` caps the proxy.
//!
//! A call goes straight to hyper's HTTP/2 client: no `tonic::transport::Channel` with its
//! buffer task, reconnect and header layers in between (about 7% of the proxy's instructions per
//! ext_proc request). tonic still encodes and decodes the messages (`tonic::client::Grpc`).
//!
//! Each stream is a request on the cluster, as in Envoy: it holds a `max_requests` unit of the
//! cluster's circuit breakers until it ends ([`SideChannel`]); at the limit the call ends at once
//! with Envoy's answer, `UNAVAILABLE: upstream connect error or disconnect/reset before headers.
//! reset reason: overflow`, which the ext_proc filters treat as any stream error.
//!
//! The side-stream connections and streams count in the cluster's stats as Envoy's async client
//! counts them: `upstream_cx_total`, `upstream_cx_connect_fail` (`_timeout`) and
//! `upstream_cx_active` per connection, which also holds a `max_connections` unit while it
//! lives; `upstream_rq_total` per stream sent on a connection.

use super::circuit_breaker::{CircuitBreakers, ResourceGuard};
use super::{Cluster, ClusterStats, UpstreamProtocol};
use crate::config::core::ResolvedAddress;
use crate::config::ConfigError;
use crate::stats::GaugeGuard;
use crate::transport_socket::{tls::ClientTls, Stream};
use bytes::Bytes;
use extproc::batched_writes::BatchedWrites;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

type SendRequest = hyper::client::conn::http2::SendRequest<tonic::body::Body>;

/// A pool of HTTP/2 connections to a processor cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GrpcChannel {
    inner: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    channels: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
    /// The cluster the streams go to, for error details and stats.
    cluster: String,
    /// The cluster's limits.
    breakers: Arc<CircuitBreakers>,
    /// This pool's `max_connection_pools` unit, taken by the first stream.
    counted: OnceLock<ResourceGuard>,
}

impl GrpcChannel {
    pub(super) fn new(
        cluster: &Cluster,
        authority: &str,
        per_endpoint: usize,
    ) -> Result<Self, ConfigError> {
        if cluster.protocol != UpstreamProtocol::Http2 {
            // Envoy accepts this config and fails each stream; we refuse it up front, naming it.
            return Err(ConfigError::new(
                format!("cluster {}", cluster.name),
                "a gRPC service cluster must be configured for HTTP/2 (typed_extension_protocol_options with explicit_http_config.http2_protocol_options)",
            ));
        }
        // Over TLS the side stream's `:scheme` is https, as Envoy sends it.
        let scheme = if cluster.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        let authority: http::uri::Authority = authority.parse().map_err(|e| {
            ConfigError::new(
                "envoy_grpc.authority",
                format!("invalid authority {authority:?}: {e}"),
            )
        })?;
        let mut channels = Vec::new();
        for addr in cluster.endpoints() {
            for _ in 0..per_endpoint {
                channels.push(channel(addr, &scheme, &authority, cluster)?);
            }
        }
        Ok(GrpcChannel {
            inner: Arc::new(Pool {
                channels,
                next: AtomicUsize::new(0),
                cluster: cluster.name.clone(),
                breakers: cluster.circuit_breakers.clone(),
                counted: OnceLock::new(),
            }),
        })
    }

    /// A channel for one new side stream, or `None` if the cluster has no endpoints.
    pub fn pick(&self) -> Option<SideChannel> {
        let n = self.inner.channels.len();
        if n == 0 {
            return None;
        }
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        let endpoint = self.inner.channels.get(i)?.clone();
        Some(SideChannel {
            endpoint,
            pool: self.inner.clone(),
        })
    }

    /// Name of the cluster behind this channel.
    pub fn cluster_name(&self) -> &str {
        &self.inner.cluster
    }
}

fn channel(
    addr: &ResolvedAddress,
    scheme: &http::uri::Scheme,
    authority: &http::uri::Authority,
    cluster: &Cluster,
) -> Result<Arc<Endpoint>, ConfigError> {
    let tls = cluster.tls.as_ref();
    if let (ResolvedAddress::Unix(_), Some(_)) = (addr, tls) {
        return Err(ConfigError::new(
            format!("endpoint {addr}"),
            "TLS to a Unix socket endpoint is not supported",
        ));
    }
    Ok(Arc::new(Endpoint {
        addr: addr.clone(),
        tls: tls.cloned(),
        connect_timeout: cluster.connect_timeout,
        scheme: scheme.clone(),
        authority: authority.clone(),
        stats: cluster.stats.clone(),
        breakers: cluster.circuit_breakers.clone(),
        conn: tokio::sync::Mutex::new(None),
    }))
}

/// One endpoint's HTTP/2 connection: made by the first call, made again by the first call after
/// it closed.
#[derive(Debug)]
struct Endpoint {
    addr: ResolvedAddress,
    tls: Option<ClientTls>,
    connect_timeout: Duration,
    /// `:scheme` and `:authority` of every stream.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The cluster's stats, counting this endpoint's connections and streams.
    stats: ClusterStats,
    /// The cluster's limits: each connection holds a `max_connections` unit.
    breakers: Arc<CircuitBreakers>,
    /// Held to clone the sender; held across the connect only while connecting, so the calls
    /// that arrive meanwhile wait for that connection instead of making their own.
    conn: tokio::sync::Mutex<Option<SendRequest>>,
}

/// Envoy's text for a side stream whose connection could not be made.
fn connect_failure(reason: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::unavailable(format!(
        "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
    ))
}

impl Endpoint {
    /// A sender on the live connection, connecting first if there is none.
    async fn sender(&self) -> Result<SendRequest, tonic::Status> {
        let mut slot = self.conn.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        *slot = None;
        // This slot has no connection, so like Envoy's pool with none it connects even at
        // `max_connections` (counting the overflow).
        let cx = self
            .breakers
            .connection()
            .unwrap_or_else(|_| self.breakers.default.connections.acquire_anyway());
        self.stats.upstream_cx_total.inc();
        let io = match tokio::time::timeout(self.connect_timeout, self.connect()).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                self.stats.upstream_cx_connect_fail.inc();
                return Err(connect_failure(format_args!(
                    "remote connection failure, transport failure reason: {e}"
                )));
            }
            Err(_) => {
                self.stats.upstream_cx_connect_fail.inc();
                self.stats.upstream_cx_connect_timeout.inc();
                return Err(connect_failure("connection timeout"));
            }
        };
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Larger windows than h2's 64 KiB default: body chunks of up to 1 MiB flow without
            // waiting a round trip for WINDOW_UPDATE.
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            // Frames of up to 256 KiB from the processor (h2's default is 16 KiB): a large
            // body reply comes in a few frames, so a few reads here and a few writes on its side.
            .max_frame_size(256 * 1024)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
        let active = GaugeGuard::new(&self.stats.upstream_cx_active);
        tokio::spawn(async move {
            let (_active, _cx) = (active, cx);
            if let Err(e) = conn.await {
                tracing::debug!("side-stream connection ended: {e}");
            }
        });
        *slot = Some(send.clone());
        Ok(send)
    }

    /// A new socket to the endpoint. Every one goes through `BatchedWrites`: the frames of all
    /// streams that run between two passes of h2's connection task go out in one write.
    async fn connect(&self) -> std::io::Result<BatchedWrites<SideIo>> {
        let io = match &self.addr {
            ResolvedAddress::Tcp { host, port } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                let _ = tcp.set_nodelay(true);
                match &self.tls {
                    Some(tls) => SideIo::Left(Stream::client_tls(tls.connect(tcp).await?)),
                    None => SideIo::Left(Stream::Plain(tcp)),
                }
            }
            ResolvedAddress::Unix(path) => {
                SideIo::Right(tokio::net::UnixStream::connect(path).await?)
            }
        };
        Ok(BatchedWrites::new(io))
    }

    /// Sends one call on this endpoint's connection.
    async fn call(
        self: Arc<Self>,
        req: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, tonic::Status> {
        let (mut parts, body) = req.into_parts();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        parts.uri = http::Uri::from_parts(uri)
            .map_err(|e| tonic::Status::internal(format!("side-stream URI: {e}")))?;
        let req = http::Request::from_parts(parts, body);
        let mut send = self.sender().await?;
        // Envoy counts a stream once its connection is up, so not when the connect failed.
        self.stats.upstream_rq_total.inc();
        send.ready()
            .await
            .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
        Ok(resp.map(tonic::body::Body::new))
    }
}

/// The socket under a side-stream connection: TCP (plain or TLS) or a Unix socket.
type SideIo = tokio_util::either::Either<Stream, tokio::net::UnixStream>;

/// The channel of one side stream: calls on one endpoint's connection that hold a
/// `max_requests` unit of the cluster until the response body is dropped.
#[derive(Debug, Clone)]
pub struct SideChannel {
    endpoint: Arc<Endpoint>,
    pool: Arc<Pool>,
}

/// Envoy's local reply to a gRPC call refused by a circuit breaker, as the async client sees it.
const OVERFLOW_MESSAGE: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";

impl SideChannel {
    /// The limits this stream takes: the pool (first stream only) and a request.
    fn admit(&self) -> Option<ResourceGuard> {
        let pool = &self.pool;
        if pool.counted.get().is_none() {
            let _ = pool.counted.set(pool.breakers.pool().ok()?);
        }
        pool.breakers.request().ok()
    }
}

/// A trailers-only `UNAVAILABLE` response (what Envoy's router answers a gRPC call on overflow).
fn overflow_response() -> http::Response<GuardedBody> {
    let mut resp = http::Response::new(GuardedBody {
        inner: tonic::body::Body::empty(),
        _request: None,
    });
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-status",
        http::HeaderValue::from(tonic::Code::Unavailable as i32),
    );
    headers.insert(
        "grpc-message",
        http::HeaderValue::from_static(OVERFLOW_MESSAGE),
    );
    resp
}

type CallFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<GuardedBody>, tonic::Status>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for SideChannel {
    type Response = http::Response<GuardedBody>;
    type Error = tonic::Status;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the connection's, awaited in the call (connecting if needed).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(request) = self.admit() else {
            return Box::pin(std::future::ready(Ok(overflow_response())));
        };
        let call = self.endpoint.clone().call(req);
        Box::pin(async move {
            let resp = call.await?;
            Ok(resp.map(|inner| GuardedBody {
                inner,
                _request: Some(request),
            }))
        })
    }
}

/// A side stream's response body; its `max_requests` unit goes back when it is dropped.
#[derive(Debug)]
pub struct GuardedBody {
    inner: tonic::body::Body,
    _request: Option<ResourceGuard>,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
