//! The server: builds clusters and listeners from a bootstrap, binds everything, then runs
//! until shutdown and drains.
//!
//! Binding is separate from running ("bind outside, serve inside"): [`Server::bind`] returns the
//! bound addresses (real ports for `port_value: 0`), so tests start the real server in-process.

use crate::admin::{self, AdminState};
use crate::cluster::ClusterManager;
use crate::config::core::ResolvedAddress;
use crate::config::{Bootstrap, ConfigError};
use crate::listener::Listener;
use crate::stats::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid or uses an unsupported field.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener or the admin endpoint could not bind.
    #[error("cannot bind listener {listener} to {addr}: {source}")]
    Bind {
        /// Listener name (`admin` for the admin endpoint).
        listener: String,
        /// Configured address.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
}

/// Options that come from the command line rather than the bootstrap.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads (`--concurrency`); sizes the side-stream connection pools.
    pub concurrency: usize,
    /// How long to wait for open connections after shutdown starts (`--drain-time-s`).
    pub drain_time: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 1,
            drain_time: Duration::from_secs(5),
        }
    }
}

/// Builds every cluster and filter chain without binding anything (`--mode validate`).
pub fn validate(bootstrap: &Bootstrap, options: &Options) -> Result<(), ConfigError> {
    let stats = Store::new();
    let clusters = Arc::new(ClusterManager::build(
        &bootstrap.static_resources.clusters,
        &stats,
        options.concurrency,
    )?);
    crate::overload::GlobalConnectionLimit::build(bootstrap.overload_manager.as_ref(), &stats)?;
    validate_listeners(bootstrap, &clusters, &stats)?;
    admin_addr(bootstrap)?;
    Ok(())
}

/// The admin endpoint's bind address: shared by [`validate`] and [`Server::bind`] so
/// `--mode validate` rejects what starting would.
fn admin_addr(bootstrap: &Bootstrap) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(admin) = &bootstrap.admin else {
        return Ok(None);
    };
    let ResolvedAddress::Tcp { host, port } = admin.address.resolve("admin.address")? else {
        // Envoy serves admin on a Unix socket too; extproxy's admin only listens on TCP.
        return Err(ConfigError::new(
            "admin.address.pipe",
            "a Unix socket admin address is not supported",
        ));
    };
    // Like Envoy, the admin address is not resolved: it must be an IP literal.
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        ConfigError::new(
            "admin.address.socket_address.address",
            format!("malformed IP address: {host}"),
        )
    })?;
    Ok(Some(SocketAddr::new(ip, port)))
}

fn validate_listeners(
    bootstrap: &Bootstrap,
    clusters: &Arc<ClusterManager>,
    stats: &Store,
) -> Result<(), ConfigError> {
    for (i, l) in bootstrap.static_resources.listeners.iter().enumerate() {
        Listener::validate(
            l,
            &format!("static_resources.listeners[{i}]"),
            clusters,
            stats,
        )?;
    }
    Ok(())
}

/// A bound, not yet running, server.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<Listener>,
    admin: Option<TcpListener>,
    stats: Store,
    clusters: Arc<ClusterManager>,
    options: Options,
}

impl Server {
    /// Builds every cluster and filter chain and binds every listener and the admin endpoint.
    /// Nothing is bound if any part of the config is invalid.
    pub async fn bind(bootstrap: &Bootstrap, options: Options) -> Result<Self, Error> {
        let stats = Store::new();
        let clusters = Arc::new(ClusterManager::build(
            &bootstrap.static_resources.clusters,
            &stats,
            options.concurrency,
        )?);
        // Build every chain before binding anything, so a config error binds nothing.
        validate_listeners(bootstrap, &clusters, &stats)?;
        let global_limit = crate::overload::GlobalConnectionLimit::build(
            bootstrap.overload_manager.as_ref(),
            &stats,
        )?;
        let mut listeners = Vec::new();
        for (i, l) in bootstrap.static_resources.listeners.iter().enumerate() {
            let mut listener = Listener::bind(
                l,
                &format!("static_resources.listeners[{i}]"),
                &clusters,
                &stats,
            )
            .await?;
            listener.set_global_limit(global_limit.clone());
            listeners.push(listener);
        }
        let admin = match admin_addr(bootstrap)? {
            None => None,
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| Error::Bind {
                listener: "admin".into(),
                addr: addr.to_string(),
                source: e,
            })?),
        };
        stats
            .gauge("server.concurrency")
            .set(options.concurrency as i64);
        Ok(Server {
            listeners,
            admin,
            stats,
            clusters,
            options,
        })
    }

    /// Bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.local_addr())
    }

    /// Bound address of the admin endpoint.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The stats store (tests read counters from it directly).
    pub fn stats(&self) -> Store {
        self.stats.clone()
    }

    /// The clusters.
    pub fn clusters(&self) -> Arc<ClusterManager> {
        self.clusters.clone()
    }

    /// Serves until `shutdown` is cancelled (or admin `/quitquitquit`), then stops accepting and
    /// waits up to the drain time for open connections to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let Server {
            listeners,
            admin,
            stats,
            clusters: _,
            options,
        } = self;
        let tracker = TaskTracker::new();
        stats.gauge("server.live").set(1);
        let state = Arc::new(AdminState {
            stats: stats.clone(),
            listeners: listeners
                .iter()
                .map(|l| (l.name.clone(), l.local_addr()))
                .collect(),
            shutdown: shutdown.clone(),
            started: std::time::Instant::now(),
        });
        let admin_stop = CancellationToken::new();
        let admin_task =
            admin.map(|socket| tokio::spawn(admin::serve(socket, state, admin_stop.clone())));
        let mut accept_tasks = Vec::new();
        for l in listeners {
            accept_tasks.push(tokio::spawn(l.serve(shutdown.clone(), tracker.clone())));
        }
        shutdown.cancelled().await;
        stats.gauge("server.live").set(0);
        for t in accept_tasks {
            let _ = t.await;
        }
        tracker.close();
        if tokio::time::timeout(options.drain_time, tracker.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = tracker.len(),
                "drain time over; closing remaining connections"
            );
        }
        admin_stop.cancel();
        if let Some(t) = admin_task {
            let _ = t.await;
        }
    }
}
