//! Side-stream gRPC channels to processor clusters.
//!
//! Every ext_proc stream (one per HTTP request or per TCP connection) is an HTTP/2 stream on a
//! shared connection, never a TCP connection of its own. Each endpoint gets one lazily-connected
//! HTTP/2 connection per worker thread, picked round-robin, so streams spread over connections
//! (and cores) and no single connection's `SETTINGS_MAX_CONCURRENT_STREAMS` caps the proxy.
//!
//! Each stream is a request on the cluster, as in Envoy: it holds a `max_requests` unit of the
//! cluster's circuit breakers until it ends ([`SideChannel`]); at the limit the call ends at once
//! with Envoy's answer, `UNAVAILABLE: upstream connect error or disconnect/reset before headers.
//! reset reason: overflow`, which the ext_proc filters treat as any stream error.

use super::circuit_breaker::{CircuitBreakers, ResourceGuard};
use super::{Cluster, UpstreamProtocol};
use crate::config::core::ResolvedAddress;
use crate::config::ConfigError;
use crate::transport_socket::{tls::ClientTls, Stream};
use bytes::Bytes;
use extproc::batched_writes::BatchedWrites;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tonic::transport::{Channel, Endpoint};

/// A pool of HTTP/2 connections to a processor cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GrpcChannel {
    inner: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    channels: Vec<Channel>,
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
            "https"
        } else {
            "http"
        };
        let origin: http::Uri = format!("{scheme}://{authority}").parse().map_err(|e| {
            ConfigError::new(
                "envoy_grpc.authority",
                format!("invalid authority {authority:?}: {e}"),
            )
        })?;
        let mut channels = Vec::new();
        for addr in cluster.endpoints() {
            for _ in 0..per_endpoint {
                channels.push(channel(
                    addr,
                    &origin,
                    cluster.connect_timeout,
                    cluster.tls.as_ref(),
                )?);
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
        let channel = self.inner.channels.get(i)?.clone();
        Some(SideChannel {
            channel,
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
    origin: &http::Uri,
    connect_timeout: std::time::Duration,
    tls: Option<&ClientTls>,
) -> Result<Channel, ConfigError> {
    let invalid =
        |e: tonic::transport::Error| ConfigError::new(format!("endpoint {addr}"), e.to_string());
    let uri = match addr {
        ResolvedAddress::Tcp { .. } => format!("http://{addr}"),
        // The URI is unused for Unix sockets: the connector below ignores it.
        ResolvedAddress::Unix(_) => "http://localhost".to_string(),
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(invalid)?
        .origin(origin.clone())
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // Larger windows than h2's 64 KiB default: body chunks of up to 1 MiB flow without
        // waiting a round trip for WINDOW_UPDATE.
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        // Frames of up to 256 KiB from the processor (h2's default is 16 KiB): a large body
        // reply comes in a few frames, so a few reads here and a few writes on its side.
        .max_frame_size(Some(256 * 1024))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(false);
    // Every connection goes through `BatchedWrites`: the frames of all streams that run
    // between two passes of h2's connection task go out in one write.
    Ok(match (addr, tls) {
        (ResolvedAddress::Tcp { host, port }, tls) => {
            let (host, port, tls) = (host.clone(), *port, tls.cloned());
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let (host, tls) = (host.clone(), tls.clone());
                async move {
                    let connect = async {
                        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                        let _ = tcp.set_nodelay(true);
                        match tls {
                            Some(tls) => Ok(Stream::client_tls(tls.connect(tcp).await?)),
                            None => Ok::<_, std::io::Error>(Stream::Plain(tcp)),
                        }
                    };
                    let s = tokio::time::timeout(connect_timeout, connect)
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                    Ok::<_, std::io::Error>(TokioIo::new(BatchedWrites::new(s)))
                }
            }))
        }
        (ResolvedAddress::Unix(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("endpoint {addr}"),
                "TLS to a Unix socket endpoint is not supported",
            ))
        }
        (ResolvedAddress::Unix(path), None) => {
            let path = path.clone();
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(|s| TokioIo::new(BatchedWrites::new(s)))
                }
            }))
        }
    })
}

/// The channel of one side stream: a tonic channel whose calls hold a `max_requests` unit of
/// the cluster until the response body is dropped.
#[derive(Debug, Clone)]
pub struct SideChannel {
    channel: Channel,
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

type CallFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<GuardedBody>, tonic::transport::Error>> + Send>,
>;

impl tower::Service<http::Request<tonic::body::Body>> for SideChannel {
    type Response = http::Response<GuardedBody>;
    type Error = tonic::transport::Error;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(request) = self.admit() else {
            return Box::pin(std::future::ready(Ok(overflow_response())));
        };
        let call = tower::Service::call(&mut self.channel, req);
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
