//! HTTP/1.1 connection reuse and the connection idle timeout, in-process and against real
//! Envoy 1.40: a chunked request with trailers leaves the connection reusable (pipelined or
//! sent later), and `common_http_protocol_options.idle_timeout` closes only a connection with no
//! request in progress. A request head that has begun arriving counts as one: Envoy's codec
//! opens the stream on the message's first byte, and the head timers govern it from there.
#![allow(clippy::unwrap_used)]

mod bad_input_support;
mod http_support;

use bad_input_support::{yaml, RecordingUpstream};
use http_support::{Pair, TestProxy};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A chunked request whose last chunk carries a trailer.
const WITH_TRAILERS: &[u8] =
    b"POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
/// The request sent after it on the same connection.
const SECOND: &[u8] = b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n";
/// The first part of a request head; the client pauses after it.
const HEAD_START: &[u8] = b"GET /slow HTTP/1.1\r\nHost: a\r\nx-a: b\r\n";
/// The connection idle timeout the idle scenarios run with.
const IDLE: &str = "common_http_protocol_options: {idle_timeout: 0.5s}";
/// How long the client pauses in the middle of a head (well over [`IDLE`]).
const PAUSE: Duration = Duration::from_millis(1500);
/// How long to wait for a response.
const WAIT: Duration = Duration::from_secs(3);
/// How long a kept-alive connection is watched after its last response (well under [`IDLE`],
/// which the differential test runs every scenario with).
const KEPT: Duration = Duration::from_millis(150);

/// One client connection that reads whole responses.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Sends `bytes`; a connection the proxy already closed is not an error here (the
    /// scenario sees it as a missing response).
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// The next complete response: its status and whether it said `connection: close`. `None`
    /// if the proxy closed the connection, or `wait` passed, first.
    async fn response(&mut self, wait: Duration) -> Option<(u16, bool)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((len, status, close)) = parse_response(&self.buf) {
                self.buf.drain(..len);
                return Some((status, close));
            }
            match tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Whether the proxy closes the connection within `wait`.
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

/// The length, status and `connection: close` of the complete response at the front of `buf`.
fn parse_response(buf: &[u8]) -> Option<(usize, u16, bool)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let close = head.lines().any(|l| l == "connection: close");
    (buf.len() >= end + len).then_some((end + len, status, close))
}

/// What one scenario looked like from the client and the upstream.
#[derive(Debug, PartialEq)]
struct Seen {
    /// Each response's status and whether it said `connection: close`.
    responses: Vec<(u16, bool)>,
    /// Whether the proxy closed the connection while the scenario waited at its end.
    closed: bool,
    /// The request lines the upstream received during the scenario.
    upstream: Vec<String>,
}

/// The scenarios, each on a fresh connection.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// The request with trailers and the next one in one write.
    Pipelined,
    /// The request with trailers, its response, then the next request.
    Sequential,
    /// Part of a head, a pause longer than the idle timeout, the rest; then the connection
    /// idles (run with [`IDLE`]).
    PausedHead,
    /// A connection that never sends a byte (run with [`IDLE`]).
    Silent,
}

impl Scenario {
    async fn run(self, addr: SocketAddr, up: &RecordingUpstream) -> Seen {
        let before = up.request_lines().len();
        let mut c = Client::connect(addr).await;
        let mut responses = Vec::new();
        let closed = match self {
            Scenario::Pipelined => {
                c.send(&[WITH_TRAILERS, SECOND].concat()).await;
                while let Some(r) = c.response(WAIT).await {
                    responses.push(r);
                    if responses.len() == 2 {
                        break;
                    }
                }
                c.closed_within(KEPT).await
            }
            Scenario::Sequential => {
                c.send(WITH_TRAILERS).await;
                responses.extend(c.response(WAIT).await);
                c.send(SECOND).await;
                responses.extend(c.response(WAIT).await);
                c.closed_within(KEPT).await
            }
            Scenario::PausedHead => {
                c.send(HEAD_START).await;
                // A close during the pause shows as the missing response.
                c.closed_within(PAUSE).await;
                c.send(b"\r\n").await;
                responses.extend(c.response(WAIT).await);
                c.closed_within(WAIT).await
            }
            Scenario::Silent => c.closed_within(WAIT).await,
        };
        Seen {
            responses,
            closed,
            upstream: up.request_lines()[before..].to_vec(),
        }
    }

    /// What Envoy 1.40 does (checked against it by the differential test below).
    fn expected(self) -> Seen {
        let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        match self {
            Scenario::Pipelined | Scenario::Sequential => Seen {
                responses: vec![(200, false), (200, false)],
                closed: false,
                upstream: lines(&["POST /first HTTP/1.1", "GET /second HTTP/1.1"]),
            },
            Scenario::PausedHead => Seen {
                responses: vec![(200, false)],
                closed: true,
                upstream: lines(&["GET /slow HTTP/1.1"]),
            },
            Scenario::Silent => Seen {
                responses: vec![],
                closed: true,
                upstream: vec![],
            },
        }
    }
}

#[tokio::test]
async fn a_request_with_trailers_leaves_the_connection_reusable() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(up.addr, &[])).await;
    for s in [Scenario::Pipelined, Scenario::Sequential] {
        let seen = s.run(proxy.ingress(), &up).await;
        assert_eq!(seen, s.expected(), "{s:?}");
    }
    assert_eq!(proxy.stat("http.bad.downstream_rq_2xx"), 4);
    assert_eq!(proxy.stat("http.bad.downstream_cx_total"), 2);
}

#[tokio::test]
async fn idle_timeout_spares_a_request_head_that_is_still_arriving() {
    let up = RecordingUpstream::start().await;
    for codec in ["AUTO", "HTTP1"] {
        let y = yaml(up.addr, &[IDLE]).replace("codec_type: AUTO", &format!("codec_type: {codec}"));
        let proxy = TestProxy::start(&y).await;
        let s = Scenario::PausedHead;
        let start = Instant::now();
        let seen = s.run(proxy.ingress(), &up).await;
        assert_eq!(seen, s.expected(), "{codec}");
        assert!(start.elapsed() >= PAUSE, "{codec}");
        // Only the idle connection after the response was timed out.
        assert_eq!(
            proxy.stat("http.bad.downstream_cx_idle_timeout"),
            1,
            "{codec}"
        );
        assert_eq!(proxy.stat("http.bad.downstream_rq_2xx"), 1, "{codec}");
        assert_eq!(proxy.stat("http.bad.downstream_rq_4xx"), 0, "{codec}");
    }
}

#[tokio::test]
async fn idle_timeout_closes_a_connection_that_sent_nothing() {
    let up = RecordingUpstream::start().await;
    for codec in ["AUTO", "HTTP1"] {
        let y = yaml(up.addr, &[IDLE]).replace("codec_type: AUTO", &format!("codec_type: {codec}"));
        let proxy = TestProxy::start(&y).await;
        let s = Scenario::Silent;
        let start = Instant::now();
        let seen = s.run(proxy.ingress(), &up).await;
        assert_eq!(seen, s.expected(), "{codec}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(2),
            "{codec}: {took:?}"
        );
        proxy
            .wait_stat("http.bad.downstream_cx_idle_timeout", 1)
            .await;
        assert_eq!(
            proxy.stat("http.bad.downstream_cx_idle_timeout"),
            1,
            "{codec}"
        );
    }
}

#[tokio::test]
async fn keep_alive_and_idle_timeout_behave_like_envoy() {
    let (e_up, x_up) = (
        RecordingUpstream::start().await,
        RecordingUpstream::start().await,
    );
    // Short drain and delayed-close times keep Envoy's idle closes quick.
    let options = [IDLE, "drain_timeout: 0.2s", "delayed_close_timeout: 0.1s"];
    let Pair {
        envoy,
        ours,
        envoy_addr: e_addr,
        ours_addr: x_addr,
    } = Pair::start(&yaml(e_up.addr, &options), &yaml(x_up.addr, &options)).await;
    let mut failures = Vec::new();
    for s in [
        Scenario::Pipelined,
        Scenario::Sequential,
        Scenario::PausedHead,
        Scenario::Silent,
    ] {
        let (e, x) = tokio::join!(s.run(e_addr, &e_up), s.run(x_addr, &x_up));
        if e != s.expected() {
            failures.push(format!(
                "{s:?}: Envoy no longer does {:?}: {e:?}",
                s.expected()
            ));
        }
        if e != x {
            failures.push(format!("{s:?}:\n  envoy    {e:?}\n  extproxy {x:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for name in [
        "downstream_cx_idle_timeout",
        "downstream_rq_2xx",
        "downstream_rq_4xx",
    ] {
        let name = format!("http.bad.{name}");
        let (e, x) = (envoy.counter(&name).await, ours.counter(&name).await);
        assert_eq!(e, x, "{name}");
    }
}
