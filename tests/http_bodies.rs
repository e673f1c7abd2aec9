//! Bodies, trailers and connection reuse through the HCM and the router's pools.
#![allow(clippy::unwrap_used)]

mod http_support;

use bytes::Bytes;
use http_support::{TestProxy, Upstreams};
use sha2::{Digest, Sha256};
use std::time::Duration;
use testenv::{HttpVersion, TestRequest};

const VERSIONS: [HttpVersion; 2] = [HttpVersion::Http1, HttpVersion::Http2];

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

#[tokio::test]
async fn bodies_from_empty_to_10_mib_arrive_intact_both_ways() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&ups.basic_yaml("AUTO")).await;
    for v in VERSIONS {
        for prefix in ["/", "/h2/"] {
            for len in [0usize, 1, 16 * 1024, 1024 * 1024 + 7, 10 * 1024 * 1024] {
                let body = pattern(len);
                let mut req = TestRequest::post(&format!("{prefix}up"), body.clone())
                    .header("x-echo-mode", "raw");
                req.timeout = Duration::from_secs(60);
                let resp = req.send(proxy.ingress(), v).await.unwrap();
                assert_eq!(resp.status, 200, "{v:?} {prefix} {len}");
                assert_eq!(resp.body.len(), len, "{v:?} {prefix}");
                assert_eq!(sha(&resp.body), sha(&body), "{v:?} {prefix} {len}");
                assert_eq!(ups.echo.last_request().body.len(), len);
            }
        }
    }
}

#[tokio::test]
async fn chunked_streams_and_trailers_pass_through() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&ups.basic_yaml("AUTO")).await;
    for v in VERSIONS {
        for prefix in ["/", "/h2/"] {
            let resp = TestRequest::new("POST", &format!("{prefix}t"))
                .chunked(&["ab", "cd", "ef"], Duration::from_millis(20))
                .header("te", "trailers")
                .trailer("x-req-trailer", "1")
                .header("x-echo-mode", "raw")
                .header("x-echo-chunks", "3")
                .header("x-echo-trailers", "x-resp-trailer=2")
                .send(proxy.ingress(), v)
                .await
                .unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body, "abcdef");
            assert_eq!(resp.header("content-length"), None);
            let seen = ups.echo.last_request();
            assert_eq!(seen.body, "abcdef");
            if v == HttpVersion::Http2 && prefix == "/h2/" {
                assert_eq!(
                    seen.trailers.get("x-req-trailer").map(|v| v[0].as_str()),
                    Some("1"),
                    "{v:?} {prefix}"
                );
                assert_eq!(
                    resp.trailers.get("x-resp-trailer").map(|v| v.as_bytes()),
                    Some(&b"2"[..]),
                    "{v:?} {prefix}"
                );
            }
        }
    }
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&ups.basic_yaml("AUTO")).await;
    for i in 0..5 {
        let resp = TestRequest::post("/reuse", format!("n{i}"))
            .send(proxy.ingress(), HttpVersion::Http1)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        let resp = TestRequest::get("/h2/reuse")
            .send(proxy.ingress(), HttpVersion::Http2)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
    }
    assert_eq!(
        proxy.stat("cluster.upstream.upstream_cx_total"),
        1,
        "HTTP/1.1 keep-alive reuse"
    );
    assert_eq!(
        proxy.stat("cluster.upstream_h2.upstream_cx_total"),
        1,
        "HTTP/2 multiplexing"
    );
    assert_eq!(proxy.stat("cluster.upstream.upstream_rq_total"), 5);
    // Concurrent HTTP/2 requests share the single upstream connection.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = proxy.ingress();
        tasks.push(tokio::spawn(async move {
            TestRequest::get("/h2/c")
                .send(addr, HttpVersion::Http2)
                .await
                .map(|r| r.status)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert_eq!(proxy.stat("cluster.upstream_h2.upstream_cx_total"), 1);
}

#[tokio::test]
async fn downstream_keep_alive_serves_many_requests_on_one_connection() {
    let ups = Upstreams::start().await;
    let proxy = TestProxy::start(&ups.basic_yaml("HTTP1")).await;
    let mut reqs = Vec::new();
    for i in 0..3 {
        reqs.extend_from_slice(
            format!("GET /k{i} HTTP/1.1\r\nHost: example.com\r\n\r\n").as_bytes(),
        );
    }
    let r = http_support::raw_http1(proxy.ingress(), &reqs, Duration::from_millis(500)).await;
    assert_eq!(r.text.matches("HTTP/1.1 200 OK").count(), 3, "{}", r.text);
    assert!(!r.closed, "keep-alive");
    assert_eq!(proxy.stat("http.ingress_http.downstream_cx_total"), 1);
    assert_eq!(ups.echo.requests().len(), 3);
}

#[tokio::test]
async fn upstream_reset_mid_response_resets_downstream() {
    // An upstream that sends headers and part of a body, then closes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                .await;
            drop(s);
        }
    });
    let ups = Upstreams::start().await;
    let yaml = testenv::render(
        http_support::BASIC_YAML,
        &[
            ("UPSTREAM_PORT", &port.to_string()),
            ("DEAD_PORT", &ups.dead_port.to_string()),
            ("BLACKHOLE_PORT", &ups.blackhole.addr.port().to_string()),
            ("CODEC", "AUTO"),
        ],
    );
    let proxy = TestProxy::start(&yaml).await;
    for v in VERSIONS {
        let r = TestRequest::get("/x").send(proxy.ingress(), v).await;
        assert!(
            r.is_err(),
            "{v:?}: the client must see the reset, got {r:?}"
        );
    }
}
