//! The overload manager's `envoy.resource_monitors.global_downstream_max_connections`: one cap on
//! the downstream connections of all listeners together (the admin listener is not counted).
//! A connection past the cap is closed as soon as it is accepted, before any filter sees it, and
//! counted in its listener's `downstream_global_cx_overflow`, as Envoy does.

use crate::config::value::deserialize_opt_u64;
use crate::config::{self as cfg, ConfigError, Duration, RawAny};
use crate::stats::Store;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The resource monitor extension name.
pub const GLOBAL_DOWNSTREAM_MAX_CONNECTIONS: &str =
    "envoy.resource_monitors.global_downstream_max_connections";
/// Its config's `@type`.
pub const DOWNSTREAM_CONNECTIONS_TYPE: &str =
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";

/// `config.overload.v3.OverloadManager` (the subset that sets the global connection limit).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadManagerConfig {
    /// Accepted: the connection monitor is exact at every accept, not sampled.
    pub refresh_interval: Option<Duration>,
    /// Resource monitors; only the global downstream connection monitor is supported.
    #[serde(default)]
    pub resource_monitors: Vec<ResourceMonitor>,
    /// Overload actions: not supported (an error naming the field when non-empty).
    #[serde(default)]
    pub actions: Vec<serde_json::Value>,
    /// Load-shed points: not supported (an error naming the field when non-empty).
    #[serde(default)]
    pub loadshed_points: Vec<serde_json::Value>,
}

/// `config.overload.v3.ResourceMonitor`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceMonitor {
    /// Extension name.
    pub name: String,
    /// The monitor's config.
    pub typed_config: Option<RawAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DownstreamConnectionsConfig {
    #[serde(default, deserialize_with = "deserialize_opt_u64")]
    max_active_downstream_connections: Option<u64>,
}

/// The global downstream connection cap, shared by every listener.
#[derive(Debug)]
pub struct GlobalConnectionLimit {
    max: u64,
    active: AtomicU64,
}

/// One admitted downstream connection; its slot goes back when dropped.
#[derive(Debug)]
pub struct GlobalSlot(Arc<GlobalConnectionLimit>);

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl GlobalConnectionLimit {
    /// Builds the cap from `overload_manager` (`None` when no connection monitor is configured).
    pub fn build(
        cfg: Option<&OverloadManagerConfig>,
        store: &Store,
    ) -> Result<Option<Arc<Self>>, ConfigError> {
        let Some(OverloadManagerConfig {
            refresh_interval: _,
            resource_monitors,
            actions,
            loadshed_points,
        }) = cfg
        else {
            return Ok(None);
        };
        if !actions.is_empty() {
            return Err(ConfigError::new(
                "overload_manager.actions",
                "overload actions are not supported",
            ));
        }
        if !loadshed_points.is_empty() {
            return Err(ConfigError::new(
                "overload_manager.loadshed_points",
                "load-shed points are not supported",
            ));
        }
        let mut limit = None;
        for (i, m) in resource_monitors.iter().enumerate() {
            let path = format!("overload_manager.resource_monitors[{i}]");
            if m.name != GLOBAL_DOWNSTREAM_MAX_CONNECTIONS {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("unsupported resource monitor {} (supported: {GLOBAL_DOWNSTREAM_MAX_CONNECTIONS})", m.name),
                ));
            }
            let tpath = format!("{path}.typed_config");
            let any = m
                .typed_config
                .as_ref()
                .ok_or_else(|| ConfigError::new(&tpath, "typed_config is required"))?;
            let ty = cfg::any_type(any, &tpath)?;
            if ty != DOWNSTREAM_CONNECTIONS_TYPE {
                return Err(ConfigError::new(
                    format!("{tpath}.@type"),
                    format!("expected {DOWNSTREAM_CONNECTIONS_TYPE}, got {ty}"),
                ));
            }
            let DownstreamConnectionsConfig {
                max_active_downstream_connections,
            } = cfg::decode_any(any, &tpath)?;
            let max = max_active_downstream_connections
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{tpath}.max_active_downstream_connections"),
                        "value must be greater than 0",
                    )
                })?;
            let scope = format!("overload.{GLOBAL_DOWNSTREAM_MAX_CONNECTIONS}");
            store.counter(&format!("{scope}.failed_updates"));
            store.gauge(&format!("{scope}.pressure"));
            limit = Some(Arc::new(GlobalConnectionLimit {
                max,
                active: AtomicU64::new(0),
            }));
        }
        Ok(limit)
    }

    /// A slot for a new connection, or `None` at the cap.
    pub fn try_acquire(self: &Arc<Self>) -> Option<GlobalSlot> {
        let max = self.max;
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(GlobalSlot(self.clone()))
    }
}
