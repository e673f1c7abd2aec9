//! `config.route.v3.Route` built: a [`RouteEntry`] holds its match, its action, what filters
//! see of it ([`RouteInfo`]) and the header mutations of its three levels.

use super::header_parser::HeaderOps;
use super::route_action::Action;
use super::route_match::{PathMatch, RouteMatch};
use super::RequestView;
use crate::cluster::ClusterManager;
use crate::config::ConfigError;
use crate::filter::http::{build_per_filter_config, PerFilterConfig, RouteInfo};
use crate::filter::network::http_connection_manager::config;
use http::HeaderMap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A route as the HCM and the router use it.
#[derive(Debug)]
pub struct RouteEntry {
    /// What filters see.
    pub info: Arc<RouteInfo>,
    /// What to do.
    pub action: Action,
    /// What the request must look like.
    route_match: RouteMatch,
    /// Request mutations, most specific first: route, virtual host, route configuration.
    request_ops: [Arc<HeaderOps>; 3],
    /// Response mutations, same order.
    response_ops: [Arc<HeaderOps>; 3],
}

impl RouteEntry {
    /// True if the request matches the route's `match`.
    pub(super) fn matches(&self, req: &RequestView<'_>) -> bool {
        self.route_match.matches(req)
    }

    /// Applies the request header mutations (route, then virtual host, then global).
    pub fn apply_request_headers(&self, headers: &mut HeaderMap) {
        for ops in &self.request_ops {
            ops.apply(headers);
        }
    }

    /// Applies the response header mutations (route, then virtual host, then global).
    pub fn apply_response_headers(&self, headers: &mut HeaderMap) {
        for ops in &self.response_ops {
            ops.apply(headers);
        }
    }

    /// The rewritten `:path` for `prefix_rewrite`, if the route has one.
    pub fn rewrite_path(&self, path: &str) -> Option<String> {
        let Action::Forward {
            prefix_rewrite: Some(rewrite),
            ..
        } = &self.action
        else {
            return None;
        };
        match &self.route_match.path {
            PathMatch::Prefix(p) => Some(format!("{rewrite}{}", path.get(p.len()..).unwrap_or(""))),
            PathMatch::Exact(p) => Some(format!("{rewrite}{}", path.get(p.len()..).unwrap_or(""))),
            // Envoy rejects prefix_rewrite with safe_regex at config time.
            PathMatch::Regex(_) => None,
        }
    }
}

/// Builds a `typed_per_filter_config` map (virtual host or route).
pub(super) fn per_filter(
    map: &BTreeMap<String, crate::config::RawAny>,
    path: &str,
) -> Result<Vec<(String, PerFilterConfig)>, ConfigError> {
    map.iter()
        .map(|(name, any)| {
            Ok((
                name.clone(),
                build_per_filter_config(name, any, &format!("{path}.{name}"))?,
            ))
        })
        .collect()
}

/// Builds one route; the virtual host's and the route configuration's header mutations and
/// the virtual host's per-filter config come from the caller.
pub(super) fn build_route(
    r: &config::Route,
    path: &str,
    clusters: &ClusterManager,
    [global_rq, vh_rq]: [&Arc<HeaderOps>; 2],
    [global_rs, vh_rs]: [&Arc<HeaderOps>; 2],
    vh_pfc: &[(String, PerFilterConfig)],
) -> Result<RouteEntry, ConfigError> {
    let config::Route {
        name,
        match_,
        route,
        direct_response,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        typed_per_filter_config,
    } = r;
    let route_match = RouteMatch::build(match_, &format!("{path}.match"))?;
    let mut info = RouteInfo {
        name: name.clone(),
        ..Default::default()
    };
    let action = Action::build(
        route,
        direct_response,
        path,
        clusters,
        &route_match.path,
        &mut info,
    )?;
    let mut per = vh_pfc.to_vec();
    per.extend(per_filter(
        typed_per_filter_config,
        &format!("{path}.typed_per_filter_config"),
    )?);
    info.per_filter = per;
    Ok(RouteEntry {
        info: Arc::new(info),
        action,
        route_match,
        request_ops: [
            Arc::new(HeaderOps::build(
                request_headers_to_add,
                request_headers_to_remove,
                path,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?),
            vh_rq.clone(),
            global_rq.clone(),
        ],
        response_ops: [
            Arc::new(HeaderOps::build(
                response_headers_to_add,
                response_headers_to_remove,
                path,
                "response_headers_to_add",
                "response_headers_to_remove",
            )?),
            vh_rs.clone(),
            global_rs.clone(),
        ],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::table;
    use super::super::RequestView;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn header_ops_apply_route_then_vhost_then_global() {
        let t = table(
            r#"
request_headers_to_add: [{header: {key: x-l, value: global}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
virtual_hosts:
- name: vh
  domains: ["*"]
  request_headers_to_add: [{header: {key: x-l, value: vh}}, {header: {key: x-p, value: "50%%"}}]
  request_headers_to_remove: [x-gone]
  routes:
  - match: {prefix: /old/}
    route: {cluster: up, prefix_rewrite: /new/}
    request_headers_to_add: [{header: {key: x-l, value: route}}, {header: {key: x-r, value: r}, append: false}]
"#,
        )
        .unwrap();
        let h = HeaderMap::new();
        let r = t
            .route(&RequestView {
                authority: "a",
                path: "/old/x?y",
                method: "GET",
                scheme: "http",
                headers: &h,
            })
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-gone", HeaderValue::from_static("1"));
        r.apply_request_headers(&mut headers);
        assert_eq!(
            headers.get_all("x-l").iter().collect::<Vec<_>>(),
            ["global"]
        );
        assert_eq!(headers["x-p"], "50%");
        assert_eq!(headers["x-r"], "r");
        assert!(headers.get("x-gone").is_none());
        assert_eq!(r.rewrite_path("/old/x?y").as_deref(), Some("/new/x?y"));
    }
}
