//! `config.route.v3.RouteConfiguration` built: the [`RouteTable`] picks a virtual host by
//! `:authority` (exact, then the longest `*.suffix`, then the longest `prefix.*`, then `*`) and
//! then the first of its routes that matches.

use super::header_parser::HeaderOps;
use super::route_entry::{build_route, per_filter, RouteEntry};
use super::RequestView;
use crate::cluster::ClusterManager;
use crate::config::ConfigError;
use crate::filter::network::http_connection_manager::config;
use std::collections::HashMap;
use std::sync::Arc;

/// A built virtual host: its routes, in match order.
#[derive(Debug)]
struct VirtualHost {
    routes: Vec<Arc<RouteEntry>>,
}

/// The built route configuration.
#[derive(Debug, Default)]
pub struct RouteTable {
    vhosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*.foo.com` stored as `.foo.com`, longest first.
    suffixes: Vec<(String, usize)>,
    /// `foo.*` stored as `foo.`, longest first.
    prefixes: Vec<(String, usize)>,
    default: Option<usize>,
}

impl RouteTable {
    /// Builds the table; every cluster must exist.
    pub fn build(
        rc: &config::RouteConfiguration,
        path: &str,
        clusters: &ClusterManager,
    ) -> Result<Self, ConfigError> {
        let config::RouteConfiguration {
            name: _,
            virtual_hosts,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            validate_clusters: _,
            internal_only_headers: _, // applied by the HCM's request sanitizing
        } = rc;
        let global_rq = Arc::new(HeaderOps::build(
            request_headers_to_add,
            request_headers_to_remove,
            path,
            "request_headers_to_add",
            "request_headers_to_remove",
        )?);
        let global_rs = Arc::new(HeaderOps::build(
            response_headers_to_add,
            response_headers_to_remove,
            path,
            "response_headers_to_add",
            "response_headers_to_remove",
        )?);
        let mut table = RouteTable::default();
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            let vpath = format!("{path}.virtual_hosts[{i}]");
            let config::VirtualHost {
                name: _,
                domains,
                routes,
                request_headers_to_add,
                request_headers_to_remove,
                response_headers_to_add,
                response_headers_to_remove,
                typed_per_filter_config,
            } = vh;
            let vh_rq = Arc::new(HeaderOps::build(
                request_headers_to_add,
                request_headers_to_remove,
                &vpath,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?);
            let vh_rs = Arc::new(HeaderOps::build(
                response_headers_to_add,
                response_headers_to_remove,
                &vpath,
                "response_headers_to_add",
                "response_headers_to_remove",
            )?);
            let vh_pfc = per_filter(
                typed_per_filter_config,
                &format!("{vpath}.typed_per_filter_config"),
            )?;
            if domains.is_empty() {
                return Err(ConfigError::new(
                    format!("{vpath}.domains"),
                    "at least one domain is required",
                ));
            }
            for (j, d) in domains.iter().enumerate() {
                let dpath = format!("{vpath}.domains[{j}]");
                let d = d.to_ascii_lowercase();
                let dup = if d == "*" {
                    table.default.replace(i).is_some()
                } else if let Some(suffix) = d.strip_prefix('*') {
                    if suffix.contains('*') {
                        return Err(ConfigError::new(
                            dpath,
                            format!("invalid domain {d}: only one wildcard is allowed"),
                        ));
                    }
                    let dup = suffixes.iter().any(|(s, _)| s == suffix);
                    suffixes.push((suffix.to_string(), i));
                    dup
                } else if let Some(prefix) = d.strip_suffix('*') {
                    if prefix.contains('*') {
                        return Err(ConfigError::new(
                            dpath,
                            format!("invalid domain {d}: only one wildcard is allowed"),
                        ));
                    }
                    let dup = prefixes.iter().any(|(s, _)| s == prefix);
                    prefixes.push((prefix.to_string(), i));
                    dup
                } else if d.contains('*') {
                    return Err(ConfigError::new(
                        dpath,
                        format!("invalid domain {d}: a wildcard must be at the start or the end"),
                    ));
                } else {
                    table.exact.insert(d.clone(), i).is_some()
                };
                if dup {
                    return Err(ConfigError::new(
                        dpath,
                        format!("Only unique values for domains are permitted. Duplicate entry of domain {d} in route {}", rc.name),
                    ));
                }
            }
            let mut entries = Vec::new();
            for (k, r) in routes.iter().enumerate() {
                let rpath = format!("{vpath}.routes[{k}]");
                entries.push(Arc::new(build_route(
                    r,
                    &rpath,
                    clusters,
                    [&global_rq, &vh_rq],
                    [&global_rs, &vh_rs],
                    &vh_pfc,
                )?));
            }
            table.vhosts.push(VirtualHost { routes: entries });
        }
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        table.suffixes = suffixes;
        table.prefixes = prefixes;
        Ok(table)
    }

    /// The route for a request: virtual host by authority, then the first matching route.
    pub fn route(&self, req: &RequestView<'_>) -> Option<Arc<RouteEntry>> {
        let vh = self.virtual_host(req.authority)?;
        vh.routes.iter().find(|r| r.matches(req)).cloned()
    }

    fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let host = authority.to_ascii_lowercase();
        let idx = self
            .exact
            .get(&host)
            .copied()
            // A wildcard matches at least one character.
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, i)| *i)
            })
            .or(self.default)?;
        self.vhosts.get(idx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::{pick, table};

    const DOMAINS: &str = r#"
virtual_hosts:
- {name: exact, domains: [example.com, "example.com:8080"], routes: [{name: exact, match: {prefix: /}, route: {cluster: up}}]}
- {name: suffix, domains: ["*.foo.com"], routes: [{name: suffix, match: {prefix: /}, route: {cluster: up}}]}
- {name: longer, domains: ["*.bar.foo.com"], routes: [{name: longer, match: {prefix: /}, route: {cluster: up}}]}
- {name: prefix, domains: ["api.*"], routes: [{name: prefix, match: {prefix: /}, route: {cluster: up}}]}
- {name: any, domains: ["*"], routes: [{name: any, match: {prefix: /}, route: {cluster: up}}]}
"#;

    #[test]
    fn domains_follow_envoys_search_order() {
        let t = table(DOMAINS).unwrap();
        assert_eq!(pick(&t, "EXAMPLE.com", "/", &[]).as_deref(), Some("exact"));
        assert_eq!(
            pick(&t, "example.com:8080", "/", &[]).as_deref(),
            Some("exact")
        );
        // The port is part of the host: no match without a domain that has it.
        assert_eq!(pick(&t, "example.com:9", "/", &[]).as_deref(), Some("any"));
        assert_eq!(pick(&t, "a.foo.com", "/", &[]).as_deref(), Some("suffix"));
        assert_eq!(
            pick(&t, "x.bar.foo.com", "/", &[]).as_deref(),
            Some("longer")
        );
        assert_eq!(pick(&t, "foo.com", "/", &[]).as_deref(), Some("any"));
        assert_eq!(
            pick(&t, "api.example.org", "/", &[]).as_deref(),
            Some("prefix")
        );
    }

    #[test]
    fn duplicate_domains_are_rejected() {
        let err =
            table("virtual_hosts:\n- {name: a, domains: [x.com]}\n- {name: b, domains: [X.com]}\n")
                .unwrap_err();
        assert_eq!(err.path, "rc.virtual_hosts[1].domains[0]");
    }
}
