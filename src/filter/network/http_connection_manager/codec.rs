//! One downstream connection: codec selection (AUTO sniffs the HTTP/2 preface), hyper's
//! HTTP/1.1 or HTTP/2 server, the connection idle timeout and graceful drain. The socket hyper
//! reads (byte counters, HTTP/1.1 checks, Envoy's answers to malformed input) is
//! `downstream_io::ConnIo`.

use super::downstream_io::ConnIo;
use super::stream::{self, ConnShared, OpenStreams};
use super::Filter;
use crate::filter::http::router::http1_trailers::{Side, Slot, TrailerIo};
use crate::filter::http::ConnectionInfo;
use crate::stats::GaugeGuard;
use crate::transport_socket::Stream;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// What the first read must start with for AUTO to pick HTTP/2: Envoy's `CLIENT_MAGIC_PREFIX`,
/// the part of the preface that tells it from an HTTP/1.1 request line.
const H2_MAGIC_PREFIX: &[u8] = b"PRI * HTTP/2";

/// Streams the client may reset before the server accepted them, then GOAWAY
/// `ENHANCE_YOUR_CALM` (h2's default; the rapid-reset mitigation).
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the codec may reset for protocol errors before GOAWAY (h2's default).
const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Picks the codec from the connection's first read, as Envoy does: HTTP/2 if it starts with
/// [`H2_MAGIC_PREFIX`], HTTP/1.1 otherwise, even if it is the start of the preface. Returns
/// `(is_h2, bytes read)`, or `None` if the peer closed first.
async fn sniff(stream: &mut Stream) -> io::Result<Option<(bool, Bytes)>> {
    let mut buf = [0u8; 24];
    let n = stream.read(&mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some((
        buf[..n].starts_with(H2_MAGIC_PREFIX),
        Bytes::copy_from_slice(&buf[..n]),
    )))
}

/// Resolves once the connection has had no open stream, and no request head arriving, for
/// `idle` (Envoy disables the idle timer when the codec opens a stream on a message's first
/// byte).
async fn idle_watch(streams: Arc<OpenStreams>, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let changed = streams.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if streams.idle() {
            tokio::select! {
                _ = tokio::time::sleep(idle) => {
                    if streams.idle() {
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
/// After an idle timeout, a connection that still has not ended after `drain_timeout` and has
/// no stream is closed, as Envoy closes it when its drain timer fires (hyper's HTTP/2 server
/// would otherwise wait for a client that stalls inside the preface).
macro_rules! drive {
    ($conn:expr, $shutdown:expr, $streams:expr, $filter:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let streams: Arc<OpenStreams> = $streams;
        let idle = idle_watch(streams.clone(), $filter.idle_timeout);
        tokio::pin!(idle);
        let cut = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(cut);
        let mut cut_armed = false;
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
                    cut.as_mut().reset(tokio::time::Instant::now() + $filter.drain_timeout);
                    cut_armed = true;
                }
                _ = &mut cut, if cut_armed => {
                    cut_armed = false;
                    if streams.idle() {
                        break;
                    }
                }
            }
        }
    }};
}

/// Serves one connection until it closes.
pub(super) async fn serve(conn: crate::listener::Connection, f: Arc<Filter>) {
    let crate::listener::Connection {
        mut stream,
        id,
        peer,
        local,
        buffer_limit: _,
        shutdown,
    } = conn;
    f.stats.downstream_cx_total.inc();
    let _active = GaugeGuard::new(&f.stats.downstream_cx_active);
    // Over TLS, AUTO follows ALPN when the client negotiated a protocol (as Envoy does).
    let alpn = stream.tls_info().and_then(|t| t.alpn);
    let detected = match (f.codec, alpn.as_deref()) {
        (super::CodecType::Http1, _) => Some((false, Bytes::new())),
        (super::CodecType::Http2, _) => Some((true, Bytes::new())),
        (super::CodecType::Auto, Some(b"h2")) => Some((true, Bytes::new())),
        (super::CodecType::Auto, Some(b"http/1.1")) => Some((false, Bytes::new())),
        (super::CodecType::Auto, _) => {
            let idle = f.idle_timeout.unwrap_or(Duration::MAX);
            tokio::select! {
                r = sniff(&mut stream) => r.ok().flatten(),
                _ = shutdown.cancelled() => None,
                _ = tokio::time::sleep(idle) => {
                    // Envoy counts an idle timeout before the codec exists too.
                    f.stats.downstream_cx_idle_timeout.inc();
                    None
                }
            }
        }
    };
    if let Some((is_h2, prefix)) = detected {
        run(
            stream,
            prefix,
            is_h2,
            ConnectionInfo { id, peer, local },
            &f,
            &shutdown,
        )
        .await;
    }
    f.stats.downstream_cx_destroy.inc();
}

async fn run(
    stream: Stream,
    prefix: Bytes,
    is_h2: bool,
    info: ConnectionInfo,
    f: &Arc<Filter>,
    shutdown: &CancellationToken,
) {
    let streams = Arc::new(OpenStreams::default());
    let tls = matches!(stream, Stream::Tls(_));
    let h1_trailers = (!is_h2 && f.enable_trailers).then(|| (Slot::default(), Arc::default()));
    let shared = Arc::new(ConnShared {
        filter: f.clone(),
        info,
        is_h2,
        tls,
        streams: streams.clone(),
        h1_trailers: h1_trailers.clone(),
    });
    let svc = hyper::service::service_fn(move |req| stream::handle(req, shared.clone()));
    let io = TokioIo::new(ConnIo::new(
        stream,
        prefix,
        f,
        (!is_h2).then(|| streams.clone()),
    ));
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
        if let Some(t) = f.http2.header_table_size {
            b.header_table_size(t);
        }
        if let Some(i) = f.http2.keepalive_interval {
            b.keep_alive_interval(i);
            if let Some(t) = f.http2.keepalive_timeout {
                b.keep_alive_timeout(t);
            }
        }
        // Rapid reset (CVE-2023-44487) and streams the codec itself resets are bounded by
        // h2's limits; set here so that they do not depend on hyper's defaults.
        b.max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS);
        drive!(b.serve_connection(io, svc), shutdown, streams, f);
    } else {
        f.stats.downstream_cx_http1_total.inc();
        let _active = GaugeGuard::new(&f.stats.downstream_cx_http1_active);
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            // The guard in `downstream_io` holds each head until it is complete and runs the
            // head timers itself (with Envoy's 408), so hyper's timer would never fire.
            .header_read_timeout(None)
            .max_header_size(f.max_request_headers_bytes)
            .max_buf_size((f.max_request_headers_bytes + 8192).max(400 * 1024))
            .auto_date_header(false)
            .keep_alive(true);
        if f.max_headers_count != 100 {
            b.max_headers(f.max_headers_count);
        }
        if let Some((slot, head)) = h1_trailers {
            // `enable_trailers`: response trailers are written after the last chunk.
            let current = Arc::new(std::sync::Mutex::new(Some(slot)));
            let io = TokioIo::new(TrailerIo::new(
                io.into_inner(),
                Side::Responses(head),
                current,
            ));
            drive!(b.serve_connection(io, svc), shutdown, streams, f);
        } else {
            drive!(b.serve_connection(io, svc), shutdown, streams, f);
        }
    }
}
