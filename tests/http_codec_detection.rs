//! `codec_type: AUTO` picks the codec from the connection's first read, as Envoy 1.40 does
//! (`ConnectionManagerUtility::determineNextProtocol`): HTTP/2 when the bytes start with
//! `PRI * HTTP/2`, HTTP/1.1 otherwise, even when they are the start of the preface. A client
//! that pauses inside the preface is then an HTTP/1.1 request head in progress, which the
//! connection idle timeout spares. Compared with the real Envoy.
#![allow(clippy::unwrap_used)]

mod bad_input_support;
#[path = "http_support/mod.rs"]
mod http_support;

use bad_input_support::{yaml, RecordingUpstream};
use http_support::{Pair, TestProxy};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The connection idle timeout the scenarios run with.
const IDLE: &str = "common_http_protocol_options: {idle_timeout: 0.5s}";
/// How long the client pauses (well over the idle timeout).
const PAUSE: Duration = Duration::from_millis(1500);
/// How long to wait for an answer after the pause.
const WAIT: Duration = Duration::from_millis(1500);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the client saw.
#[derive(Debug, PartialEq)]
struct Seen {
    /// The proxy closed the connection during the pause.
    closed_in_pause: bool,
    /// What the proxy sent (after the pause, if it waited): the first line of an HTTP/1.1
    /// response, `<h2 SETTINGS>` for an HTTP/2 server preface, `""` for nothing.
    first: String,
    /// The proxy closed the connection after that.
    closed: bool,
}

/// Reads until the peer closes or `wait` passes; `true` if it closed.
async fn read_until_close(s: &mut TcpStream, buf: &mut Vec<u8>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Sends `first`, pauses, then sends `rest` (unless the proxy closed).
async fn run(addr: SocketAddr, first: &[u8], rest: &[u8]) -> Seen {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(first).await.unwrap();
    let mut buf = Vec::new();
    let closed_in_pause = read_until_close(&mut s, &mut buf, PAUSE).await;
    let mut closed = closed_in_pause;
    if !closed_in_pause {
        buf.clear();
        let _ = s.write_all(rest).await;
        closed = read_until_close(&mut s, &mut buf, WAIT).await;
    }
    let first = if buf.starts_with(b"HTTP/") {
        let text = String::from_utf8_lossy(&buf);
        text.lines().next().unwrap_or("").to_string()
    } else if buf.len() >= 9 && buf[3] == 0x4 {
        // A frame header of type SETTINGS: the server side of the HTTP/2 preface.
        "<h2 SETTINGS>".to_string()
    } else {
        format!("<{} other bytes>", buf.len())
    };
    Seen {
        closed_in_pause,
        first: if buf.is_empty() { String::new() } else { first },
        closed,
    }
}

/// The start of the HTTP/2 preface, too short for Envoy's check, then the rest.
async fn partial_preface(addr: SocketAddr) -> Seen {
    run(addr, &PREFACE[..8], &PREFACE[8..]).await
}

/// A byte that could start the preface, then the rest of an HTTP/1.1 request.
async fn p_then_post(addr: SocketAddr) -> Seen {
    run(
        addr,
        b"P",
        b"OST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n",
    )
    .await
}

/// Exactly `PRI * HTTP/2`: HTTP/2, whose codec has no stream yet, so the idle timeout applies.
async fn preface_prefix(addr: SocketAddr) -> Seen {
    run(addr, &PREFACE[..12], &PREFACE[12..]).await
}

#[tokio::test]
async fn a_partial_preface_is_an_http1_head_that_idle_timeout_spares() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(up.addr, &[IDLE])).await;
    let seen = partial_preface(proxy.ingress()).await;
    assert!(!seen.closed_in_pause, "{seen:?}");
    assert_eq!(proxy.stat("http.bad.downstream_cx_idle_timeout"), 0);
    assert_eq!(proxy.stat("http.bad.downstream_cx_http1_total"), 1);
    assert_eq!(proxy.stat("http.bad.downstream_cx_http2_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codec_detection_behaves_like_envoy() {
    let (e_up, x_up) = (
        RecordingUpstream::start().await,
        RecordingUpstream::start().await,
    );
    let options = [IDLE, "drain_timeout: 0.2s", "delayed_close_timeout: 0.1s"];
    let pair = Pair::start(&yaml(e_up.addr, &options), &yaml(x_up.addr, &options)).await;
    let mut diffs = Vec::new();
    for (name, e, x) in [
        (
            "partial preface",
            partial_preface(pair.envoy_addr).await,
            partial_preface(pair.ours_addr).await,
        ),
        (
            "P, pause, OST",
            p_then_post(pair.envoy_addr).await,
            p_then_post(pair.ours_addr).await,
        ),
        (
            "preface prefix",
            preface_prefix(pair.envoy_addr).await,
            preface_prefix(pair.ours_addr).await,
        ),
    ] {
        if std::env::var("XP_SHOW").is_ok() {
            eprintln!("{name}\n  envoy:    {e:?}\n  extproxy: {x:?}");
        }
        if e != x {
            diffs.push(format!("{name}\n  envoy:    {e:?}\n  extproxy: {x:?}"));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
