//! One downstream connection: codec selection (AUTO sniffs the HTTP/2 preface), hyper's
//! HTTP/1.1 or HTTP/2 server, the connection idle timeout, graceful drain, byte counters, and
//! Envoy's answers to malformed HTTP/1.1 (hyper's bare `400`/`431` become Envoy's
//! `Bad Request` / `Request Header Fields Too Large` replies with `server` and `connection:
//! close`).

use super::stream::{self, ConnShared, OpenStreams};
use super::Filter;
use crate::filter::http::ConnectionInfo;
use crate::stats::{Counter, GaugeGuard};
use bytes::{Buf, Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes either diverge from the HTTP/2 preface or complete it. Returns
/// `(is_h2, bytes read)`, or `None` if the peer closed first.
async fn sniff(stream: &mut TcpStream) -> io::Result<Option<(bool, Bytes)>> {
    let mut buf = [0u8; 24];
    let mut n = 0;
    loop {
        let r = stream.read(&mut buf[n..]).await?;
        if r == 0 {
            return Ok(None);
        }
        n += r;
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some((false, Bytes::copy_from_slice(&buf[..n]))));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some((true, Bytes::copy_from_slice(&buf[..n]))));
        }
    }
}

/// Resolves once the connection has had no open stream for `idle`.
async fn idle_watch(streams: Arc<OpenStreams>, idle: Option<Duration>) {
    let Some(idle) = idle else { return std::future::pending().await };
    loop {
        let changed = streams.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if streams.count.load(Ordering::Acquire) == 0 {
            tokio::select! {
                _ = tokio::time::sleep(idle) => {
                    if streams.count.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                _ = changed => {}
            }
        } else {
            changed.await;
        }
    }
}

/// Drives a hyper connection until it ends; drains it gracefully on shutdown or idle timeout.
macro_rules! drive {
    ($conn:expr, $shutdown:expr, $streams:expr, $filter:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let idle = idle_watch($streams, $filter.idle_timeout);
        tokio::pin!(idle);
        let mut draining = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "downstream connection error");
                    }
                    break;
                }
                _ = $shutdown.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = &mut idle, if !draining => {
                    draining = true;
                    $filter.stats.downstream_cx_idle_timeout.inc();
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }};
}

/// Serves one connection until it closes.
pub(super) async fn serve(conn: crate::listener::Connection, f: Arc<Filter>) {
    let crate::listener::Connection { mut stream, id, peer, local, buffer_limit: _, shutdown } = conn;
    f.stats.downstream_cx_total.inc();
    let _active = GaugeGuard::new(&f.stats.downstream_cx_active);
    let detected = match f.codec {
        super::CodecType::Http1 => Some((false, Bytes::new())),
        super::CodecType::Http2 => Some((true, Bytes::new())),
        super::CodecType::Auto => {
            let idle = f.idle_timeout.unwrap_or(Duration::MAX);
            tokio::select! {
                r = sniff(&mut stream) => r.ok().flatten(),
                _ = shutdown.cancelled() => None,
                _ = tokio::time::sleep(idle) => None,
            }
        }
    };
    if let Some((is_h2, prefix)) = detected {
        run(stream, prefix, is_h2, ConnectionInfo { id, peer, local }, &f, &shutdown).await;
    }
    f.stats.downstream_cx_destroy.inc();
}

async fn run(stream: TcpStream, prefix: Bytes, is_h2: bool, info: ConnectionInfo, f: &Arc<Filter>, shutdown: &CancellationToken) {
    let streams = Arc::new(OpenStreams::default());
    let shared = Arc::new(ConnShared { filter: f.clone(), info, is_h2, streams: streams.clone() });
    let svc = hyper::service::service_fn(move |req| stream::handle(req, shared.clone()));
    let io = TokioIo::new(ConnIo {
        inner: stream,
        prefix,
        rx: f.stats.downstream_cx_rx_bytes_total.clone(),
        tx: f.stats.downstream_cx_tx_bytes_total.clone(),
        rewrite: (!is_h2).then(|| f.clone()),
        pending: Bytes::new(),
    });
    if is_h2 {
        f.stats.downstream_cx_http2_total.inc();
        let _active = GaugeGuard::new(&f.stats.downstream_cx_http2_active);
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(f.max_request_headers_bytes).unwrap_or(u32::MAX))
            .initial_stream_window_size(f.http2.initial_stream_window_size)
            .initial_connection_window_size(f.http2.initial_connection_window_size);
        if let Some(m) = f.http2.max_concurrent_streams {
            b.max_concurrent_streams(m);
        }
        drive!(b.serve_connection(io, svc), shutdown, streams, f);
    } else {
        f.stats.downstream_cx_http1_total.inc();
        let _active = GaugeGuard::new(&f.stats.downstream_cx_http1_active);
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(f.request_headers_timeout)
            .max_header_size(f.max_request_headers_bytes)
            .max_buf_size((f.max_request_headers_bytes + 8192).max(400 * 1024))
            .auto_date_header(false)
            .keep_alive(true);
        if f.max_headers_count != 100 {
            b.max_headers(f.max_headers_count);
        }
        drive!(b.serve_connection(io, svc), shutdown, streams, f);
    }
}

/// The downstream socket: replays the sniffed bytes, counts bytes, and (HTTP/1) rewrites
/// hyper's automatic parse-error responses into Envoy's.
struct ConnIo {
    inner: TcpStream,
    /// Bytes read while sniffing the codec, replayed first.
    prefix: Bytes,
    rx: Counter,
    tx: Counter,
    /// Set on HTTP/1 connections.
    rewrite: Option<Arc<Filter>>,
    /// A rewritten response still to be written.
    pending: Bytes,
}

impl ConnIo {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx.add(n as u64);
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Envoy's reply for hyper's automatic error response in `buf`, if it is one. hyper's own
    /// responses are the only ones without a `date` header: the HCM sets it on every response.
    fn rewritten(&self, buf: &[u8]) -> Option<Bytes> {
        let f = self.rewrite.as_ref()?;
        if !buf.starts_with(b"HTTP/1.1 4") {
            return None;
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = buf[..end].to_ascii_lowercase();
        if head.windows(7).any(|w| w == b"\r\ndate:") {
            return None;
        }
        let (status, text) = match &buf[9..12] {
            b"431" | b"414" => ("431 Request Header Fields Too Large", "Request Header Fields Too Large"),
            _ => {
                f.stats.downstream_cx_protocol_error.inc();
                ("400 Bad Request", "Bad Request")
            }
        };
        f.stats.downstream_rq_total.inc();
        f.stats.downstream_rq_class[3].inc();
        f.stats.downstream_rq_completed.inc();
        let date = super::headers::date_header();
        let server = String::from_utf8_lossy(f.server_name.as_bytes()).into_owned();
        let date = String::from_utf8_lossy(date.as_bytes()).into_owned();
        Some(Bytes::from(format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\ndate: {date}\r\nserver: {server}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        )))
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.rx.add((buf.filled().len() - before) as u64);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(r) = this.rewritten(buf) {
            this.pending = r;
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.tx.add(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(r) = this.rewritten(first) {
                this.pending = r;
                let _ = this.poll_pending(cx)?;
                return Poll::Ready(Ok(first.len()));
            }
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.tx.add(n as u64);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
