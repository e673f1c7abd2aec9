//! The route table: virtual hosts selected by `:authority`, routes matched in order, and the
//! header mutations (`*_headers_to_add` / `*_headers_to_remove`) of each level.
//!
//! Built once from [`config::RouteConfiguration`]; matching is a pure function of the request's
//! head ([`RequestView`]), so the router can match again after a filter cleared the route cache.

use super::config::{self, HeaderMatcher};
use crate::cluster::ClusterManager;
use crate::config::core::{HeaderAppendAction, HeaderValueOption};
use crate::config::ConfigError;
use crate::filter::common::string_matcher::{StringMatcher, StringMatcherConfig};
use crate::filter::http::{build_per_filter_config, PerFilterConfig, RouteInfo};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Envoy's default route `timeout`.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

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

// === HeaderOps ===

/// One level's header mutations: removals first, then additions (Envoy's order).
#[derive(Debug, Default)]
pub struct HeaderOps {
    remove: Vec<HeaderName>,
    add: Vec<HeaderAdd>,
}

#[derive(Debug)]
struct HeaderAdd {
    name: HeaderName,
    value: HeaderValue,
    action: HeaderAppendAction,
}

impl HeaderOps {
    /// Builds and validates one level (`request` forbids `host` and pseudo-headers).
    pub fn build(
        add: &[HeaderValueOption],
        remove: &[String],
        path: &str,
        add_field: &str,
        remove_field: &str,
    ) -> Result<Self, ConfigError> {
        let mut ops = HeaderOps::default();
        for (i, name) in remove.iter().enumerate() {
            let p = format!("{path}.{remove_field}[{i}]");
            let lower = name.to_ascii_lowercase();
            if lower.starts_with(':') || lower == "host" {
                return Err(ConfigError::new(p, format!("{name} cannot be removed")));
            }
            ops.remove.push(
                HeaderName::from_bytes(lower.as_bytes())
                    .map_err(|_| ConfigError::new(p, format!("invalid header name {name:?}")))?,
            );
        }
        for (i, opt) in add.iter().enumerate() {
            let p = format!("{path}.{add_field}[{i}]");
            let HeaderValueOption {
                header,
                append,
                append_action,
                keep_empty_value,
            } = opt;
            let action = match (append, append_action) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        p,
                        "append and append_action are mutually exclusive",
                    ));
                }
                (Some(true), None) | (None, None) => HeaderAppendAction::AppendIfExistsOrAdd,
                (Some(false), None) => HeaderAppendAction::OverwriteIfExistsOrAdd,
                (None, Some(a)) => *a,
            };
            let lower = header.key.to_ascii_lowercase();
            if lower.starts_with(':') || lower == "host" {
                return Err(ConfigError::new(
                    format!("{p}.header.key"),
                    format!(
                        ":-prefixed or host headers may not be modified: {}",
                        header.key
                    ),
                ));
            }
            let name = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
                ConfigError::new(
                    format!("{p}.header.key"),
                    format!("invalid header name {:?}", header.key),
                )
            })?;
            let raw = literal_value(header.bytes(), &format!("{p}.header.value"))?;
            if raw.is_empty() && !keep_empty_value {
                continue;
            }
            let value = HeaderValue::from_bytes(&raw).map_err(|_| {
                ConfigError::new(format!("{p}.header.value"), "invalid header value")
            })?;
            ops.add.push(HeaderAdd {
                name,
                value,
                action,
            });
        }
        Ok(ops)
    }

    /// Applies the removals, then the additions.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for a in &self.add {
            match a.action {
                HeaderAppendAction::AppendIfExistsOrAdd => {
                    headers.append(a.name.clone(), a.value.clone());
                }
                HeaderAppendAction::AddIfAbsent => {
                    if !headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), a.value.clone());
                    }
                }
                HeaderAppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(a.name.clone(), a.value.clone());
                }
                HeaderAppendAction::OverwriteIfExists => {
                    if headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), a.value.clone());
                    }
                }
            }
        }
    }
}

/// Header values are Envoy format strings: `%%` is a literal `%`; other `%COMMAND%` operators
/// are not supported and are rejected rather than sent verbatim.
fn literal_value(v: &[u8], path: &str) -> Result<Vec<u8>, ConfigError> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            if v.get(i + 1) == Some(&b'%') {
                out.push(b'%');
                i += 2;
                continue;
            }
            return Err(ConfigError::new(
                path,
                "header value formatters (%...%) are not supported; write %% for a literal %",
            ));
        }
        out.push(v[i]);
        i += 1;
    }
    Ok(out)
}

// === Matchers ===

#[derive(Debug)]
enum HeaderMatchKind {
    Present(bool),
    Value(StringMatcher),
}

#[derive(Debug)]
struct CompiledHeaderMatcher {
    name: String,
    kind: HeaderMatchKind,
    invert: bool,
    missing_as_empty: bool,
}

impl CompiledHeaderMatcher {
    fn build(h: &HeaderMatcher, path: &str) -> Result<Self, ConfigError> {
        let HeaderMatcher {
            name,
            string_match,
            present_match,
            exact_match,
            prefix_match,
            suffix_match,
            contains_match,
            safe_regex_match,
            invert_match,
            treat_missing_header_as_empty,
        } = h;
        let mut kinds = Vec::new();
        if let Some(sm) = string_match {
            kinds.push(HeaderMatchKind::Value(StringMatcher::build(
                sm,
                &format!("{path}.string_match"),
            )?));
        }
        if let Some(p) = present_match {
            kinds.push(HeaderMatchKind::Present(*p));
        }
        let legacy = StringMatcherConfig {
            exact: exact_match.clone(),
            prefix: prefix_match.clone(),
            suffix: suffix_match.clone(),
            contains: contains_match.clone(),
            safe_regex: safe_regex_match.clone(),
            ignore_case: false,
        };
        if exact_match.is_some()
            || prefix_match.is_some()
            || suffix_match.is_some()
            || contains_match.is_some()
            || safe_regex_match.is_some()
        {
            kinds.push(HeaderMatchKind::Value(StringMatcher::build(&legacy, path)?));
        }
        let kind = match kinds.len() {
            0 => HeaderMatchKind::Present(true),
            1 => kinds.remove(0),
            _ => {
                return Err(ConfigError::new(
                    path,
                    "only one header match specifier may be set",
                ))
            }
        };
        Ok(CompiledHeaderMatcher {
            name: name.to_ascii_lowercase(),
            kind,
            invert: *invert_match,
            missing_as_empty: *treat_missing_header_as_empty,
        })
    }

    fn matches(&self, req: &RequestView<'_>) -> bool {
        let value = req.header(&self.name);
        match &self.kind {
            HeaderMatchKind::Present(want) => (value.is_some() == *want) != self.invert,
            HeaderMatchKind::Value(m) => match value {
                Some(v) => m.matches(&v) != self.invert,
                None if self.missing_as_empty => m.matches("") != self.invert,
                None => self.invert,
            },
        }
    }
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(regex::Regex),
}

// === Routes ===

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

/// A route as the HCM and the router use it.
#[derive(Debug)]
pub struct RouteEntry {
    /// What filters see.
    pub info: Arc<RouteInfo>,
    /// What to do.
    pub action: Action,
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<CompiledHeaderMatcher>,
    /// Request mutations, most specific first: route, virtual host, route configuration.
    request_ops: [Arc<HeaderOps>; 3],
    /// Response mutations, same order.
    response_ops: [Arc<HeaderOps>; 3],
}

impl RouteEntry {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => {
                if self.case_sensitive {
                    req.path.starts_with(p.as_str())
                } else {
                    req.path.len() >= p.len()
                        && req.path.is_char_boundary(p.len())
                        && req.path[..p.len()].eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Exact(p) => {
                if self.case_sensitive {
                    req.path_only() == p
                } else {
                    req.path_only().eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Regex(r) => r.is_match(req.path_only()),
        };
        path_ok && self.headers.iter().all(|h| h.matches(req))
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
        match &self.path {
            PathMatch::Prefix(p) => Some(format!("{rewrite}{}", path.get(p.len()..).unwrap_or(""))),
            PathMatch::Exact(p) => Some(format!("{rewrite}{}", path.get(p.len()..).unwrap_or(""))),
            // Envoy rejects prefix_rewrite with safe_regex at config time.
            PathMatch::Regex(_) => None,
        }
    }
}

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

fn per_filter(
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

fn build_route(
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
    let mpath = format!("{path}.match");
    let config::RouteMatch {
        prefix,
        path: exact,
        safe_regex,
        case_sensitive,
        headers,
    } = match_;
    let path_match = match (prefix, exact, safe_regex) {
        (Some(p), None, None) => PathMatch::Prefix(p.clone()),
        (None, Some(p), None) => PathMatch::Exact(p.clone()),
        (None, None, Some(r)) => PathMatch::Regex(r.compile(&format!("{mpath}.safe_regex"))?),
        _ => {
            return Err(ConfigError::new(
                mpath,
                "exactly one of prefix, path or safe_regex must be set",
            ))
        }
    };
    let headers = headers
        .iter()
        .enumerate()
        .map(|(i, h)| CompiledHeaderMatcher::build(h, &format!("{mpath}.headers[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut info = RouteInfo {
        name: name.clone(),
        ..Default::default()
    };
    let action = match (route, direct_response) {
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
                        ConfigError::new(format!("{apath}.host_rewrite_literal"), "invalid host")
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
    };
    let mut per = vh_pfc.to_vec();
    per.extend(per_filter(
        typed_per_filter_config,
        &format!("{path}.typed_per_filter_config"),
    )?);
    info.per_filter = per;
    Ok(RouteEntry {
        info: Arc::new(info),
        action,
        path: path_match,
        case_sensitive: case_sensitive.unwrap_or(true),
        headers,
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
    use super::*;

    fn table(yaml: &str) -> Result<RouteTable, ConfigError> {
        let rc: config::RouteConfiguration =
            crate::config::decode(serde_yaml_ng::from_str(yaml).unwrap(), "rc")?;
        let clusters: Vec<crate::config::Cluster> = crate::config::decode(
            serde_yaml_ng::from_str("[{name: up}, {name: other}]").unwrap(),
            "c",
        )
        .unwrap();
        let cm = ClusterManager::build(&clusters, &crate::stats::Store::new(), 1).unwrap();
        RouteTable::build(&rc, "rc", &cm)
    }

    fn pick(
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

    #[test]
    fn routes_match_in_order_by_path_and_headers() {
        let t = table(
            r#"
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - {name: exact, match: {path: /exact}, route: {cluster: up}}
  - {name: ci, match: {prefix: /CI, case_sensitive: false}, route: {cluster: up}}
  - {name: re, match: {safe_regex: {regex: "/re/[0-9]+"}}, route: {cluster: up}}
  - name: hdr
    match:
      prefix: /h
      headers:
      - {name: x-a, string_match: {prefix: v}}
      - {name: x-b, present_match: true, invert_match: true}
    route: {cluster: up}
  - {name: method, match: {prefix: /, headers: [{name: ":method", string_match: {exact: POST}}]}, route: {cluster: up}}
  - {name: last, match: {prefix: /}, route: {cluster: other}}
"#,
        )
        .unwrap();
        assert_eq!(pick(&t, "h", "/exact?q=1", &[]).as_deref(), Some("exact"));
        assert_eq!(pick(&t, "h", "/exactly", &[]).as_deref(), Some("last"));
        assert_eq!(pick(&t, "h", "/ci/x", &[]).as_deref(), Some("ci"));
        assert_eq!(pick(&t, "h", "/re/123", &[]).as_deref(), Some("re"));
        assert_eq!(pick(&t, "h", "/re/12a", &[]).as_deref(), Some("last"));
        assert_eq!(
            pick(&t, "h", "/h", &[("x-a", "v1")]).as_deref(),
            Some("hdr")
        );
        assert_eq!(
            pick(&t, "h", "/h", &[("x-a", "v1"), ("x-b", "")]).as_deref(),
            Some("last")
        );
        assert_eq!(
            pick(&t, "h", "/h", &[("x-a", "w")]).as_deref(),
            Some("last")
        );
    }

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

    #[test]
    fn route_regexes_take_envoys_google_re2_forms() {
        let vh = |m: &str| {
            format!("virtual_hosts: [{{name: v, domains: ['*'], routes: [{{match: {m}, route: {{cluster: up}}}}]}}]")
        };
        let t = table(&vh("{safe_regex: {google_re2: {}, regex: /a+}, headers: [{name: x, safe_regex_match: {google_re2: null, regex: b}}]}")).unwrap();
        assert!(pick(&t, "h", "/aa", &[("x", "b")]).is_some());
        assert!(pick(&t, "h", "/aa", &[("x", "bb")]).is_none());
        let err = table(&vh("{safe_regex: {google_re2: 5, regex: /a}}")).unwrap_err();
        assert_eq!(
            err.path,
            "rc.virtual_hosts[0].routes[0].match.safe_regex.google_re2"
        );
        let err = table(&vh("{prefix: /, headers: [{name: x, string_match: {safe_regex: {google_re2: {max_program_size: 10}, regex: a}}}]}")).unwrap_err();
        assert_eq!(
            err.path,
            "rc.virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex.google_re2.max_program_size"
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = table("virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: nope}}]}]").unwrap_err();
        assert_eq!(err.path, "rc.virtual_hosts[0].routes[0].route.cluster");
        let err = table("virtual_hosts: [{name: v, domains: ['*'], request_headers_to_add: [{header: {key: x, value: '%REQ(a)%'}}]}]").unwrap_err();
        assert_eq!(
            err.path,
            "rc.virtual_hosts[0].request_headers_to_add[0].header.value"
        );
        let err = table("virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /, query_parameters: []}, route: {cluster: up}}]}]").unwrap_err();
        assert!(err.path.ends_with("query_parameters"), "{err}");
    }
}
