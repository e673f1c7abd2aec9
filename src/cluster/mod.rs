//! Upstream clusters: endpoints, load balancing, connecting, and per-cluster stats.
//!
//! A cluster is built once from config. The data path calls [`Cluster::connect`] (tcp_proxy, the
//! HTTP router's pool) or [`Cluster::grpc_channel`] (ext_proc side streams); both only read
//! immutable state plus an atomic round-robin index.

pub mod circuit_breaker;
pub mod config;
pub mod grpc;

use crate::config::bootstrap::{DiscoveryType, LbPolicy};
use crate::config::core::ResolvedAddress;
use crate::config::{self as cfg, ConfigError};
use crate::stats::{Counter, Gauge, Store};
use crate::transport_socket::{self, tls::ClientTls, Stream};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

pub use config::UpstreamProtocol;

/// Default `connect_timeout` (Envoy: 5 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `per_connection_buffer_limit_bytes` (Envoy: 1 MiB).
pub const DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The cluster has no endpoint to try.
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// The connect did not finish within `connect_timeout`.
    #[error("connect timeout")]
    Timeout,
    /// The OS refused or failed the connect (refused, unreachable, DNS failure).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The endpoint is a Unix socket, which this caller cannot use.
    #[error("endpoint {0} is not a TCP address")]
    NotTcp(String),
    /// The TLS handshake failed (counted under `cluster.<name>.ssl.*`).
    #[error("TLS error: {0}")]
    Tls(std::io::Error),
}

/// Counters Envoy keeps under `cluster.<name>.`.
#[derive(Debug, Clone)]
pub struct ClusterStats {
    /// `upstream_cx_total`: connections attempted.
    pub upstream_cx_total: Counter,
    /// `upstream_cx_active`: connections open now.
    pub upstream_cx_active: Gauge,
    /// `upstream_cx_connect_fail`: connect errors and timeouts.
    pub upstream_cx_connect_fail: Counter,
    /// `upstream_cx_connect_timeout`: connects that timed out.
    pub upstream_cx_connect_timeout: Counter,
    /// `upstream_cx_none_healthy`: picks that found no endpoint.
    pub upstream_cx_none_healthy: Counter,
    /// `upstream_rq_total`: requests (HTTP) sent.
    pub upstream_rq_total: Counter,
    /// `upstream_cx_rx_bytes_total`.
    pub upstream_cx_rx_bytes_total: Counter,
    /// `upstream_cx_tx_bytes_total`.
    pub upstream_cx_tx_bytes_total: Counter,
}

impl ClusterStats {
    fn new(store: &Store, name: &str) -> Self {
        let c = |s: &str| store.counter(&format!("cluster.{name}.{s}"));
        ClusterStats {
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: store.gauge(&format!("cluster.{name}.upstream_cx_active")),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_rq_total: c("upstream_rq_total"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
        }
    }
}

/// One upstream cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Cluster name, as referenced by filters.
    pub name: String,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Protocol spoken to the endpoints (HTTP/1.1 unless HTTP/2 is configured).
    pub protocol: UpstreamProtocol,
    /// HTTP/1.1 options (`explicit_http_config.http_protocol_options`).
    pub http1: config::Http1Settings,
    /// Soft limit on each upstream connection's buffers.
    pub buffer_limit: usize,
    /// Stats under `cluster.<name>.`.
    pub stats: ClusterStats,
    /// `circuit_breakers`: the limits the router, tcp_proxy and side streams take from.
    pub circuit_breakers: Arc<circuit_breaker::CircuitBreakers>,
    /// The cluster's `transport_socket` when it is TLS.
    pub tls: Option<ClientTls>,
    endpoints: Vec<ResolvedAddress>,
    lb_policy: LbPolicy,
    discovery: DiscoveryType,
    rr: AtomicUsize,
    /// Side-stream channels by `:authority`, created on first use at config-build time.
    grpc: Mutex<HashMap<String, grpc::GrpcChannel>>,
    /// Connections per endpoint for gRPC side streams (one per worker thread).
    grpc_connections: usize,
}

impl Cluster {
    fn build(
        c: &cfg::Cluster,
        path: &str,
        store: &Store,
        workers: usize,
    ) -> Result<Self, ConfigError> {
        let cfg::Cluster {
            name,
            connect_timeout,
            discovery_type,
            lb_policy,
            load_assignment,
            dns_lookup_family: _, // AUTO-like behaviour: the resolver's order is used
            typed_extension_protocol_options,
            http2_protocol_options,
            per_connection_buffer_limit_bytes,
            circuit_breakers,
            transport_socket,
        } = c;
        if name.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "cluster name must not be empty",
            ));
        }
        let lb_policy = lb_policy.unwrap_or(LbPolicy::RoundRobin);
        if lb_policy == LbPolicy::LeastRequest {
            return Err(ConfigError::new(
                format!("{path}.lb_policy"),
                "LEAST_REQUEST is not supported",
            ));
        }
        let discovery = discovery_type.unwrap_or(DiscoveryType::Static);
        let mut endpoints = Vec::new();
        if let Some(la) = load_assignment {
            for (i, locality) in la.endpoints.iter().enumerate() {
                for (j, ep) in locality.lb_endpoints.iter().enumerate() {
                    let p = format!(
                        "{path}.load_assignment.endpoints[{i}].lb_endpoints[{j}].endpoint.address"
                    );
                    let addr = ep.endpoint.address.resolve(&p)?;
                    if let (DiscoveryType::Static, ResolvedAddress::Tcp { host, .. }) =
                        (discovery, &addr)
                    {
                        if host.parse::<std::net::IpAddr>().is_err() {
                            return Err(ConfigError::new(
                                format!("{p}.socket_address.address"),
                                format!("malformed IP address: {host}. Consider setting resolver_name or setting cluster type to 'STRICT_DNS' or 'LOGICAL_DNS'"),
                            ));
                        }
                    }
                    endpoints.push(addr);
                }
            }
        }
        let (protocol, http1) = config::protocol(
            typed_extension_protocol_options,
            http2_protocol_options,
            path,
        )?;
        // Envoy offers the cluster's protocol when alpn_protocols is empty.
        let default_alpn: &[&str] = match protocol {
            UpstreamProtocol::Http2 => &["h2"],
            UpstreamProtocol::Http1 => &["http/1.1"],
        };
        let tls = transport_socket::upstream(
            transport_socket,
            &format!("{path}.transport_socket"),
            store,
            &format!("cluster.{name}"),
            default_alpn,
        )?;
        Ok(Cluster {
            name: name.clone(),
            connect_timeout: connect_timeout
                .map(|d| d.get())
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            protocol,
            http1,
            buffer_limit: per_connection_buffer_limit_bytes
                .map(|b| b as usize)
                .unwrap_or(DEFAULT_BUFFER_LIMIT),
            stats: ClusterStats::new(store, name),
            circuit_breakers: Arc::new(circuit_breaker::CircuitBreakers::build(
                circuit_breakers.as_ref(),
                name,
                path,
                store,
            )?),
            tls,
            endpoints,
            lb_policy,
            discovery,
            rr: AtomicUsize::new(0),
            grpc: Mutex::new(HashMap::new()),
            grpc_connections: workers.max(1),
        })
    }

    /// The endpoints as configured.
    pub fn endpoints(&self) -> &[ResolvedAddress] {
        &self.endpoints
    }

    /// Picks an endpoint with the cluster's load-balancing policy.
    pub fn pick(&self) -> Option<&ResolvedAddress> {
        if self.endpoints.is_empty() {
            self.stats.upstream_cx_none_healthy.inc();
            return None;
        }
        let i = match self.lb_policy {
            LbPolicy::Random => rand::random_range(0..self.endpoints.len()),
            _ => self.rr.fetch_add(1, Ordering::Relaxed) % self.endpoints.len(),
        };
        self.endpoints.get(i)
    }

    /// Opens a connection to an endpoint (TCP within `connect_timeout`, then the TLS handshake
    /// when the cluster has a TLS transport socket), with stats.
    pub async fn connect(&self) -> Result<Stream, ConnectError> {
        let tcp = self.connect_tcp().await?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            // Envoy counts a failed handshake as a connect failure too.
            Some(tls) => match tls.connect(tcp).await {
                Ok(s) => Ok(Stream::client_tls(s)),
                Err(e) => {
                    self.stats.upstream_cx_connect_fail.inc();
                    Err(ConnectError::Tls(e))
                }
            },
        }
    }

    /// Opens a TCP connection to an endpoint, within `connect_timeout`, with stats.
    /// DNS clusters resolve the host name at connect time.
    pub async fn connect_tcp(&self) -> Result<TcpStream, ConnectError> {
        let addr = self.pick().ok_or(ConnectError::NoHealthyUpstream)?.clone();
        self.stats.upstream_cx_total.inc();
        let result = tokio::time::timeout(self.connect_timeout, async {
            match &addr {
                ResolvedAddress::Tcp { host, port } => {
                    let target: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
                        Ok(ip) => vec![SocketAddr::new(ip, *port)],
                        Err(_) => tokio::net::lookup_host((host.as_str(), *port))
                            .await?
                            .collect(),
                    };
                    let _ = self.discovery; // STRICT_DNS and LOGICAL_DNS both resolve per connect
                    TcpStream::connect(&target[..])
                        .await
                        .map_err(ConnectError::Io)
                }
                ResolvedAddress::Unix(p) => Err(ConnectError::NotTcp(p.display().to_string())),
            }
        })
        .await;
        match result {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => {
                self.stats.upstream_cx_connect_fail.inc();
                Err(e)
            }
            Err(_) => {
                self.stats.upstream_cx_connect_fail.inc();
                self.stats.upstream_cx_connect_timeout.inc();
                Err(ConnectError::Timeout)
            }
        }
    }

    /// The pooled gRPC channel for side streams to this cluster with the given `:authority`
    /// (empty = the cluster name, as Envoy does). Cheap to clone; connects lazily.
    pub fn grpc_channel(&self, authority: &str) -> Result<grpc::GrpcChannel, ConfigError> {
        let authority = if authority.is_empty() {
            self.name.as_str()
        } else {
            authority
        };
        let mut map = self.grpc.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = map.get(authority) {
            return Ok(ch.clone());
        }
        let ch = grpc::GrpcChannel::new(self, authority, self.grpc_connections)?;
        map.insert(authority.to_string(), ch.clone());
        Ok(ch)
    }
}

/// Every cluster of the bootstrap, by name.
#[derive(Debug, Default)]
pub struct ClusterManager {
    clusters: HashMap<String, Arc<Cluster>>,
}

impl ClusterManager {
    /// Builds all `static_resources.clusters`. `workers` sizes the side-stream connection pools.
    pub fn build(
        clusters: &[cfg::Cluster],
        store: &Store,
        workers: usize,
    ) -> Result<Self, ConfigError> {
        let mut map = HashMap::new();
        for (i, c) in clusters.iter().enumerate() {
            let cluster = Cluster::build(
                c,
                &format!("static_resources.clusters[{i}]"),
                store,
                workers,
            )?;
            map.insert(cluster.name.clone(), Arc::new(cluster));
        }
        Ok(ClusterManager { clusters: map })
    }

    /// The cluster called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.get(name).cloned()
    }

    /// All cluster names (for admin).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.clusters.keys().map(|s| s.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Result<Cluster, ConfigError> {
        let c: cfg::Cluster = cfg::decode(serde_yaml_ng::from_str(yaml).unwrap(), "c")?;
        Cluster::build(&c, "c", &Store::new(), 1)
    }

    #[test]
    fn round_robin_cycles_endpoints() {
        let c = cluster(
            "name: up\nload_assignment:\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 2}}}\n",
        )
        .unwrap();
        let ports: Vec<String> = (0..4).map(|_| c.pick().unwrap().to_string()).collect();
        assert_eq!(
            ports,
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"]
        );
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.protocol, UpstreamProtocol::Http1);
    }

    #[test]
    fn static_cluster_rejects_host_names() {
        let err = cluster("name: up\nload_assignment:\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {address: {socket_address: {address: localhost, port_value: 1}}}\n").unwrap_err();
        assert!(err.path.ends_with("socket_address.address"), "{err}");
        assert!(cluster("name: up\ntype: STRICT_DNS\nload_assignment:\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {address: {socket_address: {address: localhost, port_value: 1}}}\n").is_ok());
    }

    #[tokio::test]
    async fn connect_refused_counts_a_failure() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c = cluster(&format!("name: up\nconnect_timeout: 1s\nload_assignment:\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n")).unwrap();
        assert!(matches!(c.connect().await, Err(ConnectError::Io(_))));
        assert_eq!(c.stats.upstream_cx_connect_fail.value(), 1);
    }
}
