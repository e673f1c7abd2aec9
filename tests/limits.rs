//! Resource limits through real listeners: cluster `circuit_breakers` in the router's pool,
//! tcp_proxy and ext_proc side streams; the connection_limit network filter; 1,000 concurrent
//! connections through ext_proc with the defaults; and differential runs against Envoy 1.40.
#![allow(clippy::unwrap_used)]

#[path = "http_support/mod.rs"]
mod http_support;
#[path = "l4_support/mod.rs"]
mod l4_support;
#[path = "limits_support/mod.rs"]
mod limits_support;

use http_support::TestProxy;
use limits_support::*;
use std::collections::BTreeMap;
use std::time::Duration;
use testenv::{HttpVersion, ProxyProcess, TestRequest, TestResponse};
use tokio::net::TcpStream;

const CB: &str = "cluster.upstream.circuit_breakers.default";

async fn get(addr: std::net::SocketAddr, path: &str) -> TestResponse {
    TestRequest::get(path)
        .send(addr, HttpVersion::Http1)
        .await
        .unwrap()
}

#[tokio::test]
async fn router_overflow_is_envoys_503_and_counts() {
    let up = HeldUpstream::start().await;
    let yaml = http_yaml(
        up.addr.port(),
        "max_connections: 1, max_pending_requests: 1, track_remaining: true",
        None,
    );
    let proxy = TestProxy::start(&yaml).await;
    let addr = proxy.addr("http");
    let stat = |n: &str| proxy.stat(&format!("{CB}.{n}"));
    assert_eq!(
        (
            stat("remaining_cx"),
            stat("remaining_pending"),
            stat("remaining_rq")
        ),
        (1, 1, 1024)
    );

    // A holds the only connection; B waits for it (pending); C finds the pending queue full.
    let a = tokio::spawn(get(addr, "/a"));
    up.wait_arrived(1).await;
    let b = tokio::spawn(get(addr, "/b"));
    proxy
        .wait_stat("cluster.upstream.upstream_cx_overflow", 1)
        .await;
    assert_eq!(
        (stat("cx_open"), stat("rq_pending_open"), stat("rq_open")),
        (1, 1, 0)
    );
    assert_eq!(
        (
            stat("remaining_cx"),
            stat("remaining_pending"),
            stat("remaining_rq")
        ),
        (0, 0, 1023)
    );
    let c = get(addr, "/c").await;
    assert_eq!(c.status, 503);
    assert_eq!(
        c.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
    assert_eq!(c.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(
        proxy.stat("cluster.upstream.upstream_rq_pending_overflow"),
        1
    );
    assert_eq!(proxy.stat("cluster.upstream.upstream_rq_503"), 1);

    up.release(2);
    assert_eq!(a.await.unwrap().status, 200);
    assert_eq!(b.await.unwrap().status, 200);
    assert_eq!(up.arrived(), 2);
    assert_eq!(up.connections(), 1, "B reused A's connection");
    until("pending and request gauges back", || {
        stat("rq_pending_open") == 0
            && stat("remaining_pending") == 1
            && stat("remaining_rq") == 1024
    })
    .await;
    // The connection stays open for reuse, so the connection breaker stays at its limit (Envoy too).
    assert_eq!((stat("cx_open"), stat("remaining_cx")), (1, 0));
    assert_eq!(proxy.stat("cluster.upstream.upstream_cx_overflow"), 1);
    assert_eq!(proxy.stat("cluster.upstream.upstream_rq_total"), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn suppress_envoy_headers_drops_x_envoy_overloaded() {
    let up = HeldUpstream::start().await;
    let yaml = http_yaml(
        up.addr.port(),
        "max_connections: 1, max_pending_requests: 1",
        None,
    )
    .replace(
        "router.v3.Router}",
        "router.v3.Router, suppress_envoy_headers: true}",
    );
    let proxy = TestProxy::start(&yaml).await;
    let addr = proxy.addr("http");
    let a = tokio::spawn(get(addr, "/a"));
    up.wait_arrived(1).await;
    let b = tokio::spawn(get(addr, "/b"));
    proxy
        .wait_stat("cluster.upstream.upstream_cx_overflow", 1)
        .await;
    let c = get(addr, "/c").await;
    assert_eq!(c.status, 503);
    assert_eq!(c.header("x-envoy-overloaded"), None);
    up.release(2);
    assert_eq!(a.await.unwrap().status, 200);
    assert_eq!(b.await.unwrap().status, 200);
}

#[tokio::test]
async fn http2_router_overflow_at_max_requests() {
    let echo = testenv::echo_http_upstream().await;
    let yaml = upstream_http2(&http_yaml(
        echo.addr().port(),
        "max_requests: 1, track_remaining: true",
        None,
    ));
    let proxy = TestProxy::start(&yaml).await;
    let addr = proxy.addr("http");
    let stat = |n: &str| proxy.stat(&format!("{CB}.{n}"));
    // A's response streams for ~2 s (100 chunks, 20 ms apart), holding the only request unit.
    let slow = TestRequest::get("/a").header("x-echo-chunks", "100");
    let a = tokio::spawn(async move { slow.send(addr, HttpVersion::Http1).await });
    until("A active", || stat("rq_open") == 1).await;
    assert_eq!(stat("remaining_rq"), 0);
    let b = get(addr, "/b").await;
    assert_eq!(b.status, 503);
    assert_eq!(
        b.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
    assert_eq!(b.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(
        proxy.stat("cluster.upstream.upstream_rq_active_overflow"),
        1
    );
    assert_eq!(
        proxy.stat("cluster.upstream.upstream_rq_pending_overflow"),
        0
    );
    assert_eq!(a.await.unwrap().unwrap().status, 200);
    until("the request unit back", || {
        stat("rq_open") == 0 && stat("remaining_rq") == 1
    })
    .await;
    assert_eq!(get(addr, "/c").await.status, 200);
    assert_eq!(stat("cx_open"), 0, "one HTTP/2 connection of 1024");
}

#[tokio::test]
async fn tcp_proxy_overflow_closes_the_extra_connection() {
    let echo = testenv::tcp_echo_upstream().await;
    let proxy = TestProxy::start(&tcp_yaml(
        echo.addr().port(),
        "max_connections: 1, track_remaining: true",
        None,
    ))
    .await;
    let addr = proxy.addr("tcp");
    let mut a = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_roundtrip(&mut a, b"one").await, b"one");
    assert_eq!(
        (
            proxy.stat(&format!("{CB}.cx_open")),
            proxy.stat(&format!("{CB}.remaining_cx"))
        ),
        (1, 0)
    );
    assert_eq!(
        proxy.stat(&format!("{CB}.remaining_rq")),
        1023,
        "a proxied connection is also a request"
    );

    let mut b = TcpStream::connect(addr).await.unwrap();
    expect_closed(&mut b).await;
    assert_eq!(proxy.stat("cluster.upstream.upstream_cx_overflow"), 1);
    assert_eq!(
        proxy.stat("cluster.upstream.upstream_cx_total"),
        1,
        "no upstream connect for the refused one"
    );

    drop(a);
    until("the connection unit back", || {
        proxy.stat(&format!("{CB}.cx_open")) == 0
    })
    .await;
    assert_eq!(
        (
            proxy.stat(&format!("{CB}.remaining_cx")),
            proxy.stat(&format!("{CB}.remaining_rq"))
        ),
        (1, 1024)
    );
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_roundtrip(&mut c, b"three").await, b"three");
}

/// Side streams at the processor cluster's `max_requests`: the extra request's stream fails to
/// open, and ext_proc handles that as any stream error.
async fn side_stream_overflow(fail_open: bool) -> TestResponse {
    let echo = testenv::echo_http_upstream().await;
    let processor = HeldProcessor::start(true).await;
    let ep = ExtProc {
        port: processor.addr.port(),
        fail_open,
        thresholds: "max_requests: 1, track_remaining: true",
    };
    let proxy = TestProxy::start(&http_yaml(echo.addr().port(), "", Some(&ep))).await;
    let addr = proxy.addr("http");
    let pcb = "cluster.processor.circuit_breakers.default";
    assert_eq!(proxy.stat(&format!("{pcb}.remaining_rq")), 1);

    let a = tokio::spawn(get(addr, "/a"));
    until("the first side stream", || processor.started() == 1).await;
    assert_eq!(
        (
            proxy.stat(&format!("{pcb}.rq_open")),
            proxy.stat(&format!("{pcb}.remaining_rq"))
        ),
        (1, 0)
    );
    let b = get(addr, "/b").await;
    assert_eq!(
        proxy.stat("cluster.processor.upstream_rq_active_overflow"),
        1
    );
    assert_eq!(
        processor.started(),
        1,
        "the refused stream never reached the processor"
    );

    processor.release(1);
    assert_eq!(a.await.unwrap().status, 200);
    until("the side stream's unit back", || {
        proxy.stat(&format!("{pcb}.rq_open")) == 0
    })
    .await;
    assert_eq!(proxy.stat(&format!("{pcb}.remaining_rq")), 1);
    until("the processor's stream closed", || processor.open() == 0).await;
    proxy.stop().await;
    b
}

#[tokio::test]
async fn side_stream_overflow_fail_closed_is_500() {
    let b = side_stream_overflow(false).await;
    assert_eq!(b.status, 500);
}

#[tokio::test]
async fn side_stream_overflow_fail_open_continues() {
    let b = side_stream_overflow(true).await;
    assert_eq!(b.status, 200);
}

#[tokio::test]
async fn connection_limit_closes_the_extra_connection() {
    let echo = testenv::tcp_echo_upstream().await;
    let proxy = TestProxy::start(&tcp_yaml(
        echo.addr().port(),
        "",
        Some("max_connections: 1"),
    ))
    .await;
    let addr = proxy.addr("tcp");
    assert_eq!(proxy.stat("connection_limit.cl.active_connections"), 0);
    assert!(proxy.has_stat("connection_limit.cl.limited_connections"));

    let mut a = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_roundtrip(&mut a, b"a").await, b"a");
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert_eq!(expect_closed(&mut b).await, Closed::Fin);
    assert_eq!(proxy.stat("connection_limit.cl.limited_connections"), 1);
    // The refused connection counts until it is closed (as in Envoy), then only A.
    until("the refused slot back", || {
        proxy.stat("connection_limit.cl.active_connections") == 1
    })
    .await;
    assert_eq!(
        proxy.stat("cluster.upstream.upstream_cx_total"),
        1,
        "the refused connection went nowhere"
    );

    drop(a);
    until("the slot back", || {
        proxy.stat("connection_limit.cl.active_connections") == 0
    })
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_roundtrip(&mut c, b"c").await, b"c");
}

#[tokio::test]
async fn connection_limit_delay_holds_then_closes() {
    let echo = testenv::tcp_echo_upstream().await;
    let proxy = TestProxy::start(&tcp_yaml(
        echo.addr().port(),
        "",
        Some("max_connections: 1\ndelay: 1s"),
    ))
    .await;
    let addr = proxy.addr("tcp");
    let mut a = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_roundtrip(&mut a, b"a").await, b"a");
    let started = std::time::Instant::now();
    let mut b = TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut b, b"dropped")
        .await
        .unwrap();
    assert_eq!(
        expect_closed(&mut b).await,
        Closed::Fin,
        "what the client sent was read, so FIN, not RST"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.stat("connection_limit.cl.limited_connections"), 1);

    // While a refused connection waits out its delay it counts (Envoy): with A gone, D is
    // still refused because C is being held.
    let mut c = TcpStream::connect(addr).await.unwrap();
    proxy
        .wait_stat("connection_limit.cl.limited_connections", 2)
        .await;
    assert_eq!(
        proxy.stat("connection_limit.cl.active_connections"),
        2,
        "A and the refused C"
    );
    drop(a);
    until("A's slot back", || {
        proxy.stat("connection_limit.cl.active_connections") == 1
    })
    .await;
    let mut d = TcpStream::connect(addr).await.unwrap();
    assert_eq!(expect_closed(&mut d).await, Closed::Fin);
    assert_eq!(proxy.stat("connection_limit.cl.limited_connections"), 3);
    assert_eq!(expect_closed(&mut c).await, Closed::Fin);
    until("all slots back", || {
        proxy.stat("connection_limit.cl.active_connections") == 0
    })
    .await;
}

#[tokio::test]
async fn limit_config_errors_name_the_path() {
    let cases = [
        (
            tcp_yaml(1, "", Some("max_connections: 0")),
            "filters[0].typed_config.max_connections",
        ),
        (
            tcp_yaml(1, "", Some("max_connections: 1\nmax_conns: 2")),
            "filters[0].typed_config",
        ),
        (
            tcp_yaml(1, "", Some("delay: 1s")),
            "filters[0].typed_config.max_connections",
        ),
        (
            tcp_yaml(1, "max_connections: 1, retry_budget: {}", None),
            "clusters[0].circuit_breakers.thresholds[0].retry_budget",
        ),
        (tcp_yaml(1, "priority: LOW", None), "clusters[0]"),
    ];
    for (yaml, path) in cases {
        let err = match extproxy::config::parse(&yaml) {
            Err(e) => e.to_string(),
            Ok(b) => match extproxy::Server::bind(&b, extproxy::Options::default()).await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted:\n{yaml}"),
            },
        };
        assert!(err.contains(path), "{err} should name {path}");
    }
    // HIGH thresholds are accepted (and only shown).
    let yaml = tcp_yaml(
        1,
        "priority: HIGH, max_connections: 7, track_remaining: true",
        None,
    );
    let proxy = TestProxy::start(&yaml).await;
    assert_eq!(
        proxy.stat("cluster.upstream.circuit_breakers.high.remaining_cx"),
        7
    );
    assert!(!proxy.has_stat(&format!("{CB}.remaining_cx")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_through_ext_proc_with_defaults() {
    let echo = testenv::echo_http_upstream().await;
    let processor = HeldProcessor::start(false).await;
    let ep = ExtProc {
        port: processor.addr.port(),
        fail_open: false,
        thresholds: "",
    };
    let proxy = TestProxy::start(&http_yaml(echo.addr().port(), "", Some(&ep))).await;
    let addr = proxy.addr("http");
    // Every connection is open (TCP-connected) before any request is sent, so all 1,000 are
    // concurrent at the proxy.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await.unwrap();
                barrier.wait().await;
                let io = hyper_util::rt::TokioIo::new(stream);
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                let req = http::Request::get(format!("/r{i}"))
                    .header("host", "limits.test")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                send.send_request(req)
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 1000)]));
    assert_eq!(processor.started(), 1000);
    for c in ["upstream", "processor"] {
        for s in [
            "upstream_cx_overflow",
            "upstream_rq_pending_overflow",
            "upstream_rq_active_overflow",
        ] {
            assert_eq!(
                proxy.stat(&format!("cluster.{c}.{s}")),
                0,
                "cluster.{c}.{s}"
            );
        }
        until("gauges back to zero", || {
            ["rq_open", "rq_pending_open", "cx_open"]
                .iter()
                .all(|g| proxy.stat(&format!("cluster.{c}.circuit_breakers.default.{g}")) == 0)
        })
        .await;
    }
    proxy.stop().await;
}

// === differential: the same YAML through Envoy 1.40 and extproxy's binary ===

async fn start(envoy: bool, yaml: &str) -> ProxyProcess {
    let p = if envoy {
        ProxyProcess::envoy(yaml).await
    } else {
        ProxyProcess::start(env!("CARGO_BIN_EXE_extproxy").as_ref(), yaml, &[]).await
    };
    p.unwrap_or_else(|e| panic!("start (envoy: {envoy}): {e:#}"))
}

/// The stats whose names match one of `prefixes` (histograms and `remaining_cx_pools`, which
/// `/stats` parsing cannot hold in an i64, aside).
async fn stats_with(p: &ProxyProcess, names: &[&str]) -> BTreeMap<String, i64> {
    let all = p.stats().await;
    names
        .iter()
        .map(|n| (n.to_string(), all.get(*n).copied().unwrap_or(-1)))
        .collect()
}

const ROUTER_STATS: &[&str] = &[
    "cluster.upstream.circuit_breakers.default.cx_open",
    "cluster.upstream.circuit_breakers.default.cx_pool_open",
    "cluster.upstream.circuit_breakers.default.rq_open",
    "cluster.upstream.circuit_breakers.default.rq_pending_open",
    "cluster.upstream.circuit_breakers.default.rq_retry_open",
    "cluster.upstream.circuit_breakers.default.remaining_cx",
    "cluster.upstream.circuit_breakers.default.remaining_pending",
    "cluster.upstream.circuit_breakers.default.remaining_rq",
    "cluster.upstream.circuit_breakers.default.remaining_retries",
    "cluster.upstream.circuit_breakers.high.cx_open",
    "cluster.upstream.circuit_breakers.high.rq_open",
    "cluster.upstream.upstream_cx_overflow",
    "cluster.upstream.upstream_cx_pool_overflow",
    "cluster.upstream.upstream_rq_pending_overflow",
    "cluster.upstream.upstream_rq_active_overflow",
    "cluster.upstream.upstream_rq_retry_overflow",
    "cluster.upstream.upstream_rq_503",
    "cluster.upstream.upstream_rq_total",
];

/// Router overflow at max_connections 1 / max_pending_requests 1: what A, B, C got, and the
/// stats while held and after.
async fn router_overflow_run(
    envoy: bool,
) -> (Vec<String>, BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let up = HeldUpstream::start().await;
    let yaml = http_yaml(
        up.addr.port(),
        "max_connections: 1, max_pending_requests: 1, track_remaining: true",
        None,
    );
    let p = start(envoy, &yaml).await;
    let addr = p.listener_addr("http").await;
    let a = tokio::spawn(get(addr, "/a"));
    up.wait_arrived(1).await;
    let b = tokio::spawn(get(addr, "/b"));
    p.wait_counter("cluster.upstream.upstream_cx_overflow", 1, WAIT)
        .await;
    let c = get(addr, "/c").await;
    let held = stats_with(&p, ROUTER_STATS).await;
    up.release(2);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    p.wait_counter(
        "cluster.upstream.circuit_breakers.default.remaining_pending",
        1,
        WAIT,
    )
    .await;
    p.wait_counter(
        "cluster.upstream.circuit_breakers.default.remaining_rq",
        1024,
        WAIT,
    )
    .await;
    let after = stats_with(&p, ROUTER_STATS).await;
    let show = |r: &TestResponse| {
        format!(
            "{} {:?} overloaded={:?}",
            r.status,
            r.text(),
            r.header("x-envoy-overloaded")
        )
    };
    (vec![show(&a), show(&b), show(&c)], held, after)
}

#[tokio::test]
async fn differential_router_overflow() {
    let envoy = router_overflow_run(true).await;
    let ours = router_overflow_run(false).await;
    assert_eq!(envoy.0, ours.0, "responses");
    assert_eq!(envoy.1, ours.1, "stats while held");
    assert_eq!(envoy.2, ours.2, "stats after");
    assert!(envoy.0[2].starts_with("503 "), "{:?}", envoy.0);
}

/// connection_limit at 1: A is served, B and C are closed; the stats during and after.
async fn connection_limit_run(
    envoy: bool,
) -> (Vec<String>, BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let echo = testenv::tcp_echo_upstream().await;
    let p = start(
        envoy,
        &tcp_yaml(echo.addr().port(), "", Some("max_connections: 1")),
    )
    .await;
    let addr = p.listener_addr("tcp").await;
    let names = [
        "connection_limit.cl.active_connections",
        "connection_limit.cl.limited_connections",
        "cluster.upstream.upstream_cx_total",
    ];
    let mut seen = Vec::new();
    let mut a = TcpStream::connect(addr).await.unwrap();
    seen.push(String::from_utf8_lossy(&echo_roundtrip(&mut a, b"a").await).into_owned());
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        seen.push(format!("{:?}", expect_closed(&mut s).await));
    }
    // Refused connections count until Envoy has processed their close, which may trail the
    // client's FIN: wait for the gauge to settle.
    settle(&p, "connection_limit.cl.active_connections", 1).await;
    let during = stats_with(&p, &names).await;
    drop(a);
    settle(&p, "connection_limit.cl.active_connections", 0).await;
    (seen, during, stats_with(&p, &names).await)
}

async fn settle(p: &ProxyProcess, name: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while p.counter(name).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} = {}, not {want}",
            p.counter(name).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn differential_connection_limit() {
    let envoy = connection_limit_run(true).await;
    let ours = connection_limit_run(false).await;
    assert_eq!(envoy, ours);
    assert_eq!(envoy.1["connection_limit.cl.limited_connections"], 2);
}

const GLOBAL_OVERFLOW: &str = "listener.127.0.0.1_0.downstream_global_cx_overflow";

#[tokio::test]
async fn global_downstream_limit_closes_at_accept() {
    let echo = testenv::tcp_echo_upstream().await;
    let proxy = TestProxy::start(&with_global_limit(
        &tcp_yaml(echo.addr().port(), "", None),
        2,
    ))
    .await;
    let addr = proxy.addr("tcp");
    assert!(proxy.has_stat(GLOBAL_OVERFLOW));
    assert!(proxy
        .has_stat("overload.envoy.resource_monitors.global_downstream_max_connections.pressure"));
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_roundtrip(&mut a, b"a").await, b"a");
    assert_eq!(echo_roundtrip(&mut b, b"b").await, b"b");
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(expect_closed(&mut c).await, Closed::Fin);
    assert_eq!(proxy.stat(GLOBAL_OVERFLOW), 1);
    assert_eq!(
        proxy.stat("listener.127.0.0.1_0.downstream_cx_total"),
        2,
        "the refused one is not a listener connection"
    );
    drop(a);
    until("A closed", || {
        proxy.stat("listener.127.0.0.1_0.downstream_cx_active") == 1
    })
    .await;
    let mut d = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_roundtrip(&mut d, b"d").await, b"d");
    // The admin listener does not count.
    let admin = proxy.admin().unwrap();
    assert_eq!(get(admin, "/ready").await.status, 200);
}

async fn global_limit_run(envoy: bool) -> (Vec<String>, BTreeMap<String, i64>) {
    let echo = testenv::tcp_echo_upstream().await;
    let p = start(
        envoy,
        &with_global_limit(&tcp_yaml(echo.addr().port(), "", None), 2),
    )
    .await;
    let addr = p.listener_addr("tcp").await;
    let mut seen = Vec::new();
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    seen.push(String::from_utf8_lossy(&echo_roundtrip(&mut a, b"a").await).into_owned());
    seen.push(String::from_utf8_lossy(&echo_roundtrip(&mut b, b"b").await).into_owned());
    let mut c = TcpStream::connect(addr).await.unwrap();
    seen.push(format!("{:?}", expect_closed(&mut c).await));
    // Under load Envoy's counter may trail the client's FIN.
    p.wait_counter(GLOBAL_OVERFLOW, 1, WAIT).await;
    let names = [
        GLOBAL_OVERFLOW,
        "listener.127.0.0.1_0.downstream_cx_total",
        "listener.127.0.0.1_0.downstream_cx_active",
        "listener.admin.downstream_global_cx_overflow",
    ];
    (seen, stats_with(&p, &names).await)
}

#[tokio::test]
async fn differential_global_downstream_limit() {
    let envoy = global_limit_run(true).await;
    let ours = global_limit_run(false).await;
    assert_eq!(envoy.0, ours.0);
    assert_eq!(envoy.1[GLOBAL_OVERFLOW], 1, "{envoy:?}");
    // extproxy's admin is not a listener and has no listener stats.
    let without_admin = |m: &BTreeMap<String, i64>| {
        m.iter()
            .filter(|(k, _)| !k.starts_with("listener.admin"))
            .map(|(k, v)| (k.clone(), *v))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(without_admin(&envoy.1), without_admin(&ours.1));
}

/// Network ext_proc side streams at the processor cluster's `max_requests: 1`: the first
/// connection's stream is held by a silent processor; the second connection's stream overflows.
async fn network_side_stream_overflow(fail_open: bool) -> (Vec<u8>, l4_support::Ending) {
    let echo = testenv::tcp_echo_upstream().await;
    let processor = l4_support::RawProcessor::start(|_, _| {}).await;
    let extra = if fail_open {
        "failure_mode_allow: true"
    } else {
        ""
    };
    let yaml = l4_support::bootstrap(&[l4_support::ext_proc("ep", extra)], echo.addr().port(), processor.port(), "", "").replace(
        "  - name: processor\n    connect_timeout: 2s\n",
        "  - name: processor\n    connect_timeout: 2s\n    circuit_breakers: {thresholds: [{max_requests: 1, track_remaining: true}]}\n",
    );
    let proxy = l4_support::Proxy::start(&yaml).await;
    let pcb = "cluster.processor.circuit_breakers.default";
    let mut a = proxy.connect().await;
    l4_support::write(&mut a, b"a").await;
    processor.wait(|s| s.streams == 1).await;
    until("the held stream's unit", || {
        proxy.counter(&format!("{pcb}.remaining_rq")) == 0
    })
    .await;

    let mut b = proxy.connect().await;
    l4_support::write(&mut b, b"b").await;
    l4_support::fin(&mut b).await;
    let seen = l4_support::read_to_end(&mut b).await;
    assert_eq!(
        proxy.counter("cluster.processor.upstream_rq_active_overflow"),
        1
    );
    assert_eq!(
        processor.seen().streams,
        1,
        "the refused stream never reached the processor"
    );

    drop(a);
    until("the unit back", || {
        proxy.counter(&format!("{pcb}.rq_open")) == 0
            && proxy.counter(&format!("{pcb}.remaining_rq")) == 1
    })
    .await;
    seen
}

#[tokio::test]
async fn network_side_stream_overflow_fail_closed_closes() {
    let (bytes, _) = network_side_stream_overflow(false).await;
    assert!(bytes.is_empty(), "{bytes:?}");
}

#[tokio::test]
async fn network_side_stream_overflow_fail_open_passes() {
    let (bytes, ending) = network_side_stream_overflow(true).await;
    assert_eq!(bytes, b"b");
    assert_eq!(ending, l4_support::Ending::Fin);
}

const SIDE_STREAM_STATS: &[&str] = &[
    "cluster.processor.circuit_breakers.default.rq_open",
    "cluster.processor.circuit_breakers.default.remaining_rq",
    "cluster.processor.circuit_breakers.default.rq_pending_open",
    "cluster.processor.upstream_rq_active_overflow",
    "cluster.processor.upstream_rq_pending_overflow",
    "cluster.processor.upstream_cx_overflow",
];

/// HTTP ext_proc (fail-closed) at the processor cluster's `max_requests: 1`.
async fn side_stream_overflow_run(
    envoy: bool,
) -> (Vec<String>, BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let echo = testenv::echo_http_upstream().await;
    let processor = HeldProcessor::start(true).await;
    let ep = ExtProc {
        port: processor.addr.port(),
        fail_open: false,
        thresholds: "max_requests: 1, track_remaining: true",
    };
    let p = start(envoy, &http_yaml(echo.addr().port(), "", Some(&ep))).await;
    let addr = p.listener_addr("http").await;
    let a = tokio::spawn(get(addr, "/a"));
    until("the first side stream", || processor.started() == 1).await;
    settle(
        &p,
        "cluster.processor.circuit_breakers.default.remaining_rq",
        0,
    )
    .await;
    let b = get(addr, "/b").await;
    let held = stats_with(&p, SIDE_STREAM_STATS).await;
    processor.release(1);
    let a = a.await.unwrap();
    settle(
        &p,
        "cluster.processor.circuit_breakers.default.remaining_rq",
        1,
    )
    .await;
    let after = stats_with(&p, SIDE_STREAM_STATS).await;
    // A's body is the echo of its request (with a random x-request-id): compare its status.
    (
        vec![a.status.to_string(), format!("{} {:?}", b.status, b.text())],
        held,
        after,
    )
}

#[tokio::test]
async fn differential_side_stream_overflow() {
    let envoy = side_stream_overflow_run(true).await;
    let ours = side_stream_overflow_run(false).await;
    assert_eq!(envoy, ours);
    assert!(envoy.0[1].starts_with("500"), "{envoy:?}");
    assert_eq!(
        envoy.1["cluster.processor.upstream_rq_active_overflow"], 1,
        "{envoy:?}"
    );
}

/// `/stats/prometheus` lines of the counter and gauge families that start with one of
/// `prefixes`, sorted (Envoy lists counters, then gauges, then histograms; extproxy has no
/// histograms and sorts by name).
async fn prometheus_families(p: &ProxyProcess, prefixes: &[&str]) -> Vec<String> {
    let (status, body) = p.admin_get("/stats/prometheus").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let histograms: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    let mut lines: Vec<String> = body
        .lines()
        .filter(|l| {
            let name = l.strip_prefix("# TYPE ").unwrap_or(l);
            prefixes.iter().any(|p| name.starts_with(p))
                && !histograms.iter().any(|h| name.starts_with(h))
        })
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Envoy's tag extraction for `connection_limit.<stat_prefix>.*` (the prefix becomes
/// `envoy_connection_limit_prefix`) and the overload manager's stats, line for line.
#[tokio::test]
async fn differential_prometheus_connection_limit_and_overload() {
    let echo = testenv::tcp_echo_upstream().await;
    let yaml = with_global_limit(
        &tcp_yaml(echo.addr().port(), "", Some("max_connections: 1")),
        2,
    );
    let prefixes = ["envoy_connection_limit", "envoy_overload"];
    let envoy = prometheus_families(&start(true, &yaml).await, &prefixes).await;
    let ours = prometheus_families(&start(false, &yaml).await, &prefixes).await;
    assert!(
        envoy
            .iter()
            .any(|l| l.contains("envoy_connection_limit_prefix=\"cl\"")),
        "{envoy:#?}"
    );
    assert_eq!(envoy, ours);
}
