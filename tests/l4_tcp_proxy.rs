//! tcp_proxy on its own: copying, half-close, resets, connect failures, idle timeout,
//! backpressure and config errors, over real sockets on 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod l4_support;

use l4_support::*;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn yaml(upstream: u16, listener_extra: &str, tcp_extra: &str) -> String {
    bootstrap(&[], upstream, closed_port(), listener_extra, tcp_extra)
}

#[tokio::test]
async fn copies_both_ways_with_half_close_in_each_order() {
    let up = Upstream::bind().await;
    let proxy = Proxy::start(&yaml(up.port(), "", "")).await;

    // Client half-closes first; the upstream keeps talking, then closes.
    let mut c = proxy.connect().await;
    let mut u = up.accept().await;
    write(&mut c, b"hello").await;
    fin(&mut c).await;
    let (got, end) = read_to_end(&mut u).await;
    assert_eq!((got.as_slice(), end), (&b"hello"[..], Ending::Fin));
    write(&mut u, b"still here").await;
    fin(&mut u).await;
    let (got, end) = read_to_end(&mut c).await;
    assert_eq!((got.as_slice(), end), (&b"still here"[..], Ending::Fin));

    // Upstream half-closes first; the client keeps talking.
    let mut c = proxy.connect().await;
    let mut u = up.accept().await;
    write(&mut u, b"greeting").await;
    fin(&mut u).await;
    let (got, end) = read_to_end(&mut c).await;
    assert_eq!((got.as_slice(), end), (&b"greeting"[..], Ending::Fin));
    write(&mut c, b"more").await;
    fin(&mut c).await;
    let (got, end) = read_to_end(&mut u).await;
    assert_eq!((got.as_slice(), end), (&b"more"[..], Ending::Fin));

    proxy.wait_closed(2).await;
    assert_eq!(proxy.counter("tcp.tcp.downstream_cx_total"), 2);
    assert_eq!(proxy.counter("tcp.tcp.downstream_cx_rx_bytes_total"), 9);
    assert_eq!(proxy.counter("tcp.tcp.downstream_cx_tx_bytes_total"), 18);
    assert_eq!(
        proxy.counter("cluster.upstream.upstream_cx_rx_bytes_total"),
        18
    );
    // Registered up front, as Envoy shows them.
    assert_eq!(proxy.stats.get("tcp.tcp.idle_timeout"), Some(0));
    assert_eq!(
        proxy
            .stats
            .get("tcp.tcp.downstream_flow_control_paused_reading_total"),
        Some(0)
    );
}

#[tokio::test]
async fn ten_mib_each_way_intact() {
    let up = Upstream::bind().await;
    let proxy = Proxy::start(&yaml(up.port(), "", "")).await;
    let data: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let want = Sha256::digest(&data);
    let c = proxy.connect().await;
    let u = up.accept().await;
    let (mut cr, mut cw) = c.into_split();
    let (mut ur, mut uw) = u.into_split();
    let d1 = data.clone();
    let d2 = data.clone();
    let t1 = tokio::spawn(async move {
        cw.write_all(&d1).await.expect("client write");
        cw.shutdown().await.expect("fin");
    });
    let t2 = tokio::spawn(async move {
        uw.write_all(&d2).await.expect("upstream write");
        uw.shutdown().await.expect("fin");
    });
    let mut at_up = Vec::new();
    let mut at_client = Vec::new();
    let (r1, r2) = tokio::join!(
        tokio::io::AsyncReadExt::read_to_end(&mut ur, &mut at_up),
        tokio::io::AsyncReadExt::read_to_end(&mut cr, &mut at_client)
    );
    r1.expect("upstream read");
    r2.expect("client read");
    t1.await.expect("t1");
    t2.await.expect("t2");
    assert_eq!(Sha256::digest(&at_up), want);
    assert_eq!(Sha256::digest(&at_client), want);
}

#[tokio::test]
async fn resets_propagate_both_ways() {
    let up = Upstream::bind().await;
    let proxy = Proxy::start(&yaml(up.port(), "", "")).await;

    let mut c = proxy.connect().await;
    let mut u = up.accept().await;
    write(&mut c, b"x").await;
    assert_eq!(read_exact(&mut u, 1).await, b"x");
    reset(c);
    assert_eq!(
        read_to_end(&mut u).await.1,
        Ending::Rst,
        "client RST gives upstream RST"
    );

    let mut c = proxy.connect().await;
    let mut u = up.accept().await;
    write(&mut u, b"y").await;
    assert_eq!(read_exact(&mut c, 1).await, b"y");
    reset(u);
    assert_eq!(
        read_to_end(&mut c).await.1,
        Ending::Rst,
        "upstream RST gives client RST"
    );
}

#[tokio::test]
async fn upstream_refused_closes_the_client() {
    let port = closed_port();
    let proxy = Proxy::start(&yaml(port, "", "          max_connect_attempts: 2\n")).await;
    let mut c = proxy.connect().await;
    // Bytes sent before the connect failed stay unread: the close is an RST, as with Envoy (T1).
    write(&mut c, b"hello").await;
    assert_eq!(read_to_end(&mut c).await, (vec![], Ending::Rst));
    proxy
        .wait_counter("cluster.upstream.upstream_cx_connect_attempts_exceeded", 1)
        .await;
    assert_eq!(
        proxy.counter("cluster.upstream.upstream_cx_connect_fail"),
        2
    );
    assert_eq!(proxy.counter("cluster.upstream.upstream_cx_total"), 2);
    // Without unread bytes the client sees a plain FIN.
    let mut c = proxy.connect().await;
    assert_eq!(read_to_end(&mut c).await, (vec![], Ending::Fin));
}

#[tokio::test]
async fn unknown_cluster_counts_no_route() {
    let yaml = yaml(closed_port(), "", "").replace("cluster: upstream\n", "cluster: nope\n");
    let proxy = Proxy::start(&yaml).await;
    let mut c = proxy.connect().await;
    assert_eq!(read_to_end(&mut c).await, (vec![], Ending::Fin));
    proxy
        .wait_counter("tcp.tcp.downstream_cx_no_route", 1)
        .await;
}

#[tokio::test]
async fn idle_timeout_closes_both_sides() {
    let up = Upstream::bind().await;
    let proxy = Proxy::start(&yaml(up.port(), "", "          idle_timeout: 0.3s\n")).await;
    let mut c = proxy.connect().await;
    let mut u = up.accept().await;
    write(&mut c, b"a").await;
    assert_eq!(read_exact(&mut u, 1).await, b"a");
    let started = std::time::Instant::now();
    assert_eq!(read_to_end(&mut c).await, (vec![], Ending::Fin));
    assert_eq!(read_to_end(&mut u).await, (vec![], Ending::Fin));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.counter("tcp.tcp.idle_timeout"), 1);
}

/// A client pushing to an upstream that never reads: the proxy must stop reading once its
/// buffers are full, so the client's progress stalls (bounded by the buffer limit plus kernel
/// socket buffers) instead of the proxy's memory growing.
#[tokio::test]
async fn slow_upstream_stalls_a_fast_client() {
    let up = Upstream::bind().await;
    let proxy = Proxy::start(&yaml(
        up.port(),
        "    per_connection_buffer_limit_bytes: 65536\n",
        "",
    ))
    .await;
    let c = proxy.connect().await;
    let _u = up.accept().await; // never read
    let pushed = push_until_stalled(c).await;
    // Loopback kernel buffers can hold several MiB; the proxy itself holds at most 64 KiB.
    assert!(pushed < 48 * 1024 * 1024, "pushed {pushed} bytes");
    assert!(proxy.counter("tcp.tcp.downstream_flow_control_paused_reading_total") >= 1);
}

/// Writes until no progress is made for 500 ms; returns the bytes written.
pub async fn push_until_stalled(mut c: tokio::net::TcpStream) -> usize {
    let chunk = vec![b'x'; 64 * 1024];
    let mut pushed = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), c.write(&chunk)).await {
            Ok(Ok(n)) => pushed += n,
            Ok(Err(e)) => panic!("write failed after {pushed} bytes: {e}"),
            Err(_) => return pushed,
        }
        assert!(pushed < 512 * 1024 * 1024, "never stalled");
    }
}

#[tokio::test]
async fn config_errors_name_the_field() {
    let err = |y: String| {
        extproxy::config::parse(&y)
            .and_then(|b| extproxy::server::validate(&b, &Default::default()))
            .unwrap_err()
    };
    let e = err(yaml(1, "", "").replace("stat_prefix: tcp", "stat_prefix: ''"));
    assert!(
        e.to_string().contains(
            "TcpProxyValidationError.StatPrefix: value length must be at least 1 characters"
        ),
        "{e}"
    );
    let e = err(yaml(1, "", "          bogus_field: 1\n"));
    assert_eq!(
        e.path,
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.bogus_field",
        "{e}"
    );
    let e = err(yaml(1, "", &access_log("/dev/null", "%REQ(:PATH)%")));
    assert!(
        e.path
            .ends_with("typed_config.access_log[0].typed_config.log_format"),
        "{e}"
    );
    assert!(
        e.message
            .contains("unsupported command operator %REQ(:PATH)%"),
        "{e}"
    );
    let e = err(yaml(1, "", "          max_connect_attempts: 0\n"));
    assert!(e.to_string().contains("MaxConnectAttempts"), "{e}");
}

/// A tcp_proxy `access_log` entry writing `format` to `path`.
fn access_log(path: &str, format: &str) -> String {
    format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {path}\n              log_format: {{text_format_source: {{inline_string: \"{format}\\n\"}}}}\n"
    )
}

#[tokio::test]
async fn access_log_records_bytes_flags_and_close_types() {
    let dir = testenv::TempDir::new("l4-access-log").expect("tempdir");
    let log = dir.join("access.log");
    let fmt = "flags=%RESPONSE_FLAGS% rx=%BYTES_RECEIVED% tx=%BYTES_SENT% up=%UPSTREAM_HOST% dr=%DOWNSTREAM_LOCAL_CLOSE_REASON% dt=%DOWNSTREAM_DETECTED_CLOSE_TYPE% fail=%UPSTREAM_TRANSPORT_FAILURE_REASON%";
    let up = Upstream::bind().await;
    let proxy = Proxy::start(&yaml(
        up.port(),
        "",
        &access_log(&log.display().to_string(), fmt),
    ))
    .await;
    let mut c = proxy.connect().await;
    let mut u = up.accept().await;
    write(&mut c, b"hello").await;
    fin(&mut c).await;
    assert_eq!(read_to_end(&mut u).await.0, b"hello");
    write(&mut u, b"hi").await;
    fin(&mut u).await;
    assert_eq!(read_to_end(&mut c).await, (b"hi".to_vec(), Ending::Fin));
    proxy.wait_closed(1).await;
    let c = proxy.connect().await;
    let u = up.accept().await;
    reset(c);
    drop(u);
    proxy.wait_closed(2).await;
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "flags=- rx=5 tx=2 up=127.0.0.1:{} dr=- dt=Normal fail=-",
            up.port()
        )
    );
    assert!(lines[1].contains("dt=RemoteReset"), "{text}");

    // A refused upstream: Envoy's flags and failure reason.
    let refused = closed_port();
    let log2 = dir.join("refused.log");
    let proxy = Proxy::start(&yaml(
        refused,
        "",
        &access_log(&log2.display().to_string(), fmt),
    ))
    .await;
    let mut c = proxy.connect().await;
    assert_eq!(read_to_end(&mut c).await.0, b"");
    proxy
        .wait_counter("cluster.upstream.upstream_cx_connect_attempts_exceeded", 1)
        .await;
    proxy.wait_closed(1).await;
    let text = std::fs::read_to_string(&log2).expect("log");
    assert_eq!(
        text.trim_end(),
        "flags=UF,URX rx=0 tx=0 up=- dr=tcp_initializion_failure:0 dt=Normal fail=delayed_connect_error:_Connection_refused"
    );
}
