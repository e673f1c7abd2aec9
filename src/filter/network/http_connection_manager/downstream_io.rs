//! The downstream socket as hyper sees it: replays the bytes read while sniffing the codec,
//! counts bytes, and on HTTP/1.1 puts the [`Guard`](super::http1_guard::Guard) between the
//! socket and hyper. The guard's refusals and the request-head timers (which Envoy starts on a
//! request's first byte, before hyper would see a request at all) become Envoy's local replies
//! here: hyper reads EOF, and the reply is written when hyper shuts the connection down. hyper's
//! own automatic error responses (`400`, `431`) are rewritten into Envoy's.

use super::http1_guard::{Guard, HeadTimeout, Limits, Reject};
use super::stream::OpenStreams;
use super::Filter;
use crate::stats::Counter;
use crate::transport_socket::Stream;
use bytes::{Buf, Bytes, BytesMut};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes read from the socket at a time on HTTP/1.1, at first and after a short read.
const READ_SIZE: usize = 16 * 1024;
/// The most read at a time: a read that fills its buffer doubles the next one, so a body that
/// arrives faster than it is read goes on in a few large chunks (Envoy reads until the socket is
/// empty) rather than as many 16 KiB ones (an ext_proc message and an upstream write each).
const MAX_READ_SIZE: usize = 256 * 1024;

/// The HTTP/1.1 side of [`ConnIo`].
struct Http1 {
    filter: Arc<Filter>,
    guard: Guard,
    /// Read from the socket, not yet seen by hyper.
    held: BytesMut,
    /// Bytes at the front of `held` hyper may read.
    release: usize,
    /// The peer closed its side.
    eof: bool,
    /// Bytes to read next: `READ_SIZE` up to `MAX_READ_SIZE`.
    read_size: usize,
    /// When the request head being held started, and when its last byte arrived.
    head_started: Option<Instant>,
    last_byte: Instant,
    timer: Pin<Box<Sleep>>,
    /// The refused request's reply, written when hyper shuts the connection down.
    reply: Option<Bytes>,
    /// A request was refused: hyper reads EOF once its open streams are done.
    refused: bool,
    /// The connection's streams; `head_pending` there mirrors `head_started`.
    streams: Arc<OpenStreams>,
    /// Resolves when the connection has no open stream (set once refused).
    quiet: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// The downstream socket handed to hyper.
pub(super) struct ConnIo {
    inner: Stream,
    /// Bytes read while sniffing the codec, replayed first.
    prefix: Bytes,
    rx: Counter,
    tx: Counter,
    /// Set on HTTP/1 connections.
    h1: Option<Box<Http1>>,
    /// A reply still to be written.
    pending: Bytes,
}

impl ConnIo {
    /// Wraps the socket; `h1` turns on the HTTP/1.1 checks.
    pub(super) fn new(
        inner: Stream,
        prefix: Bytes,
        f: &Arc<Filter>,
        h1: Option<Arc<OpenStreams>>,
    ) -> Self {
        let h1 = h1.map(|streams| {
            let limits = Limits {
                max_head: f.max_request_headers_bytes,
                max_headers: f.max_headers_count,
                allow_chunked_length: f.allow_chunked_length,
            };
            Box::new(Http1 {
                filter: f.clone(),
                guard: Guard::new(limits),
                held: BytesMut::new(),
                release: 0,
                eof: false,
                read_size: READ_SIZE,
                head_started: None,
                last_byte: Instant::now(),
                timer: Box::pin(tokio::time::sleep_until(Instant::now())),
                reply: None,
                refused: false,
                streams,
                quiet: None,
            })
        });
        ConnIo {
            inner,
            prefix,
            rx: f.stats.downstream_cx_rx_bytes_total.clone(),
            tx: f.stats.downstream_cx_tx_bytes_total.clone(),
            h1,
            pending: Bytes::new(),
        }
    }

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
        let f = &self.h1.as_ref()?.filter;
        if !buf.starts_with(b"HTTP/1.1 4") {
            return None;
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = buf[..end].to_ascii_lowercase();
        if head.windows(7).any(|w| w == b"\r\ndate:") {
            return None;
        }
        let (status, text) = match &buf[9..12] {
            b"431" | b"414" => (
                "431 Request Header Fields Too Large",
                "Request Header Fields Too Large",
            ),
            _ => ("400 Bad Request", "Bad Request"),
        };
        f.stats.downstream_cx_protocol_error.inc();
        Some(local_reply(f, status, text))
    }
}

/// Counts a request refused before hyper saw it (as Envoy's HCM counts a stream) and renders
/// Envoy's reply, closing the connection.
fn local_reply(f: &Filter, status: &str, text: &str) -> Bytes {
    f.stats.downstream_rq_total.inc();
    f.stats.downstream_rq_http1_total.inc();
    let class = status.as_bytes()[0].saturating_sub(b'1').min(4) as usize;
    f.stats.downstream_rq_class[class].inc();
    f.stats.downstream_rq_completed.inc();
    let date = super::headers::date_header();
    let server = String::from_utf8_lossy(f.server_name.as_bytes()).into_owned();
    let date = String::from_utf8_lossy(date.as_bytes()).into_owned();
    if text.is_empty() {
        // An HCM local reply rather than a codec error: Envoy's header order differs.
        return Bytes::from(format!("HTTP/1.1 {status}\r\ndate: {date}\r\nserver: {server}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"));
    }
    Bytes::from(format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\ndate: {date}\r\nserver: {server}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    ))
}

impl Http1 {
    /// Records whether (and since when) a request head is being held, and tells the connection
    /// idle timer: a request has begun, so the connection is not idle.
    fn set_head_started(&mut self, at: Option<Instant>) {
        let pending = at.is_some();
        // `head_pending` mirrors `head_started`, and only this connection writes it: the shared
        // flag (and the waiters) are touched when it changes, not on every read.
        if self.head_started.is_some() != pending {
            self.streams.head_pending.store(pending, Ordering::Release);
            self.streams.changed.notify_waiters();
        }
        self.head_started = at;
    }

    /// Refuses the request after the released bytes: counts it and keeps the reply for the
    /// shutdown (or, if hyper already saw part of the message, only stops reading).
    fn refuse(&mut self, why: Reject, answer: bool) {
        tracing::debug!(details = why.details(), "refusing an HTTP/1.1 request");
        let f = &self.filter;
        match why {
            Reject::Timeout(HeadTimeout::Headers) => f.stats.downstream_rq_header_timeout.inc(),
            Reject::Timeout(HeadTimeout::Request) => f.stats.downstream_rq_timeout.inc(),
            Reject::Timeout(HeadTimeout::Idle) => f.stats.downstream_rq_idle_timeout.inc(),
            Reject::PathFragment => f.stats.downstream_rq_failed_path_normalization.inc(),
            _ => {}
        }
        if why.is_codec_error() {
            f.stats.downstream_cx_protocol_error.inc();
        }
        if answer {
            let (status, text) = why.reply();
            self.reply = Some(local_reply(f, status, text));
        }
        self.refused = true;
        // The refused request is answered here; the connection closes after it.
        self.set_head_started(None);
        self.held.truncate(self.release);
        // hyper may not have started the streams of the heads released just before: wait for
        // every released head's stream to start and end.
        let streams = self.streams.clone();
        let heads = self.guard.heads();
        self.quiet = Some(Box::pin(async move {
            loop {
                let changed = streams.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if streams.started.load(Ordering::Acquire) >= heads
                    && streams.count.load(Ordering::Acquire) == 0
                {
                    return;
                }
                changed.await;
            }
        }));
    }

    /// The earliest head deadline, and which timer it belongs to.
    fn head_deadline(&self, started: Instant) -> Option<(Instant, HeadTimeout)> {
        let f = &self.filter;
        [
            f.request_headers_timeout
                .map(|d| (started + d, HeadTimeout::Headers)),
            f.request_timeout
                .map(|d| (started + d, HeadTimeout::Request)),
            f.stream_idle_timeout
                .map(|d| (self.last_byte + d, HeadTimeout::Idle)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
    }

    /// Fills `buf` with released bytes, reading and checking more as needed.
    fn poll_read(
        &mut self,
        inner: &mut Stream,
        rx: &Counter,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.release > 0 {
                let n = self.release.min(buf.remaining());
                buf.put_slice(&self.held[..n]);
                self.held.advance(n);
                self.release -= n;
                return Poll::Ready(Ok(()));
            }
            if self.refused {
                // EOF for hyper once the requests before the refused one are answered.
                if let Some(q) = self.quiet.as_mut() {
                    ready!(q.as_mut().poll(cx));
                    self.quiet = None;
                }
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            if let Some(started) = self.head_started {
                if let Some((at, which)) = self.head_deadline(started) {
                    if self.timer.deadline() != at {
                        self.timer.as_mut().reset(at);
                    }
                    if self.timer.as_mut().poll(cx).is_ready() {
                        self.refuse(Reject::Timeout(which), true);
                        continue;
                    }
                }
            }
            self.held.reserve(self.read_size);
            if self.held.is_empty() && self.held.capacity() >= 2 * self.read_size {
                // Reads are small again: give the large buffer back before waiting on the socket.
                self.held = BytesMut::with_capacity(self.read_size);
            }
            let room = self.held.capacity() - self.held.len();
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *inner),
                cx,
                &mut self.held
            ))?;
            self.read_size = if n == room {
                (self.read_size * 2).min(MAX_READ_SIZE)
            } else {
                READ_SIZE
            };
            if n == 0 {
                // hyper gets what is held (an incomplete message) and then EOF, and answers it
                // as it would have.
                self.eof = true;
                self.release = self.held.len();
                self.set_head_started(None);
                continue;
            }
            rx.add(n as u64);
            self.last_byte = Instant::now();
            let step = self.guard.advance(&self.held);
            self.release = step.release;
            if let Some(why) = step.reject {
                self.refuse(why, step.whole);
                continue;
            }
            let unreleased = &self.held[self.release..];
            let started = match self.head_started {
                _ if !self.guard.in_head(unreleased) => None,
                Some(t) => Some(t),
                None => Some(self.last_byte),
            };
            self.set_head_started(started);
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() && this.h1.is_none() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        if let Some(h1) = this.h1.as_mut() {
            if !this.prefix.is_empty() {
                // The sniffed bytes go through the guard like any others.
                let prefix = std::mem::take(&mut this.prefix);
                h1.held.extend_from_slice(&prefix);
                let step = h1.guard.advance(&h1.held);
                h1.release = step.release;
                if let Some(why) = step.reject {
                    h1.refuse(why, step.whole);
                } else if h1.guard.in_head(&h1.held[h1.release..]) {
                    h1.set_head_started(Some(Instant::now()));
                }
            }
            return h1.poll_read(&mut this.inner, &this.rx, cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.rx.add((buf.filled().len() - before) as u64);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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
        let this = &mut *self;
        if let Some(reply) = this.h1.as_mut().and_then(|h| h.reply.take()) {
            this.pending = reply;
        }
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
