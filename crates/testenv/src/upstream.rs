//! Small loopback upstream servers. Each binds `127.0.0.1:0` and stops when its handle drops.
//!
//! - [`echo_http_upstream`]: HTTP/1.1 and h2c; answers with a JSON description of the request and
//!   records every request it saw.
//! - [`tcp_echo_upstream`]: echoes bytes; half-closes when the client does.
//! - [`tcp_recording_upstream`]: records bytes and how each connection ended (FIN or RST), and can
//!   send a scripted greeting.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A request as the HTTP upstream received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Header name (lower case) → values, in arrival order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The complete body.
    pub body: Bytes,
    /// Trailers, if any.
    pub trailers: BTreeMap<String, Vec<String>>,
}

impl RecordedRequest {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// Handle to [`echo_http_upstream`]. Stops serving when dropped.
#[derive(Debug)]
pub struct EchoHttpUpstream {
    /// Bound address.
    addr: SocketAddr,
    /// Every request seen, in order of completion.
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    /// The accept loop (owns the connection tasks); aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl EchoHttpUpstream {
    /// The bound address (127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The most recent request.
    ///
    /// # Panics
    /// If no request has arrived.
    pub fn last_request(&self) -> RecordedRequest {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }
}

impl Drop for EchoHttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an HTTP/1.1 + h2c (prior knowledge) upstream on 127.0.0.1:0.
///
/// By default it answers `200` with `content-type: application/json` and the body
/// `{"method","path","version","headers":{name:[values]},"body":<utf-8 lossy>,"body_len",
/// "trailers":{...}}`. Request headers steer the answer:
/// - `x-echo-status: 404` — the response status;
/// - `x-echo-response-headers: a=1,b=2` — extra response headers;
/// - `x-echo-mode: raw` — the body is the request body verbatim (`application/octet-stream`);
/// - `x-echo-chunks: N` — the body is sent as N data frames, 20 ms apart, without
///   `content-length` (chunked on HTTP/1.1);
/// - `x-echo-trailers: a=1,b=2` — response trailers (forces a streamed body).
pub async fn echo_http_upstream() -> EchoHttpUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo upstream");
    let addr = listener.local_addr().expect("local_addr");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let recorded = requests.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let recorded = recorded.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req| echo(req, recorded.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    EchoHttpUpstream {
        addr,
        requests,
        task,
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn echo(
    req: hyper::Request<Incoming>,
    recorded: Arc<Mutex<Vec<RecordedRequest>>>,
) -> Result<hyper::Response<EchoBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let mut data = Vec::new();
    let mut trailers = BTreeMap::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    for (k, v) in &t {
                        trailers
                            .entry(k.as_str().to_string())
                            .or_insert_with(Vec::new)
                            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                    }
                }
            }
        }
    }
    let rec = RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", parts.version),
        headers,
        body: Bytes::from(data),
        trailers,
    };
    if let Ok(mut r) = recorded.lock() {
        r.push(rec.clone());
    }
    Ok(build_echo_response(&rec))
}

fn pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn build_echo_response(rec: &RecordedRequest) -> hyper::Response<EchoBody> {
    let status = rec
        .header("x-echo-status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200u16);
    let raw = rec.header("x-echo-mode") == Some("raw");
    let body = if raw {
        rec.body.clone()
    } else {
        let json = serde_json::json!({
            "method": rec.method,
            "path": rec.path,
            "version": rec.version,
            "headers": rec.headers,
            "body": String::from_utf8_lossy(&rec.body),
            "body_len": rec.body.len(),
            "trailers": rec.trailers,
        });
        Bytes::from(json.to_string())
    };
    let mut b = hyper::Response::builder().status(status).header(
        "content-type",
        if raw {
            "application/octet-stream"
        } else {
            "application/json"
        },
    );
    for (k, v) in rec
        .header("x-echo-response-headers")
        .map(pairs)
        .unwrap_or_default()
    {
        b = b.header(k, v);
    }
    let chunks: usize = rec
        .header("x-echo-chunks")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let trailers = rec.header("x-echo-trailers").map(pairs);
    if chunks == 0 && trailers.is_none() {
        b = b.header("content-length", body.len());
        let body = http_body_util::Full::new(body)
            .map_err(|e| match e {})
            .boxed();
        return b
            .body(body)
            .unwrap_or_else(|_| hyper::Response::new(empty()));
    }
    let n = chunks.max(1);
    let size = body.len().div_ceil(n).max(1);
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame<Bytes>>(n + 1);
    tokio::spawn(async move {
        let mut off = 0;
        while off < body.len() {
            let end = (off + size).min(body.len());
            if tx.send(Frame::data(body.slice(off..end))).await.is_err() {
                return;
            }
            off = end;
            if off < body.len() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(t) = trailers {
            let mut map = http::HeaderMap::new();
            for (k, v) in t {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(&v),
                ) {
                    map.append(k, v);
                }
            }
            let _ = tx.send(Frame::trailers(map)).await;
        }
    });
    b.body(crate::client::ChannelBody::new(rx).boxed())
        .unwrap_or_else(|_| hyper::Response::new(empty()))
}

fn empty() -> EchoBody {
    http_body_util::Empty::new().map_err(|e| match e {}).boxed()
}

/// Handle to [`tcp_echo_upstream`]. Stops on drop.
#[derive(Debug)]
pub struct TcpEchoUpstream {
    /// Bound address.
    addr: SocketAddr,
    /// Accept loop; aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl TcpEchoUpstream {
    /// The bound address (127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpEchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a TCP echo server on 127.0.0.1:0: every byte is written back; when the client
/// half-closes, the server half-closes too.
pub async fn tcp_echo_upstream() -> TcpEchoUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind tcp echo");
    let addr = listener.local_addr().expect("local_addr");
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            conns.spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    TcpEchoUpstream { addr, task }
}

/// How a recorded connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// Orderly half-close (read returned 0).
    Fin,
    /// Reset or other read error.
    Rst,
}

/// What [`tcp_recording_upstream`] saw on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedConnection {
    /// All bytes received, in order.
    pub data: Vec<u8>,
    /// `None` while the peer's write side is open.
    pub closed: Option<CloseKind>,
}

/// Handle to [`tcp_recording_upstream`]. Stops on drop.
#[derive(Debug)]
pub struct TcpRecordingUpstream {
    /// Bound address.
    addr: SocketAddr,
    /// One record per accepted connection, in accept order; bumped on every change.
    state: watch::Receiver<Vec<RecordedConnection>>,
    /// Accept loop; aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl TcpRecordingUpstream {
    /// The bound address (127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Snapshot of all connections so far.
    pub fn connections(&self) -> Vec<RecordedConnection> {
        self.state.borrow().clone()
    }

    /// Waits until `pred` holds for the connection list; panics with the current state after
    /// `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[RecordedConnection]) -> bool,
    ) -> Vec<RecordedConnection> {
        let mut rx = self.state.clone();
        let res = tokio::time::timeout(timeout, async {
            loop {
                if pred(&rx.borrow_and_update()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let now = self.connections();
        if res.is_err() || !pred(&now) {
            panic!("tcp_recording_upstream: condition not met within {timeout:?}; state: {now:?}");
        }
        now
    }

    /// Waits until connection `idx` has ended, and returns its record.
    pub async fn wait_closed(&self, idx: usize, timeout: Duration) -> RecordedConnection {
        let all = self
            .wait_for(timeout, |c| c.get(idx).is_some_and(|c| c.closed.is_some()))
            .await;
        all[idx].clone()
    }
}

impl Drop for TcpRecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a recording TCP server on 127.0.0.1:0. On each accepted connection it first writes
/// `greeting` (if non-empty), then records every byte received and how the peer ended
/// ([`CloseKind`]). It never closes first, so the test decides what the proxy sees.
pub async fn tcp_recording_upstream(greeting: &[u8]) -> TcpRecordingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind recording upstream");
    let addr = listener.local_addr().expect("local_addr");
    let (tx, rx) = watch::channel(Vec::<RecordedConnection>::new());
    let greeting = greeting.to_vec();
    let task = tokio::spawn(async move {
        let tx = Arc::new(tx);
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let mut idx = 0;
            tx.send_modify(|v| {
                idx = v.len();
                v.push(RecordedConnection::default());
            });
            let tx = tx.clone();
            let greeting = greeting.clone();
            conns.spawn(async move {
                if !greeting.is_empty() {
                    let _ = s.write_all(&greeting).await;
                }
                let mut buf = vec![0u8; 64 * 1024];
                let end = loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break CloseKind::Fin,
                        Ok(n) => tx.send_modify(|v| v[idx].data.extend_from_slice(&buf[..n])),
                        Err(_) => break CloseKind::Rst,
                    }
                };
                tx.send_modify(|v| v[idx].closed = Some(end));
                // Keep our side open until the peer goes away entirely.
                let _ = s.read(&mut buf).await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    TcpRecordingUpstream {
        addr,
        state: rx,
        task,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HttpVersion, TestRequest};
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn echo_upstream_http1_and_h2() {
        let up = echo_http_upstream().await;
        for v in [HttpVersion::Http1, HttpVersion::Http2] {
            let resp = TestRequest::post("/p?q=1", "hello")
                .header("x-a", "1")
                .header("x-echo-response-headers", "x-r=2")
                .send(up.addr(), v)
                .await
                .expect("request");
            assert_eq!(resp.status, 200);
            assert_eq!(resp.header("x-r"), Some("2"));
            let json = resp.json();
            assert_eq!(json["path"], "/p?q=1");
            assert_eq!(json["headers"]["x-a"][0], "1");
            assert_eq!(json["body"], "hello");
            assert_eq!(up.last_request().body, "hello");
        }
        assert_eq!(up.requests().len(), 2);
        assert_eq!(up.requests()[1].version, "HTTP/2.0");
    }

    #[tokio::test]
    async fn echo_upstream_raw_chunks_and_trailers() {
        let up = echo_http_upstream().await;
        let resp = TestRequest::post("/", "abcdef")
            .header("x-echo-mode", "raw")
            .header("x-echo-chunks", "3")
            .header("x-echo-trailers", "t=1")
            .send(up.addr(), HttpVersion::Http2)
            .await
            .expect("request");
        assert_eq!(resp.body, "abcdef");
        assert_eq!(
            resp.trailers.get("t").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }

    #[tokio::test]
    async fn recording_upstream_sees_fin_and_rst() {
        let up = tcp_recording_upstream(b"hi").await;
        let mut c = TcpStream::connect(up.addr()).await.expect("connect");
        let mut g = [0u8; 2];
        c.read_exact(&mut g).await.expect("greeting");
        assert_eq!(&g, b"hi");
        c.write_all(b"abc").await.expect("write");
        c.shutdown().await.expect("shutdown");
        let rec = up.wait_closed(0, Duration::from_secs(5)).await;
        assert_eq!(
            rec,
            RecordedConnection {
                data: b"abc".to_vec(),
                closed: Some(CloseKind::Fin)
            }
        );

        let c2 = TcpStream::connect(up.addr()).await.expect("connect");
        c2.set_zero_linger().expect("linger");
        up.wait_for(Duration::from_secs(5), |c| c.len() == 2).await;
        drop(c2);
        assert_eq!(
            up.wait_closed(1, Duration::from_secs(5)).await.closed,
            Some(CloseKind::Rst)
        );
    }

    #[tokio::test]
    async fn tcp_echo_round_trip() {
        let up = tcp_echo_upstream().await;
        let mut c = TcpStream::connect(up.addr()).await.expect("connect");
        c.write_all(b"xyz").await.expect("write");
        c.shutdown().await.expect("shutdown");
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, b"xyz");
    }
}
