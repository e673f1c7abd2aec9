//! `config.route.v3.RouteMatch`: what a request must look like for a route to apply: its path
//! (prefix, exact or full-match regex, optionally case-insensitive) and its headers.

use super::header_matcher::CompiledHeaderMatcher;
use super::RequestView;
use crate::config::ConfigError;
use crate::filter::network::http_connection_manager::config;

/// The path part of a route's `match`.
#[derive(Debug)]
pub(super) enum PathMatch {
    /// `prefix`.
    Prefix(String),
    /// `path` (the query excluded).
    Exact(String),
    /// `safe_regex` (full match, the query excluded).
    Regex(regex::Regex),
}

/// A compiled `RouteMatch`.
#[derive(Debug)]
pub(super) struct RouteMatch {
    /// The path condition (`prefix_rewrite` needs it too).
    pub(super) path: PathMatch,
    case_sensitive: bool,
    headers: Vec<CompiledHeaderMatcher>,
}

impl RouteMatch {
    /// Builds a route's `match` (`mpath` is its config path).
    pub(super) fn build(match_: &config::RouteMatch, mpath: &str) -> Result<Self, ConfigError> {
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
        Ok(RouteMatch {
            path: path_match,
            case_sensitive: case_sensitive.unwrap_or(true),
            headers,
        })
    }

    /// True if the path and every header condition match.
    pub(super) fn matches(&self, req: &RequestView<'_>) -> bool {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::{pick, table};

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
    fn query_parameters_are_rejected_with_their_path() {
        let err = table("virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /, query_parameters: []}, route: {cluster: up}}]}]").unwrap_err();
        assert!(err.path.ends_with("query_parameters"), "{err}");
    }
}
