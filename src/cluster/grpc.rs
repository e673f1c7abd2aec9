//! Side-stream gRPC channels to processor clusters.
//!
//! Every ext_proc stream (one per HTTP request or per TCP connection) is an HTTP/2 stream on a
//! shared connection, never a TCP connection of its own. Each endpoint gets one lazily-connected
//! HTTP/2 connection per worker thread, picked round-robin, so streams spread over connections
//! (and cores) and no single connection's `SETTINGS_MAX_CONCURRENT_STREAMS` caps the proxy.

use super::{Cluster, UpstreamProtocol};
use crate::config::core::ResolvedAddress;
use crate::config::ConfigError;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
}

impl GrpcChannel {
    pub(super) fn new(cluster: &Cluster, authority: &str, per_endpoint: usize) -> Result<Self, ConfigError> {
        if cluster.protocol != UpstreamProtocol::Http2 {
            // Envoy accepts this config and fails each stream; we refuse it up front, naming it.
            return Err(ConfigError::new(
                format!("cluster {}", cluster.name),
                "a gRPC service cluster must be configured for HTTP/2 (typed_extension_protocol_options with explicit_http_config.http2_protocol_options)",
            ));
        }
        let origin: http::Uri = format!("http://{authority}")
            .parse()
            .map_err(|e| ConfigError::new("envoy_grpc.authority", format!("invalid authority {authority:?}: {e}")))?;
        let mut channels = Vec::new();
        for addr in cluster.endpoints() {
            for _ in 0..per_endpoint {
                channels.push(channel(addr, &origin, cluster.connect_timeout)?);
            }
        }
        Ok(GrpcChannel {
            inner: Arc::new(Pool { channels, next: AtomicUsize::new(0), cluster: cluster.name.clone() }),
        })
    }

    /// A channel for one new side stream, or `None` if the cluster has no endpoints.
    pub fn pick(&self) -> Option<Channel> {
        let n = self.inner.channels.len();
        if n == 0 {
            return None;
        }
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        self.inner.channels.get(i).cloned()
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
) -> Result<Channel, ConfigError> {
    let invalid = |e: tonic::transport::Error| ConfigError::new(format!("endpoint {addr}"), e.to_string());
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
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(false);
    Ok(match addr {
        ResolvedAddress::Tcp { .. } => endpoint.connect_lazy(),
        ResolvedAddress::Unix(path) => {
            let path = path.clone();
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
            }))
        }
    })
}
