//! Malformed and abusive HTTP input: Envoy's 400 / 431 / 408 answers, and nothing reaches the
//! upstream.
#![allow(clippy::unwrap_used)]

mod http_support;

use http_support::{raw_http1, with_hcm_options, TestProxy, Upstreams};
use std::time::Duration;
use testenv::{HttpVersion, TestRequest};

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn malformed_http1_gets_400_and_never_reaches_the_upstream() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&ups.basic_yaml("AUTO")).await;
    let cases: &[(&str, &[u8])] = &[
        ("bad request line", b"GARBAGE\r\n\r\n"),
        ("control byte in a value", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-a: a\x01b\r\n\r\n"),
        ("space in a name", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx a: b\r\n\r\n"),
        ("space before the colon", b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-a : b\r\n\r\n"),
        ("two content-lengths", b"POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"),
        ("invalid content-length", b"POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: abc\r\n\r\nhello"),
        ("relative path", b"GET abc HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let r = raw_http1(proxy.ingress(), bytes, WAIT).await;
        assert_eq!(r.status(), 400, "{what}: {}", r.text);
        assert_eq!(r.body(), "Bad Request", "{what}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/plain"),
            "{what}"
        );
        assert_eq!(r.header("server").as_deref(), Some("envoy"), "{what}");
        assert_eq!(r.header("connection").as_deref(), Some("close"), "{what}");
        assert!(r.closed, "{what}");
    }
    assert!(ups.echo.requests().is_empty(), "{:?}", ups.echo.requests());
    assert_eq!(proxy.stat("cluster.upstream.upstream_cx_total"), 0);
    assert!(proxy.stat("http.ingress_http.downstream_cx_protocol_error") >= 6);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&ups.basic_yaml("AUTO")).await;
    let big = format!(
        "GET /x HTTP/1.1\r\nHost: example.com\r\nx-big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let many: String = (0..101).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let many = format!("GET /x HTTP/1.1\r\nHost: example.com\r\n{many}\r\n");
    for (what, bytes) in [("60 KiB", big.as_bytes()), ("100 headers", many.as_bytes())] {
        let r = raw_http1(proxy.ingress(), bytes, WAIT).await;
        assert_eq!(r.status(), 431, "{what}: {}", r.text);
        assert_eq!(r.body(), "Request Header Fields Too Large");
        assert!(r.closed);
    }
    // HTTP/2: the header list limit.
    let resp = TestRequest::get("/x")
        .header("x-big", &"a".repeat(70_000))
        .send(proxy.ingress(), HttpVersion::Http2)
        .await;
    assert!(
        matches!(resp, Ok(ref r) if r.status == 431) || resp.is_err(),
        "{resp:?}"
    );
    assert!(ups.echo.requests().is_empty());
}

#[tokio::test]
async fn max_request_headers_kb_is_configurable() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&with_hcm_options(
        &ups.basic_yaml("AUTO"),
        &["max_request_headers_kb: 96"],
    ))
    .await;
    let resp = TestRequest::get("/x")
        .header("x-big", &"a".repeat(70_000))
        .send(proxy.ingress(), HttpVersion::Http1)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        ups.echo.last_request().header("x-big").map(str::len),
        Some(70_000)
    );
}

#[tokio::test]
async fn slow_headers_are_cut_by_request_headers_timeout() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&with_hcm_options(
        &ups.basic_yaml("AUTO"),
        &["request_headers_timeout: 0.3s"],
    ))
    .await;
    let start = tokio::time::Instant::now();
    let r = raw_http1(proxy.ingress(), b"GET /x HTTP/1.1\r\nHost: exa", WAIT).await;
    assert!(r.closed, "{}", r.text);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(ups.echo.requests().is_empty());
}

#[tokio::test]
async fn request_timeout_answers_408_while_the_body_is_incomplete() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&with_hcm_options(
        &ups.basic_yaml("AUTO"),
        &["request_timeout: 0.3s"],
    ))
    .await;
    let r = raw_http1(
        proxy.ingress(),
        b"POST /timeout HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\nabc",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), 408, "{}", r.text);
    assert_eq!(r.body(), "request timeout");
    assert_eq!(proxy.stat("http.ingress_http.downstream_rq_timeout"), 1);
}

#[tokio::test]
async fn stream_idle_timeout_answers_504_once_the_request_is_complete() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&with_hcm_options(
        &ups.basic_yaml("AUTO"),
        &["stream_idle_timeout: 0.2s"],
    ))
    .await;
    for v in [HttpVersion::Http1, HttpVersion::Http2] {
        let resp = TestRequest::get("/timeout")
            .send(proxy.ingress(), v)
            .await
            .unwrap();
        assert_eq!(resp.status, 504);
        assert_eq!(resp.text(), "stream timeout");
        assert_eq!(resp.header("x-route"), Some("timeout"));
    }
    assert_eq!(
        proxy.stat("http.ingress_http.downstream_rq_idle_timeout"),
        2
    );
    // An incomplete request gets 408.
    let r = raw_http1(
        proxy.ingress(),
        b"POST /timeout HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\nabc",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), 408, "{}", r.text);
    assert_eq!(r.body(), "stream timeout");
}

#[tokio::test]
async fn idle_connections_close_after_idle_timeout() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&with_hcm_options(
        &ups.basic_yaml("AUTO"),
        &["common_http_protocol_options: {idle_timeout: 0.3s}"],
    ))
    .await;
    let start = tokio::time::Instant::now();
    let r = raw_http1(
        proxy.ingress(),
        b"GET /k HTTP/1.1\r\nHost: example.com\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.closed, "closed by the idle timeout");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(
        proxy.stat("http.ingress_http.downstream_cx_idle_timeout"),
        1
    );
}

#[tokio::test]
async fn config_errors_name_the_field() {
    let ups = Upstreams::start().await;
    let yaml = ups.basic_yaml("AUTO");
    for (bad, path) in [
        (
            yaml.replacen(
                "stat_prefix: ingress_http",
                "stat_prefix: ingress_http\n          bogus_field: 1",
                1,
            ),
            "bogus_field",
        ),
        (
            yaml.replacen("cluster: dead}", "cluster: nope}", 1),
            "routes[6].route.cluster",
        ),
        (
            yaml.replacen(
                "envoy.extensions.filters.http.router.v3.Router",
                "envoy.extensions.filters.http.nope.v3.Nope",
                1,
            ),
            "http_filters[0].typed_config.@type",
        ),
        (
            with_hcm_options(&yaml, &["access_log: [{name: x}]"]),
            "access_log",
        ),
    ] {
        let b = extproxy::config::parse(&bad).unwrap();
        let err = extproxy::Server::bind(&b, extproxy::Options::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(path), "{path}: {err}");
    }
}
