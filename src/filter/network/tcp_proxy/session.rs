//! One proxied connection: a single task `select!`s over downstream and upstream readiness, the
//! ext_proc side streams and one timer, and moves `Bytes` between them.
//!
//! Rules, as in Envoy's tcp_proxy unless noted:
//! - Half-close: a FIN read on one side is forwarded (through the filters) as `shutdown(SHUT_WR)`
//!   on the other. Once either socket is closed both ways (FIN read and FIN sent), the
//!   connection is flush-closed: what is queued goes out, then FIN on both. extproxy first waits
//!   until no processor holds unanswered bytes (bounded by the message timeout, or 1 s without
//!   one); Envoy 1.40 closes at once and loses them (quirk N4).
//! - A reset (read/write error) on one side resets the other (SO_LINGER 0).
//! - Backpressure: a side is read only while the bytes buffered for the other side (in the
//!   outgoing queue plus held by processors) are under the buffer limit, and each read takes at
//!   most the remaining room, so memory per direction stays under the limit (Envoy: watermarks
//!   on the write buffer; ext_proc bypasses them, quirk N2).
//! - Idle timeout: no bytes read or written on either socket for `idle_timeout` closes both.
//! - A filter's close: CLOSE flushes what is queued for both sides, then FIN; CLOSE_RST resets the
//!   downstream and closes the upstream.

use super::chain::{Chain, Effects};
use super::{Filter, UpstreamStats};
use crate::cluster::Cluster;
use crate::filter::common::attributes::ConnectionInfo;
use crate::filter::network::ext_proc::state::{Chunk, CloseKind, Direction};
use crate::listener::Connection;
use crate::stats::{Counter, GaugeGuard};
use crate::transport_socket::Stream;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a flush-close may take before the sockets are closed anyway (Envoy's default
/// `delayed_close_timeout`).
const FLUSH_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the close waits for processor answers when message timeouts are disabled (N4).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Largest single read; reads are also capped by the room left under the buffer limit.
const READ_SIZE: usize = 64 * 1024;

/// Bytes waiting to be written to one socket.
#[derive(Debug, Default)]
struct Outbound {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// A FIN is queued after the chunks.
    fin: bool,
    /// `shutdown(SHUT_WR)` was done.
    shut: bool,
}

impl Outbound {
    fn push(&mut self, chunk: Chunk) {
        if self.fin {
            // The filters already count and log this (N7); keep the socket consistent.
            if !chunk.data.is_empty() {
                tracing::debug!(
                    bytes = chunk.data.len(),
                    "tcp_proxy: dropping bytes after FIN"
                );
            }
            return;
        }
        if !chunk.data.is_empty() {
            self.bytes += chunk.data.len();
            self.chunks.push_back(chunk.data);
        }
        self.fin |= chunk.end_of_stream;
    }

    /// Writes what the socket takes now; returns the byte count, or the write error.
    fn flush(&mut self, socket: &mut Stream) -> io::Result<usize> {
        let mut written = 0;
        while !self.chunks.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .chunks
                .iter()
                .take(64)
                .map(|b| IoSlice::new(b))
                .collect();
            match socket.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    written += n;
                    self.bytes -= n;
                    while n > 0 {
                        let Some(front) = self.chunks.front_mut() else {
                            break;
                        };
                        if n >= front.len() {
                            n -= front.len();
                            self.chunks.pop_front();
                        } else {
                            front.advance(n);
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(written),
                Err(e) => return Err(e),
            }
        }
        if self.fin && !self.shut {
            self.shut = true;
            // TLS: close_notify, then FIN once the records are out.
            socket.shutdown_write()?;
        }
        socket.flush_pending()?;
        Ok(written)
    }

    /// Nothing is left to write: no chunks, and no TLS records or FIN held by the socket.
    fn is_done(&self, socket: &Stream) -> bool {
        self.chunks.is_empty() && !socket.wants_write()
    }
}

/// What one read produced.
enum ReadResult {
    Chunk(Chunk),
    Nothing,
    Error(io::Error),
}

/// Reads what is available, up to `room` bytes; a FIN read with data gives one chunk with both.
fn read_available(socket: &mut Stream, room: usize) -> ReadResult {
    let mut buf = BytesMut::with_capacity(room.min(READ_SIZE));
    let mut eof = false;
    while buf.len() < room {
        if buf.capacity() == buf.len() {
            // A full first read means more is waiting: grow once, to all the room there is.
            // Growing step by step reallocates (and copies) the buffer each time.
            buf.reserve(room - buf.len());
        }
        let want = room - buf.len();
        match socket.try_read(&mut buf, want) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return ReadResult::Error(e),
        }
    }
    if buf.is_empty() && !eof {
        return ReadResult::Nothing;
    }
    ReadResult::Chunk(Chunk {
        data: buf.freeze(),
        end_of_stream: eof,
    })
}

/// What woke the session.
enum Wake {
    DownReadable,
    UpReadable,
    DownWritable,
    UpWritable,
    Side(Option<crate::filter::network::ext_proc::stream::Tagged>),
    Timer,
}

/// How the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both directions finished, or a flush-close completed: close both sockets normally.
    Normal,
    /// A side failed (RST or write error): reset the other one.
    PeerReset(Side),
    /// A filter asked for CLOSE_RST: reset downstream, close upstream.
    FilterReset,
    /// Idle timeout.
    Idle,
}

/// One of the two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Downstream,
    Upstream,
}

/// Flow-control state of one reading side (for the paused/resumed counters).
#[derive(Debug)]
struct Flow {
    paused: bool,
    paused_total: Counter,
    resumed_total: Counter,
}

impl Flow {
    /// Envoy's watermarks: pause at the limit, resume at half.
    fn update(&mut self, buffered: usize, limit: usize) -> bool {
        if !self.paused && buffered >= limit {
            self.paused = true;
            self.paused_total.inc();
        } else if self.paused && buffered <= limit / 2 {
            self.paused = false;
            self.resumed_total.inc();
        }
        !self.paused
    }
}

/// What the session reports for the access log.
#[derive(Debug, Default)]
pub struct SessionEnd {
    bytes_received: u64,
    bytes_sent: u64,
    downstream_close_reason: Option<String>,
    upstream_close_reason: Option<String>,
    downstream_close_type: &'static str,
    upstream_close_type: &'static str,
    metadata: crate::filter::common::metadata::DynamicMetadata,
}

impl SessionEnd {
    pub(super) fn fill(self, r: &mut super::access_log::ConnectionRecord) {
        let SessionEnd {
            bytes_received,
            bytes_sent,
            downstream_close_reason,
            upstream_close_reason,
            downstream_close_type,
            upstream_close_type,
            metadata,
        } = self;
        r.bytes_received = bytes_received;
        r.bytes_sent = bytes_sent;
        r.downstream_close_reason = downstream_close_reason;
        r.upstream_close_reason = upstream_close_reason;
        r.downstream_close_type = downstream_close_type;
        r.upstream_close_type = upstream_close_type;
        r.metadata = metadata;
    }
}

/// Runs one connection to its end.
pub(super) async fn run(
    conn: Connection,
    mut up: Stream,
    ext_proc: &[Arc<crate::filter::network::ext_proc::Filter>],
    filter: &Filter,
    cluster: &Cluster,
    up_stats: &UpstreamStats,
) -> SessionEnd {
    let Connection {
        stream: mut down,
        id,
        peer,
        local,
        buffer_limit,
        shutdown: _,
    } = conn;
    // Envoy does not cut tcp_proxy connections when draining; the server's drain timer bounds
    // them, so `shutdown` is not watched here.
    let _active = GaugeGuard::new(&cluster.stats.upstream_cx_active);
    let info = ConnectionInfo {
        id,
        source: Some(peer),
        destination: Some(local),
        upstream: up.peer_addr().ok(),
        requested_server_name: down.tls_info().and_then(|t| t.sni).unwrap_or_default(),
        mtls: down.tls_info().is_some_and(|t| t.peer_certificate),
        node_id: filter.node_id.clone(),
    };
    let (mut chain, mut events) = Chain::new(ext_proc, &info, local);
    let stats = &filter.stats;
    // Read path: downstream reads sized by the listener limit, queued under the cluster limit.
    let down_limit = buffer_limit.max(1);
    let up_limit = cluster.buffer_limit.max(1);
    let mut to_up = Outbound::default();
    let mut to_down = Outbound::default();
    let mut down_eof = false;
    let mut up_eof = false;
    let mut down_flow = Flow {
        paused: false,
        paused_total: stats.downstream_flow_control_paused_reading_total.clone(),
        resumed_total: stats.downstream_flow_control_resumed_reading_total.clone(),
    };
    let mut up_flow = Flow {
        paused: false,
        paused_total: up_stats.paused_reading.clone(),
        resumed_total: up_stats.resumed_reading.clone(),
    };
    let mut closing: Option<Instant> = None;
    // How long a close waits for answers when no message timer bounds it.
    let mut grace: Option<Instant> = None;
    let mut idle_deadline = filter.idle_timeout.map(|t| Instant::now() + t);
    let never = Instant::now() + Duration::from_secs(86400 * 365);
    let timer = tokio::time::sleep_until(never);
    tokio::pin!(timer);
    let mut tx_buffered: i64 = 0;
    let mut report = SessionEnd {
        downstream_close_type: "Normal",
        upstream_close_type: "Normal",
        ..Default::default()
    };

    let end = loop {
        let now = Instant::now();
        // 1. Write what the sockets take now.
        let mut progressed = false;
        match to_up.flush(&mut up) {
            Ok(n) => {
                cluster.stats.upstream_cx_tx_bytes_total.add(n as u64);
                progressed |= n > 0;
            }
            Err(e) => {
                tracing::debug!(conn = id, error = %e, "tcp_proxy: upstream write failed");
                break End::PeerReset(Side::Upstream);
            }
        }
        match to_down.flush(&mut down) {
            Ok(n) => {
                stats.downstream_cx_tx_bytes_total.add(n as u64);
                report.bytes_sent += n as u64;
                progressed |= n > 0;
            }
            Err(e) => {
                tracing::debug!(conn = id, error = %e, "tcp_proxy: downstream write failed");
                break End::PeerReset(Side::Downstream);
            }
        }
        // The gauge is shared by every connection of this tcp_proxy: move it by deltas.
        stats
            .downstream_cx_tx_bytes_buffered
            .add(to_down.bytes as i64 - tx_buffered);
        tx_buffered = to_down.bytes as i64;
        if progressed {
            idle_deadline = filter.idle_timeout.map(|t| now + t);
        }

        // 2. Is it over? Like Envoy, once either socket is closed both ways (FIN read and FIN
        // sent) the connection is flush-closed: what is queued goes out, then FIN. Unlike Envoy
        // 1.40, it first waits for the processors' answers to chunks still in flight (N4),
        // reading nothing new meanwhile: until their message timeout, or for CLOSE_GRACE when
        // no timer is armed.
        let settled = (down_eof && to_down.shut) || (up_eof && to_up.shut);
        if let Some(deadline) = closing {
            if (to_up.is_done(&up) && to_down.is_done(&down)) || now >= deadline {
                break End::Normal;
            }
        } else if settled {
            if chain.has_pending() && grace.is_none() && chain.deadline().is_none() {
                grace = Some(now + CLOSE_GRACE);
            }
            let wait = chain.has_pending() && grace.is_none_or(|g| now < g);
            if !wait {
                chain.on_connection_closed();
                to_up.fin = true;
                to_down.fin = true;
                closing = Some(now + FLUSH_CLOSE_TIMEOUT);
                continue;
            }
        }

        // 3. Wait for the next thing to do.
        let open = closing.is_none() && !settled;
        let read_room = down_limit
            .min(up_limit.saturating_sub(to_up.bytes))
            .saturating_sub(chain.in_flight(Direction::Read));
        let write_room = up_limit
            .min(down_limit.saturating_sub(to_down.bytes))
            .saturating_sub(chain.in_flight(Direction::Write));
        let read_down =
            open && !down_eof && down_flow.update(to_up.bytes, up_limit) && read_room > 0;
        let read_up =
            open && !up_eof && up_flow.update(to_down.bytes, down_limit) && write_room > 0;
        // While closing only the flush bound matters (an idle or grace deadline already in the
        // past would otherwise wake the loop at once, again and again).
        let deadline = match closing {
            Some(c) => Some(c),
            None => [idle_deadline, chain.deadline(), grace]
                .into_iter()
                .flatten()
                .min(),
        };
        let deadline = deadline.unwrap_or(never);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        let wake = tokio::select! {
            _ = down.readable(), if read_down => Wake::DownReadable,
            _ = up.readable(), if read_up => Wake::UpReadable,
            _ = down.writable(), if !to_down.is_done(&down) => Wake::DownWritable,
            _ = up.writable(), if !to_up.is_done(&up) => Wake::UpWritable,
            ev = events.recv(), if !chain.is_empty() => Wake::Side(ev),
            _ = &mut timer => Wake::Timer,
        };

        // 4. Handle it.
        let now = Instant::now();
        let mut fx = Effects::default();
        match wake {
            Wake::DownReadable => match read_available(&mut down, read_room) {
                ReadResult::Chunk(chunk) => {
                    let n = chunk.data.len() as u64;
                    stats.downstream_cx_rx_bytes_total.add(n);
                    report.bytes_received += n;
                    down_eof = chunk.end_of_stream;
                    idle_deadline = filter.idle_timeout.map(|t| now + t);
                    chain.ingress(Direction::Read, chunk, now, &mut fx);
                }
                ReadResult::Nothing => {}
                ReadResult::Error(e) => {
                    tracing::debug!(conn = id, error = %e, "tcp_proxy: downstream read failed");
                    break End::PeerReset(Side::Downstream);
                }
            },
            Wake::UpReadable => match read_available(&mut up, write_room) {
                ReadResult::Chunk(chunk) => {
                    cluster
                        .stats
                        .upstream_cx_rx_bytes_total
                        .add(chunk.data.len() as u64);
                    up_eof = chunk.end_of_stream;
                    idle_deadline = filter.idle_timeout.map(|t| now + t);
                    chain.ingress(Direction::Write, chunk, now, &mut fx);
                }
                ReadResult::Nothing => {}
                ReadResult::Error(e) => {
                    tracing::debug!(conn = id, error = %e, "tcp_proxy: upstream read failed");
                    break End::PeerReset(Side::Upstream);
                }
            },
            // Writes happen at the top of the loop.
            Wake::DownWritable | Wake::UpWritable => {}
            Wake::Side(Some(ev)) => chain.on_event(ev, now, &mut fx),
            Wake::Side(None) => {}
            Wake::Timer => {
                if idle_deadline.is_some_and(|d| d <= now) && closing.is_none() {
                    stats.idle_timeout.inc();
                    tracing::debug!(conn = id, "tcp_proxy: idle timeout");
                    break End::Idle;
                }
                chain.on_timer(now, &mut fx);
            }
        }
        for c in fx.to_upstream {
            to_up.push(c);
        }
        for c in fx.to_downstream {
            to_down.push(c);
        }
        if let Some((kind, reason)) = fx.close {
            if closing.is_none() {
                tracing::debug!(
                    conn = id,
                    reason,
                    "tcp_proxy: connection closed by a filter"
                );
                report.downstream_close_reason = Some(reason.to_string());
                report.upstream_close_reason = Some(reason.to_string());
                chain.on_connection_closed();
                if kind == CloseKind::Reset {
                    break End::FilterReset;
                }
                // FlushWrite: what is queued still goes out, then FIN on both sides.
                to_up.fin = true;
                to_down.fin = true;
                closing = Some(now + FLUSH_CLOSE_TIMEOUT);
            }
        }
    };

    chain.on_connection_closed();
    stats.downstream_cx_tx_bytes_buffered.add(-tx_buffered);
    match end {
        End::Normal => {
            let _ = down.shutdown_write();
            let _ = up.shutdown_write();
        }
        End::Idle => {
            report.downstream_close_reason = Some("tcp_session_idle_timeout".into());
            report.upstream_close_reason = Some("tcp_session_idle_timeout".into());
            let _ = down.shutdown_write();
            let _ = up.shutdown_write();
        }
        End::PeerReset(side) => {
            down.arm_reset();
            up.arm_reset();
            let (failed, other) = match side {
                Side::Downstream => (
                    &mut report.downstream_close_type,
                    &mut report.upstream_close_type,
                ),
                Side::Upstream => (
                    &mut report.upstream_close_type,
                    &mut report.downstream_close_type,
                ),
            };
            *failed = "RemoteReset";
            *other = "LocalReset";
        }
        End::FilterReset => {
            report.downstream_close_type = "LocalReset";
            down.arm_reset();
            let _ = to_up.flush(&mut up);
            let _ = up.shutdown_write();
        }
    }
    report.metadata = std::mem::take(&mut chain.metadata);
    report
}
