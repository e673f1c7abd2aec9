//! Shared by `tests/bad_input_*.rs`: the malformed HTTP/1.1 corpus, a recording upstream that
//! keeps every byte it receives, and the bootstrap they run with.
#![allow(dead_code, clippy::unwrap_used)]

pub mod h2frames;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP/1.1 upstream that records every byte from every connection and answers each
/// request head (`\r\n\r\n`) with `200 ok`. Nothing here may see a refused request.
pub struct RecordingUpstream {
    /// Bound address.
    pub addr: SocketAddr,
    bytes: Arc<Mutex<Vec<u8>>>,
    accepted: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingUpstream {
    /// Starts one on 127.0.0.1:0.
    pub async fn start() -> RecordingUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(0));
        let (b, a) = (bytes.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = l.accept().await {
                *a.lock().unwrap() += 1;
                let b = b.clone();
                conns.spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut window = Vec::new();
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        b.lock().unwrap().extend_from_slice(&buf[..n]);
                        window.extend_from_slice(&buf[..n]);
                        while let Some(n) = request_len(&window) {
                            window.drain(..n);
                            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        RecordingUpstream {
            addr,
            bytes,
            accepted,
            task,
        }
    }

    /// Everything received so far, on all connections.
    pub fn received(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }

    /// The request lines received so far (`GET /x HTTP/1.1`, ...).
    pub fn request_lines(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.received()).into_owned();
        text.split("\r\n")
            .filter(|l| l.ends_with(" HTTP/1.1") && !l.contains(':'))
            .map(str::to_string)
            .collect()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}

/// The length of the complete request at the front of `buf` (head and a Content-Length or
/// chunked body), if it is complete.
fn request_len(buf: &[u8]) -> Option<usize> {
    let find = |from: usize, pat: &[u8]| {
        buf.get(from..)?
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|i| i + from)
    };
    let head = find(0, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    if text.contains("transfer-encoding: chunked") {
        // The last chunk, then the trailers' empty line.
        let last = if buf[head..].starts_with(b"0\r\n") {
            head
        } else {
            find(head, b"\r\n0\r\n")? + 2
        };
        return Some(find(last + 1, b"\r\n\r\n")? + 4);
    }
    let len = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head + len).then_some(head + len)
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HCM (`stat_prefix: bad`) routing everything to `upstream` at UPSTREAM_PORT; `OPTIONS`
/// is replaced with extra HCM fields (indented 10 spaces).
pub const YAML: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bad
          codec_type: AUTO
{{OPTIONS}}
          route_config:
            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{UPSTREAM_PORT}}}}}
"#;

/// [`YAML`] for `upstream` with extra HCM option lines.
pub fn yaml(upstream: SocketAddr, options: &[&str]) -> String {
    let options: String = options.iter().map(|o| format!("          {o}\n")).collect();
    testenv::render(
        YAML,
        &[
            ("UPSTREAM_PORT", &upstream.port().to_string()),
            ("OPTIONS", options.trim_end()),
        ],
    )
}

/// A malformed (or borderline) request and what Envoy 1.40 answers (checked with the real
/// binary by `tests/bad_input_differential.rs`).
pub struct Case {
    /// What it probes.
    pub name: &'static str,
    /// The bytes sent on a fresh connection.
    pub bytes: Vec<u8>,
    /// Envoy's status (0: none).
    pub status: u16,
    /// Whether the upstream sees a request.
    pub forwarded: bool,
    /// An error in the body: Envoy 1.40 may already have forwarded the head when it finds it
    /// (it races the upstream connect); extproxy never forwards any of it.
    pub envoy_may_forward: bool,
}

fn case(name: &'static str, bytes: &[u8], status: u16, forwarded: bool) -> Case {
    Case {
        name,
        bytes: bytes.to_vec(),
        status,
        forwarded,
        envoy_may_forward: false,
    }
}

fn body_error(name: &'static str, bytes: &[u8]) -> Case {
    Case {
        envoy_may_forward: true,
        ..case(name, bytes, 400, false)
    }
}

/// The smuggled request appended to the probes: it must never reach the upstream.
pub const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// Probes where Envoy 1.40 and extproxy answer the same.
pub fn corpus() -> Vec<Case> {
    let with_smuggled = |head: &[u8]| [head, SMUGGLED].concat();
    vec![
        case("bad request line", b"GARBAGE\r\n\r\n", 400, false),
        case("unknown method", b"FOO /x HTTP/1.1\r\nHost: a\r\n\r\n", 400, false),
        case("bad method byte", b"G(T /x HTTP/1.1\r\nHost: a\r\n\r\n", 400, false),
        case("HTTP/1.2", b"GET /x HTTP/1.2\r\nHost: a\r\n\r\n", 426, false),
        case("HTTP/2.0 on the HTTP/1 codec", b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", 426, false),
        case("version garbage", b"GET /x HTTX/1.1\r\nHost: a\r\n\r\n", 400, false),
        case("space in the URI", b"GET /x y HTTP/1.1\r\nHost: a\r\n\r\n", 400, false),
        case("control byte in the URI", b"GET /x\x01y HTTP/1.1\r\nHost: a\r\n\r\n", 400, false),
        case("fragment in the URI", b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, false),
        case("NUL in a value", b"GET /x HTTP/1.1\r\nHost: a\r\nx-a: a\x00b\r\n\r\n", 400, false),
        case("control byte in a value", b"GET /x HTTP/1.1\r\nHost: a\r\nx-a: a\x01b\r\n\r\n", 400, false),
        case("NUL in a name", b"GET /x HTTP/1.1\r\nHost: a\r\nx\x00a: b\r\n\r\n", 400, false),
        case("non-token name", b"GET /x HTTP/1.1\r\nHost: a\r\nx(a): b\r\n\r\n", 400, false),
        case("empty name", b"GET /x HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400, false),
        case("leading space on a line", b"GET /x HTTP/1.1\r\n Host: a\r\n\r\n", 400, false),
        case("space in the host", b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", 400, false),
        case("CL.TE", &with_smuggled(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, false),
        case("TE.CL", &with_smuggled(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n"), 400, false),
        case("TE: xchunked", &with_smuggled(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), 501, false),
        case("TE: gzip", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello", 501, false),
        case("TE: gzip, chunked", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, false),
        case("TE: identity", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501, false),
        case("TE: chunked, chunked", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 501, false),
        case("two TE lines", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, false),
        case("TE space before colon", &with_smuggled(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"), 400, false),
        case("TE vertical tab", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400, false),
        case("TE in HTTP/1.0", b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 426, false),
        case("TE: CHUNKED (case)", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", 200, true),
        case("TE with tab and trailing space", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked \r\n\r\n0\r\n\r\n", 200, true),
        case("two equal Content-Lengths", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400, false),
        case("Content-Length list", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400, false),
        case("differing Content-Lengths", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400, false),
        case("Content-Length +5", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400, false),
        case("Content-Length -1", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nhello", 400, false),
        case("Content-Length overflow", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nhello", 400, false),
        body_error("chunk-size overflow", &with_smuggled(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n")),
        body_error("chunk-size not hex", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        case("chunk extension", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;foo=bar\r\nhello\r\n0\r\n\r\n", 200, true),
        body_error("bare LF in a chunk extension", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n"),
        body_error("chunk data longer than its size", &with_smuggled(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n")),
        body_error("bare LF chunk framing", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"),
        body_error("bad trailer", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx a: b\r\n\r\n"),
        case("pipelined, second is CL.TE", &[&b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"[..], b"POST /y HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", SMUGGLED].concat(), 200, true),
        case("URL over 60 KiB", &[&b"GET /"[..], &[b'a'; 70_000], b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat(), 431, false),
        case("headers over 60 KiB", &[&b"GET /x HTTP/1.1\r\nHost: a\r\nx-big: "[..], &[b'a'; 70_000], b"\r\n\r\n"].concat(), 431, false),
        case("101 headers", format!("GET /x HTTP/1.1\r\nHost: a\r\n{}\r\n", (0..101).map(|i| format!("x-h{i}: 1\r\n")).collect::<String>()).as_bytes(), 431, false),
        case("bare LF line endings", b"GET /x HTTP/1.1\nHost: a\n\n", 200, true),
        case("GET with a body, then a request", b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\nHost: a\r\n\r\n", 200, true),
    ]
}

/// Probes where extproxy is deliberately stricter than Envoy 1.40, with Envoy's status
/// (extproxy answers 400 and forwards nothing; see `docs/envoy-differences.md`).
pub fn stricter_than_envoy() -> Vec<Case> {
    vec![
        case("obs-fold", b"GET /x HTTP/1.1\r\nHost: a\r\nx-a: b\r\n c\r\n\r\n", 200, true),
        case("bare CR in a value", b"GET /x HTTP/1.1\r\nHost: a\r\nx-a: a\rb\r\n\r\n", 200, true),
        case("NUL in a chunk extension", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;\x00\r\nhello\r\n0\r\n\r\n", 200, true),
    ]
}
