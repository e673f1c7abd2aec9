//! The route table: virtual hosts selected by `:authority`, routes matched in order, and the
//! header mutations (`*_headers_to_add` / `*_headers_to_remove`) of each level.
//!
//! Built once from [`config::RouteConfiguration`](super::config::RouteConfiguration); matching
//! is a pure function of the request's head ([`RequestView`]), so the router can match again
//! after a filter cleared the route cache.
//!
//! One file per piece of Envoy's `RouteConfiguration`:
//! - `route_configuration`: [`RouteTable`], the virtual host for an authority, then its routes.
//! - `route_entry`: [`RouteEntry`], one built route as the HCM and the router use it.
//! - `route_match`: a route's `match` (path and headers).
//! - `header_matcher`: one `HeaderMatcher` of a route's `match`.
//! - `route_action`: [`Action`], what a matched route does (`route` or `direct_response`).
//! - `header_parser`: [`HeaderOps`], one level's `*_headers_to_add` / `*_headers_to_remove`.

mod header_matcher;
mod header_parser;
mod route_action;
mod route_configuration;
mod route_entry;
mod route_match;

pub use header_parser::HeaderOps;
pub use route_action::{Action, DEFAULT_ROUTE_TIMEOUT};
pub use route_configuration::RouteTable;
pub use route_entry::RouteEntry;

use http::HeaderMap;

/// What route matching looks at: the request's pseudo-headers and headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// `:authority` (or `host`).
    pub authority: &'a str,
    /// `:path`, with the query.
    pub path: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// Regular headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// The view of a request whose URI is absolute (the form the HCM hands to filters).
    pub fn of(req: &'a http::Request<crate::filter::http::Body>) -> Self {
        let uri = req.uri();
        RequestView {
            authority: uri.authority().map(|a| a.as_str()).unwrap_or(""),
            path: uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            method: req.method().as_str(),
            scheme: uri.scheme_str().unwrap_or("http"),
            headers: req.headers(),
        }
    }

    /// The path without query and fragment.
    fn path_only(&self) -> &'a str {
        let end = self.path.find(['?', '#']).unwrap_or(self.path.len());
        &self.path[..end]
    }

    /// All values of a header joined with `,` (Envoy's `getAllOfHeaderAsString`), pseudo-headers
    /// included.
    fn header(&self, name: &str) -> Option<String> {
        match name {
            ":authority" | "host" => Some(self.authority.to_string()),
            ":path" => Some(self.path.to_string()),
            ":method" => Some(self.method.to_string()),
            ":scheme" => Some(self.scheme.to_string()),
            _ => {
                let mut values = self.headers.get_all(name).iter().peekable();
                values.peek()?;
                let parts: Vec<String> = values
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                Some(parts.join(","))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod test_support {
    //! Builds a table from YAML and picks a route, for the tests of every piece.

    use super::{RequestView, RouteTable};
    use crate::cluster::ClusterManager;
    use crate::config::ConfigError;
    use http::{HeaderMap, HeaderName, HeaderValue};

    pub(super) fn table(yaml: &str) -> Result<RouteTable, ConfigError> {
        let rc: super::super::config::RouteConfiguration =
            crate::config::decode(serde_yaml_ng::from_str(yaml).unwrap(), "rc")?;
        let clusters: Vec<crate::config::Cluster> = crate::config::decode(
            serde_yaml_ng::from_str("[{name: up}, {name: other}]").unwrap(),
            "c",
        )
        .unwrap();
        let cm = ClusterManager::build(&clusters, &crate::stats::Store::new(), 1).unwrap();
        RouteTable::build(&rc, "rc", &cm)
    }

    pub(super) fn pick(
        t: &RouteTable,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let view = RequestView {
            authority,
            path,
            method: "GET",
            scheme: "http",
            headers: &h,
        };
        t.route(&view).map(|r| r.info.name.clone())
    }
}
