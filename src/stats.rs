//! Stats with Envoy's names: counters and gauges registered once by name, bumped with atomics.
//!
//! Registration takes a lock (config time, per filter instance); the data path only touches the
//! `Arc<Atomic*>` it was handed. Rendering follows Envoy's admin formats: `/stats` prints
//! `name: value` sorted by name, `/stats/prometheus` applies Envoy's default tag extraction to the
//! prefixes extproxy emits (`http.<prefix>.`, `listener.<address>.`, `cluster.<name>.`,
//! `tcp.<prefix>.`), so dashboards built for Envoy keep working.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing counter.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (active connections, buffered bytes).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Adds `n` (may be negative).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Current value.
    pub fn value(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Decrements a gauge when dropped: ties "active" gauges to the lifetime of what they count.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increments `gauge` now and decrements it on drop.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug, Clone)]
enum Stat {
    Counter(Counter),
    Gauge(Gauge),
}

/// The registry of every stat of the process; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Store {
    stats: Arc<Mutex<BTreeMap<String, Stat>>>,
}

impl Store {
    /// A new empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter called `name`, created at 0 if new. Same name, same counter.
    pub fn counter(&self, name: &str) -> Counter {
        let mut stats = self.lock();
        match stats.get(name) {
            Some(Stat::Counter(c)) => c.clone(),
            _ => {
                let c = Counter::default();
                stats.insert(name.to_string(), Stat::Counter(c.clone()));
                c
            }
        }
    }

    /// The gauge called `name`, created at 0 if new.
    pub fn gauge(&self, name: &str) -> Gauge {
        let mut stats = self.lock();
        match stats.get(name) {
            Some(Stat::Gauge(g)) => g.clone(),
            _ => {
                let g = Gauge::default();
                stats.insert(name.to_string(), Stat::Gauge(g.clone()));
                g
            }
        }
    }

    /// Current value of a stat (counters as i64), if it exists. For tests and admin.
    pub fn get(&self, name: &str) -> Option<i64> {
        self.lock().get(name).map(|s| match s {
            Stat::Counter(c) => c.value() as i64,
            Stat::Gauge(g) => g.value(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stat>> {
        // A panic while holding this lock cannot leave the map inconsistent; keep serving.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Values as Envoy renders them: unsigned (`remaining_cx_pools` starts at `u64::MAX`).
    fn snapshot(&self) -> Vec<(String, bool, u64)> {
        self.lock()
            .iter()
            .map(|(k, s)| match s {
                Stat::Counter(c) => (k.clone(), true, c.value()),
                Stat::Gauge(g) => (k.clone(), false, g.value() as u64),
            })
            .collect()
    }

    /// Envoy's `/stats` text: `name: value` lines sorted by name.
    /// `filter` keeps names matching the regex; `used_only` drops counters that are still 0.
    pub fn render_text(&self, filter: Option<&regex::Regex>, used_only: bool) -> String {
        let mut out = String::new();
        for (name, is_counter, v) in self.snapshot() {
            if filter.is_some_and(|re| !re.is_match(&name)) || (used_only && is_counter && v == 0) {
                continue;
            }
            let _ = writeln!(out, "{name}: {v}");
        }
        out
    }

    /// Envoy's `/stats?format=json`.
    pub fn render_json(&self, filter: Option<&regex::Regex>, used_only: bool) -> String {
        let stats: Vec<serde_json::Value> = self
            .snapshot()
            .into_iter()
            .filter(|(n, c, v)| {
                filter.is_none_or(|re| re.is_match(n)) && !(used_only && *c && *v == 0)
            })
            .map(|(name, _, value)| serde_json::json!({"name": name, "value": value}))
            .collect();
        serde_json::json!({ "stats": stats }).to_string()
    }

    /// Envoy's `/stats/prometheus` text exposition.
    pub fn render_prometheus(&self) -> String {
        // Group by extracted name so each `# TYPE` line is followed by all its series.
        let mut families: BTreeMap<String, (bool, Vec<(String, u64)>)> = BTreeMap::new();
        for (name, is_counter, v) in self.snapshot() {
            let (base, labels) = extract_tags(&name);
            let family = format!("envoy_{}", sanitize(&base));
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect::<Vec<_>>()
                .join(",");
            families
                .entry(family)
                .or_insert((is_counter, Vec::new()))
                .1
                .push((labels, v));
        }
        let mut out = String::new();
        for (family, (is_counter, series)) in families {
            let kind = if is_counter { "counter" } else { "gauge" };
            let _ = writeln!(out, "# TYPE {family} {kind}");
            for (labels, v) in series {
                let _ = writeln!(out, "{family}{{{labels}}} {v}");
            }
        }
        out
    }
}

/// Envoy's default tag extractors for the stat families extproxy emits: the segment after a
/// known prefix becomes a label and is removed from the name.
fn extract_tags(name: &str) -> (String, Vec<(&'static str, String)>) {
    const RULES: &[(&str, &str)] = &[
        ("http.", "envoy_http_conn_manager_prefix"),
        ("cluster.", "envoy_cluster_name"),
        ("listener.", "envoy_listener_address"),
        ("tcp.", "envoy_tcp_prefix"),
        ("connection_limit.", "envoy_connection_limit_prefix"),
    ];
    for (prefix, label) in RULES {
        if let Some(rest) = name.strip_prefix(prefix) {
            let split = if *prefix == "listener." {
                split_address(rest)
            } else {
                rest.split_once('.')
            };
            if let Some((value, tail)) = split {
                let base = format!("{}{}", prefix, tail);
                return (base, vec![(label, value.to_string())]);
            }
        }
    }
    (name.to_string(), Vec::new())
}

/// Envoy's listener-address tag is an IP:port with `:` as `_` (`127.0.0.1_10000`), so it spans
/// dots: take the longest run of address characters that is followed by a `.`.
fn split_address(rest: &str) -> Option<(&str, &str)> {
    let is_addr = |c: char| c.is_ascii_hexdigit() || matches!(c, '_' | '.' | '[' | ']');
    let run = rest.find(|c: char| !is_addr(c)).unwrap_or(rest.len());
    let end = rest[..run].rfind('.')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// Prometheus metric names allow `[a-zA-Z0-9_:]`; Envoy maps everything else to `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_same_counter() {
        let s = Store::new();
        s.counter("a.b").inc();
        s.counter("a.b").add(2);
        assert_eq!(s.get("a.b"), Some(3));
        assert_eq!(s.render_text(None, false), "a.b: 3\n");
    }

    #[test]
    fn prometheus_names_match_envoy() {
        let s = Store::new();
        s.counter("http.ingress.ext_proc.streams_started").inc();
        s.counter("http.ingress.ext_proc.second.streams_started");
        s.counter("network_ext_proc.ep.read_data_sent").add(4);
        s.gauge("listener.127.0.0.1_10000.downstream_cx_active")
            .set(2);
        let p = s.render_prometheus();
        assert!(p.contains("# TYPE envoy_http_ext_proc_streams_started counter\nenvoy_http_ext_proc_streams_started{envoy_http_conn_manager_prefix=\"ingress\"} 1\n"), "{p}");
        assert!(p.contains("envoy_http_ext_proc_second_streams_started{envoy_http_conn_manager_prefix=\"ingress\"} 0"), "{p}");
        assert!(
            p.contains("envoy_network_ext_proc_ep_read_data_sent{} 4"),
            "{p}"
        );
        assert!(p.contains("# TYPE envoy_listener_downstream_cx_active gauge\nenvoy_listener_downstream_cx_active{envoy_listener_address=\"127.0.0.1_10000\"} 2"), "{p}");
    }

    #[test]
    fn used_only_and_filter() {
        let s = Store::new();
        s.counter("x.zero");
        s.counter("x.one").inc();
        s.counter("y.one").inc();
        let re = regex::Regex::new("^x\\.").unwrap();
        assert_eq!(s.render_text(Some(&re), true), "x.one: 1\n");
    }
}
