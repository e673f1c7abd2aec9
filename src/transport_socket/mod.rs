//! Transport sockets: how a connection's bytes are carried, plain TCP or TLS
//! (`envoy.transport_sockets.raw_buffer` / `envoy.transport_sockets.tls`).
//!
//! TLS configs are built once at config time ([`tls::ServerTls`] for listeners, [`tls::ClientTls`]
//! for clusters); every connection is then a [`Stream`]: an enum of a plain `TcpStream` or a
//! rustls stream over one. `Stream` is `AsyncRead + AsyncWrite` (for hyper and tonic), and also
//! offers the readiness-style `try_*` calls tcp_proxy's single-task session uses; on plain TCP
//! they are `TcpStream`'s own, so that fast path is unchanged.

pub mod config;
pub mod tls;

use crate::config::core::TransportSocket;
use crate::config::{self as cfg, ConfigError};
use crate::stats::Store;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// `envoy.transport_sockets.tls`.
pub const TLS: &str = "envoy.transport_sockets.tls";
/// `envoy.transport_sockets.raw_buffer` (plain TCP, the default).
pub const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";
const DOWNSTREAM_TYPE: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TYPE: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const RAW_BUFFER_TYPE: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// Reads a `transport_socket`'s name and `@type`: `Ok(None)` for raw_buffer, else the
/// `typed_config` of a TLS context of type `want`.
fn tls_any<'a>(
    ts: &'a TransportSocket,
    path: &str,
    want: &str,
) -> Result<Option<&'a cfg::RawAny>, ConfigError> {
    let TransportSocket { name, typed_config } = ts;
    let tpath = format!("{path}.typed_config");
    match name.as_str() {
        RAW_BUFFER => {
            if let Some(any) = typed_config {
                let ty = cfg::any_type(any, &tpath)?;
                if ty != RAW_BUFFER_TYPE {
                    return Err(ConfigError::new(
                        format!("{tpath}.@type"),
                        format!("expected {RAW_BUFFER_TYPE}, got {ty}"),
                    ));
                }
                if any.len() > 1 {
                    return Err(ConfigError::new(tpath, "RawBuffer has no fields"));
                }
            }
            Ok(None)
        }
        TLS => {
            let any = typed_config.as_ref().ok_or_else(|| {
                ConfigError::new(&tpath, format!("typed_config is required for {TLS}"))
            })?;
            let ty = cfg::any_type(any, &tpath)?;
            if ty != want {
                return Err(ConfigError::new(
                    format!("{tpath}.@type"),
                    format!("expected {want}, got {ty}"),
                ));
            }
            Ok(Some(any))
        }
        other => Err(ConfigError::new(
            format!("{path}.name"),
            format!("unsupported transport socket {other} (supported: {TLS}, {RAW_BUFFER})"),
        )),
    }
}

/// Builds a listener filter chain's `transport_socket` (`path` names it); `None` is plain TCP.
pub fn downstream(
    ts: &Option<TransportSocket>,
    path: &str,
    store: &Store,
    scope: &str,
) -> Result<Option<tls::ServerTls>, ConfigError> {
    let Some(ts) = ts else { return Ok(None) };
    let Some(any) = tls_any(ts, path, DOWNSTREAM_TYPE)? else {
        return Ok(None);
    };
    let tpath = format!("{path}.typed_config");
    let ctx: config::DownstreamTlsContext = cfg::decode_any(any, &tpath)?;
    tls::ServerTls::build(&ctx, &tpath, store, scope).map(Some)
}

/// Builds a cluster's `transport_socket`; `default_alpn` is offered when none is configured.
pub fn upstream(
    ts: &Option<TransportSocket>,
    path: &str,
    store: &Store,
    scope: &str,
    default_alpn: &[&str],
) -> Result<Option<tls::ClientTls>, ConfigError> {
    let Some(ts) = ts else { return Ok(None) };
    let Some(any) = tls_any(ts, path, UPSTREAM_TYPE)? else {
        return Ok(None);
    };
    let tpath = format!("{path}.typed_config");
    let ctx: config::UpstreamTlsContext = cfg::decode_any(any, &tpath)?;
    tls::ClientTls::build(&ctx, &tpath, store, scope, default_alpn).map(Some)
}

/// What the TLS handshake settled, for attributes and codec selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The SNI the client asked for (server side).
    pub sni: Option<String>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: Option<&'static str>,
    /// The peer presented a certificate (verified, since unverified ones fail the handshake).
    pub peer_certificate: bool,
}

/// A connection's byte stream: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (either side); boxed since rustls state is large.
    Tls(Box<TlsStream>),
}

/// A rustls stream over TCP, with the state the readiness-style calls need.
#[derive(Debug)]
pub struct TlsStream {
    inner: tokio_rustls::TlsStream<TcpStream>,
    /// The last read returned plaintext, so more may be buffered inside rustls: the stream is
    /// readable without waiting for the socket.
    maybe_buffered: bool,
    /// `close_notify` was queued; the TCP FIN follows once the TLS bytes are out.
    closing: bool,
    /// TCP `shutdown(SHUT_WR)` was done.
    shut: bool,
}

/// Runs `$body` with `$tcp: &mut TcpStream` and `$conn: &mut ConnectionCommon<_>`.
macro_rules! with_conn {
    ($s:expr, |$tcp:ident, $conn:ident| $body:expr) => {
        match &mut $s.inner {
            tokio_rustls::TlsStream::Client(c) => {
                let ($tcp, $conn) = c.get_mut();
                let $conn: &mut rustls::ConnectionCommon<_> = $conn;
                $body
            }
            tokio_rustls::TlsStream::Server(c) => {
                let ($tcp, $conn) = c.get_mut();
                let $conn: &mut rustls::ConnectionCommon<_> = $conn;
                $body
            }
        }
    };
}

/// `io::Read` / `io::Write` over a non-blocking `TcpStream` (WouldBlock when not ready).
struct TryIo<'a>(&'a TcpStream);

impl Read for TryIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn shutdown_tcp_write(tcp: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
}

impl TlsStream {
    fn new(inner: tokio_rustls::TlsStream<TcpStream>) -> Self {
        TlsStream {
            inner,
            maybe_buffered: false,
            closing: false,
            shut: false,
        }
    }

    fn tcp(&self) -> &TcpStream {
        self.inner.get_ref().0
    }

    fn wants_write(&self) -> bool {
        self.inner.get_ref().1.wants_write() || (self.closing && !self.shut)
    }

    /// Writes pending TLS records; then the deferred FIN. WouldBlock if the socket is full.
    fn flush_tls(&mut self) -> io::Result<()> {
        with_conn!(self, |tcp, conn| {
            while conn.wants_write() {
                conn.write_tls(&mut TryIo(tcp))?;
            }
        });
        if self.closing && !self.shut {
            self.shut = true;
            shutdown_tcp_write(self.tcp())?;
        }
        Ok(())
    }

    fn try_read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let r = with_conn!(self, |tcp, conn| loop {
            match conn.reader().read(dst) {
                Ok(n) => break Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // TCP FIN without close_notify: still the end of the stream, as for Envoy.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(0),
                Err(e) => break Err(e),
            }
            if let Err(e) = conn.read_tls(&mut TryIo(tcp)) {
                break Err(e);
            }
            if let Err(e) = conn.process_new_packets() {
                // Send the alert rustls queued, best effort.
                let _ = conn.write_tls(&mut TryIo(tcp));
                break Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        });
        self.maybe_buffered = matches!(r, Ok(n) if n > 0);
        // Reading may queue TLS records (key updates, alerts): send them now if we can.
        match self.flush_tls() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        r
    }

    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush_tls()?;
        let n = with_conn!(self, |_tcp, conn| conn.writer().write_vectored(bufs))?;
        match self.flush_tls() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl Stream {
    /// Wraps a server-side TLS stream.
    pub fn server_tls(s: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(TlsStream::new(tokio_rustls::TlsStream::Server(s))))
    }

    /// Wraps a client-side TLS stream.
    pub fn client_tls(s: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(TlsStream::new(tokio_rustls::TlsStream::Client(s))))
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => t.tcp(),
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// What the TLS handshake settled; `None` on plain TCP.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let Stream::Tls(t) = self else { return None };
        let common = t.inner.get_ref().1;
        let sni = match &t.inner {
            tokio_rustls::TlsStream::Server(s) => s.get_ref().1.server_name().map(str::to_string),
            tokio_rustls::TlsStream::Client(_) => None,
        };
        Some(TlsInfo {
            alpn: common.alpn_protocol().map(<[u8]>::to_vec),
            sni,
            version: common.protocol_version().and_then(tls::version_name),
            peer_certificate: common.peer_certificates().is_some_and(|c| !c.is_empty()),
        })
    }

    // === readiness-style calls for tcp_proxy's session ===

    /// Resolves when [`Stream::try_read`] may make progress.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.readable().await,
            Stream::Tls(t) if t.maybe_buffered => Ok(()),
            Stream::Tls(t) => t.tcp().readable().await,
        }
    }

    /// Resolves when the socket takes writes.
    pub async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    /// Reads up to `want` bytes onto the end of `buf` without waiting; `Ok(0)` is the end of the
    /// stream (TCP FIN, or TLS close_notify).
    pub fn try_read(&mut self, buf: &mut bytes::BytesMut, want: usize) -> io::Result<usize> {
        use bytes::BufMut as _;
        match self {
            Stream::Plain(s) => s.try_read_buf(&mut buf.limit(want)),
            Stream::Tls(t) => {
                // rustls copies plaintext into initialized memory only.
                let start = buf.len();
                buf.resize(start + want, 0);
                let r = t.try_read(&mut buf[start..]);
                buf.truncate(start + *r.as_ref().unwrap_or(&0));
                r
            }
        }
    }

    /// Writes what the socket takes now (WouldBlock when nothing).
    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.try_write_vectored(bufs),
            Stream::Tls(t) => t.try_write_vectored(bufs),
        }
    }

    /// TLS records (or a deferred FIN) are waiting for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.wants_write(),
        }
    }

    /// Sends what [`Stream::wants_write`] holds, as far as the socket takes it now.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => match t.flush_tls() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                r => r,
            },
        }
    }

    /// Half-closes the write side: TCP FIN, or TLS close_notify followed by FIN.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => shutdown_tcp_write(s),
            Stream::Tls(t) => {
                if !t.closing {
                    t.closing = true;
                    with_conn!(t, |_tcp, conn| conn.send_close_notify());
                }
                match t.flush_tls() {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                    r => r,
                }
            }
        }
    }

    /// Makes the close send RST instead of FIN (SO_LINGER 0).
    pub fn arm_reset(&self) {
        let _ = socket2::SockRef::from(self.tcp()).set_linger(Some(std::time::Duration::ZERO));
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(t) => Pin::new(&mut t.inner).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(t) => Pin::new(&mut t.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(t) => Pin::new(&mut t.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(t) => t.inner.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(t) => Pin::new(&mut t.inner).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(t) => Pin::new(&mut t.inner).poll_shutdown(cx),
        }
    }
}
