//! Trailers written on HTTP/1.1 connections with `http_protocol_options.enable_trailers`:
//! requests to a cluster's upstreams, responses to an HCM's clients (Envoy's HTTP/1 codec then
//! writes every trailer after the last chunk of a chunked body).
//!
//! hyper's HTTP/1 encoder writes only the trailers that a `Trailer` header declared (and, as a
//! server, only to a client that sent `TE: trailers`), which a proxy cannot know when it sends
//! the head. So the body hands its trailers to a [`Slot`] as hyper polls them, and the socket
//! wrapper [`TrailerIo`] follows the framing of what hyper writes (head, chunk sizes, data) and
//! puts those trailers right after the terminating `0\r\n` chunk. Reads pass through untouched.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::filter::http::{Body, BoxError};

/// One request's trailers: set by its [`TrailerTap`], taken by [`TrailerIo`] at the body's
/// last chunk.
pub type Slot = Arc<Mutex<Option<HeaderMap>>>;

/// The slot of the request a connection is writing (set by the pool before each request; a
/// request hyper hands back unsent may go out on another connection).
pub type Current = Arc<Mutex<Option<Slot>>>;

/// A request body that copies its trailers into `slot` when they are polled (before hyper
/// writes the last chunk).
pub struct TrailerTap {
    inner: Body,
    slot: Slot,
}

impl TrailerTap {
    /// Wraps `inner`; its trailers go to `slot`.
    pub fn new(inner: Body, slot: Slot) -> Self {
        TrailerTap { inner, slot }
    }
}

impl http_body::Body for TrailerTap {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &res {
            if let Some(t) = f.trailers_ref() {
                *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a [`TrailerIo`] writes.
#[derive(Debug, Clone)]
pub enum Side {
    /// Requests (a client connection).
    Requests,
    /// Responses (a server connection); the flag is set while the request being answered is a
    /// `HEAD`, whose response has no body whatever its headers say.
    Responses(Arc<AtomicBool>),
}

/// Where the writer is in the message hyper is writing.
#[derive(Debug)]
enum State {
    /// In the head: the current line so far, the status of a response, and the framing the
    /// header lines announced.
    Head {
        line: Vec<u8>,
        first: bool,
        status: u16,
        chunked: bool,
        length: Option<u64>,
    },
    /// A fixed-length body: bytes left.
    Fixed(u64),
    /// A chunk-size line so far.
    Size(Vec<u8>),
    /// Chunk data left, then its CRLF.
    Data(u64),
    /// After the last chunk: trailer lines hyper writes itself, up to the empty line.
    Trailers(Vec<u8>),
    /// Something this writer does not follow (an upgrade): everything passes as is.
    Raw,
}

impl State {
    fn head() -> State {
        State::Head {
            line: Vec::new(),
            first: true,
            status: 0,
            chunked: false,
            length: None,
        }
    }
}

/// A socket whose writes get the current request's trailers after the last chunk.
pub struct TrailerIo<T> {
    inner: T,
    side: Side,
    current: Current,
    state: State,
    /// The trailers of the message whose trailer section is being written.
    pending: Option<HeaderMap>,
    /// Bytes accepted from hyper, not yet written to `inner` (with any trailers added).
    out: BytesMut,
}

impl<T> TrailerIo<T> {
    /// Wraps a connection; `current` leads to the trailers of the request being written.
    pub fn new(inner: T, side: Side, current: Current) -> Self {
        TrailerIo {
            inner,
            side,
            current,
            state: State::head(),
            pending: None,
            out: BytesMut::new(),
        }
    }

    /// Follows `buf` through the message framing and appends it to `out`, with the slot's
    /// trailers after each terminating chunk.
    fn consume(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            // A trailer line goes out once complete (ours go before the empty one).
            let hold = matches!(self.state, State::Trailers(_));
            match &mut self.state {
                State::Raw => {
                    self.out.extend_from_slice(buf);
                    return;
                }
                State::Fixed(left) | State::Data(left) => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    self.out.extend_from_slice(&buf[..n]);
                    buf = &buf[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = match self.state {
                            // The chunk's CRLF is read as an empty size line.
                            State::Data(_) => State::Size(Vec::new()),
                            _ => State::head(),
                        };
                    }
                }
                State::Head { line, .. } | State::Size(line) | State::Trailers(line) => {
                    let (taken, complete) = match buf.iter().position(|b| *b == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (buf.len(), false),
                    };
                    line.extend_from_slice(&buf[..taken]);
                    if !hold {
                        self.out.extend_from_slice(&buf[..taken]);
                    }
                    buf = &buf[taken..];
                    if complete {
                        self.end_line();
                    }
                }
            }
        }
    }

    /// A line of the head, a chunk size or a trailer is complete.
    fn end_line(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Raw);
        self.state = match state {
            State::Head {
                line,
                first,
                status,
                chunked,
                length,
            } => {
                let text = trim_crlf(&line);
                if first {
                    // A response's status line: `HTTP/1.1 200 OK`.
                    let status = text
                        .split(|b| *b == b' ')
                        .nth(1)
                        .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
                        .unwrap_or(0);
                    State::Head {
                        line: Vec::new(),
                        first: false,
                        status,
                        chunked,
                        length,
                    }
                } else if text.is_empty() {
                    match &self.side {
                        Side::Responses(_) if status == 101 => State::Raw,
                        Side::Responses(head) if bodiless(status, head) => State::head(),
                        // Neither length nor chunked: the body runs to the close.
                        Side::Responses(_) if !chunked && length.is_none() => State::Raw,
                        _ => match (chunked, length) {
                            (true, _) => State::Size(Vec::new()),
                            (false, Some(n)) if n > 0 => State::Fixed(n),
                            _ => State::head(),
                        },
                    }
                } else {
                    let (name, value) = match text.iter().position(|b| *b == b':') {
                        Some(i) => (&text[..i], trim(&text[i + 1..])),
                        None => (text, &[][..]),
                    };
                    let mut chunked = chunked;
                    let mut length = length;
                    if name.eq_ignore_ascii_case(b"transfer-encoding") {
                        chunked = value.to_ascii_lowercase().ends_with(b"chunked");
                    } else if name.eq_ignore_ascii_case(b"content-length") {
                        length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                    } else if name.eq_ignore_ascii_case(b"upgrade") {
                        self.state = State::Raw;
                        return;
                    }
                    State::Head {
                        line: Vec::new(),
                        first: false,
                        status,
                        chunked,
                        length,
                    }
                }
            }
            State::Size(line) => {
                let text = trim_crlf(&line);
                if text.is_empty() {
                    // The CRLF that ends a chunk's data.
                    State::Size(Vec::new())
                } else {
                    match std::str::from_utf8(text)
                        .ok()
                        .and_then(|t| u64::from_str_radix(t, 16).ok())
                    {
                        Some(0) => {
                            self.pending = self.take_trailers();
                            State::Trailers(Vec::new())
                        }
                        Some(n) => State::Data(n),
                        None => State::Raw,
                    }
                }
            }
            State::Trailers(line) => {
                let text = trim_crlf(&line);
                if text.is_empty() {
                    self.write_pending();
                    self.out.extend_from_slice(&line);
                    State::head()
                } else {
                    // One hyper writes itself (declared in a `Trailer` header): not added again.
                    let name = text.split(|b| *b == b':').next().unwrap_or_default();
                    if let (Some(p), Ok(n)) =
                        (self.pending.as_mut(), http::HeaderName::from_bytes(name))
                    {
                        p.remove(n);
                    }
                    self.out.extend_from_slice(&line);
                    State::Trailers(Vec::new())
                }
            }
            other => other,
        };
    }

    /// The current message's trailers, taken at its last chunk.
    fn take_trailers(&self) -> Option<HeaderMap> {
        let slot = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        slot.and_then(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take())
    }

    /// Writes the trailers hyper did not write, before the empty line that ends the message.
    fn write_pending(&mut self) {
        let Some(trailers) = self.pending.take() else {
            return;
        };
        for (name, value) in &trailers {
            self.out.extend_from_slice(name.as_str().as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
    }
}

/// A response without a body: informational, 204, 304, or the answer to a `HEAD`.
fn bodiless(status: u16, head: &AtomicBool) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304 || head.load(Ordering::Acquire)
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &v[start..end]
}

impl<T: AsyncWrite + Unpin> TrailerIo<T> {
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrailerIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrailerIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // One buffer at a time: what was accepted goes out before more is taken.
        ready!(self.poll_out(cx))?;
        self.consume(buf);
        if let Poll::Ready(Err(e)) = self.poll_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_out(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_out(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn written(parts: &[&[u8]], trailers: Option<HeaderMap>) -> String {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let slot: Slot = Arc::new(Mutex::new(None));
        let mut io = TrailerIo::new(
            client,
            Side::Requests,
            Arc::new(Mutex::new(Some(slot.clone()))),
        );
        for (i, p) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                *slot.lock().unwrap() = trailers.clone();
            }
            io.write_all(p).await.unwrap();
        }
        io.flush().await.unwrap();
        drop(io);
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut server, &mut out)
            .await
            .unwrap();
        out
    }

    fn t(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, http::HeaderValue::from_static(v));
        }
        m
    }

    #[tokio::test]
    async fn trailers_follow_the_last_chunk() {
        let head = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n";
        let out = written(
            &[head, b"5\r\n0\r\n\r\n\r\n", b"0\r\n\r\n"],
            Some(t(&[("x-a", "1"), ("x-b", "2")])),
        )
        .await;
        // The body's own "0\r\n\r\n" bytes are data, not the end.
        assert!(
            out.ends_with("5\r\n0\r\n\r\n\r\n0\r\nx-a: 1\r\nx-b: 2\r\n\r\n"),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn one_write_with_head_body_and_end() {
        let out = written(
            &[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
            Some(t(&[("x-t", "v")])),
        )
        .await;
        assert!(out.ends_with("3\r\nabc\r\n0\r\nx-t: v\r\n\r\n"), "{out:?}");
    }

    #[tokio::test]
    async fn fixed_length_and_bodiless_requests_pass_and_the_next_one_is_followed() {
        let out = written(
            &[
                b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
                b"GET / HTTP/1.1\r\n\r\n",
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            ],
            Some(t(&[("x-t", "v")])),
        )
        .await;
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n0\r\n\r\n\
             GET / HTTP/1.1\r\n\r\n\
             POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: v\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn responses_skip_bodiless_ones() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let slot: Slot = Arc::new(Mutex::new(None));
        let head = Arc::new(AtomicBool::new(true));
        let mut io = TrailerIo::new(
            client,
            Side::Responses(head.clone()),
            Arc::new(Mutex::new(Some(slot.clone()))),
        );
        // The answer to a HEAD announces a length it does not send; a 204 and a 100 have no
        // body either; then a chunked response gets its trailers.
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        head.store(false, Ordering::Release);
        io.write_all(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        io.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n")
            .await
            .unwrap();
        *slot.lock().unwrap() = Some(t(&[("x-t", "v")]));
        io.write_all(b"0\r\n\r\n").await.unwrap();
        io.flush().await.unwrap();
        drop(io);
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut server, &mut out)
            .await
            .unwrap();
        assert!(out.ends_with("1\r\nx\r\n0\r\nx-t: v\r\n\r\n"), "{out:?}");
    }

    #[tokio::test]
    async fn trailers_hyper_writes_itself_are_not_repeated() {
        let out = written(
            &[b"POST / HTTP/1.1\r\ntrailer: x-a\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-a: 1\r\n\r\n"],
            Some(t(&[("x-a", "1"), ("x-b", "2")])),
        )
        .await;
        assert!(out.ends_with("0\r\nx-a: 1\r\nx-b: 2\r\n\r\n"), "{out:?}");
    }

    #[tokio::test]
    async fn no_trailers_no_change() {
        let msg = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";
        let out = written(&[msg], None).await;
        assert_eq!(out.as_bytes(), msg);
    }
}
