//! Shared input types and invariant checks of the fuzz targets.

use arbitrary::Arbitrary;
use extproxy::filter::common::string_matcher::RegexMatcherConfig;
use extproxy::filter::http::ext_proc::config::MutationRulesConfig;
use extproxy::filter::http::ext_proc::mutation::Head;
use http::HeaderMap;

/// Header names that mean something to the proxy, tried more often than random strings.
const NAMES: &[&str] = &[
    ":path", ":method", ":authority", ":scheme", ":status", ":protocol", ":", "host", "Host",
    "content-length", "transfer-encoding", "connection", "te", "upgrade", "keep-alive",
    "proxy-connection", "x-envoy-original-path", "x-envoy-foo", "x-a", "X-A", "cookie",
    "set-cookie", "grpc-status", "", " ", "x a", "x\r\nb", "x\0", "x:y", "\u{e9}",
];

/// Values that mean something for the names above.
const VALUES: &[&str] = &[
    "", "/", "/a?b=c", "*", "abc", "//x", "http://e.test/p", "GET", "CONNECT", "g e t", "http",
    "https", "ftp", "e.test", "e.test:80", "[::1]:8080", "a@b", "200", "204", "100", "199",
    "99", "1000", "-1", "0", "5", "a\r\nb", "a\nb", "a\0b", "\t", " a ", "\u{7f}", "chunked",
    "close", "h2c", "18446744073709551616",
];

/// A header name: a known one or any string.
#[derive(Arbitrary, Debug, Clone)]
pub enum Name {
    /// One of `NAMES`.
    Known(u8),
    /// Anything.
    Raw(String),
}

impl Name {
    /// The name as text.
    pub fn text(&self) -> String {
        match self {
            Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()].to_string(),
            Name::Raw(s) => s.clone(),
        }
    }
}

/// A header value: a known one or any bytes.
#[derive(Arbitrary, Debug, Clone)]
pub enum Value {
    /// One of `VALUES`.
    Known(u8),
    /// Anything.
    Raw(Vec<u8>),
}

impl Value {
    /// The value's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Known(i) => VALUES[usize::from(*i) % VALUES.len()].as_bytes().to_vec(),
            Value::Raw(b) => b.clone(),
        }
    }
}

/// `HeaderMutationRules` with short expressions (long ones only slow the regex compiler).
#[derive(Arbitrary, Debug, Clone)]
pub struct Rules {
    allow_all_routing: Option<bool>,
    allow_envoy: Option<bool>,
    disallow_system: Option<bool>,
    disallow_all: Option<bool>,
    allow_expression: Option<Regex>,
    disallow_expression: Option<Regex>,
    disallow_is_error: Option<bool>,
}

/// A regular expression: a useful one or a short arbitrary one.
#[derive(Arbitrary, Debug, Clone)]
pub enum Regex {
    /// One of a few useful expressions.
    Known(u8),
    /// Up to 16 characters of anything.
    Raw(String),
}

impl Regex {
    fn text(&self) -> String {
        const KNOWN: &[&str] = &[":.*", "x-.*", "host", ".*", "content-length|:path", "x-envoy.*"];
        match self {
            Regex::Known(i) => KNOWN[usize::from(*i) % KNOWN.len()].to_string(),
            Regex::Raw(s) => s.chars().take(16).collect(),
        }
    }
}

impl Rules {
    /// The config struct the filter reads.
    pub fn config(self) -> MutationRulesConfig {
        let re = |r: Option<Regex>| {
            r.map(|r| RegexMatcherConfig { google_re2: None, regex: r.text() })
        };
        MutationRulesConfig {
            allow_all_routing: self.allow_all_routing,
            allow_envoy: self.allow_envoy,
            disallow_system: self.disallow_system,
            disallow_all: self.disallow_all,
            allow_expression: re(self.allow_expression),
            disallow_expression: re(self.disallow_expression),
            disallow_is_error: self.disallow_is_error,
        }
    }
}

/// Regular headers or trailers the proxy can put on the wire.
pub fn check_map(map: &HeaderMap) {
    for (name, value) in map {
        let n = name.as_str();
        assert!(!n.is_empty() && !n.starts_with(':'), "bad header name {n:?}");
        assert!(http::HeaderName::from_bytes(n.as_bytes()).is_ok(), "bad header name {n:?}");
        assert_eq!(n, n.to_ascii_lowercase(), "header name not lower-case");
        assert!(
            !value.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "CR/LF/NUL in {n}: {value:?}"
        );
    }
}

/// Headers plus a pseudo-header section the proxy can forward.
pub fn check_head(head: &Head) {
    check_map(head.headers());
    match head {
        Head::Request(p) => {
            let path = p.uri.path();
            assert!(path.starts_with('/') || path == "*", "bad :path {:?}", p.uri);
            assert!(
                p.uri.to_string().parse::<http::Uri>().is_ok(),
                "URI does not round-trip: {:?}",
                p.uri
            );
            if let Some(s) = p.uri.scheme_str() {
                assert!(matches!(s, "http" | "https"), "bad :scheme {s:?}");
            }
        }
        Head::Response(p) => {
            assert!(p.status.as_u16() >= 200, "non-final :status {}", p.status);
        }
    }
}

/// Everything an HTTP/1 proxy wrote back: zero or more complete, well-formed responses. A cut
/// response is only acceptable when the connection was reset. After a response to a HEAD
/// request the body framing cannot be checked without parsing the requests, so parsing stops
/// there when the input contains `HEAD`.
pub fn check_http1_responses(mut out: &[u8], reset: bool, input: &[u8]) {
    let head_requests = input.windows(4).any(|w| w == b"HEAD");
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                assert!(reset, "a cut response head: {:?}", String::from_utf8_lossy(out));
                return;
            }
            Err(e) => {
                if head_requests {
                    return;
                }
                panic!("malformed response ({e}): {:?}", String::from_utf8_lossy(out));
            }
        };
        // HTTP/1.0 requests are answered in HTTP/1.0 (426 unless `accept_http_10`).
        assert!(resp.version.is_some(), "no version: {:?}", String::from_utf8_lossy(out));
        let code = resp.code.unwrap_or(0);
        assert!((100..=599).contains(&code), "status {code}");
        let header = |name: &str| {
            let mut values = resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
            let first = values.next().map(|h| String::from_utf8_lossy(h.value).into_owned());
            assert!(values.next().is_none() || name != "content-length", "two content-lengths");
            first
        };
        let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = header("content-length");
        assert!(!(chunked && length.is_some()), "both content-length and chunked");
        out = &out[n..];
        if (100..200).contains(&code) || code == 204 || code == 304 {
            continue;
        }
        if chunked {
            match skip_chunked(out) {
                Some(rest) => out = rest,
                None => {
                    assert!(reset || head_requests, "bad chunked body: {:?}", String::from_utf8_lossy(out));
                    return;
                }
            }
        } else if let Some(len) = length {
            let len: usize = len.trim().parse().unwrap_or_else(|_| panic!("bad content-length {len:?}"));
            if out.len() < len {
                assert!(reset || head_requests, "a cut body: {len} announced, {} sent", out.len());
                return;
            }
            out = &out[len..];
        } else {
            // Delimited by the close: the rest is this body.
            return;
        }
    }
}

/// Skips a chunked body (and its trailers); `None` if it is malformed or cut.
fn skip_chunked(mut b: &[u8]) -> Option<&[u8]> {
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = b.windows(2).position(|w| w == b"\r\n")?;
                b = &b[end + 2..];
                if end == 0 {
                    return Some(b);
                }
            }
        }
        if b.len() < size + 2 || &b[size..size + 2] != b"\r\n" {
            return None;
        }
        b = &b[size + 2..];
    }
}
