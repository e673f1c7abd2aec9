//! Differential tests: the same bootstrap (`tests/http/basic.yaml`) and the same requests
//! through real Envoy 1.40 and through the extproxy binary; the normalised observations
//! (status, response headers and body, what the upstream received) must be equal.
#![allow(clippy::unwrap_used)]

mod http_support;

use http_support::{assert_same, observe, Observation, Pair, Upstreams};
use std::time::Duration;
use testenv::{HttpVersion, TestRequest};

/// One request to run through both proxies.
struct Scenario {
    name: &'static str,
    req: TestRequest,
    version: HttpVersion,
}

fn scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let mut add =
            |name: &'static str, req: TestRequest| v.push(Scenario { name, req, version });
        add(
            "plain GET",
            TestRequest::get("/hello?x=1").header("user-agent", "diff"),
        );
        add("POST with body", TestRequest::post("/post", "hello world"));
        add(
            "chunked POST",
            TestRequest::new("POST", "/chunked").chunked(&["ab", "cd"], Duration::from_millis(10)),
        );
        add(
            "hop-by-hop and envoy headers are stripped",
            TestRequest::get("/strip")
                .header("x-envoy-retry-on", "5xx")
                .header("x-envoy-internal", "true")
                .header("x-envoy-expected-rq-timeout-ms", "1")
                .header("te", "trailers")
                .header("x-forwarded-for", "10.0.0.1")
                .header("x-request-id", "client-id"),
        );
        add(
            "route and vhost headers",
            TestRequest::get("/h")
                .header("x-remove-me", "1")
                .header("x-over", "client"),
        );
        add(
            "response header removal",
            TestRequest::get("/r").header("x-echo-response-headers", "x-strip-me=1,x-kept=2"),
        );
        add("exact path", TestRequest::get("/exact"));
        add("regex path", TestRequest::get("/re/123"));
        add(
            "header match",
            TestRequest::get("/hdr").header("x-match", "yes"),
        );
        add(
            "header match inverted",
            TestRequest::get("/hdr")
                .header("x-match", "yes")
                .header("x-absent", "1"),
        );
        add("case-insensitive prefix", TestRequest::get("/cAsE/1"));
        add("prefix rewrite", TestRequest::get("/rewrite/a?b=c"));
        add("HTTP/2 upstream", TestRequest::post("/h2/x", "body"));
        add("direct response", TestRequest::get("/direct"));
        add("connect failure", TestRequest::get("/dead"));
        add("no healthy upstream", TestRequest::get("/empty"));
        add("route timeout", TestRequest::get("/timeout"));
        add(
            "gRPC local reply",
            TestRequest::post("/empty", "x").header("content-type", "application/grpc"),
        );
        add(
            "upstream status",
            TestRequest::get("/s").header("x-echo-status", "503"),
        );
        add(
            "chunked response",
            TestRequest::get("/c")
                .header("x-echo-chunks", "3")
                .header("x-echo-mode", "raw"),
        );
        let mut r = TestRequest::get("/v");
        r.authority = "api.example.com".into();
        add("virtual host by domain", r);
        let mut r = TestRequest::get("/v");
        r.authority = "a.wild.test".into();
        add("suffix wildcard domain", r);
        let mut r = TestRequest::get("/other");
        r.authority = "narrow.test".into();
        add("no route", r);
        let mut r = TestRequest::post("/other", "x").header("content-type", "application/grpc");
        r.authority = "narrow.test".into();
        add("gRPC no route", r);
        add("HEAD", TestRequest::new("HEAD", "/head"));
        add("DELETE", TestRequest::new("DELETE", "/del"));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_yaml_behaves_like_envoy() {
    let ups = Upstreams::start().await;
    let yaml = ups.basic_yaml("AUTO");
    let pair = Pair::start(&yaml, &yaml).await;
    let (e_addr, x_addr) = (pair.envoy_addr, pair.ours_addr);
    let mut failures = Vec::new();
    for s in scenarios() {
        let e: Observation = observe(e_addr, &ups.echo, &s.req, s.version).await;
        let x: Observation = observe(x_addr, &ups.echo, &s.req, s.version).await;
        let name = format!("{} ({:?})", s.name, s.version);
        if let Err(p) = std::panic::catch_unwind(|| assert_same(&name, &e, &x)) {
            failures.push(p.downcast_ref::<String>().cloned().unwrap_or_default());
        }
    }
    assert!(
        failures.is_empty(),
        "{} scenario(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Trailers, in both directions and over both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_behave_like_envoy() {
    let ups = Upstreams::start().await;
    let yaml = ups.basic_yaml("AUTO");
    let pair = Pair::start(&yaml, &yaml).await;
    let (e_addr, x_addr) = (pair.envoy_addr, pair.ours_addr);
    let mut failures = Vec::new();
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        for path in ["/t", "/h2/t"] {
            let req = TestRequest::new("POST", path)
                .chunked(&["ab", "cd"], Duration::from_millis(10))
                .header("te", "trailers")
                .trailer("x-req-trailer", "1")
                .header("x-echo-mode", "raw")
                .header("x-echo-trailers", "x-resp-trailer=2");
            let e = observe(e_addr, &ups.echo, &req, version).await;
            let x = observe(x_addr, &ups.echo, &req, version).await;
            let name = format!("trailers {path} ({version:?})");
            if let Err(p) = std::panic::catch_unwind(|| assert_same(&name, &e, &x)) {
                failures.push(p.downcast_ref::<String>().cloned().unwrap_or_default());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} scenario(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Malformed HTTP/1.1: same status, body, `connection` header and close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_behaves_like_envoy() {
    let ups = Upstreams::start().await;
    let yaml = ups.basic_yaml("AUTO");
    let pair = Pair::start(&yaml, &yaml).await;
    let (e_addr, x_addr) = (pair.envoy_addr, pair.ours_addr);
    let big = format!(
        "GET /x HTTP/1.1\r\nHost: example.com\r\nx-big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let many: String = (0..101).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let many = format!("GET /x HTTP/1.1\r\nHost: example.com\r\n{many}\r\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad request line", b"GARBAGE\r\n\r\n".to_vec()),
        ("control byte", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-a: a\x01b\r\n\r\n".to_vec()),
        ("space in name", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx a: b\r\n\r\n".to_vec()),
        ("two content-lengths", b"POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec()),
        ("bad content-length", b"POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: abc\r\n\r\n".to_vec()),
        ("relative path", b"GET abc HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec()),
        ("gzip before chunked", b"POST /x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("HTTP/1.0", b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n".to_vec()),
        ("no host", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("headers over 60 KiB", big.into_bytes()),
        ("101 headers", many.into_bytes()),
    ];
    let mut failures = Vec::new();
    for (what, bytes) in cases {
        let e = http_support::raw_http1(e_addr, &bytes, Duration::from_secs(2)).await;
        let x = http_support::raw_http1(x_addr, &bytes, Duration::from_secs(2)).await;
        let view = |r: &http_support::RawResponse| {
            (
                r.status(),
                r.body().to_string(),
                r.header("connection"),
                r.header("content-type"),
                r.closed,
            )
        };
        if view(&e) != view(&x) {
            failures.push(format!(
                "{what}: envoy {:?} extproxy {:?}",
                view(&e),
                view(&x)
            ));
        }
    }
    assert!(ups.echo.requests().is_empty());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
