//! Header maps in both directions: what the processor is sent (`HttpHeaders`, with pseudo-headers
//! and `forward_rules`) and how its `HeaderMutation` is applied (§4.14: the mutation-rules
//! checker, hard errors on invalid characters, removes before sets, `append` semantics).

use super::config::MutationRulesConfig;
use super::stats::Stats;
use crate::config::ConfigError;
use crate::filter::common::string_matcher::ListStringMatcher;
use crate::pb::ext_proc::HeaderMutation;
use envoy_types::pb::envoy::config::core::v3 as core;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use http::{HeaderMap, Method, StatusCode, Uri};

/// The message headers a mutation applies to.
#[derive(Debug)]
pub enum Head {
    /// Request line and headers.
    Request(http::request::Parts),
    /// Status line and headers.
    Response(http::response::Parts),
}

impl Head {
    /// The regular headers.
    pub fn headers(&self) -> &HeaderMap {
        match self {
            Head::Request(p) => &p.headers,
            Head::Response(p) => &p.headers,
        }
    }

    /// The regular headers, mutable.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        match self {
            Head::Request(p) => &mut p.headers,
            Head::Response(p) => &mut p.headers,
        }
    }

    /// The `content-length` header as a number, if valid.
    pub fn content_length(&self) -> Option<u64> {
        self.headers()
            .get(CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// `:authority` of a request: the URI's authority (HTTP/2) or the `host` header (HTTP/1).
pub fn authority(p: &http::request::Parts) -> Option<String> {
    p.uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            p.headers
                .get(HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
}

/// Which headers are sent to the processor (`forward_rules`).
#[derive(Debug, Clone, Default)]
pub struct ForwardRules {
    /// Forward only these when set.
    pub allowed: Option<ListStringMatcher>,
    /// Never forward these.
    pub disallowed: Option<ListStringMatcher>,
}

impl ForwardRules {
    /// True if `name` (lower case) may be sent.
    pub fn allows(&self, name: &str) -> bool {
        if self.disallowed.as_ref().is_some_and(|d| d.matches(name)) {
            return false;
        }
        self.allowed.as_ref().is_none_or(|a| a.matches(name))
    }
}

fn push(out: &mut Vec<core::HeaderValue>, rules: &ForwardRules, key: &str, value: &[u8]) {
    if rules.allows(key) {
        out.push(core::HeaderValue {
            key: key.to_string(),
            value: String::new(),
            raw_value: value.to_vec(),
        });
    }
}

/// The `HeaderMap` sent for request or response headers: pseudo-headers first, values in
/// `raw_value` only (as Envoy's `send_header_raw_value` default).
pub fn to_proto(head: &Head, rules: &ForwardRules) -> core::HeaderMap {
    let mut out = Vec::with_capacity(head.headers().len() + 4);
    let mut skip_host = false;
    match head {
        Head::Request(p) => {
            let auth = authority(p);
            skip_host = auth.is_some();
            let path = p.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
            let scheme = p.uri.scheme_str().unwrap_or("http");
            // Envoy's codecs produce different pseudo-header orders; keep them.
            if p.version == http::Version::HTTP_2 {
                push(&mut out, rules, ":method", p.method.as_str().as_bytes());
                push(&mut out, rules, ":scheme", scheme.as_bytes());
                if let Some(a) = &auth {
                    push(&mut out, rules, ":authority", a.as_bytes());
                }
                push(&mut out, rules, ":path", path.as_bytes());
            } else {
                if let Some(a) = &auth {
                    push(&mut out, rules, ":authority", a.as_bytes());
                }
                push(&mut out, rules, ":path", path.as_bytes());
                push(&mut out, rules, ":method", p.method.as_str().as_bytes());
                push(&mut out, rules, ":scheme", scheme.as_bytes());
            }
        }
        Head::Response(p) => push(&mut out, rules, ":status", p.status.as_str().as_bytes()),
    }
    for (k, v) in head.headers() {
        if skip_host && k == HOST {
            continue;
        }
        push(&mut out, rules, k.as_str(), v.as_bytes());
    }
    core::HeaderMap { headers: out }
}

/// The `HeaderMap` sent for trailers.
pub fn trailers_to_proto(t: &HeaderMap, rules: &ForwardRules) -> core::HeaderMap {
    let mut out = Vec::with_capacity(t.len());
    for (k, v) in t {
        push(&mut out, rules, k.as_str(), v.as_bytes());
    }
    core::HeaderMap { headers: out }
}

/// The kind of change a mutation makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Replace or add.
    Set,
    /// Add another value to an existing header.
    Append,
    /// Remove.
    Remove,
}

/// What the checker decides for one mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it.
    Allow,
    /// Skip it (counted).
    Ignore,
    /// Fail the whole response (counted; `disallow_is_error`).
    Fail,
}

/// The compiled `HeaderMutationRules`.
#[derive(Debug, Clone, Default)]
pub struct Checker {
    allow_all_routing: bool,
    allow_envoy: bool,
    disallow_system: bool,
    disallow_all: bool,
    allow_expression: Option<regex::Regex>,
    disallow_expression: Option<regex::Regex>,
    disallow_is_error: bool,
}

impl Checker {
    /// Compiles the rules (unset = Envoy's defaults).
    pub fn build(cfg: Option<&MutationRulesConfig>, path: &str) -> Result<Self, ConfigError> {
        let Some(cfg) = cfg else {
            return Ok(Checker::default());
        };
        let MutationRulesConfig {
            allow_all_routing,
            allow_envoy,
            disallow_system,
            disallow_all,
            allow_expression,
            disallow_expression,
            disallow_is_error,
        } = cfg;
        Ok(Checker {
            allow_all_routing: allow_all_routing.unwrap_or(false),
            allow_envoy: allow_envoy.unwrap_or(false),
            disallow_system: disallow_system.unwrap_or(false),
            disallow_all: disallow_all.unwrap_or(false),
            allow_expression: allow_expression
                .as_ref()
                .map(|r| r.compile(&format!("{path}.allow_expression")))
                .transpose()?,
            disallow_expression: disallow_expression
                .as_ref()
                .map(|r| r.compile(&format!("{path}.disallow_expression")))
                .transpose()?,
            disallow_is_error: disallow_is_error.unwrap_or(false),
        })
    }

    /// Envoy's `Checker::check` (mutation_rules.cc) for a lower-case header name.
    pub fn check(&self, name: &str, op: Op) -> Verdict {
        let allowed = self.allowed(name, op);
        match (allowed, self.disallow_is_error) {
            (true, _) => Verdict::Allow,
            (false, true) => Verdict::Fail,
            (false, false) => Verdict::Ignore,
        }
    }

    fn allowed(&self, name: &str, op: Op) -> bool {
        if op == Op::Remove && (name.starts_with(':') || name == "host") {
            return false;
        }
        if self
            .disallow_expression
            .as_ref()
            .is_some_and(|r| r.is_match(name))
        {
            return false;
        }
        if self
            .allow_expression
            .as_ref()
            .is_some_and(|r| r.is_match(name))
        {
            return true;
        }
        if self.disallow_all {
            return false;
        }
        if matches!(name, "host" | ":authority" | ":method" | ":scheme") && !self.allow_all_routing
        {
            return false;
        }
        if name.starts_with(':') && (op == Op::Append || self.disallow_system) {
            return false;
        }
        if name.starts_with("x-envoy") && !self.allow_envoy {
            return false;
        }
        true
    }
}

/// Why a mutation failed the whole response; the message becomes the response-code details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MutationError {
    /// A name or value with characters not allowed in HTTP (CR, LF, NUL, ...).
    #[error("header mutation set contains invalid character")]
    InvalidCharacter,
    /// A disallowed set with `disallow_is_error`.
    #[error("header_mutation_set_headers_failed")]
    SetFailed,
    /// A disallowed remove with `disallow_is_error`.
    #[error("header_mutation_remove_headers_failed")]
    RemoveFailed,
}

/// How a mutation is applied in the current phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// `CONTINUE_AND_REPLACE`: a `:method` change is always allowed.
    pub replace: bool,
    /// `content-length` is being stripped: processor-set values are skipped too.
    pub strip_content_length: bool,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && (name
            .strip_prefix(':')
            .is_some_and(|n| !n.is_empty() && HeaderName::from_bytes(n.as_bytes()).is_ok())
            || HeaderName::from_bytes(name.as_bytes()).is_ok())
}

/// Whether a pseudo-header set names one this head has: Envoy stores any other pseudo-header
/// (`:foo`, `:path` on a response) in its header map, where nothing reads or forwards it, and
/// does not count it as rejected; extproxy drops it, likewise uncounted.
fn pseudo_applies(head: &Head, name: &str) -> bool {
    match head {
        Head::Request(_) => matches!(name, ":path" | ":method" | ":authority" | ":scheme"),
        Head::Response(_) => name == ":status",
    }
}

fn apply_pseudo(head: &mut Head, name: &str, value: &[u8], cx: Context) -> bool {
    let text = match std::str::from_utf8(value) {
        Ok(t) => t,
        Err(_) => return false,
    };
    match (head, name) {
        (Head::Request(p), ":path") => {
            let mut parts = p.uri.clone().into_parts();
            match text.parse() {
                Ok(pq) => parts.path_and_query = Some(pq),
                Err(_) => return false,
            }
            match Uri::from_parts(parts) {
                Ok(u) => p.uri = u,
                Err(_) => return false,
            }
        }
        (Head::Request(p), ":method") => match Method::from_bytes(value) {
            Ok(m) => p.method = m,
            Err(_) => return false,
        },
        (Head::Request(p), ":authority") => {
            let Ok(auth) = text.parse::<http::uri::Authority>() else {
                return false;
            };
            if p.uri.authority().is_some() {
                let mut parts = p.uri.clone().into_parts();
                parts.authority = Some(auth);
                match Uri::from_parts(parts) {
                    Ok(u) => p.uri = u,
                    Err(_) => return false,
                }
            }
            if p.uri.authority().is_none() || p.headers.contains_key(HOST) {
                match HeaderValue::from_str(text) {
                    Ok(v) => {
                        p.headers.insert(HOST, v);
                    }
                    Err(_) => return false,
                }
            }
        }
        (Head::Request(p), ":scheme") => {
            if !matches!(text, "http" | "https") {
                return false;
            }
            if p.uri.scheme().is_some() {
                let mut parts = p.uri.clone().into_parts();
                parts.scheme = text.parse().ok();
                match Uri::from_parts(parts) {
                    Ok(u) => p.uri = u,
                    Err(_) => return false,
                }
            }
        }
        (Head::Response(p), ":status") => match text.parse::<u16>() {
            Ok(code) if code >= 200 => match StatusCode::from_u16(code) {
                Ok(s) => p.status = s,
                Err(_) => return false,
            },
            _ => return false,
        },
        _ => return false,
    }
    let _ = cx;
    true
}

/// The mutation target: headers (with pseudo-headers) or trailers.
#[derive(Debug)]
pub enum Target<'a> {
    /// Request or response headers.
    Head(&'a mut Head),
    /// Trailers (no pseudo-headers).
    Trailers(&'a mut HeaderMap),
}

impl Target<'_> {
    fn map(&mut self) -> &mut HeaderMap {
        match self {
            Target::Head(h) => h.headers_mut(),
            Target::Trailers(t) => t,
        }
    }
}

/// Applies a processor's `HeaderMutation`: removes first, then sets, each checked against the
/// rules; ignored mutations are counted in `rejected_header_mutations`.
pub fn apply(
    mut target: Target<'_>,
    m: &HeaderMutation,
    checker: &Checker,
    cx: Context,
    stats: &Stats,
) -> Result<(), MutationError> {
    for raw in &m.remove_headers {
        let name = raw.to_ascii_lowercase();
        if !valid_name(&name) {
            stats.rejected_header_mutations.inc();
            return Err(MutationError::InvalidCharacter);
        }
        match checker.check(&name, Op::Remove) {
            Verdict::Allow => {
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    target.map().remove(n);
                }
            }
            Verdict::Ignore => stats.rejected_header_mutations.inc(),
            Verdict::Fail => {
                stats.rejected_header_mutations.inc();
                return Err(MutationError::RemoveFailed);
            }
        }
    }
    for opt in &m.set_headers {
        let Some(h) = &opt.header else { continue };
        let name = h.key.to_ascii_lowercase();
        // Envoy reads only raw_value (quirk H10); extproxy falls back to `value`.
        let value: &[u8] = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            &h.raw_value
        };
        let parsed_value = HeaderValue::from_bytes(value);
        if !valid_name(&name) || parsed_value.is_err() {
            stats.rejected_header_mutations.inc();
            return Err(MutationError::InvalidCharacter);
        }
        if cx.strip_content_length && name == "content-length" {
            continue;
        }
        let pseudo = name.starts_with(':');
        let exists = if pseudo {
            true
        } else {
            HeaderName::from_bytes(name.as_bytes()).is_ok_and(|n| target.map().contains_key(n))
        };
        // `append` is deprecated in favour of `append_action`, but it is what Envoy honours.
        #[allow(deprecated)]
        let append = opt.append.as_ref().map(|b| b.value);
        let op = if append == Some(true) && exists {
            Op::Append
        } else {
            Op::Set
        };
        let verdict = if cx.replace && name == ":method" {
            Verdict::Allow
        } else {
            checker.check(&name, op)
        };
        match verdict {
            Verdict::Allow => {}
            Verdict::Ignore => {
                stats.rejected_header_mutations.inc();
                continue;
            }
            Verdict::Fail => {
                stats.rejected_header_mutations.inc();
                return Err(MutationError::SetFailed);
            }
        }
        if pseudo {
            let ok = match &mut target {
                Target::Head(head) if pseudo_applies(head, &name) => {
                    apply_pseudo(head, &name, value, cx)
                }
                Target::Head(_) | Target::Trailers(_) => true,
            };
            if !ok {
                stats.rejected_header_mutations.inc();
            }
            continue;
        }
        let (Ok(hn), Ok(hv)) = (HeaderName::from_bytes(name.as_bytes()), parsed_value) else {
            continue;
        };
        let map = target.map();
        match append {
            Some(true) => {
                map.append(hn, hv);
            }
            Some(false) => {
                map.insert(hn, hv);
            }
            // `append_action` is honoured where it can be told from "unset" (do better, H1).
            None => match opt.append_action {
                1 if exists => {}
                3 if !exists => {}
                _ => {
                    map.insert(hn, hv);
                }
            },
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::BoolValue;

    #[allow(deprecated)]
    fn opt(k: &str, v: &[u8], append: Option<bool>, action: i32) -> core::HeaderValueOption {
        core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.into(),
                value: String::new(),
                raw_value: v.to_vec(),
            }),
            append: append.map(|value| BoolValue { value }),
            append_action: action,
            keep_empty_value: false,
        }
    }

    fn req() -> Head {
        let (p, _) = http::Request::builder()
            .method("GET")
            .uri("/a?b=1")
            .header("host", "example.com")
            .header("x-a", "1")
            .header("x-b", "2")
            .body(())
            .unwrap()
            .into_parts();
        Head::Request(p)
    }

    #[test]
    fn removes_before_sets_and_counts_rejections() {
        let stats = Stats::detached();
        let mut h = req();
        let m = HeaderMutation {
            set_headers: vec![
                opt("X-A", b"new", None, 0),
                opt("x-envoy-foo", b"1", None, 0),
                opt(":method", b"POST", None, 0),
                opt(":path", b"/new", None, 0),
                opt("x-c", b"3", Some(true), 0),
            ],
            remove_headers: vec!["x-a".into(), "x-b".into(), ":path".into(), "host".into()],
        };
        apply(
            Target::Head(&mut h),
            &m,
            &Checker::default(),
            Context::default(),
            &stats,
        )
        .unwrap();
        let Head::Request(p) = &h else { unreachable!() };
        assert_eq!(p.headers["x-a"], "new");
        assert!(!p.headers.contains_key("x-b"));
        assert!(!p.headers.contains_key("x-envoy-foo"));
        assert_eq!(p.method, Method::GET, ":method needs allow_all_routing");
        assert_eq!(p.uri.path(), "/new", ":path is modifiable by default");
        assert_eq!(p.headers["x-c"], "3");
        assert_eq!(p.headers["host"], "example.com");
        // x-envoy-foo, :method, remove :path, remove host.
        assert_eq!(stats.rejected_header_mutations.value(), 4);
    }

    #[test]
    fn invalid_characters_are_hard_errors() {
        let stats = Stats::detached();
        for (k, v) in [
            ("x-a", &b"a\r\nb"[..]),
            ("x-a", b"a\0"),
            ("x a", b"1"),
            ("x\na", b"1"),
        ] {
            let mut h = req();
            let m = HeaderMutation {
                set_headers: vec![opt(k, v, None, 0)],
                remove_headers: vec![],
            };
            let e = apply(
                Target::Head(&mut h),
                &m,
                &Checker::default(),
                Context::default(),
                &stats,
            )
            .unwrap_err();
            assert_eq!(e, MutationError::InvalidCharacter);
            assert_eq!(h.headers()["x-a"], "1", "nothing applied");
        }
        let mut h = req();
        let m = HeaderMutation {
            set_headers: vec![],
            remove_headers: vec!["bad\r\nname".into()],
        };
        assert!(apply(
            Target::Head(&mut h),
            &m,
            &Checker::default(),
            Context::default(),
            &stats
        )
        .is_err());
    }

    #[test]
    fn append_semantics() {
        let stats = Stats::detached();
        let mut h = req();
        let m = HeaderMutation {
            set_headers: vec![
                opt("x-a", b"2", Some(true), 0),
                opt("x-b", b"add-if-absent", None, 1),
                opt("x-new", b"ow-if-exists", None, 3),
                opt("x-new2", b"v", None, 2),
            ],
            remove_headers: vec![],
        };
        apply(
            Target::Head(&mut h),
            &m,
            &Checker::default(),
            Context::default(),
            &stats,
        )
        .unwrap();
        let all: Vec<_> = h.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(h.headers()["x-b"], "2");
        assert!(!h.headers().contains_key("x-new"));
        assert_eq!(h.headers()["x-new2"], "v");
    }

    #[test]
    fn value_only_is_used() {
        let stats = Stats::detached();
        let mut h = req();
        let mut o = opt("x-v", b"", None, 0);
        if let Some(hv) = o.header.as_mut() {
            hv.value = "text".into();
        }
        let m = HeaderMutation {
            set_headers: vec![o],
            remove_headers: vec![],
        };
        apply(
            Target::Head(&mut h),
            &m,
            &Checker::default(),
            Context::default(),
            &stats,
        )
        .unwrap();
        assert_eq!(h.headers()["x-v"], "text");
    }

    #[test]
    fn routing_rules_and_status() {
        let stats = Stats::detached();
        let rules = MutationRulesConfig {
            allow_all_routing: Some(true),
            ..Default::default()
        };
        let c = Checker::build(Some(&rules), "r").unwrap();
        let mut h = req();
        let m = HeaderMutation {
            set_headers: vec![
                opt(":authority", b"other.com", None, 0),
                opt(":method", b"PUT", None, 0),
            ],
            remove_headers: vec![],
        };
        apply(Target::Head(&mut h), &m, &c, Context::default(), &stats).unwrap();
        let Head::Request(p) = &h else { unreachable!() };
        assert_eq!(p.method, Method::PUT);
        assert_eq!(p.headers["host"], "other.com");

        let (rp, _) = http::Response::builder()
            .status(200)
            .body(())
            .unwrap()
            .into_parts();
        let mut r = Head::Response(rp);
        let m = HeaderMutation {
            set_headers: vec![opt(":status", b"100", None, 0)],
            remove_headers: vec![],
        };
        apply(
            Target::Head(&mut r),
            &m,
            &Checker::default(),
            Context::default(),
            &stats,
        )
        .unwrap();
        let m = HeaderMutation {
            set_headers: vec![opt(":status", b"201", None, 0)],
            remove_headers: vec![],
        };
        apply(
            Target::Head(&mut r),
            &m,
            &Checker::default(),
            Context::default(),
            &stats,
        )
        .unwrap();
        let Head::Response(p) = &r else {
            unreachable!()
        };
        assert_eq!(p.status, 201);
        assert_eq!(stats.rejected_header_mutations.value(), 1);
    }

    #[test]
    fn pseudo_headers_a_head_does_not_have_are_dropped_uncounted() {
        // As Envoy: `:foo` on a request or `:path` on a response is not a rejected mutation
        // (Envoy stores it where nothing forwards it; extproxy drops it).
        let stats = Stats::detached();
        let mut h = req();
        let m = HeaderMutation {
            set_headers: vec![opt(":foo", b"x", None, 0), opt("x-ok", b"1", None, 0)],
            remove_headers: vec![],
        };
        apply(
            Target::Head(&mut h),
            &m,
            &Checker::default(),
            Context::default(),
            &stats,
        )
        .unwrap();
        let Head::Request(p) = &h else { unreachable!() };
        assert_eq!(p.headers["x-ok"], "1");
        let (rp, _) = http::Response::builder()
            .status(200)
            .body(())
            .unwrap()
            .into_parts();
        let mut r = Head::Response(rp);
        let m = HeaderMutation {
            set_headers: vec![opt(":path", b"/nope", None, 0)],
            remove_headers: vec![],
        };
        apply(
            Target::Head(&mut r),
            &m,
            &Checker::default(),
            Context::default(),
            &stats,
        )
        .unwrap();
        assert_eq!(stats.rejected_header_mutations.value(), 0);
    }

    #[test]
    fn disallow_is_error_fails() {
        let stats = Stats::detached();
        let rules = MutationRulesConfig {
            disallow_is_error: Some(true),
            ..Default::default()
        };
        let c = Checker::build(Some(&rules), "r").unwrap();
        let mut h = req();
        let m = HeaderMutation {
            set_headers: vec![opt(":scheme", b"https", None, 0)],
            remove_headers: vec![],
        };
        assert_eq!(
            apply(Target::Head(&mut h), &m, &c, Context::default(), &stats),
            Err(MutationError::SetFailed)
        );
        let m = HeaderMutation {
            set_headers: vec![],
            remove_headers: vec![":path".into()],
        };
        assert_eq!(
            apply(Target::Head(&mut h), &m, &c, Context::default(), &stats),
            Err(MutationError::RemoveFailed)
        );
    }

    #[test]
    fn proto_headers_order_and_forward_rules() {
        let rules = ForwardRules::default();
        let hm = to_proto(&req(), &rules);
        let keys: Vec<_> = hm.headers.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(
            keys,
            [":authority", ":path", ":method", ":scheme", "x-a", "x-b"]
        );
        assert!(hm.headers.iter().all(|h| h.value.is_empty()));
        let only = ListStringMatcher(vec![
            crate::filter::common::string_matcher::StringMatcher::Exact("x-a".into(), false),
        ]);
        let rules = ForwardRules {
            allowed: Some(only),
            disallowed: None,
        };
        let hm = to_proto(&req(), &rules);
        let keys: Vec<_> = hm.headers.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["x-a"]);
    }
}
