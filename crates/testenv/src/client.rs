//! A small HTTP client for tests: HTTP/1.1 or HTTP/2 with prior knowledge (h2c), one fresh
//! connection per request, bodies sent whole or as timed chunks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Which HTTP version [`TestRequest::send`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    Http2,
}

/// A request to send through a proxy.
///
/// ```no_run
/// # async fn f(addr: std::net::SocketAddr) -> anyhow::Result<()> {
/// use testenv::{HttpVersion, TestRequest};
/// let resp = TestRequest::post("/upload", "hello")
///     .header("authorization", "Bearer t")
///     .send(addr, HttpVersion::Http2)
///     .await?;
/// assert_eq!(resp.status, 200);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TestRequest {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    /// `Host` / `:authority` (default `example.com`).
    pub authority: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Body chunks. With more than one chunk (or with `chunk_delay`), the body is streamed
    /// without `content-length`.
    pub chunks: Vec<Bytes>,
    /// Pause between chunks, so the proxy sees them as separate reads.
    pub chunk_delay: Option<Duration>,
    /// Request trailers (forces a streamed body).
    pub trailers: Vec<(String, String)>,
    /// Overall timeout (default 10 s).
    pub timeout: Duration,
}

impl TestRequest {
    /// A request with the given method and path and no body.
    pub fn new(method: &str, path: &str) -> TestRequest {
        TestRequest {
            method: http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::GET),
            path: path.to_string(),
            authority: "example.com".to_string(),
            headers: Vec::new(),
            chunks: Vec::new(),
            chunk_delay: None,
            trailers: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> TestRequest {
        TestRequest::new("GET", path)
    }

    /// `POST path` with a body sent in one piece, with `content-length`.
    pub fn post(path: &str, body: impl Into<Bytes>) -> TestRequest {
        let mut r = TestRequest::new("POST", path);
        r.chunks = vec![body.into()];
        r
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sends the body as these chunks, `delay` apart (streamed, no `content-length`).
    pub fn chunked(mut self, chunks: &[&str], delay: Duration) -> TestRequest {
        self.chunks = chunks
            .iter()
            .map(|c| Bytes::copy_from_slice(c.as_bytes()))
            .collect();
        self.chunk_delay = Some(delay);
        self
    }

    /// Adds a request trailer.
    pub fn trailer(mut self, name: &str, value: &str) -> TestRequest {
        self.trailers.push((name.to_string(), value.to_string()));
        self
    }

    fn streamed(&self) -> bool {
        self.chunks.len() > 1 || self.chunk_delay.is_some() || !self.trailers.is_empty()
    }

    /// Sends the request on a new connection to `addr` and reads the whole response.
    pub async fn send(
        &self,
        addr: SocketAddr,
        version: HttpVersion,
    ) -> anyhow::Result<TestResponse> {
        tokio::time::timeout(self.timeout, self.send_inner(addr, version))
            .await
            .with_context(|| format!("{} {} to {addr} timed out", self.method, self.path))?
    }

    async fn send_inner(
        &self,
        addr: SocketAddr,
        version: HttpVersion,
    ) -> anyhow::Result<TestResponse> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let io = TokioIo::new(stream);
        let uri = match version {
            HttpVersion::Http1 => self.path.clone(),
            HttpVersion::Http2 => format!("http://{}{}", self.authority, self.path),
        };
        let mut b = http::Request::builder()
            .method(self.method.clone())
            .uri(uri);
        if version == HttpVersion::Http1 {
            b = b.header("host", &self.authority);
        }
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        let (tx, rx) = mpsc::channel(self.chunks.len() + 2);
        if !self.streamed() {
            let len: usize = self.chunks.iter().map(Bytes::len).sum();
            if len > 0 || self.method == http::Method::POST {
                b = b.header("content-length", len);
            }
        }
        let req = b.body(ChannelBody::new(rx))?;
        let chunks = self.chunks.clone();
        let delay = self.chunk_delay;
        let trailers = self.trailers.clone();
        let feeder = async move {
            for (i, c) in chunks.into_iter().enumerate() {
                if i > 0 {
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                }
                if tx.send(Frame::data(c)).await.is_err() {
                    return;
                }
            }
            if !trailers.is_empty() {
                let mut map = http::HeaderMap::new();
                for (k, v) in trailers {
                    if let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(k.as_bytes()),
                        http::HeaderValue::from_str(&v),
                    ) {
                        map.append(k, v);
                    }
                }
                let _ = tx.send(Frame::trailers(map)).await;
            }
        };
        tokio::spawn(feeder);
        let resp = match version {
            HttpVersion::Http1 => {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                send.send_request(req).await?
            }
            HttpVersion::Http2 => {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                send.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        Ok(TestResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Trailers (empty if none).
    pub trailers: http::HeaderMap,
}

impl TestResponse {
    /// The first value of header `name`, if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    /// If the body is not JSON (the message shows the status and body).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// An HTTP body fed frame by frame from an mpsc channel; ends when the sender drops.
#[derive(Debug)]
pub struct ChannelBody {
    /// Frames to yield, in order.
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl ChannelBody {
    /// Wraps a receiver.
    pub fn new(rx: mpsc::Receiver<Frame<Bytes>>) -> ChannelBody {
        ChannelBody { rx }
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|f| f.map(Ok))
    }
}
