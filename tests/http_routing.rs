//! The HCM and router over real sockets: routing, header handling and Envoy's local replies.
#![allow(clippy::unwrap_used)]

mod http_support;

use http_support::{raw_http1, TestProxy, Upstreams};
use std::time::Duration;
use testenv::{HttpVersion, TestRequest};

const VERSIONS: [HttpVersion; 2] = [HttpVersion::Http1, HttpVersion::Http2];

async fn setup() -> (Upstreams, TestProxy) {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&ups.basic_yaml("AUTO")).await;
    (ups, proxy)
}

#[tokio::test]
async fn proxies_with_envoys_request_and_response_headers() {
    let (ups, proxy) = setup().await;
    for v in VERSIONS {
        let resp = TestRequest::get("/hello?x=1")
            .header("x-remove-me", "1")
            .header("x-over", "client")
            .header("x-echo-response-headers", "x-strip-me=1,x-kept=2")
            .send(proxy.ingress(), v)
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{v:?}");
        assert_eq!(resp.header("server"), Some("envoy"));
        assert!(resp.header("date").is_some());
        assert!(resp.header("x-envoy-upstream-service-time").is_some());
        assert_eq!(resp.header("x-vh"), Some("main"));
        assert_eq!(resp.header("x-global"), Some("g"));
        assert_eq!(resp.header("x-kept"), Some("2"));
        assert_eq!(resp.header("x-strip-me"), None);
        let seen = ups.echo.last_request();
        assert_eq!(seen.path, "/hello?x=1");
        assert_eq!(seen.version, "HTTP/1.1");
        assert_eq!(seen.header("host"), Some("example.com"));
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
        assert_eq!(seen.header("x-request-id").map(str::len), Some(36));
        assert_eq!(seen.header("x-envoy-expected-rq-timeout-ms"), Some("15000"));
        assert_eq!(seen.header("x-added"), Some("1"));
        assert_eq!(seen.headers["x-over"], ["route"]);
        assert_eq!(seen.header("x-remove-me"), None);
        assert_eq!(
            seen.header("x-forwarded-for"),
            None,
            "no XFF without use_remote_address"
        );
    }
}

#[tokio::test]
async fn routes_by_path_regex_headers_and_domain() {
    let (ups, proxy) = setup().await;
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case] = &[
        ("example.com", "/exact", &[], Some("exact")),
        ("example.com", "/exact/more", &[], None),
        ("example.com", "/re/42", &[], Some("regex")),
        ("example.com", "/re/4x", &[], None),
        ("example.com", "/hdr", &[("x-match", "yes")], Some("hdr")),
        (
            "example.com",
            "/hdr",
            &[("x-match", "yes"), ("x-absent", "1")],
            None,
        ),
        ("example.com", "/hdr", &[("x-match", "no")], None),
        ("example.com", "/case/x", &[], Some("case")),
    ];
    for (host, path, headers, want) in cases {
        let mut req = TestRequest::get(path);
        req.authority = host.to_string();
        for (k, v) in *headers {
            req = req.header(k, v);
        }
        let resp = req.send(proxy.ingress(), HttpVersion::Http1).await.unwrap();
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.header("x-route"), *want, "{path} {headers:?}");
    }
    for host in [
        "api.example.com",
        "API.EXAMPLE.COM",
        "a.wild.test",
        "pre.anything",
    ] {
        let mut req = TestRequest::get("/v");
        req.authority = host.to_string();
        let resp = req.send(proxy.ingress(), HttpVersion::Http2).await.unwrap();
        assert_eq!(resp.status, 200, "{host}");
        assert_eq!(
            ups.echo.last_request().header("x-vhost"),
            Some("api"),
            "{host}"
        );
        assert_eq!(resp.header("x-vh"), None, "{host}");
    }
    // `wild.test` does not match `*.wild.test` (the wildcard needs a character); `*` takes it.
    let mut req = TestRequest::get("/v");
    req.authority = "wild.test".into();
    req.send(proxy.ingress(), HttpVersion::Http1).await.unwrap();
    assert_eq!(ups.echo.last_request().header("x-vhost"), None);
}

#[tokio::test]
async fn prefix_rewrite_keeps_the_query_and_records_the_original_path() {
    let (ups, proxy) = setup().await;
    for v in VERSIONS {
        let resp = TestRequest::get("/rewrite/a/b?q=1")
            .send(proxy.ingress(), v)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        let seen = ups.echo.last_request();
        assert_eq!(seen.path, "/new/a/b?q=1");
        assert_eq!(
            seen.header("x-envoy-original-path"),
            Some("/rewrite/a/b?q=1")
        );
    }
}

#[tokio::test]
async fn no_route_is_404_with_an_empty_body() {
    let (ups, proxy) = setup().await;
    for v in VERSIONS {
        let mut req = TestRequest::get("/other");
        req.authority = "narrow.test".into();
        let resp = req.send(proxy.ingress(), v).await.unwrap();
        assert_eq!(resp.status, 404);
        assert_eq!(resp.body, "");
        assert_eq!(resp.header("server"), Some("envoy"));
        assert_eq!(resp.header("content-type"), None);
        assert_eq!(resp.header("x-global"), None, "no route, no route headers");
    }
    assert!(ups.echo.requests().is_empty());
    assert_eq!(proxy.stat("http.ingress_http.no_route"), 2);
    proxy
        .wait_stat("http.ingress_http.downstream_rq_4xx", 2)
        .await;
}

#[tokio::test]
async fn upstream_failures_are_envoys_local_replies() {
    let (ups, proxy) = setup().await;
    let cases = [
        ("/dead", 503, "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"),
        ("/empty", 503, "no healthy upstream"),
        ("/timeout", 504, "upstream request timeout"),
    ];
    for v in VERSIONS {
        for (path, status, body) in cases {
            let resp = TestRequest::get(path)
                .send(proxy.ingress(), v)
                .await
                .unwrap();
            assert_eq!(resp.status, status, "{path}");
            assert_eq!(resp.text(), body, "{path}");
            assert_eq!(resp.header("content-type"), Some("text/plain"));
            assert_eq!(
                resp.header("content-length"),
                Some(body.len().to_string().as_str())
            );
            assert_eq!(
                resp.header("x-global"),
                Some("g"),
                "route response headers apply to local replies"
            );
        }
        let resp = TestRequest::get("/timeout")
            .send(proxy.ingress(), v)
            .await
            .unwrap();
        assert_eq!(resp.header("x-route"), Some("timeout"));
    }
    assert!(ups.blackhole.accepted() >= 1);
    assert_eq!(proxy.stat("cluster.blackhole.upstream_rq_timeout"), 4);
    assert_eq!(proxy.stat("cluster.blackhole.upstream_rq_504"), 4);
    assert_eq!(proxy.stat("cluster.dead.upstream_cx_connect_fail"), 2);
    assert_eq!(proxy.stat("cluster.empty.upstream_cx_none_healthy"), 2);
    assert_eq!(proxy.stat("cluster.empty.upstream_rq_503"), 2);
}

#[tokio::test]
async fn grpc_requests_get_trailers_only_local_replies() {
    let (_ups, proxy) = setup().await;
    let resp = TestRequest::post("/empty", "x")
        .header("content-type", "application/grpc")
        .send(proxy.ingress(), HttpVersion::Http2)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("14"));
    assert_eq!(resp.header("grpc-message"), Some("no healthy upstream"));
    assert_eq!(resp.header("content-type"), Some("application/grpc"));
    assert_eq!(resp.body, "");
    let mut req = TestRequest::post("/x", "x").header("content-type", "application/grpc+proto");
    req.authority = "narrow.test".into();
    let resp = req.send(proxy.ingress(), HttpVersion::Http2).await.unwrap();
    assert_eq!(resp.header("grpc-status"), Some("12"));
    assert_eq!(resp.header("grpc-message"), None);
}

#[tokio::test]
async fn direct_response_and_http2_upstream() {
    let (ups, proxy) = setup().await;
    let resp = TestRequest::get("/direct")
        .send(proxy.ingress(), HttpVersion::Http1)
        .await
        .unwrap();
    assert_eq!((resp.status, resp.text().as_str()), (200, "direct answer"));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    for v in VERSIONS {
        let resp = TestRequest::post("/h2/up", "body")
            .send(proxy.ingress(), v)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        let seen = ups.echo.last_request();
        assert_eq!(
            (seen.version.as_str(), seen.path.as_str()),
            ("HTTP/2.0", "/up")
        );
        assert_eq!(seen.body, "body");
        assert_eq!(seen.header("host"), None);
    }
}

#[tokio::test]
async fn stats_use_envoys_names() {
    let (_ups, proxy) = setup().await;
    TestRequest::get("/a")
        .send(proxy.ingress(), HttpVersion::Http1)
        .await
        .unwrap();
    TestRequest::get("/a")
        .send(proxy.ingress(), HttpVersion::Http2)
        .await
        .unwrap();
    let p = "http.ingress_http";
    proxy
        .wait_stat(&format!("{p}.downstream_rq_completed"), 2)
        .await;
    for (name, want) in [
        ("downstream_rq_total", 2),
        ("downstream_rq_http1_total", 1),
        ("downstream_rq_http2_total", 1),
        ("downstream_rq_2xx", 2),
        ("downstream_cx_http1_total", 1),
        ("downstream_cx_http2_total", 1),
        ("rq_total", 2),
        ("downstream_rq_5xx", 0),
    ] {
        assert_eq!(proxy.stat(&format!("{p}.{name}")), want, "{name}");
    }
    assert!(proxy.stat(&format!("{p}.downstream_cx_rx_bytes_total")) > 0);
    assert!(proxy.has_stat(&format!("{p}.downstream_rq_active")));
    assert_eq!(proxy.stat("cluster.upstream.upstream_rq_200"), 2);
    assert_eq!(proxy.stat("cluster.upstream.upstream_rq_2xx"), 2);
}

#[tokio::test]
async fn http10_gets_426_and_missing_host_400() {
    let (ups, proxy) = setup().await;
    let r = raw_http1(
        proxy.ingress(),
        b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(r.status(), 426, "{}", r.text);
    assert_eq!(r.body(), "Upgrade Required");
    assert!(r.closed);
    let r = raw_http1(
        proxy.ingress(),
        b"GET / HTTP/1.1\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(r.status(), 400, "{}", r.text);
    assert_eq!(r.body(), "");
    assert!(ups.echo.requests().is_empty());
}
