//! Malformed, smuggling and slow HTTP/1.1 requests: each gets Envoy's answer, nothing of it
//! reaches the upstream, and the connection is closed so nothing can be smuggled after it.
#![allow(clippy::unwrap_used)]

mod bad_input_support;
mod http_support;

use bad_input_support::{corpus, stricter_than_envoy, yaml, RecordingUpstream};
use http_support::{raw_http1, TestProxy};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn the_corpus_gets_envoys_answers_and_refused_requests_never_reach_the_upstream() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(up.addr, &[])).await;
    let mut refused: i64 = 0;
    let mut error_replies = 0;
    for c in corpus()
        .into_iter()
        .chain(stricter_than_envoy().into_iter().map(|mut c| {
            c.status = 400;
            c.forwarded = false;
            c
        }))
    {
        let before = up.received().len();
        // Refused requests are closed at once; accepted ones stay open until the wait ends.
        let r = raw_http1(proxy.ingress(), &c.bytes, Duration::from_millis(800)).await;
        assert_eq!(r.status(), c.status, "{}: {}", c.name, r.text);
        error_replies +=
            r.text.matches("HTTP/1.1 4").count() + r.text.matches("HTTP/1.1 5").count();
        if c.forwarded {
            assert!(up.received().len() > before, "{}: not forwarded", c.name);
            continue;
        }
        refused += 1;
        assert_eq!(
            up.received().len(),
            before,
            "{}: reached the upstream: {:?}",
            c.name,
            String::from_utf8_lossy(&up.received()[before..])
        );
        assert_eq!(
            r.header("connection").as_deref(),
            Some("close"),
            "{}",
            c.name
        );
        assert!(r.closed, "{}: connection left open", c.name);
        assert_eq!(r.header("server").as_deref(), Some("envoy"), "{}", c.name);
        // One response only: nothing after the refused request was parsed.
        assert_eq!(
            r.text.matches("HTTP/1.1 ").count(),
            1,
            "{}: {}",
            c.name,
            r.text
        );
    }
    assert!(
        !up.request_lines()
            .iter()
            .any(|l| l.contains("/smuggled") || l.starts_with("POST /y")),
        "{:?}",
        up.request_lines()
    );
    // Envoy counts each refusal as a request with a 4xx/5xx and (except the fragment) a codec
    // error.
    assert!(
        error_replies as i64 > refused,
        "the pipelined case adds one"
    );
    let counted =
        proxy.stat("http.bad.downstream_rq_4xx") + proxy.stat("http.bad.downstream_rq_5xx");
    assert_eq!(
        counted, error_replies as i64,
        "every refused request is counted"
    );
    assert_eq!(
        proxy.stat("http.bad.downstream_cx_protocol_error"),
        error_replies as i64 - 1
    );
    assert_eq!(
        proxy.stat("http.bad.downstream_rq_failed_path_normalization"),
        1
    );
}

#[tokio::test]
async fn cl_te_is_refused_with_envoys_counters() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(up.addr, &[])).await;
    let r = raw_http1(
        proxy.ingress(),
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.body(), "Bad Request");
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert!(r.closed);
    for (name, want) in [
        ("downstream_rq_total", 1),
        ("downstream_rq_http1_total", 1),
        ("downstream_rq_4xx", 1),
        ("downstream_rq_completed", 1),
        ("downstream_cx_protocol_error", 1),
        ("downstream_rq_2xx", 0),
    ] {
        assert_eq!(proxy.stat(&format!("http.bad.{name}")), want, "{name}");
    }
    assert_eq!(
        up.accepted(),
        0,
        "no upstream connection for a refused request"
    );
    assert_eq!(proxy.stat("cluster.upstream.upstream_rq_total"), 0);
}

#[tokio::test]
async fn allow_chunked_length_forwards_the_body_as_chunked() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(
        up.addr,
        &["http_protocol_options: {allow_chunked_length: true}"],
    ))
    .await;
    let r = raw_http1(proxy.ingress(), b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", WAIT).await;
    assert_eq!(r.status(), 200, "{}", r.text);
    let seen = String::from_utf8_lossy(&up.received()).to_ascii_lowercase();
    assert!(
        seen.contains("transfer-encoding: chunked") && !seen.contains("content-length"),
        "{seen}"
    );
    assert!(seen.contains("abc"), "{seen}");
}

#[tokio::test]
async fn pipelined_requests_before_a_refused_one_are_answered() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(up.addr, &[])).await;
    // Bodies of both framings, a chunk extension and a blank line between requests keep the
    // guard in step with hyper; the last request is refused.
    let bytes = [
        &b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\ndef\r\n0\r\n\r\n\r\n",
        b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nghi",
        bad_input_support::SMUGGLED,
    ]
    .concat();
    let r = raw_http1(proxy.ingress(), &bytes, WAIT).await;
    let statuses: Vec<&str> = r
        .text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &r.text[i + 9..i + 12])
        .collect();
    assert_eq!(
        statuses,
        ["200", "200", "200", "400"],
        "{}\n{}",
        r.text,
        String::from_utf8_lossy(&up.received())
    );
    assert!(r.closed);
    // (A body may run into the next request line: compare the request targets.)
    let targets: Vec<String> = up
        .request_lines()
        .iter()
        .filter_map(|l| l.split(' ').rev().nth(1).map(str::to_string))
        .collect();
    assert_eq!(targets, ["/a", "/b", "/c"]);
}

/// Sends `head` a byte every `gap` until the proxy answers or closes; returns what it said.
async fn trickle(addr: std::net::SocketAddr, head: &[u8], gap: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for b in head.iter().chain(std::iter::repeat(&b'b')) {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        match tokio::time::timeout(gap, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    // Whatever is still in flight.
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn slow_loris_heads_are_cut_with_envoys_408s() {
    let up = RecordingUpstream::start().await;
    // A head that never ends: a header value that keeps growing.
    let head = b"GET /x HTTP/1.1\r\nHost: a\r\nx-a: ";
    for (option, body, counter) in [
        (
            "request_headers_timeout: 0.4s",
            "request header timeout",
            "downstream_rq_header_timeout",
        ),
        (
            "request_timeout: 0.4s",
            "request timeout",
            "downstream_rq_timeout",
        ),
    ] {
        let proxy = TestProxy::start(&yaml(up.addr, &[option])).await;
        let start = tokio::time::Instant::now();
        let text = trickle(proxy.ingress(), head, Duration::from_millis(20)).await;
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{option}: {text}"
        );
        assert!(
            text.ends_with(&format!("\r\n\r\n{body}")),
            "{option}: {text}"
        );
        assert!(text.contains("connection: close\r\n"), "{option}: {text}");
        assert!(start.elapsed() < Duration::from_secs(3), "{option}");
        assert_eq!(proxy.stat(&format!("http.bad.{counter}")), 1, "{option}");
        assert_eq!(proxy.stat("http.bad.downstream_rq_4xx"), 1, "{option}");
        assert_eq!(
            proxy.stat("http.bad.downstream_cx_protocol_error"),
            0,
            "{option}"
        );
    }
    // A stalled head is cut by stream_idle_timeout.
    let proxy = TestProxy::start(&yaml(up.addr, &["stream_idle_timeout: 0.3s"])).await;
    let r = raw_http1(proxy.ingress(), b"GET /x HTTP/1.1\r\nHost: a", WAIT).await;
    assert_eq!(r.status(), 408, "{}", r.text);
    assert_eq!(r.body(), "stream timeout");
    assert!(r.closed);
    assert_eq!(proxy.stat("http.bad.downstream_rq_idle_timeout"), 1);
    assert_eq!(up.accepted(), 0);
}

#[tokio::test]
async fn a_slow_but_steady_head_within_the_timeout_is_served() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(
        up.addr,
        &["request_headers_timeout: 5s", "stream_idle_timeout: 1s"],
    ))
    .await;
    let head = b"GET /slow HTTP/1.1\r\nHost: a\r\nx-a: b\r\n\r\n";
    let mut s = TcpStream::connect(proxy.ingress()).await.unwrap();
    for b in head {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(up.request_lines(), ["GET /slow HTTP/1.1"]);
}
