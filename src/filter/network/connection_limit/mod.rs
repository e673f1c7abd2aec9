//! `envoy.filters.network.connection_limit`: caps the connections a filter chain serves at
//! once. A connection past `max_connections` is counted (`limited_connections`) and closed,
//! after `delay` if one is set (its bytes are read and dropped meanwhile, as Envoy's connection
//! reads them into a buffer nobody consumes). The count is one atomic per filter; the [`Slot`]
//! guard gives the unit back however the connection ends.
//!
//! As in Envoy, a refused connection also counts (in the limit and in `active_connections`)
//! until it is closed: while a refused connection waits out its `delay`, it keeps the next one
//! out too.

use crate::config::value::deserialize_opt_u64;
use crate::config::{self as cfg, ConfigError, Duration, RawAny};
use crate::listener::Connection;
use crate::stats::{Counter, Gauge};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// Extension name.
pub const NAME: &str = "envoy.filters.network.connection_limit";
/// `@type` of the typed config.
pub const TYPE: &str = "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit";

/// `ConnectionLimit`; any other field is an error naming its path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionLimitConfig {
    #[serde(default)]
    stat_prefix: String,
    #[serde(default, deserialize_with = "deserialize_opt_u64")]
    max_connections: Option<u64>,
    delay: Option<Duration>,
    runtime_enabled: Option<RuntimeFeatureFlag>,
}

/// `config.core.v3.RuntimeFeatureFlag`: extproxy has no runtime, so `default_value` decides.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeFeatureFlag {
    default_value: Option<bool>,
    #[serde(default)]
    runtime_key: String,
}

/// The built filter, shared by every connection of its listener.
#[derive(Debug)]
pub struct Filter {
    max_connections: u64,
    /// How long a refused connection is held before it is closed.
    delay: Option<std::time::Duration>,
    /// `runtime_enabled.default_value` (true when absent).
    enabled: bool,
    active: AtomicU64,
    /// `connection_limit.<prefix>.active_connections`.
    active_connections: Gauge,
    /// `connection_limit.<prefix>.limited_connections`.
    limited_connections: Counter,
}

/// Builds the filter from its typed config.
pub fn build(
    any: &RawAny,
    path: &str,
    ctx: &super::BuildContext<'_>,
) -> Result<Arc<Filter>, ConfigError> {
    let ConnectionLimitConfig {
        stat_prefix,
        max_connections,
        delay,
        runtime_enabled,
    } = cfg::decode_any(any, path)?;
    let violation = |field: &str, what: &str| {
        ConfigError::new(
            format!("{path}.{field}"),
            format!("Proto constraint validation failed (ConnectionLimitValidationError.{what})"),
        )
    };
    if stat_prefix.is_empty() {
        return Err(violation(
            "stat_prefix",
            "StatPrefix: value length must be at least 1 characters",
        ));
    }
    let max_connections = match max_connections {
        None => {
            return Err(ConfigError::new(
                format!("{path}.max_connections"),
                "max_connections is required",
            ))
        }
        Some(0) => {
            return Err(violation(
                "max_connections",
                "MaxConnections: value must be greater than or equal to 1",
            ))
        }
        Some(n) => n,
    };
    let enabled = match runtime_enabled {
        None => true,
        Some(RuntimeFeatureFlag {
            default_value,
            runtime_key,
        }) => {
            let Some(v) = default_value else {
                return Err(ConfigError::new(
                    format!("{path}.runtime_enabled.default_value"),
                    "value is required",
                ));
            };
            if runtime_key.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.runtime_enabled.runtime_key"),
                    "value length must be at least 1 characters",
                ));
            }
            v
        }
    };
    let scope = format!("connection_limit.{stat_prefix}");
    Ok(Arc::new(Filter {
        max_connections,
        delay: delay.map(|d| d.get()).filter(|d| !d.is_zero()),
        enabled,
        active: AtomicU64::new(0),
        active_connections: ctx.stats.gauge(&format!("{scope}.active_connections")),
        limited_connections: ctx.stats.counter(&format!("{scope}.limited_connections")),
    }))
}

/// A connection's unit of the count (admitted or refused); given back when dropped.
#[derive(Debug)]
pub struct Slot {
    filter: Option<Arc<Filter>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(f) = self.filter.take() {
            f.active.fetch_sub(1, Ordering::AcqRel);
            f.active_connections.dec();
        }
    }
}

impl Filter {
    /// Counts a new connection: `Ok` within the limit, `Err` past it (`limited_connections`);
    /// either way the slot counts until dropped.
    pub fn admit(self: &Arc<Self>) -> Result<Slot, Slot> {
        if !self.enabled {
            return Ok(Slot { filter: None });
        }
        self.active_connections.inc();
        let slot = Slot {
            filter: Some(self.clone()),
        };
        let max = self.max_connections;
        if self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            self.limited_connections.inc();
            self.active.fetch_add(1, Ordering::AcqRel);
            return Err(slot);
        }
        Ok(slot)
    }

    /// Closes a refused connection: at once, or after `delay` (sooner if the client closes or
    /// the server shuts down), dropping what it sends meanwhile.
    pub async fn reject(&self, conn: Connection) {
        let Some(delay) = self.delay else { return };
        let Connection {
            mut stream,
            shutdown,
            ..
        } = conn;
        let mut sink = vec![0u8; 4096];
        let drain = async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            // The client closed: Envoy closes too (its delay timer is cancelled).
        };
        tokio::select! {
            _ = drain => {}
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}
