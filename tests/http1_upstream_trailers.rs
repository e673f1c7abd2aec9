//! Trailers on HTTP/1.1: a cluster's `explicit_http_config.http_protocol_options.enable_trailers`
//! makes the proxy write request trailers after the last chunk and read the upstream's response
//! trailers; the HCM's `http_protocol_options.enable_trailers` does the same towards HTTP/1.1
//! clients. Without them trailers are dropped, as Envoy's HTTP/1 codec does. The upstream here
//! is a raw socket that records the chunked request exactly as it arrived and answers with
//! trailers. Compared with Envoy 1.40 (listener `ingress`: HCM defaults; `trailing`: the HCM's
//! `enable_trailers`).
#![allow(clippy::unwrap_used)]

#[path = "http_support/mod.rs"]
mod http_support;

use http_support::{raw_http1, Pair, TestProxy};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testenv::{HttpVersion, TestRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const YAML: &str = r#"
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
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {match: {prefix: "/plain"}, route: {cluster: plain}}
              - {match: {prefix: "/trailers"}, route: {cluster: trailers}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: trailing
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: trailing
          codec_type: AUTO
          http_protocol_options: {enable_trailers: true}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - {match: {prefix: "/plain"}, route: {cluster: plain}}
              - {match: {prefix: "/trailers"}, route: {cluster: trailers}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: plain
    connect_timeout: 2s
    type: STATIC
    load_assignment:
      cluster_name: plain
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{UPSTREAM_PORT}}}}}}]}]
  - name: trailers
    connect_timeout: 2s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http_protocol_options: {enable_trailers: true}}
    load_assignment:
      cluster_name: trailers
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{UPSTREAM_PORT}}}}}}]}]
"#;

/// What the upstream read of one request: its chunked body decoded, and its trailer lines.
#[derive(Debug, Clone, PartialEq, Default)]
struct UpstreamSaw {
    body: String,
    trailers: Vec<String>,
}

/// An HTTP/1.1 upstream that parses chunked requests by hand (keeping their trailer lines)
/// and answers each with a chunked body and a trailer.
struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<UpstreamSaw>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, s2.clone()));
            }
        });
        RawUpstream { addr, seen, task }
    }

    fn seen(&self) -> Vec<UpstreamSaw> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one CRLF-terminated line (without the CRLF); `None` at EOF.
async fn line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let l = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Some(l);
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn exact(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        let mut tmp = [0u8; 4096];
        let r = s.read(&mut tmp).await.ok()?;
        if r == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..r]);
    }
    Some(buf.drain(..n).collect())
}

async fn serve(mut s: TcpStream, seen: Arc<Mutex<Vec<UpstreamSaw>>>) {
    let mut buf = Vec::new();
    loop {
        let mut chunked = false;
        let mut length = 0usize;
        let Some(request_line) = line(&mut s, &mut buf).await else {
            return;
        };
        loop {
            let Some(h) = line(&mut s, &mut buf).await else {
                return;
            };
            if h.is_empty() {
                break;
            }
            let h = h.to_ascii_lowercase();
            if h.starts_with("transfer-encoding:") && h.ends_with("chunked") {
                chunked = true;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut saw = UpstreamSaw::default();
        if chunked {
            loop {
                let Some(size) = line(&mut s, &mut buf).await else {
                    return;
                };
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if size == 0 {
                    break;
                }
                let Some(data) = exact(&mut s, &mut buf, size + 2).await else {
                    return;
                };
                saw.body.push_str(&String::from_utf8_lossy(&data[..size]));
            }
            loop {
                let Some(t) = line(&mut s, &mut buf).await else {
                    return;
                };
                if t.is_empty() {
                    break;
                }
                saw.trailers.push(t.to_ascii_lowercase());
            }
        } else {
            let Some(data) = exact(&mut s, &mut buf, length).await else {
                return;
            };
            saw.body = String::from_utf8_lossy(&data).into_owned();
        }
        seen.lock().unwrap().push(saw);
        let reply: &[u8] = if request_line.starts_with("HEAD ") {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-up-trailer: yes\r\n\r\n"
        };
        if s.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// What one request looked like: the upstream's view, and the client's status, body and
/// trailers.
#[derive(Debug, PartialEq)]
struct Seen {
    upstream: Option<UpstreamSaw>,
    status: u16,
    body: String,
    trailers: Vec<String>,
}

async fn send(addr: SocketAddr, up: &RawUpstream, path: &str, version: HttpVersion) -> Seen {
    let before = up.seen().len();
    if version == HttpVersion::Http1 {
        // hyper's client writes only trailers a `Trailer` header declared: send the bytes
        // (without `te: trailers`, which Envoy does not need to send response trailers).
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
             2\r\nab\r\n2\r\ncd\r\n0\r\nx-rq-trailer: 1\r\n\r\n"
        );
        let r = raw_http1(addr, req.as_bytes(), Duration::from_millis(500)).await;
        // The body as sent (chunked or not) and any trailer lines after it.
        let rest = r.body().to_ascii_lowercase();
        return Seen {
            upstream: up.seen().get(before).cloned(),
            status: r.status(),
            body: if rest.contains("ok") {
                "ok".into()
            } else {
                rest.clone()
            },
            trailers: rest
                .split("\r\n")
                .filter(|l| l.starts_with("x-"))
                .map(str::to_string)
                .collect(),
        };
    }
    let resp = TestRequest::new("POST", path)
        .chunked(&["ab", "cd"], Duration::from_millis(10))
        .header("te", "trailers")
        .trailer("x-rq-trailer", "1")
        .send(addr, version)
        .await
        .unwrap();
    // The upstream records a request before it answers.
    let mut trailers: Vec<String> = resp
        .trailers
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("")))
        .collect();
    trailers.sort();
    Seen {
        upstream: up.seen().get(before).cloned(),
        status: resp.status,
        body: String::from_utf8_lossy(&resp.body).into_owned(),
        trailers,
    }
}

fn yaml(up: &RawUpstream) -> String {
    testenv::render(YAML, &[("UPSTREAM_PORT", &up.addr.port().to_string())])
}

#[tokio::test]
async fn enable_trailers_sends_and_receives_trailers() {
    let up = RawUpstream::start().await;
    let proxy = TestProxy::start(&yaml(&up)).await;
    let seen = send(proxy.ingress(), &up, "/trailers", HttpVersion::Http2).await;
    assert_eq!(
        seen,
        Seen {
            upstream: Some(UpstreamSaw {
                body: "abcd".into(),
                trailers: vec!["x-rq-trailer: 1".into()],
            }),
            status: 200,
            body: "ok".into(),
            trailers: vec!["x-up-trailer: yes".into()],
        }
    );
    // The connection stays usable: the next request's trailers follow its own last chunk.
    let again = send(proxy.ingress(), &up, "/trailers", HttpVersion::Http2).await;
    assert_eq!(again, seen);
}

#[tokio::test]
async fn without_enable_trailers_both_directions_drop_them() {
    let up = RawUpstream::start().await;
    let proxy = TestProxy::start(&yaml(&up)).await;
    let seen = send(proxy.ingress(), &up, "/plain", HttpVersion::Http2).await;
    assert_eq!(
        seen,
        Seen {
            upstream: Some(UpstreamSaw {
                body: "abcd".into(),
                trailers: vec![],
            }),
            status: 200,
            body: "ok".into(),
            trailers: vec![],
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_trailers_behave_like_envoy() {
    let (e_up, x_up) = (RawUpstream::start().await, RawUpstream::start().await);
    let pair = Pair::start(&yaml(&e_up), &yaml(&x_up)).await;
    let listeners = [
        ("ingress", pair.envoy_addr, pair.ours_addr),
        (
            "trailing",
            pair.envoy.listener_addr("trailing").await,
            pair.ours.listener_addr("trailing").await,
        ),
    ];
    let mut diffs = Vec::new();
    for (listener, e_addr, x_addr) in listeners {
        for version in [HttpVersion::Http2, HttpVersion::Http1] {
            for path in ["/plain", "/trailers"] {
                let e = send(e_addr, &e_up, path, version).await;
                let x = send(x_addr, &x_up, path, version).await;
                let name = format!("{listener} {path} {version:?}");
                if std::env::var("XP_SHOW").is_ok() {
                    eprintln!("{name}\n  envoy:    {e:?}\n  extproxy: {x:?}");
                }
                if e != x {
                    diffs.push(format!("{name}\n  envoy:    {e:?}\n  extproxy: {x:?}"));
                }
            }
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// On one HTTP/1.1 connection to the `trailing` listener: a `HEAD` (whose response has no body,
/// whatever its framing headers say), then a request whose response has trailers. The writer
/// that adds them must not take the first response's headers for a body to follow.
async fn head_then_trailers(addr: SocketAddr) -> (Vec<u16>, Vec<String>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    s.write_all(b"HEAD /trailers HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let closed = read_for(&mut s, &mut out, Duration::from_millis(300)).await;
    let post = b"POST /trailers HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nab";
    let _ = s.write_all(post).await;
    let closed = closed || read_for(&mut s, &mut out, Duration::from_millis(500)).await;
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let statuses = text
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("http/1.1 "))
        .filter_map(|l| l.get(..3)?.parse().ok())
        .collect();
    let trailers = text
        .split("\r\n")
        .filter(|l| l.starts_with("x-up-trailer"))
        .map(str::to_string)
        .collect();
    (statuses, trailers, closed)
}

/// Reads into `out` until `wait` passes without data; `true` if the peer closed.
async fn read_for(s: &mut TcpStream, out: &mut Vec<u8>, wait: Duration) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_then_trailers_behaves_like_envoy() {
    let (e_up, x_up) = (RawUpstream::start().await, RawUpstream::start().await);
    let pair = Pair::start(&yaml(&e_up), &yaml(&x_up)).await;
    let e = head_then_trailers(pair.envoy.listener_addr("trailing").await).await;
    let x = head_then_trailers(pair.ours.listener_addr("trailing").await).await;
    assert_eq!(
        x,
        (vec![200, 200], vec!["x-up-trailer: yes".to_string()], false)
    );
    assert_eq!(e, x);
}
