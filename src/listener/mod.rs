//! Listeners: bind, accept, and hand each connection to the listener's filter chain.
//!
//! Binding happens in [`Listener::bind`], before the server runs, so callers (and tests) know
//! every bound address up front; [`Listener::serve`] then accepts until shutdown and tracks each
//! connection task so the server can drain them.

use crate::cluster::DEFAULT_BUFFER_LIMIT;
use crate::config::core::ResolvedAddress;
use crate::config::{self as cfg, ConfigError};
use crate::filter::network::{BuildContext, FilterChain};
use crate::stats::{Counter, Gauge, GaugeGuard, Store};
use crate::transport_socket::{self, tls::ServerTls, Stream};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connection ids are process-wide and start at 1, like Envoy's.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A new process-wide connection id (downstream and upstream connections share the sequence).
pub fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// One accepted downstream connection, as handed to a filter chain.
#[derive(Debug)]
pub struct Connection {
    /// The socket: plain TCP, or TLS once the handshake is done.
    pub stream: Stream,
    /// Process-wide connection id (`connection.id`).
    pub id: u64,
    /// The client's address (`source.address`).
    pub peer: SocketAddr,
    /// The address the client connected to (`destination.address`).
    pub local: SocketAddr,
    /// `per_connection_buffer_limit_bytes` of the listener.
    pub buffer_limit: usize,
    /// Cancelled when the server shuts down: filters should finish or close gracefully.
    pub shutdown: CancellationToken,
}

/// `listener.<address>.` stats.
#[derive(Debug, Clone)]
struct ListenerStats {
    downstream_cx_total: Counter,
    downstream_cx_destroy: Counter,
    downstream_cx_active: Gauge,
    /// Connections closed at accept by the overload manager's global limit.
    downstream_global_cx_overflow: Counter,
}

/// A bound listener with its filter chain.
#[derive(Debug)]
pub struct Listener {
    /// Configured name.
    pub name: String,
    socket: TcpListener,
    local_addr: SocketAddr,
    chain: Arc<FilterChain>,
    /// The filter chain's `transport_socket` when it is TLS.
    tls: Option<ServerTls>,
    buffer_limit: usize,
    stats: ListenerStats,
    /// The overload manager's global downstream connection limit, if configured.
    global_limit: Option<Arc<crate::overload::GlobalConnectionLimit>>,
}

impl Listener {
    /// Builds the filter chain and checks the address without binding (`--mode validate`).
    pub fn validate(
        l: &cfg::Listener,
        path: &str,
        clusters: &Arc<crate::cluster::ClusterManager>,
        store: &Store,
    ) -> Result<(), ConfigError> {
        let chain_cfg = build_chain(l, path, clusters, store)?.config;
        transport_socket::downstream(
            &chain_cfg.transport_socket,
            &format!("{path}.filter_chains[0].transport_socket"),
            store,
            "listener.validate",
        )?;
        listen_addr(&l.address, path)?;
        Ok(())
    }

    /// Builds the filter chain and binds the socket.
    pub async fn bind(
        l: &cfg::Listener,
        path: &str,
        clusters: &Arc<crate::cluster::ClusterManager>,
        store: &Store,
    ) -> Result<Self, crate::server::Error> {
        let cfg::Listener {
            name,
            address,
            filter_chains: _,
            per_connection_buffer_limit_bytes: _,
            stat_prefix,
        } = l;
        let BuiltChain {
            chain,
            config: chain_cfg,
            buffer_limit,
        } = build_chain(l, path, clusters, store)?;
        let addr = listen_addr(address, path)?;
        let socket = bind_tcp(addr).map_err(|e| crate::server::Error::Bind {
            listener: name.clone(),
            addr: addr.to_string(),
            source: e,
        })?;
        let local_addr = socket
            .local_addr()
            .map_err(|e| crate::server::Error::Bind {
                listener: name.clone(),
                addr: addr.to_string(),
                source: e,
            })?;
        // Envoy names the scope after the configured address (port 0 stays 0), `:` → `_`.
        let scope = if stat_prefix.is_empty() {
            format!("listener.{}", addr.to_string().replace(':', "_"))
        } else {
            format!("listener.{stat_prefix}")
        };
        let tls = transport_socket::downstream(
            &chain_cfg.transport_socket,
            &format!("{path}.filter_chains[0].transport_socket"),
            store,
            &scope,
        )?;
        let stats = ListenerStats {
            downstream_cx_total: store.counter(&format!("{scope}.downstream_cx_total")),
            downstream_cx_destroy: store.counter(&format!("{scope}.downstream_cx_destroy")),
            downstream_cx_active: store.gauge(&format!("{scope}.downstream_cx_active")),
            downstream_global_cx_overflow: store
                .counter(&format!("{scope}.downstream_global_cx_overflow")),
        };
        Ok(Listener {
            name: name.clone(),
            socket,
            local_addr,
            chain: Arc::new(chain),
            tls,
            buffer_limit,
            stats,
            global_limit: None,
        })
    }

    /// The bound address (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies the overload manager's global downstream connection limit to this listener.
    pub fn set_global_limit(&mut self, limit: Option<Arc<crate::overload::GlobalConnectionLimit>>) {
        self.global_limit = limit;
    }

    /// Accepts connections until `shutdown`, spawning one task per connection on `tracker`.
    pub async fn serve(self, shutdown: CancellationToken, tracker: TaskTracker) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.socket.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %self.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Past the global limit the socket is closed before anything counts it (Envoy).
            let global_slot = match &self.global_limit {
                None => None,
                Some(limit) => match limit.try_acquire() {
                    Some(slot) => Some(slot),
                    None => {
                        self.stats.downstream_global_cx_overflow.inc();
                        drop(stream);
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(self.local_addr);
            let chain = self.chain.clone();
            let stats = self.stats.clone();
            let tls = self.tls.clone();
            let buffer_limit = self.buffer_limit;
            let shutdown = shutdown.clone();
            let id = next_connection_id();
            stats.downstream_cx_total.inc();
            tracker.spawn(async move {
                let _global_slot = global_slot;
                let _active = GaugeGuard::new(&stats.downstream_cx_active);
                // The handshake runs in the connection's task: a slow or failed one only
                // affects this connection (it is counted under `ssl.*` and closed).
                let stream = match tls {
                    None => Some(Stream::Plain(stream)),
                    Some(tls) => tokio::select! {
                        r = tls.accept(stream) => match r {
                            Ok(s) => Some(Stream::server_tls(s)),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                None
                            }
                        },
                        _ = shutdown.cancelled() => None,
                    },
                };
                if let Some(stream) = stream {
                    let conn = Connection {
                        stream,
                        id,
                        peer,
                        local,
                        buffer_limit,
                        shutdown,
                    };
                    chain.handle(conn).await;
                }
                stats.downstream_cx_destroy.inc();
            });
        }
    }
}

/// What [`Listener::validate`] and [`Listener::bind`] both build from a listener's config.
struct BuiltChain<'a> {
    /// The first filter chain (there is no filter chain matching).
    chain: FilterChain,
    /// Its config: the `transport_socket` is built once the stats scope is known.
    config: &'a cfg::FilterChain,
    /// `per_connection_buffer_limit_bytes`, or the default.
    buffer_limit: usize,
}

/// Builds the listener's first filter chain with the listener's build context.
fn build_chain<'a>(
    l: &'a cfg::Listener,
    path: &str,
    clusters: &Arc<crate::cluster::ClusterManager>,
    store: &Store,
) -> Result<BuiltChain<'a>, ConfigError> {
    let cfg::Listener {
        name,
        address: _,
        filter_chains,
        per_connection_buffer_limit_bytes,
        stat_prefix: _,
    } = l;
    let buffer_limit = per_connection_buffer_limit_bytes
        .map(|b| b as usize)
        .unwrap_or(DEFAULT_BUFFER_LIMIT);
    let ctx = BuildContext {
        clusters,
        stats: store,
        buffer_limit,
        listener_name: name,
    };
    let Some(config) = filter_chains.first() else {
        return Err(ConfigError::new(
            format!("{path}.filter_chains"),
            "no filter chains specified",
        ));
    };
    let chain = FilterChain::build(config, &format!("{path}.filter_chains[0]"), &ctx)?;
    Ok(BuiltChain {
        chain,
        config,
        buffer_limit,
    })
}

/// The address a listener binds: shared by [`Listener::validate`] and [`Listener::bind`] so
/// `--mode validate` rejects what starting would.
fn listen_addr(address: &cfg::core::Address, path: &str) -> Result<SocketAddr, ConfigError> {
    let ResolvedAddress::Tcp { host, port } = address.resolve(&format!("{path}.address"))? else {
        // Envoy binds these; extproxy only listens on TCP.
        return Err(ConfigError::new(
            format!("{path}.address.pipe"),
            "Unix socket listeners are not supported",
        ));
    };
    // Listeners do not resolve names: the address must be an IP literal.
    let ip: IpAddr = host.parse().map_err(|_| {
        ConfigError::new(
            format!("{path}.address.socket_address.address"),
            format!("malformed IP address: {host}"),
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// Binds with SO_REUSEADDR and Envoy's default backlog.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
