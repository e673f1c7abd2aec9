//! A cluster's `circuit_breakers`: Envoy's per-priority resource limits (connections, pending
//! requests, active requests, retries, connection pools) with the `circuit_breakers.<priority>.*`
//! gauges and the `upstream_*_overflow` counters.
//!
//! Each limit is a lock-free [`Resource`]: an atomic count raised by [`Resource::try_acquire`]
//! (a compare-and-swap that never passes the maximum) and lowered when the returned
//! [`ResourceGuard`] drops, so every exit path (error, cancellation, panic) gives it back.
//!
//! Who takes what, as in Envoy:
//! - the HTTP router's pool: a connection per upstream connection, a pending request while a
//!   request waits for a connection, a request per active upstream request, a pool per pool;
//! - tcp_proxy: a connection (checked first, `upstream_cx_overflow`), pending while connecting,
//!   a request while proxying;
//! - ext_proc side streams: a request per gRPC stream and a pool per side-stream channel.
//!
//! Only the DEFAULT priority is ever used (extproxy has no route priorities); HIGH thresholds are
//! accepted and shown, as Envoy shows them, but never consumed.

use crate::config::ConfigError;
use crate::proto_enum;
use crate::stats::{Counter, Gauge, Store};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Envoy's default `max_connections`, `max_pending_requests` and `max_requests`.
pub const DEFAULT_MAX: u64 = 1024;
/// Envoy's default `max_retries`.
pub const DEFAULT_MAX_RETRIES: u64 = 3;

proto_enum!(
    /// `config.core.v3.RoutingPriority`.
    RoutingPriority "config.core.v3.RoutingPriority" {
        Default = ("DEFAULT", 0),
        High = ("HIGH", 1),
    }
);

/// `config.cluster.v3.CircuitBreakers`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakersConfig {
    /// Limits per priority; a priority listed twice takes the last entry (as Envoy).
    #[serde(default)]
    pub thresholds: Vec<Thresholds>,
    /// Per-host limits: not supported (an error naming the field when non-empty).
    #[serde(default)]
    pub per_host_thresholds: Vec<serde_json::Value>,
}

/// `config.cluster.v3.CircuitBreakers.Thresholds`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// DEFAULT (the one extproxy uses) or HIGH.
    pub priority: Option<RoutingPriority>,
    /// Upstream connections (default 1024).
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection (default 1024).
    pub max_pending_requests: Option<u32>,
    /// Active requests, including gRPC side streams (default 1024).
    pub max_requests: Option<u32>,
    /// Concurrent retries (default 3; extproxy does not retry, so only the gauges show it).
    pub max_retries: Option<u32>,
    /// Retry budgets: not supported.
    pub retry_budget: Option<serde_json::Value>,
    /// Publish `remaining_*` gauges.
    #[serde(default)]
    pub track_remaining: bool,
    /// Connection pools (default unlimited).
    pub max_connection_pools: Option<u32>,
}

/// One limited resource: a lock-free count with its `*_open` and `remaining_*` gauges.
#[derive(Debug)]
pub struct Resource {
    current: AtomicU64,
    max: u64,
    /// 1 while the limit is reached (Envoy: the circuit breaker is "open").
    open: Gauge,
    /// `max - current`, with `track_remaining`.
    remaining: Option<Gauge>,
}

impl Resource {
    fn new(max: u64, open: Gauge, remaining: Option<Gauge>) -> Arc<Self> {
        let r = Arc::new(Resource {
            current: AtomicU64::new(0),
            max,
            open,
            remaining,
        });
        r.publish();
        r
    }

    /// Takes one unit if the limit allows it.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ResourceGuard> {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < self.max).then_some(c + 1)
            })
            .ok()?;
        self.publish();
        Some(ResourceGuard {
            resource: self.clone(),
        })
    }

    /// Takes one unit even past the limit (Envoy lets a pool with no connection at all make
    /// one, so queued requests cannot starve behind other pools' connections).
    pub fn acquire_anyway(self: &Arc<Self>) -> ResourceGuard {
        self.current.fetch_add(1, Ordering::AcqRel);
        self.publish();
        ResourceGuard {
            resource: self.clone(),
        }
    }

    /// Whether one more unit fits now.
    pub fn can_create(&self) -> bool {
        self.current.load(Ordering::Acquire) < self.max
    }

    /// Units in use now.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// The configured maximum.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Sets the gauges from the count. Racing updaters re-check after writing, so once the
    /// count stops moving the gauges show it (a stale write is always followed by a fresh one).
    fn publish(&self) {
        let mut seen = self.current.load(Ordering::Acquire);
        loop {
            self.open.set(i64::from(seen >= self.max));
            if let Some(r) = &self.remaining {
                // Envoy's gauges are u64; `remaining_cx_pools` starts at u64::MAX.
                r.set(self.max.saturating_sub(seen) as i64);
            }
            let now = self.current.load(Ordering::Acquire);
            if now == seen {
                return;
            }
            seen = now;
        }
    }
}

/// One unit of a [`Resource`], given back on drop.
#[derive(Debug)]
pub struct ResourceGuard {
    resource: Arc<Resource>,
}

impl Drop for ResourceGuard {
    fn drop(&mut self) {
        self.resource.current.fetch_sub(1, Ordering::AcqRel);
        self.resource.publish();
    }
}

/// The limits of one priority (`circuit_breakers.<priority>.`).
#[derive(Debug)]
pub struct ResourceManager {
    /// `max_connections` (`cx_open`, `remaining_cx`).
    pub connections: Arc<Resource>,
    /// `max_pending_requests` (`rq_pending_open`, `remaining_pending`).
    pub pending_requests: Arc<Resource>,
    /// `max_requests` (`rq_open`, `remaining_rq`).
    pub requests: Arc<Resource>,
    /// `max_retries` (`rq_retry_open`, `remaining_retries`).
    pub retries: Arc<Resource>,
    /// `max_connection_pools` (`cx_pool_open`, `remaining_cx_pools`).
    pub connection_pools: Arc<Resource>,
}

impl ResourceManager {
    fn new(t: &Thresholds, store: &Store, scope: &str) -> Self {
        let Thresholds {
            priority: _,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            retry_budget: _, // rejected in `build`
            track_remaining,
            max_connection_pools,
        } = t;
        let resource = |max: Option<u32>, default: u64, open: &str, remaining: &str| {
            Resource::new(
                max.map_or(default, u64::from),
                store.gauge(&format!("{scope}.{open}")),
                track_remaining.then(|| store.gauge(&format!("{scope}.{remaining}"))),
            )
        };
        ResourceManager {
            connections: resource(*max_connections, DEFAULT_MAX, "cx_open", "remaining_cx"),
            pending_requests: resource(
                *max_pending_requests,
                DEFAULT_MAX,
                "rq_pending_open",
                "remaining_pending",
            ),
            requests: resource(*max_requests, DEFAULT_MAX, "rq_open", "remaining_rq"),
            retries: resource(
                *max_retries,
                DEFAULT_MAX_RETRIES,
                "rq_retry_open",
                "remaining_retries",
            ),
            connection_pools: resource(
                *max_connection_pools,
                u64::MAX,
                "cx_pool_open",
                "remaining_cx_pools",
            ),
        }
    }
}

/// The overflow counters under `cluster.<name>.`.
#[derive(Debug, Clone)]
pub struct OverflowStats {
    /// `upstream_cx_overflow`: a connection was wanted at `max_connections`.
    pub upstream_cx_overflow: Counter,
    /// `upstream_cx_pool_overflow`: a pool was wanted at `max_connection_pools`.
    pub upstream_cx_pool_overflow: Counter,
    /// `upstream_rq_pending_overflow`: a request could not wait (`max_pending_requests`).
    pub upstream_rq_pending_overflow: Counter,
    /// `upstream_rq_active_overflow`: a request could not start (`max_requests`; Envoy 1.40's
    /// name, earlier versions counted these as pending overflows).
    pub upstream_rq_active_overflow: Counter,
    /// `upstream_rq_retry_overflow` (always 0: no retries).
    pub upstream_rq_retry_overflow: Counter,
}

/// A cluster's circuit breakers.
#[derive(Debug)]
pub struct CircuitBreakers {
    /// DEFAULT priority: what every request and connection uses.
    pub default: ResourceManager,
    /// HIGH priority: shown, never used.
    pub high: ResourceManager,
    /// Overflow counters.
    pub stats: OverflowStats,
}

/// Why a resource could not be taken; the counter is already bumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    /// `max_connections` (tcp_proxy).
    #[error("connection overflow")]
    Connections,
    /// `max_pending_requests`.
    #[error("pending request overflow")]
    Pending,
    /// `max_requests`.
    #[error("active request overflow")]
    Requests,
    /// `max_connection_pools`.
    #[error("connection pool overflow")]
    Pools,
}

impl CircuitBreakers {
    /// Builds the breakers of cluster `name`; `path` is the cluster's config path.
    pub fn build(
        cfg: Option<&CircuitBreakersConfig>,
        name: &str,
        path: &str,
        store: &Store,
    ) -> Result<Self, ConfigError> {
        let empty = CircuitBreakersConfig::default();
        let CircuitBreakersConfig {
            thresholds,
            per_host_thresholds,
        } = cfg.unwrap_or(&empty);
        let path = format!("{path}.circuit_breakers");
        if !per_host_thresholds.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.per_host_thresholds"),
                "per-host circuit breakers are not supported",
            ));
        }
        let (mut default, mut high) = (Thresholds::default(), Thresholds::default());
        for (i, t) in thresholds.iter().enumerate() {
            if t.retry_budget.is_some() {
                return Err(ConfigError::new(
                    format!("{path}.thresholds[{i}].retry_budget"),
                    "retry budgets are not supported (extproxy does not retry)",
                ));
            }
            match t.priority.unwrap_or(RoutingPriority::Default) {
                RoutingPriority::Default => default = t.clone(),
                RoutingPriority::High => high = t.clone(),
            }
        }
        let c = |s: &str| store.counter(&format!("cluster.{name}.{s}"));
        Ok(CircuitBreakers {
            default: ResourceManager::new(
                &default,
                store,
                &format!("cluster.{name}.circuit_breakers.default"),
            ),
            high: ResourceManager::new(
                &high,
                store,
                &format!("cluster.{name}.circuit_breakers.high"),
            ),
            stats: OverflowStats {
                upstream_cx_overflow: c("upstream_cx_overflow"),
                upstream_cx_pool_overflow: c("upstream_cx_pool_overflow"),
                upstream_rq_pending_overflow: c("upstream_rq_pending_overflow"),
                upstream_rq_active_overflow: c("upstream_rq_active_overflow"),
                upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
            },
        })
    }

    /// A pending-request unit, or [`Overflow::Pending`] (counted).
    pub fn pending(&self) -> Result<ResourceGuard, Overflow> {
        self.default.pending_requests.try_acquire().ok_or_else(|| {
            self.stats.upstream_rq_pending_overflow.inc();
            Overflow::Pending
        })
    }

    /// An active-request unit, or [`Overflow::Requests`] (counted).
    pub fn request(&self) -> Result<ResourceGuard, Overflow> {
        self.default.requests.try_acquire().ok_or_else(|| {
            self.stats.upstream_rq_active_overflow.inc();
            Overflow::Requests
        })
    }

    /// A connection unit, or [`Overflow::Connections`] (counted).
    pub fn connection(&self) -> Result<ResourceGuard, Overflow> {
        self.default.connections.try_acquire().ok_or_else(|| {
            self.stats.upstream_cx_overflow.inc();
            Overflow::Connections
        })
    }

    /// A connection-pool unit, or [`Overflow::Pools`] (counted).
    pub fn pool(&self) -> Result<ResourceGuard, Overflow> {
        self.default.connection_pools.try_acquire().ok_or_else(|| {
            self.stats.upstream_cx_pool_overflow.inc();
            Overflow::Pools
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(yaml: &str, store: &Store) -> Result<CircuitBreakers, ConfigError> {
        let cfg: CircuitBreakersConfig =
            crate::config::decode(serde_yaml_ng::from_str(yaml).unwrap(), "c.circuit_breakers")?;
        CircuitBreakers::build(Some(&cfg), "up", "c", store)
    }

    #[test]
    fn defaults_and_gauges_match_envoy() {
        let store = Store::new();
        let cb = breakers(
            "thresholds: [{track_remaining: true, max_connections: 2}]",
            &store,
        )
        .unwrap();
        let g = |n: &str| store.get(&format!("cluster.up.circuit_breakers.default.{n}"));
        assert_eq!(g("remaining_cx"), Some(2));
        assert_eq!(g("remaining_pending"), Some(1024));
        assert_eq!(g("remaining_rq"), Some(1024));
        assert_eq!(g("remaining_retries"), Some(3));
        assert_eq!(g("remaining_cx_pools").map(|v| v as u64), Some(u64::MAX));
        assert_eq!(
            store.get("cluster.up.circuit_breakers.high.cx_open"),
            Some(0)
        );
        assert_eq!(
            store.get("cluster.up.circuit_breakers.high.remaining_cx"),
            None
        );

        let a = cb.connection().unwrap();
        assert_eq!((g("cx_open"), g("remaining_cx")), (Some(0), Some(1)));
        let b = cb.connection().unwrap();
        assert_eq!((g("cx_open"), g("remaining_cx")), (Some(1), Some(0)));
        assert_eq!(cb.connection().unwrap_err(), Overflow::Connections);
        assert_eq!(store.get("cluster.up.upstream_cx_overflow"), Some(1));
        drop(a);
        assert_eq!((g("cx_open"), g("remaining_cx")), (Some(0), Some(1)));
        let over = cb.default.connections.acquire_anyway();
        let c = cb.default.connections.acquire_anyway();
        assert_eq!((g("cx_open"), g("remaining_cx")), (Some(1), Some(0)));
        drop((b, over, c));
        assert_eq!((g("cx_open"), g("remaining_cx")), (Some(0), Some(2)));
    }

    #[test]
    fn unsupported_fields_name_their_path() {
        let store = Store::new();
        let e = breakers("thresholds: [{retry_budget: {}}]", &store).unwrap_err();
        assert_eq!(e.path, "c.circuit_breakers.thresholds[0].retry_budget");
        let e = breakers("per_host_thresholds: [{max_connections: 1}]", &store).unwrap_err();
        assert_eq!(e.path, "c.circuit_breakers.per_host_thresholds");
        let e = breakers("thresholds: [{max_conections: 1}]", &store).unwrap_err();
        assert!(e.path.contains("thresholds[0]"), "{e}");
        let e = breakers("thresholds: [{priority: LOW}]", &store).unwrap_err();
        assert!(e.path.contains("priority"), "{e}");
    }

    #[test]
    fn high_priority_is_separate_and_last_entry_wins() {
        let store = Store::new();
        let cb = breakers(
            "thresholds: [{max_requests: 1}, {priority: HIGH, max_requests: 5, track_remaining: true}, {priority: DEFAULT, max_requests: 2}]",
            &store,
        )
        .unwrap();
        assert_eq!(cb.default.requests.max(), 2);
        assert_eq!(cb.high.requests.max(), 5);
        assert_eq!(
            store.get("cluster.up.circuit_breakers.high.remaining_rq"),
            Some(5)
        );
    }

    #[test]
    fn concurrent_acquires_never_pass_the_limit_and_gauges_settle() {
        let store = Store::new();
        let cb = Arc::new(
            breakers(
                "thresholds: [{max_requests: 8, track_remaining: true}]",
                &store,
            )
            .unwrap(),
        );
        let peak = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cb, peak) = (cb.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let a = cb.request().ok();
                        let b = cb.request().ok();
                        peak.fetch_max(cb.default.requests.current(), Ordering::Relaxed);
                        drop((a, b));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 8);
        assert_eq!(cb.default.requests.current(), 0);
        assert_eq!(
            store.get("cluster.up.circuit_breakers.default.rq_open"),
            Some(0)
        );
        assert_eq!(
            store.get("cluster.up.circuit_breakers.default.remaining_rq"),
            Some(8)
        );
    }
}
