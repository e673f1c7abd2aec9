//! `config.route.v3.RouteAction` and `DirectResponseAction`: what a matched route does.

use super::route_match::PathMatch;
use crate::cluster::ClusterManager;
use crate::config::ConfigError;
use crate::filter::http::RouteInfo;
use crate::filter::network::http_connection_manager::config;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::time::Duration;

/// Envoy's default route `timeout`.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// What a matched route does.
#[derive(Debug)]
pub enum Action {
    /// Forward to `RouteInfo::cluster`.
    Forward {
        /// Replacement for the matched prefix.
        prefix_rewrite: Option<String>,
        /// Replacement `:authority`.
        host_rewrite: Option<HeaderValue>,
        /// Per-route stream idle timeout.
        idle_timeout: Option<Duration>,
    },
    /// Answer with this status and body.
    Direct {
        /// Status.
        status: StatusCode,
        /// Body.
        body: Bytes,
    },
}

impl Action {
    /// Builds a route's `route` or `direct_response` (`path` is the route's config path); a
    /// `route` sets the cluster and timeout of `info`.
    pub(super) fn build(
        route: &Option<config::RouteAction>,
        direct_response: &Option<config::DirectResponseAction>,
        path: &str,
        clusters: &ClusterManager,
        path_match: &PathMatch,
        info: &mut RouteInfo,
    ) -> Result<Self, ConfigError> {
        Ok(match (route, direct_response) {
            (Some(a), None) => {
                let apath = format!("{path}.route");
                let config::RouteAction {
                    cluster,
                    prefix_rewrite,
                    timeout,
                    idle_timeout,
                    host_rewrite_literal,
                } = a;
                let cluster = cluster.as_ref().ok_or_else(|| {
                    ConfigError::new(format!("{apath}.cluster"), "cluster is required")
                })?;
                if clusters.get(cluster).is_none() {
                    return Err(ConfigError::new(
                        format!("{apath}.cluster"),
                        format!("route: unknown cluster '{cluster}'"),
                    ));
                }
                if prefix_rewrite.is_some() && matches!(path_match, PathMatch::Regex(_)) {
                    return Err(ConfigError::new(
                        format!("{apath}.prefix_rewrite"),
                        "Cannot use prefix_rewrite with a safe_regex match",
                    ));
                }
                let host_rewrite = host_rewrite_literal
                    .as_ref()
                    .map(|h| {
                        HeaderValue::from_str(h).map_err(|_| {
                            ConfigError::new(
                                format!("{apath}.host_rewrite_literal"),
                                "invalid host",
                            )
                        })
                    })
                    .transpose()?;
                info.cluster = cluster.clone();
                info.timeout = match timeout.map(|t| t.get()) {
                    None => Some(DEFAULT_ROUTE_TIMEOUT),
                    Some(t) if t.is_zero() => None,
                    Some(t) => Some(t),
                };
                Action::Forward {
                    prefix_rewrite: prefix_rewrite.clone(),
                    host_rewrite,
                    idle_timeout: idle_timeout.map(|d| d.get()),
                }
            }
            (None, Some(d)) => {
                let status = StatusCode::from_u16(d.status)
                    .ok()
                    .filter(|s| s.as_u16() >= 200)
                    .ok_or_else(|| {
                        ConfigError::new(format!("{path}.direct_response.status"), "invalid status")
                    })?;
                let body = match &d.body {
                    Some(config::DataSource {
                        inline_string: Some(s),
                        inline_bytes,
                    }) if inline_bytes.is_empty() => Bytes::from(s.clone()),
                    Some(config::DataSource {
                        inline_string: None,
                        inline_bytes,
                    }) => Bytes::from(inline_bytes.clone()),
                    None => Bytes::new(),
                    Some(_) => {
                        return Err(ConfigError::new(
                            format!("{path}.direct_response.body"),
                            "exactly one of inline_string or inline_bytes must be set",
                        ))
                    }
                };
                Action::Direct { status, body }
            }
            _ => {
                return Err(ConfigError::new(
                    path,
                    "exactly one of route or direct_response must be set",
                ))
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::table;

    #[test]
    fn unknown_cluster_is_an_error_naming_the_field() {
        let err = table("virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: nope}}]}]").unwrap_err();
        assert_eq!(err.path, "rc.virtual_hosts[0].routes[0].route.cluster");
    }
}
