//! Write batching under HTTP/2 connections, for the SDK's server and extproxy's side streams.
//!
//! h2 flushes its codec at the end of every pass of its connection task, and tokio runs that
//! task right after each stream task that hands it a frame (the LIFO slot). So each stream's
//! frames go out in a write of their own: extproxy's side streams made ~2.7 writes per request,
//! where Envoy's codec writes once per event-loop turn for all streams that produced frames
//! (~0.5). Each write is also a wake-up of the peer.
//!
//! [`BatchedWrites`] takes h2's flush as a request: it keeps the bytes, wakes the connection
//! task (which tokio then queues behind the tasks already runnable) and writes them at the
//! connection task's next flush, after it has read the socket again. Every stream that produced
//! frames in between goes out in the same write. The delay is one trip through the run queue,
//! never a timer, and the buffer is bounded: past 64 KiB it writes at once, and a write of
//! 16 KiB or more (a large body chunk) is not copied at all.
//!
//! It relies on the owner working as h2's connection does: every pass reads the socket, then
//! flushes. Anything that flushes and then only waits to read (a TLS handshake) must sit above
//! it only once that exchange is over, or not at all.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// At most this many bytes wait for a deferred flush.
const MAX_BUFFERED: usize = 64 * 1024;
/// Writes this large go to the socket without a copy (after what is buffered, in one `writev`).
const DIRECT_WRITE: usize = 16 * 1024;
/// Slices of one vectored write passed on beside the buffer.
const MAX_SLICES: usize = 8;

/// Where a flush request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Nothing buffered waits for a flush.
    Idle,
    /// A flush was acknowledged and the task woken; the bytes wait for its next pass.
    Requested,
    /// The task came back (it read the socket): the next flush writes.
    Due,
}

/// An I/O stream whose writes are gathered and written once per pass of the task that owns it.
#[derive(Debug)]
pub struct BatchedWrites<S> {
    io: S,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written.
    written: usize,
    flush: Flush,
}

impl<S> BatchedWrites<S> {
    /// Wraps `io`; nothing is allocated until the first buffered write.
    pub fn new(io: S) -> Self {
        BatchedWrites {
            io,
            buf: Vec::new(),
            written: 0,
            flush: Flush::Idle,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    fn buffered(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Marks `n` buffered bytes as written; forgets the buffer once all are.
    fn consume(&mut self, n: usize) {
        self.written += n;
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
        }
    }
}

impl<S: AsyncWrite + Unpin> BatchedWrites<S> {
    /// Writes everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.buffered() > 0 {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
        }
        Poll::Ready(Ok(()))
    }

    /// A large write: what is buffered and `bufs` in one vectored write, `bufs` never copied.
    /// Returns how many bytes of `bufs` were written.
    fn poll_write_direct(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let before = self.buffered();
            if before == 0 {
                return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            }
            let mut iov = [IoSlice::new(&[]); MAX_SLICES + 1];
            iov[0] = IoSlice::new(&self.buf[self.written..]);
            let mut k = 1;
            for b in bufs.iter().take(MAX_SLICES) {
                iov[k] = IoSlice::new(b);
                k += 1;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &iov[..k]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n > before {
                self.consume(before);
                return Poll::Ready(Ok(n - before));
            }
            self.consume(n);
        }
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for BatchedWrites<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BatchedWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // h2's connection task reads before it writes: a read after a flush request is the
        // start of its next pass, so that pass's flush writes.
        if this.flush == Flush::Requested {
            this.flush = Flush::Due;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len >= DIRECT_WRITE {
            return this.poll_write_direct(cx, bufs);
        }
        if this.buffered() + len > MAX_BUFFERED {
            ready!(this.poll_drain(cx))?;
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve(MAX_BUFFERED);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buffered() > 0 {
            match this.flush {
                Flush::Idle => {
                    // Come back after the tasks already runnable have had their turn; their
                    // frames join this write.
                    this.flush = Flush::Requested;
                    cx.waker().wake_by_ref();
                    return Poll::Ready(Ok(()));
                }
                Flush::Requested => return Poll::Ready(Ok(())),
                Flush::Due => ready!(this.poll_drain(cx))?,
            }
        }
        this.flush = Flush::Idle;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.flush = Flush::Idle;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// A socket that records each write call; `room` bytes are accepted before it blocks.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        room: Option<usize>,
        flushes: usize,
        shut: bool,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(room) = this.room.as_mut() {
                if *room == 0 {
                    return Poll::Pending;
                }
                all.truncate(*room);
                *room -= all.len();
            }
            let n = all.len();
            this.writes.push(all);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);
    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn cx_parts() -> (Arc<Wakes>, Waker) {
        let w = Arc::new(Wakes::default());
        (w.clone(), Waker::from(w))
    }

    fn write(s: &mut BatchedWrites<Recorder>, cx: &mut Context<'_>, b: &[u8]) -> usize {
        match Pin::new(s).poll_write(cx, b) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("write: {other:?}"),
        }
    }

    fn flush(s: &mut BatchedWrites<Recorder>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(s).poll_flush(cx)
    }

    /// One pass of h2's connection task: read (pending), then flush.
    fn pass(s: &mut BatchedWrites<Recorder>, cx: &mut Context<'_>) {
        let mut space = [0u8; 8];
        let mut rb = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut *s).poll_read(cx, &mut rb).is_pending());
        assert!(matches!(flush(s, cx), Poll::Ready(Ok(()))));
    }

    #[test]
    fn frames_of_one_pass_and_the_next_go_out_in_one_write() {
        let (wakes, waker) = cx_parts();
        let mut cx = Context::from_waker(&waker);
        let mut s = BatchedWrites::new(Recorder::default());
        assert_eq!(write(&mut s, &mut cx, b"stream 1;"), 9);
        assert!(matches!(flush(&mut s, &mut cx), Poll::Ready(Ok(()))));
        // Acknowledged, not written, and the task asked to come back.
        assert!(s.io.writes.is_empty());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // Another flush in the same pass (h2 flushes when its own buffer fills) still waits.
        write(&mut s, &mut cx, b"stream 2;");
        assert!(matches!(flush(&mut s, &mut cx), Poll::Ready(Ok(()))));
        assert!(s.io.writes.is_empty());
        // The next pass: a frame from a stream that ran in between, then h2's flush writes all.
        let mut space = [0u8; 8];
        let mut rb = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut s).poll_read(&mut cx, &mut rb).is_pending());
        write(&mut s, &mut cx, b"stream 3;");
        assert!(matches!(flush(&mut s, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(s.io.writes, vec![b"stream 1;stream 2;stream 3;".to_vec()]);
        assert_eq!(s.io.flushes, 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // Nothing buffered: a flush goes straight through, no wake.
        pass(&mut s, &mut cx);
        assert_eq!(s.io.writes.len(), 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_large_write_is_not_copied_and_follows_what_is_buffered() {
        let (_wakes, waker) = cx_parts();
        let mut cx = Context::from_waker(&waker);
        let mut s = BatchedWrites::new(Recorder::default());
        write(&mut s, &mut cx, b"head");
        let big = vec![7u8; DIRECT_WRITE];
        let n = write(&mut s, &mut cx, &big);
        assert_eq!(n, DIRECT_WRITE);
        // One vectored write: the buffered bytes first, then the large one.
        assert_eq!(s.io.writes.len(), 1);
        assert_eq!(&s.io.writes[0][..4], b"head");
        assert_eq!(s.io.writes[0].len(), 4 + DIRECT_WRITE);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn a_partial_write_of_the_buffer_keeps_order() {
        let (_wakes, waker) = cx_parts();
        let mut cx = Context::from_waker(&waker);
        let mut s = BatchedWrites::new(Recorder {
            room: Some(3),
            ..Recorder::default()
        });
        write(&mut s, &mut cx, b"abcdef");
        let big = vec![b'x'; DIRECT_WRITE];
        // Three bytes fit, then the socket blocks: the large write waits, unwritten.
        assert!(Pin::new(&mut s).poll_write(&mut cx, &big).is_pending());
        s.io.room = None;
        assert_eq!(write(&mut s, &mut cx, &big), DIRECT_WRITE);
        let all: Vec<u8> = s.io.writes.concat();
        assert_eq!(&all[..6], b"abcdef");
        assert_eq!(all.len(), 6 + DIRECT_WRITE);
    }

    #[test]
    fn the_buffer_is_bounded() {
        let (_wakes, waker) = cx_parts();
        let mut cx = Context::from_waker(&waker);
        let mut s = BatchedWrites::new(Recorder::default());
        let chunk = vec![1u8; DIRECT_WRITE - 1];
        let mut total = 0;
        while total + chunk.len() <= MAX_BUFFERED {
            total += write(&mut s, &mut cx, &chunk);
        }
        assert!(s.io.writes.is_empty());
        write(&mut s, &mut cx, &chunk);
        assert_eq!(s.io.writes.concat().len(), total);
        assert_eq!(s.buffered(), chunk.len());
    }

    #[test]
    fn shutdown_writes_what_is_buffered_first() {
        let (_wakes, waker) = cx_parts();
        let mut cx = Context::from_waker(&waker);
        let mut s = BatchedWrites::new(Recorder::default());
        write(&mut s, &mut cx, b"goaway");
        assert!(matches!(flush(&mut s, &mut cx), Poll::Ready(Ok(()))));
        assert!(matches!(
            Pin::new(&mut s).poll_shutdown(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(s.io.writes, vec![b"goaway".to_vec()]);
        assert!(s.io.shut);
    }

    #[test]
    fn a_blocked_socket_keeps_the_flush_pending() {
        let (_wakes, waker) = cx_parts();
        let mut cx = Context::from_waker(&waker);
        let mut s = BatchedWrites::new(Recorder {
            room: Some(0),
            ..Recorder::default()
        });
        write(&mut s, &mut cx, b"frame");
        assert!(matches!(flush(&mut s, &mut cx), Poll::Ready(Ok(()))));
        let mut space = [0u8; 8];
        let mut rb = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut s).poll_read(&mut cx, &mut rb).is_pending());
        // Due, but the socket is full: the flush is pending (the socket holds the waker).
        assert!(flush(&mut s, &mut cx).is_pending());
        s.io.room = None;
        assert!(matches!(flush(&mut s, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(s.io.writes, vec![b"frame".to_vec()]);
    }
}
