//! The network ext_proc state machine (`filter::network::ext_proc::state`, no I/O) driven the
//! way `tcp_proxy`'s glue drives it: bytes and FINs in both directions (paused while a
//! direction's unanswered bytes reach the buffer limit), arbitrary processor replies
//! (structured, or any bytes decoded as a `ProcessingResponse`), side-stream ends, timer
//! expiries and the connection closing.
//!
//! Checks: no panic; the side stream is opened at most once; nothing is forwarded in a
//! direction after its FIN, nor anywhere after the filter closed the connection; unanswered
//! bytes stay bounded; once the connection is closed nothing is pending and no timer is armed.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use extproxy::pb::network_ext_proc::{Data, ProcessingResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use extproxy::filter::common::attributes::{compile_all, ConnectionInfo};
use extproxy::filter::common::metadata::DynamicMetadata;
use extproxy::filter::network::ext_proc::config::Settings;
use extproxy::filter::network::ext_proc::state::{
    Action, Chunk, Direction, ExtProcState, OpenError, StreamEnd,
};
use extproxy::filter::network::ext_proc::stats::Stats;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The glue's pause threshold in this harness.
const LIMIT: usize = 1024;
const MAX_CHUNK: usize = 512;

#[derive(Arbitrary, Debug)]
struct Config {
    failure_mode_allow: bool,
    process_read: bool,
    process_write: bool,
    message_timeout_ms: Option<u8>,
    receive: bool,
    attributes: bool,
    cluster_missing: bool,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum D {
    Read,
    Write,
}

impl D {
    fn get(self) -> Direction {
        match self {
            D::Read => Direction::Read,
            D::Write => Direction::Write,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Reply {
    /// Any bytes, decoded as a `ProcessingResponse` (skipped when they do not decode).
    Raw(Vec<u8>),
    Structured {
        read: Option<(Vec<u8>, bool)>,
        write: Option<(Vec<u8>, bool)>,
        status: u8,
        connection: u8,
        metadata: Option<(String, String)>,
        close_stream: bool,
    },
}

impl Reply {
    fn get(&self) -> Option<ProcessingResponse> {
        match self {
            Reply::Raw(b) => ProcessingResponse::decode(b.as_slice()).ok(),
            Reply::Structured { read, write, status, connection, metadata, close_stream } => {
                let data = |d: &Option<(Vec<u8>, bool)>| {
                    d.as_ref().map(|(data, eos)| Data { data: data.clone().into(), end_of_stream: *eos })
                };
                Some(ProcessingResponse {
                    read_data: data(read),
                    write_data: data(write),
                    data_processing_status: i32::from(*status % 4),
                    connection_status: i32::from(*connection % 4),
                    dynamic_metadata: metadata.as_ref().map(|(ns, v)| Struct {
                        fields: [(
                            ns.clone(),
                            Value {
                                kind: Some(Kind::StructValue(Struct {
                                    fields: [("k".to_string(), Value { kind: Some(Kind::StringValue(v.clone())) })]
                                        .into_iter()
                                        .collect(),
                                })),
                            },
                        )]
                        .into_iter()
                        .collect(),
                    }),
                    close_stream_to_ext_proc_server: *close_stream,
                })
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Event {
    Data { d: D, len: u16, byte: u8, eos: bool },
    Reply(Reply),
    StreamOk,
    StreamError(String),
    /// Time passes by this many milliseconds, then the timer is checked.
    Tick(u8),
    ConnectionClosed,
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    events: Vec<Event>,
}

#[derive(Default)]
struct Harness {
    /// Input FIN seen, per direction.
    fin_in: [bool; 2],
    /// Output FIN forwarded, per direction.
    fin_out: [bool; 2],
    closed: bool,
    opens: usize,
}

fn idx(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

impl Harness {
    fn check(&mut self, sm: &ExtProcState, out: &mut Vec<Action>) {
        for a in out.drain(..) {
            match a {
                Action::Forward(d, chunk) => {
                    assert!(!self.closed, "{d:?} forwarded after the connection closed");
                    assert!(!self.fin_out[idx(d)], "{d:?} forwarded after its FIN");
                    self.fin_out[idx(d)] = chunk.end_of_stream;
                }
                Action::CloseConnection(..) => self.closed = true,
                Action::Send(_) | Action::CloseStream => {}
            }
        }
        assert!(self.opens <= 1, "side stream opened {} times", self.opens);
        for d in [Direction::Read, Direction::Write] {
            assert!(sm.in_flight(d) <= LIMIT + MAX_CHUNK, "{d:?}: {} bytes unanswered", sm.in_flight(d));
        }
        if !sm.has_pending() {
            assert_eq!(sm.in_flight(Direction::Read) + sm.in_flight(Direction::Write), 0, "bytes in flight with nothing pending");
        }
    }
}

fuzz_target!(|input: Input| {
    let c = &input.config;
    let attributes = if c.attributes {
        compile_all(&["source.address".to_string(), "connection.id".to_string()]).unwrap_or_default()
    } else {
        Vec::new()
    };
    let settings = Settings {
        failure_mode_allow: c.failure_mode_allow,
        process_read: c.process_read,
        process_write: c.process_write,
        message_timeout: c.message_timeout_ms.map(|ms| Duration::from_millis(u64::from(ms))),
        forward_untyped: vec!["ns".to_string()],
        forward_typed: Vec::new(),
        receive_untyped: if c.receive { vec!["ns".to_string()] } else { Vec::new() },
        attributes,
    };
    let info = ConnectionInfo { id: 7, source: Some(([127, 0, 0, 1], 5000).into()), ..Default::default() };
    let mut sm = ExtProcState::new(Arc::new(settings), Stats::default(), info);
    let mut md = DynamicMetadata::default();
    let mut now = Instant::now();
    let mut h = Harness::default();
    let mut out = Vec::new();
    let mut conn_closed = false;
    for ev in &input.events {
        match ev {
            Event::Data { d, len, byte, eos } => {
                let d = d.get();
                // The glue stops reading a direction after its FIN, after a close, and while
                // the direction's unanswered bytes are at the limit.
                if h.fin_in[idx(d)] || h.closed || conn_closed || sm.in_flight(d) >= LIMIT {
                    continue;
                }
                h.fin_in[idx(d)] = *eos;
                let chunk = Chunk { data: Bytes::from(vec![*byte; usize::from(*len) % (MAX_CHUNK + 1)]), end_of_stream: *eos };
                let opens = &mut h.opens;
                let missing = c.cluster_missing;
                sm.on_data(d, chunk, &md, now, || {
                    *opens += 1;
                    if missing { Err(OpenError::ClusterMissing) } else { Ok(()) }
                }, &mut out);
            }
            Event::Reply(r) => {
                if let Some(r) = r.get() {
                    sm.on_response(r, &mut md, now, &mut out);
                }
            }
            Event::StreamOk => sm.on_stream_end(StreamEnd::Ok, &mut out),
            Event::StreamError(m) => sm.on_stream_end(StreamEnd::Error(m.clone()), &mut out),
            Event::Tick(ms) => {
                now += Duration::from_millis(u64::from(*ms));
                sm.on_timer(now, &mut out);
            }
            Event::ConnectionClosed => {
                conn_closed = true;
                sm.on_connection_closed(&mut out);
                h.check(&sm, &mut out);
                // Closing means the glue forwards nothing more.
                h.closed = true;
                assert!(!sm.has_pending(), "pending chunks after the connection closed");
                assert!(sm.deadline().is_none(), "timer armed after the connection closed");
            }
        }
        h.check(&sm, &mut out);
    }
    sm.on_connection_closed(&mut out);
    h.check(&sm, &mut out);
});
