//! `envoy.filters.network.tcp_proxy`: connects each downstream connection to the cluster and
//! copies bytes both ways, through the network ext_proc filters in front of it.
//!
//! - this file: config, stats, connecting ([`serve`]);
//! - [`chain`]: the ext_proc filters of one connection (state machines + side streams);
//! - [`session`]: the per-connection task: one `select!` over both sockets, the side streams
//!   and the timers, with half-close, backpressure, idle timeout, and the close rules.

pub mod access_log;
pub mod chain;
pub mod session;

use crate::cluster::Cluster;
use crate::config::{ConfigError, Duration, RawAny};
use crate::stats::{Counter, Gauge, Store};
use serde::Deserialize;
use std::sync::Arc;

/// Extension name.
pub const NAME: &str = "envoy.filters.network.tcp_proxy";
/// `@type` of the typed config.
pub const TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Envoy's default `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The supported subset of `TcpProxy`; any other field is an error naming its path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpProxyConfig {
    #[serde(default)]
    stat_prefix: String,
    cluster: Option<String>,
    idle_timeout: Option<Duration>,
    max_connect_attempts: Option<u32>,
    /// Written once per connection, when it ends.
    #[serde(default)]
    access_log: Vec<access_log::AccessLogConfig>,
}

macro_rules! tcp_stats {
    (counters { $($c:ident),+ $(,)? } gauges { $($g:ident),+ $(,)? }) => {
        /// `tcp.<stat_prefix>.*`, named as Envoy names them.
        #[derive(Debug, Clone)]
        #[allow(missing_docs)]
        pub struct TcpStats { $(pub $c: Counter,)+ $(pub $g: Gauge,)+ }
        impl TcpStats {
            fn new(store: &Store, prefix: &str) -> Self {
                TcpStats {
                    $($c: store.counter(&format!("tcp.{prefix}.{}", stringify!($c))),)+
                    $($g: store.gauge(&format!("tcp.{prefix}.{}", stringify!($g))),)+
                }
            }
        }
    };
}

tcp_stats!(
    counters {
        downstream_cx_total,
        downstream_cx_no_route,
        downstream_cx_rx_bytes_total,
        downstream_cx_tx_bytes_total,
        downstream_flow_control_paused_reading_total,
        downstream_flow_control_resumed_reading_total,
        downstream_cx_drain_close,
        downstream_cx_overload_close,
        early_data_received_count_total,
        idle_timeout,
        max_downstream_connection_duration,
        route_delayed_total,
        upstream_flush_total,
    }
    gauges {
        downstream_cx_rx_bytes_buffered,
        downstream_cx_tx_bytes_buffered,
        upstream_flush_active,
    }
);

/// Cluster counters tcp_proxy bumps that the core's `ClusterStats` does not have.
#[derive(Debug, Clone)]
pub struct UpstreamStats {
    /// `upstream_cx_connect_attempts_exceeded`.
    pub connect_attempts_exceeded: Counter,
    /// `upstream_flow_control_paused_reading_total`.
    pub paused_reading: Counter,
    /// `upstream_flow_control_resumed_reading_total`.
    pub resumed_reading: Counter,
}

/// The built filter, shared by all connections of a listener.
#[derive(Debug)]
pub struct Filter {
    /// `tcp.<stat_prefix>.*`.
    pub stats: TcpStats,
    /// `access_log`.
    access_logs: Vec<access_log::AccessLog>,
    /// The target cluster; `None` if the config names an unknown cluster (Envoy accepts that
    /// and counts `downstream_cx_no_route` per connection).
    cluster: Option<(Arc<Cluster>, UpstreamStats)>,
    /// `None` when disabled (`0s`).
    pub idle_timeout: Option<std::time::Duration>,
    /// Connect attempts before giving up.
    pub max_connect_attempts: u32,
    /// xDS node id, for `xds.node.id` (not plumbed from the bootstrap yet).
    node_id: String,
}

/// Builds the filter from its typed config.
pub fn build(
    any: &RawAny,
    path: &str,
    ctx: &super::BuildContext<'_>,
) -> Result<Arc<Filter>, ConfigError> {
    let cfg: TcpProxyConfig = crate::config::decode_any(any, path)?;
    let TcpProxyConfig {
        stat_prefix,
        cluster,
        idle_timeout,
        max_connect_attempts,
        access_log,
    } = cfg;
    let violation = |field: &str, what: &str| {
        ConfigError::new(
            format!("{path}.{field}"),
            format!("Proto constraint validation failed (TcpProxyValidationError.{what})"),
        )
    };
    if stat_prefix.is_empty() {
        return Err(violation(
            "stat_prefix",
            "StatPrefix: value length must be at least 1 characters",
        ));
    }
    let Some(cluster) = cluster else {
        return Err(violation("cluster", "ClusterSpecifier: value is required"));
    };
    let max_connect_attempts = max_connect_attempts.unwrap_or(1);
    if max_connect_attempts < 1 {
        return Err(violation(
            "max_connect_attempts",
            "MaxConnectAttempts: value must be greater than or equal to 1",
        ));
    }
    let access_logs = access_log::AccessLog::build_all(&access_log, &format!("{path}.access_log"))?;
    let idle_timeout = idle_timeout.map_or(Some(DEFAULT_IDLE_TIMEOUT), |d| {
        (!d.get().is_zero()).then_some(d.get())
    });
    let cluster = ctx.clusters.get(&cluster).map(|c| {
        let s = |n: &str| ctx.stats.counter(&format!("cluster.{}.{n}", c.name));
        let up = UpstreamStats {
            connect_attempts_exceeded: s("upstream_cx_connect_attempts_exceeded"),
            paused_reading: s("upstream_flow_control_paused_reading_total"),
            resumed_reading: s("upstream_flow_control_resumed_reading_total"),
        };
        (c, up)
    });
    Ok(Arc::new(Filter {
        stats: TcpStats::new(ctx.stats, &stat_prefix),
        access_logs,
        cluster,
        idle_timeout,
        max_connect_attempts,
        node_id: String::new(),
    }))
}

/// Proxies one downstream connection to the cluster, through the network ext_proc filters
/// that precede tcp_proxy in the chain (in config order).
pub async fn serve(
    conn: crate::listener::Connection,
    ext_proc: &[Arc<super::ext_proc::Filter>],
    filter: &Arc<Filter>,
) {
    filter.stats.downstream_cx_total.inc();
    let mut record = access_log::ConnectionRecord {
        start: Some(std::time::Instant::now()),
        id: conn.id,
        remote: Some(conn.peer),
        local: Some(conn.local),
        downstream_close_type: "Normal",
        upstream_close_type: "Normal",
        ..Default::default()
    };
    connect_and_run(conn, ext_proc, filter, &mut record).await;
    for log in &filter.access_logs {
        log.log(&record);
    }
}

async fn connect_and_run(
    conn: crate::listener::Connection,
    ext_proc: &[Arc<super::ext_proc::Filter>],
    filter: &Filter,
    record: &mut access_log::ConnectionRecord,
) {
    let Some((cluster, up_stats)) = &filter.cluster else {
        filter.stats.downstream_cx_no_route.inc();
        record.response_flags.push("NR");
        tracing::debug!(conn = conn.id, "tcp_proxy: cluster not found; closing");
        return;
    };
    record.cluster = cluster.name.clone();
    // Circuit breakers, as Envoy's tcp_proxy and TCP pool take them: a connection (checked
    // first), pending while connecting, a request while proxying. Overflow closes downstream.
    let breakers = &cluster.circuit_breakers;
    let Ok(_connection) = breakers.connection() else {
        record.response_flags.push("UO");
        tracing::debug!(
            conn = conn.id,
            "tcp_proxy: max_connections reached; closing"
        );
        return;
    };
    let Ok(pending) = breakers.pending() else {
        record.response_flags.push("UO");
        return;
    };
    // Downstream bytes stay unread until the upstream is connected (Envoy's IMMEDIATE mode), so
    // a failed connect closes a socket with unread data: the client sees RST, as with Envoy.
    let mut attempts = 0;
    let upstream = loop {
        attempts += 1;
        match cluster.connect().await {
            Ok(s) => break s,
            Err(e) => {
                tracing::debug!(conn = conn.id, attempt = attempts, error = %e, "tcp_proxy: upstream connect failed");
                if attempts >= filter.max_connect_attempts {
                    up_stats.connect_attempts_exceeded.inc();
                    record.response_flags.extend(["UF", "URX"]);
                    record.upstream_failure_reason = connect_failure_reason(&e);
                    // Envoy's spelling.
                    record.downstream_close_reason = Some("tcp_initializion_failure:0".into());
                    return;
                }
            }
        }
    };
    drop(pending);
    let Ok(_request) = breakers.request() else {
        record.response_flags.push("UO");
        return;
    };
    record.upstream_host = upstream.peer_addr().ok().map(|a| a.to_string());
    let end = session::run(conn, upstream, ext_proc, filter, cluster, up_stats).await;
    end.fill(record);
}

/// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` as Envoy words it (`delayed_connect_error: Connection refused`).
fn connect_failure_reason(e: &crate::cluster::ConnectError) -> Option<String> {
    match e {
        crate::cluster::ConnectError::Io(io) => {
            let text = io.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            Some(format!("delayed_connect_error: {text}"))
        }
        _ => None,
    }
}
