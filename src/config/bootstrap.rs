//! `envoy.config.bootstrap.v3.Bootstrap` and the static listener / cluster resources.

use super::core::{Address, ResolvedAddress, TransportSocket};
use super::value::{deserialize_opt_u64, Duration};
use super::{ConfigError, RawAny};
use crate::proto_enum;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The bootstrap document.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Node identity; accepted and shown in `/server_info`.
    pub node: Option<Node>,
    /// Admin endpoint.
    pub admin: Option<Admin>,
    /// Listeners and clusters.
    #[serde(default)]
    pub static_resources: StaticResources,
    /// Overload manager: only the global downstream connection limit is supported.
    pub overload_manager: Option<crate::overload::OverloadManagerConfig>,
}

/// `config.core.v3.Node` (identity only).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Node id.
    #[serde(default)]
    pub id: String,
    /// Service cluster.
    #[serde(default)]
    pub cluster: String,
}

/// `config.bootstrap.v3.Admin`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Where the admin HTTP endpoint listens.
    pub address: Address,
    /// Admin access log; only `/dev/null` (no log) is supported.
    pub access_log_path: Option<String>,
}

/// `static_resources`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StaticResources {
    /// Listeners, bound at start.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Upstream clusters (traffic targets and ext_proc processors).
    #[serde(default)]
    pub clusters: Vec<Cluster>,
}

/// `config.listener.v3.Listener`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name; also used in stats when set.
    #[serde(default)]
    pub name: String,
    /// Bind address.
    pub address: Address,
    /// Filter chains; exactly one is supported (no filter chain matching).
    #[serde(default)]
    pub filter_chains: Vec<FilterChain>,
    /// Soft limit on each connection's read and write buffers (default 1 MiB).
    #[serde(default, deserialize_with = "deserialize_opt_u64")]
    pub per_connection_buffer_limit_bytes: Option<u64>,
    /// Name of the stat scope (`listener.<stat_prefix>.`); defaults to the bound address.
    #[serde(default)]
    pub stat_prefix: String,
}

/// `config.listener.v3.FilterChain`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChain {
    /// Optional name.
    #[serde(default)]
    pub name: String,
    /// Network filters, in order; the last one is terminal (tcp_proxy or http_connection_manager).
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Downstream TLS (`DownstreamTlsContext`); plain TCP when absent.
    pub transport_socket: Option<TransportSocket>,
}

/// A named extension with its `typed_config`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Extension name, e.g. `envoy.filters.network.tcp_proxy`.
    pub name: String,
    /// The extension's configuration (`Any`).
    pub typed_config: Option<RawAny>,
}

proto_enum!(
    /// `Cluster.DiscoveryType`.
    DiscoveryType "config.cluster.v3.Cluster.DiscoveryType" {
        Static = ("STATIC", 0),
        StrictDns = ("STRICT_DNS", 1),
        LogicalDns = ("LOGICAL_DNS", 2),
    }
);

proto_enum!(
    /// `Cluster.LbPolicy`.
    LbPolicy "config.cluster.v3.Cluster.LbPolicy" {
        RoundRobin = ("ROUND_ROBIN", 0),
        LeastRequest = ("LEAST_REQUEST", 1),
        Random = ("RANDOM", 3),
    }
);

proto_enum!(
    /// `Cluster.DnsLookupFamily`.
    DnsLookupFamily "config.cluster.v3.Cluster.DnsLookupFamily" {
        Auto = ("AUTO", 0),
        V4Only = ("V4_ONLY", 1),
        V6Only = ("V6_ONLY", 2),
        V4Preferred = ("V4_PREFERRED", 3),
        All = ("ALL", 4),
    }
);

/// `config.cluster.v3.Cluster`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique name, referenced by routes, tcp_proxy and `envoy_grpc.cluster_name`.
    pub name: String,
    /// TCP connect timeout (default 5 s).
    pub connect_timeout: Option<Duration>,
    /// Service discovery type (default STATIC).
    #[serde(rename = "type")]
    pub discovery_type: Option<DiscoveryType>,
    /// Load-balancing policy (default ROUND_ROBIN).
    pub lb_policy: Option<LbPolicy>,
    /// Endpoints.
    pub load_assignment: Option<ClusterLoadAssignment>,
    /// DNS family for STRICT_DNS / LOGICAL_DNS.
    pub dns_lookup_family: Option<DnsLookupFamily>,
    /// Protocol options, keyed by extension name (`envoy.extensions.upstreams.http.v3.HttpProtocolOptions`).
    #[serde(default)]
    pub typed_extension_protocol_options: BTreeMap<String, RawAny>,
    /// Deprecated form of `explicit_http_config.http2_protocol_options`; its presence means HTTP/2.
    pub http2_protocol_options: Option<serde_json::Value>,
    /// Soft limit on each upstream connection's buffers (default 1 MiB).
    #[serde(default, deserialize_with = "deserialize_opt_u64")]
    pub per_connection_buffer_limit_bytes: Option<u64>,
    /// Resource limits per priority (Envoy's defaults apply when absent).
    pub circuit_breakers: Option<crate::cluster::circuit_breaker::CircuitBreakersConfig>,
    /// Upstream TLS (`UpstreamTlsContext`); plain TCP when absent.
    pub transport_socket: Option<TransportSocket>,
}

/// `config.endpoint.v3.ClusterLoadAssignment`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLoadAssignment {
    /// Should equal the cluster name.
    #[serde(default)]
    pub cluster_name: String,
    /// Localities with their endpoints (priorities and weights are not supported).
    #[serde(default)]
    pub endpoints: Vec<LocalityLbEndpoints>,
}

/// `config.endpoint.v3.LocalityLbEndpoints`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityLbEndpoints {
    /// Endpoints of this locality.
    #[serde(default)]
    pub lb_endpoints: Vec<LbEndpoint>,
}

/// `config.endpoint.v3.LbEndpoint`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbEndpoint {
    /// The endpoint.
    pub endpoint: Endpoint,
}

/// `config.endpoint.v3.Endpoint`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Where to connect.
    pub address: Address,
}

impl Bootstrap {
    /// Cross-field checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(admin) = &self.admin {
            admin.address.resolve("admin.address")?;
            if let Some(p) = &admin.access_log_path {
                if p != "/dev/null" {
                    return Err(ConfigError::new(
                        "admin.access_log_path",
                        "only /dev/null is supported (no admin access log)",
                    ));
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.static_resources.clusters.iter().enumerate() {
            if !names.insert(c.name.as_str()) {
                return Err(ConfigError::new(
                    format!("static_resources.clusters[{i}].name"),
                    format!("duplicate cluster {}", c.name),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.static_resources.listeners.iter().enumerate() {
            let path = format!("static_resources.listeners[{i}]");
            l.address.resolve(&format!("{path}.address"))?;
            if !l.name.is_empty() && !names.insert(l.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("duplicate listener {}", l.name),
                ));
            }
            if l.filter_chains.len() != 1 {
                return Err(ConfigError::new(
                    format!("{path}.filter_chains"),
                    "exactly one filter chain is supported (filter chain matching is not)",
                ));
            }
        }
        Ok(())
    }

    /// The admin bind address, if an admin endpoint is configured.
    pub fn admin_address(&self) -> Option<ResolvedAddress> {
        self.admin
            .as_ref()
            .and_then(|a| a.address.resolve("admin.address").ok())
    }
}
