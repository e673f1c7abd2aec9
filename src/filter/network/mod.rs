//! Network (L4) filters and the filter chain of a listener.
//!
//! A chain is zero or more `envoy.filters.network.ext_proc` filters followed by one terminal
//! filter: `envoy.filters.network.tcp_proxy` (L4 proxying) or
//! `envoy.filters.network.http_connection_manager` (L7). Filters are a closed set, so the chain
//! is an enum per slot rather than boxed trait objects. `envoy.filters.network.connection_limit`
//! filters may appear anywhere before the terminal filter; they act when a connection starts.

pub mod connection_limit;
pub mod ext_proc;
pub mod http_connection_manager;
pub mod tcp_proxy;

use crate::cluster::ClusterManager;
use crate::config::{self as cfg, ConfigError};
use crate::listener::Connection;
use crate::stats::Store;
use std::sync::Arc;

/// What a filter needs from the rest of the server while it is built.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    /// All clusters, to resolve `cluster` / `envoy_grpc.cluster_name` references.
    pub clusters: &'a Arc<ClusterManager>,
    /// The stats store, to register the filter's counters (they show as 0 before traffic).
    pub stats: &'a Store,
    /// The listener's per-connection buffer limit (bytes).
    pub buffer_limit: usize,
    /// The listener's name, for logs.
    pub listener_name: &'a str,
}

/// The terminal filter of a chain.
#[derive(Debug, Clone)]
pub enum Terminal {
    /// `envoy.filters.network.tcp_proxy`.
    TcpProxy(Arc<tcp_proxy::Filter>),
    /// `envoy.filters.network.http_connection_manager`.
    HttpConnectionManager(Arc<http_connection_manager::Filter>),
}

/// A listener's built filter chain.
#[derive(Debug, Clone)]
pub struct FilterChain {
    /// `envoy.filters.network.connection_limit` filters, applied when a connection starts.
    pub connection_limits: Vec<Arc<connection_limit::Filter>>,
    /// Network ext_proc filters, in config order (read path order; the write path is reversed).
    pub ext_proc: Vec<Arc<ext_proc::Filter>>,
    /// The filter that ends the chain.
    pub terminal: Terminal,
}

impl FilterChain {
    /// Builds and validates a chain; errors name the offending filter's path.
    pub fn build(
        chain: &cfg::FilterChain,
        path: &str,
        ctx: &BuildContext<'_>,
    ) -> Result<Self, ConfigError> {
        // The transport socket is the listener's business (`listener::Listener::bind`).
        let cfg::FilterChain {
            name: _,
            filters,
            transport_socket: _,
        } = chain;
        let mut ext_procs = Vec::new();
        let mut connection_limits = Vec::new();
        let mut terminal = None;
        for (i, f) in filters.iter().enumerate() {
            let fpath = format!("{path}.filters[{i}]");
            if terminal.is_some() {
                return Err(ConfigError::new(
                    format!("{fpath}.name"),
                    format!("{} follows a terminal filter", f.name),
                ));
            }
            let any = f.typed_config.as_ref().ok_or_else(|| {
                ConfigError::new(
                    format!("{fpath}.typed_config"),
                    format!("typed_config is required for {}", f.name),
                )
            })?;
            let tpath = format!("{fpath}.typed_config");
            let ty = cfg::any_type(any, &tpath)?;
            let expect = |want: &str| -> Result<(), ConfigError> {
                if ty == want {
                    Ok(())
                } else {
                    Err(ConfigError::new(
                        format!("{tpath}.@type"),
                        format!(
                            "{} expects @type type.googleapis.com/{want}, got {ty}",
                            f.name
                        ),
                    ))
                }
            };
            match f.name.as_str() {
                ext_proc::NAME => {
                    expect(ext_proc::TYPE)?;
                    ext_procs.push(ext_proc::build(any, &tpath, ctx)?);
                }
                connection_limit::NAME => {
                    expect(connection_limit::TYPE)?;
                    connection_limits.push(connection_limit::build(any, &tpath, ctx)?);
                }
                tcp_proxy::NAME => {
                    expect(tcp_proxy::TYPE)?;
                    terminal = Some(Terminal::TcpProxy(tcp_proxy::build(any, &tpath, ctx)?));
                }
                http_connection_manager::NAME => {
                    expect(http_connection_manager::TYPE)?;
                    if !ext_procs.is_empty() {
                        return Err(ConfigError::new(
                            format!("{fpath}.name"),
                            "envoy.filters.network.ext_proc before http_connection_manager is not supported",
                        ));
                    }
                    terminal = Some(Terminal::HttpConnectionManager(
                        http_connection_manager::build(any, &tpath, ctx)?,
                    ));
                }
                other => {
                    return Err(ConfigError::new(
                        format!("{fpath}.name"),
                        format!(
                            "unsupported network filter {other} (supported: {}, {}, {}, {})",
                            connection_limit::NAME,
                            ext_proc::NAME,
                            tcp_proxy::NAME,
                            http_connection_manager::NAME
                        ),
                    ))
                }
            }
        }
        let terminal = terminal.ok_or_else(|| {
            ConfigError::new(
                format!("{path}.filters"),
                "the filter chain must end with envoy.filters.network.tcp_proxy or envoy.filters.network.http_connection_manager",
            )
        })?;
        Ok(FilterChain {
            connection_limits,
            ext_proc: ext_procs,
            terminal,
        })
    }

    /// Runs the chain on one accepted connection until it is done.
    pub async fn handle(&self, conn: Connection) {
        // Every limit's slot (the refusing one's too) stays held until the connection closes,
        // as in Envoy (each filter counts from its own onNewConnection to the close).
        let mut _slots = Vec::with_capacity(self.connection_limits.len());
        for limit in &self.connection_limits {
            match limit.admit() {
                Ok(slot) => _slots.push(slot),
                Err(slot) => {
                    _slots.push(slot);
                    return limit.reject(conn).await;
                }
            }
        }
        match &self.terminal {
            Terminal::TcpProxy(tp) => tcp_proxy::serve(conn, &self.ext_proc, tp).await,
            Terminal::HttpConnectionManager(hcm) => http_connection_manager::serve(conn, hcm).await,
        }
    }
}
