//! The per-connection protocol state of one network ext_proc filter, without I/O.
//!
//! The async glue (`tcp_proxy::session`) feeds it events — bytes to process, processor
//! responses, the end of the side stream, timer expiry, connection close — and carries out the
//! [`Action`]s it returns: send a request, forward bytes to the next filter, close the side
//! stream, close or reset the connection.
//!
//! It follows Envoy 1.40 (`ext_proc.cc`) step by step, counters included, except where Envoy
//! loses data (spec §9.1, "do better"):
//! - **N1** each direction keeps its sent chunks in a FIFO until answered; one response pairs
//!   with the oldest unanswered request of its direction. `UNMODIFIED` with empty data forwards
//!   the original bytes. Non-empty data is forwarded whatever the status; unsolicited responses
//!   (nothing pending) are injected as they are.
//! - **N2** [`ExtProcState::in_flight`] exposes unanswered bytes so the glue pauses reading.
//! - **N3** on fail-open, OK close and bypass the unanswered chunks are forwarded unprocessed, in
//!   order, before any later bytes.
//! - **N5** while a direction has unanswered chunks its timer keeps running (re-armed by each
//!   answer), so a pipelined chunk cannot go unanswered without a timeout.
//! - **N6** CLOSE / CLOSE_RST apply the response's metadata; CLOSE also injects its data before
//!   the flush-close.
//! - **N7** bytes injected after the processor ended a direction are dropped with a counter and a
//!   log line.
//!
//! N4 (delaying the connection close until responses are in) lives in the glue, which keeps the
//! connection open while [`ExtProcState::has_pending`] is true.

use super::config::Settings;
use super::stats::Stats;
use crate::filter::common::attributes::{self, ConnectionInfo};
use crate::filter::common::metadata::DynamicMetadata;
use crate::pb::network_ext_proc::processing_response::{ConnectionStatus, DataProcessedStatus};
use crate::pb::network_ext_proc::{Data, ProcessingRequest, ProcessingResponse};
use bytes::Bytes;
use envoy_types::pb::google::protobuf::value::Kind;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::time::Instant;

/// Which way bytes flow, in Envoy's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Downstream → upstream (`onData`, `read_data`).
    Read,
    /// Upstream → downstream (`onWrite`, `write_data`).
    Write,
}

/// Bytes moving through the chain, with the half-close flag.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    /// The bytes (may be empty for a bare FIN).
    pub data: Bytes,
    /// The sender half-closed after these bytes.
    pub end_of_stream: bool,
}

/// How the filter wants the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// Flush what is queued for the client, then FIN (`FlushWrite`).
    Flush,
    /// RST at once (`AbortReset`).
    Reset,
}

/// What the glue must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this request on the side stream.
    Send(ProcessingRequest),
    /// Hand a chunk to the next filter in `dir` (or to the socket after the last one).
    Forward(Direction, Chunk),
    /// Drop the side stream (END_STREAM then RST_STREAM, as Envoy does).
    CloseStream,
    /// Close the downstream connection (tcp_proxy then closes the upstream).
    CloseConnection(CloseKind, &'static str),
}

/// Why the side stream could not be started (Envoy's `start()` returning null).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// `envoy_grpc.cluster_name` names no cluster.
    ClusterMissing,
}

/// How the processor ended the side stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// grpc-status OK.
    Ok,
    /// Any other status (including transport failures, reported as UNAVAILABLE).
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    NotStarted,
    Open,
    Closed,
}

/// One direction's unanswered chunks and timer.
#[derive(Debug, Default)]
struct Dir {
    /// Sent and not yet answered, oldest first (N1, N3).
    pending: VecDeque<Chunk>,
    /// Sum of `pending` data lengths (N2).
    in_flight: usize,
    /// When the message timer fires, if armed.
    deadline: Option<Instant>,
    /// A FIN went out for this direction; later bytes cannot be delivered (N7).
    ended: bool,
}

/// The network ext_proc filter's state for one connection.
#[derive(Debug)]
pub struct ExtProcState {
    settings: Arc<Settings>,
    stats: Stats,
    /// Evaluated into `attributes` on the first request.
    info: ConnectionInfo,
    stream: Stream,
    /// Envoy's `processing_complete_`: once set, bytes pass through untouched for good.
    complete: bool,
    attributes_sent: bool,
    read: Dir,
    write: Dir,
}

/// Key of the attributes Struct in `ProcessingRequest.attributes`.
const ATTRIBUTES_KEY: &str = "envoy.filters.network.ext_proc";

impl ExtProcState {
    /// A fresh state for a new connection.
    pub fn new(settings: Arc<Settings>, stats: Stats, info: ConnectionInfo) -> Self {
        ExtProcState {
            settings,
            stats,
            info,
            stream: Stream::NotStarted,
            complete: false,
            attributes_sent: false,
            read: Dir::default(),
            write: Dir::default(),
        }
    }

    fn dir(&mut self, d: Direction) -> &mut Dir {
        match d {
            Direction::Read => &mut self.read,
            Direction::Write => &mut self.write,
        }
    }

    /// Unanswered bytes in `d` (the glue pauses the source while this reaches the buffer limit).
    pub fn in_flight(&self, d: Direction) -> usize {
        match d {
            Direction::Read => self.read.in_flight,
            Direction::Write => self.write.in_flight,
        }
    }

    /// Whether any chunk (even a bare FIN) awaits an answer.
    pub fn has_pending(&self) -> bool {
        !self.read.pending.is_empty() || !self.write.pending.is_empty()
    }

    /// The earliest armed message timer.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.read.deadline, self.write.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn processes(&self, d: Direction) -> bool {
        match d {
            Direction::Read => self.settings.process_read,
            Direction::Write => self.settings.process_write,
        }
    }

    /// Bytes (or a FIN) reached this filter in direction `d` (`onData` / `onWrite`). `open` starts
    /// the side stream; it is called at most once per connection, on the first processed chunk.
    pub fn on_data(
        &mut self,
        d: Direction,
        chunk: Chunk,
        md: &DynamicMetadata,
        now: Instant,
        open: impl FnOnce() -> Result<(), OpenError>,
        out: &mut Vec<Action>,
    ) {
        if !self.processes(d) || self.complete {
            self.emit(d, chunk, out);
            return;
        }
        if self.stream == Stream::NotStarted {
            match open() {
                Ok(()) => {
                    self.stream = Stream::Open;
                    self.stats.streams_started.inc();
                }
                Err(OpenError::ClusterMissing) => {
                    self.open_failed(d, chunk, out);
                    return;
                }
            }
        }
        let mut req = ProcessingRequest {
            metadata: md.forward(&self.settings.forward_untyped, &self.settings.forward_typed),
            ..Default::default()
        };
        if !self.attributes_sent {
            self.attributes_sent = true;
            if !self.settings.attributes.is_empty() {
                let attrs = attributes::evaluate(&self.settings.attributes, &self.info);
                req.attributes.insert(ATTRIBUTES_KEY.to_string(), attrs);
            }
        }
        // `Bytes` in the generated message (`crate::pb`): the chunk is shared, not copied.
        let data = Some(Data {
            data: chunk.data.clone(),
            end_of_stream: chunk.end_of_stream,
        });
        match d {
            Direction::Read => {
                req.read_data = data;
                self.stats.read_data_sent.inc();
            }
            Direction::Write => {
                req.write_data = data;
                self.stats.write_data_sent.inc();
            }
        }
        let timeout = self.settings.message_timeout;
        let dir = self.dir(d);
        dir.in_flight += chunk.data.len();
        dir.pending.push_back(chunk);
        dir.deadline = timeout.map(|t| now + t);
        self.stats.stream_msgs_sent.inc();
        out.push(Action::Send(req));
    }

    /// Envoy with a missing cluster: `onGrpcError(UNAVAILABLE)` fires inside `start()`, which then
    /// returns null, so both the gRPC-error and the open-failure paths run (`connections_closed`
    /// is counted twice when failing closed; `failure_mode_allowed` twice when failing open).
    fn open_failed(&mut self, d: Direction, chunk: Chunk, out: &mut Vec<Action>) {
        tracing::warn!(
            "network ext_proc: processor cluster not found; cannot open the side stream"
        );
        self.complete = true;
        self.stream = Stream::Closed;
        self.stats.streams_grpc_error.inc();
        self.stats.stream_open_failures.inc();
        if self.settings.failure_mode_allow {
            self.stats.failure_mode_allowed.add(2);
            // The current chunk passes through unmodified.
            self.emit(d, chunk, out);
        } else {
            self.stats.connections_closed.add(2);
            out.push(Action::CloseConnection(
                CloseKind::Flush,
                "ext_proc_stream_error",
            ));
        }
    }

    /// A response from the processor.
    pub fn on_response(
        &mut self,
        resp: ProcessingResponse,
        md: &mut DynamicMetadata,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.complete || self.stream != Stream::Open {
            self.stats.spurious_msgs_received.inc();
            return;
        }
        self.stats.stream_msgs_received.inc();
        let close = match ConnectionStatus::try_from(resp.connection_status) {
            Ok(ConnectionStatus::Continue) => None,
            Ok(ConnectionStatus::Close) => Some(CloseKind::Flush),
            Ok(ConnectionStatus::CloseRst) => Some(CloseKind::Reset),
            Err(_) => {
                tracing::warn!(
                    status = resp.connection_status,
                    "network ext_proc: unknown connection_status, continuing"
                );
                None
            }
        };
        let unmodified = resp.data_processing_status == DataProcessedStatus::Unmodified as i32;
        // Envoy applies metadata only when the connection stays open; extproxy always does (N6).
        if let Some(dm) = resp.dynamic_metadata {
            for (ns, v) in dm.fields {
                if !self.settings.receive_untyped.contains(&ns) {
                    continue;
                }
                if let Some(Kind::StructValue(s)) = v.kind {
                    md.merge(&ns, s);
                }
            }
        }
        if let Some(kind) = close {
            if kind == CloseKind::Flush {
                // N6: the data of a CLOSE goes out before the FIN.
                self.inject_any(resp.read_data, resp.write_data, unmodified, now, out);
            }
            self.complete = true;
            self.clear_pending();
            self.close_stream(out);
            if kind == CloseKind::Reset {
                self.stats.connections_reset.inc();
            }
            self.stats.connections_closed.inc();
            let reason = match kind {
                CloseKind::Flush => "ext_proc_close_requested",
                CloseKind::Reset => "ext_proc_reset_requested",
            };
            out.push(Action::CloseConnection(kind, reason));
            return;
        }
        if !self.inject_any(resp.read_data, resp.write_data, unmodified, now, out) {
            // Envoy quirk N8 (matched): the pending request and its timer stay as they are.
            self.stats.empty_response_received.inc();
        }
        if resp.close_stream_to_ext_proc_server {
            self.complete = true;
            self.close_stream(out);
            self.flush_pending(out);
        }
    }

    /// Injects `read_data` if present, else `write_data`; false if neither was present.
    fn inject_any(
        &mut self,
        read: Option<Data>,
        write: Option<Data>,
        unmodified: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        if let Some(data) = read {
            self.inject(Direction::Read, data, unmodified, now, out);
            self.stats.read_data_injected.inc();
        } else if let Some(data) = write {
            self.inject(Direction::Write, data, unmodified, now, out);
            self.stats.write_data_injected.inc();
        } else {
            return false;
        }
        true
    }

    fn inject(
        &mut self,
        d: Direction,
        data: Data,
        unmodified: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let timeout = self.settings.message_timeout;
        let dir = self.dir(d);
        let original = dir.pending.pop_front();
        if let Some(o) = &original {
            dir.in_flight -= o.data.len();
        }
        // Envoy stops the timer here even if chunks remain; extproxy keeps it running (N5).
        dir.deadline = if dir.pending.is_empty() {
            None
        } else {
            timeout.map(|t| now + t)
        };
        let Data {
            data,
            end_of_stream,
        } = data;
        let bytes = match original {
            // N1: `UNMODIFIED` without data means "forward what I was sent".
            Some(o) if unmodified && data.is_empty() => o.data,
            _ => data,
        };
        self.emit(
            d,
            Chunk {
                data: bytes,
                end_of_stream,
            },
            out,
        );
    }

    /// Forwards a chunk unless the direction already ended (N7: counted and logged).
    fn emit(&mut self, d: Direction, chunk: Chunk, out: &mut Vec<Action>) {
        let dir = self.dir(d);
        if dir.ended {
            if !chunk.data.is_empty() {
                tracing::warn!(direction = ?d, bytes = chunk.data.len(), "network ext_proc: dropping bytes after end_of_stream");
                match d {
                    Direction::Read => self.stats.read_data_dropped_after_eos.inc(),
                    Direction::Write => self.stats.write_data_dropped_after_eos.inc(),
                }
            }
            return;
        }
        if chunk.end_of_stream {
            dir.ended = true;
        } else if chunk.data.is_empty() {
            // The filter manager only calls filters with bytes or a FIN.
            return;
        }
        out.push(Action::Forward(d, chunk));
    }

    /// The processor ended the side stream.
    pub fn on_stream_end(&mut self, end: StreamEnd, out: &mut Vec<Action>) {
        if self.stream != Stream::Open {
            return;
        }
        // Closed remotely: the local close that follows does not count `streams_closed`.
        self.stream = Stream::Closed;
        out.push(Action::CloseStream);
        self.complete = true;
        for dir in [&mut self.read, &mut self.write] {
            dir.deadline = None;
        }
        match end {
            StreamEnd::Ok => {
                // An OK close never closes the connection, whatever failure_mode_allow says.
                self.stats.streams_grpc_close.inc();
                self.flush_pending(out);
            }
            StreamEnd::Error(message) => {
                tracing::warn!(%message, "network ext_proc: side stream failed");
                self.stats.streams_grpc_error.inc();
                self.fail("ext_proc_grpc_error", out);
            }
        }
    }

    /// Fail open (pass the retained chunks through) or closed (close the connection).
    fn fail(&mut self, reason: &'static str, out: &mut Vec<Action>) {
        if self.settings.failure_mode_allow {
            self.stats.failure_mode_allowed.inc();
            self.flush_pending(out);
        } else {
            self.clear_pending();
            self.stats.connections_closed.inc();
            out.push(Action::CloseConnection(CloseKind::Flush, reason));
        }
    }

    /// Time passed: fires the message timer if it is due.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.complete || self.deadline().is_none_or(|d| d > now) {
            return;
        }
        tracing::warn!("network ext_proc: message timeout");
        self.stats.message_timeouts.inc();
        self.complete = true;
        self.close_stream(out);
        self.fail("ext_proc_message_timeout", out);
    }

    /// The connection is closing (Envoy's `LocalClose` / `RemoteClose` event).
    pub fn on_connection_closed(&mut self, out: &mut Vec<Action>) {
        self.complete = true;
        self.clear_pending();
        self.close_stream(out);
    }

    /// Closes the stream locally, counting `streams_closed` if it was open.
    fn close_stream(&mut self, out: &mut Vec<Action>) {
        self.read.deadline = None;
        self.write.deadline = None;
        if self.stream == Stream::Open {
            self.stats.streams_closed.inc();
            out.push(Action::CloseStream);
        }
        if self.stream != Stream::NotStarted {
            self.stream = Stream::Closed;
        }
    }

    /// N3: the unanswered chunks go on unprocessed, read first then write (the directions are
    /// independent, so only the order within each matters).
    fn flush_pending(&mut self, out: &mut Vec<Action>) {
        for d in [Direction::Read, Direction::Write] {
            let dir = self.dir(d);
            dir.in_flight = 0;
            dir.deadline = None;
            let chunks = std::mem::take(&mut dir.pending);
            for c in chunks {
                self.emit(d, c, out);
            }
        }
    }

    fn clear_pending(&mut self) {
        for dir in [&mut self.read, &mut self.write] {
            dir.pending.clear();
            dir.in_flight = 0;
            dir.deadline = None;
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
