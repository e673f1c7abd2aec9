//! Step-by-step tests of the network ext_proc state machine (no sockets, no gRPC).

#![allow(clippy::unwrap_used)]

use super::*;
use crate::filter::common::attributes::compile_all;
use crate::filter::common::metadata::value;
use envoy_types::pb::google::protobuf::Struct;
use std::time::Duration;

const T: Duration = Duration::from_millis(200);

struct Harness {
    sm: ExtProcState,
    stats: Stats,
    md: DynamicMetadata,
    now: Instant,
    opens: usize,
    open_result: Result<(), OpenError>,
}

fn settings() -> Settings {
    Settings {
        failure_mode_allow: false,
        process_read: true,
        process_write: true,
        message_timeout: Some(T),
        forward_untyped: vec![],
        forward_typed: vec![],
        receive_untyped: vec![],
        attributes: vec![],
    }
}

impl Harness {
    fn new(s: Settings) -> Self {
        let stats = Stats::default();
        let info = ConnectionInfo {
            id: 1,
            ..Default::default()
        };
        Harness {
            sm: ExtProcState::new(Arc::new(s), stats.clone(), info),
            stats,
            md: DynamicMetadata::default(),
            now: Instant::now(),
            opens: 0,
            open_result: Ok(()),
        }
    }

    fn data(&mut self, d: Direction, bytes: &'static [u8], eos: bool) -> Vec<Action> {
        let mut out = Vec::new();
        let (opens, result) = (&mut self.opens, self.open_result);
        let open = || {
            *opens += 1;
            result
        };
        self.sm.on_data(
            d,
            Chunk {
                data: Bytes::from_static(bytes),
                end_of_stream: eos,
            },
            &self.md,
            self.now,
            open,
            &mut out,
        );
        out
    }

    fn respond(&mut self, resp: ProcessingResponse) -> Vec<Action> {
        let mut out = Vec::new();
        self.sm.on_response(resp, &mut self.md, self.now, &mut out);
        out
    }

    fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        let mut out = Vec::new();
        self.sm.on_timer(self.now, &mut out);
        out
    }

    fn end(&mut self, end: StreamEnd) -> Vec<Action> {
        let mut out = Vec::new();
        self.sm.on_stream_end(end, &mut out);
        out
    }
}

fn read(data: &[u8], eos: bool) -> ProcessingResponse {
    ProcessingResponse {
        read_data: Some(Data {
            data: Bytes::copy_from_slice(data),
            end_of_stream: eos,
        }),
        ..Default::default()
    }
}

fn write(data: &[u8], eos: bool) -> ProcessingResponse {
    ProcessingResponse {
        write_data: Some(Data {
            data: Bytes::copy_from_slice(data),
            end_of_stream: eos,
        }),
        ..Default::default()
    }
}

fn fwd(d: Direction, data: &'static [u8], eos: bool) -> Action {
    Action::Forward(
        d,
        Chunk {
            data: Bytes::from_static(data),
            end_of_stream: eos,
        },
    )
}

fn sent(actions: &[Action]) -> &ProcessingRequest {
    match actions {
        [Action::Send(r)] => r,
        other => panic!("expected one Send, got {other:?}"),
    }
}

use Direction::{Read, Write};

#[test]
fn read_chunk_is_sent_then_the_response_is_forwarded() {
    let mut h = Harness::new(settings());
    let out = h.data(Read, b"hello", false);
    let req = sent(&out);
    assert_eq!(
        req.read_data,
        Some(Data {
            data: Bytes::from_static(b"hello"),
            end_of_stream: false
        })
    );
    assert!(req.write_data.is_none() && req.metadata.is_none() && req.attributes.is_empty());
    assert_eq!(h.opens, 1);
    assert_eq!(h.sm.in_flight(Read), 5);
    assert_eq!(h.sm.deadline(), Some(h.now + T));
    assert_eq!(
        h.respond(read(b"HELLO", false)),
        vec![fwd(Read, b"HELLO", false)]
    );
    assert_eq!(h.sm.in_flight(Read), 0);
    assert_eq!(h.sm.deadline(), None);
    // The stream is reused, not re-opened.
    sent(&h.data(Write, b"world", false));
    assert_eq!(h.opens, 1);
    let s = &h.stats;
    assert_eq!(
        (
            s.streams_started.value(),
            s.stream_msgs_sent.value(),
            s.stream_msgs_received.value()
        ),
        (1, 2, 1)
    );
    assert_eq!(
        (
            s.read_data_sent.value(),
            s.write_data_sent.value(),
            s.read_data_injected.value()
        ),
        (1, 1, 1)
    );
}

#[test]
fn skip_direction_passes_through_without_a_stream() {
    let mut h = Harness::new(Settings {
        process_read: false,
        ..settings()
    });
    assert_eq!(h.data(Read, b"abc", true), vec![fwd(Read, b"abc", true)]);
    assert_eq!(h.opens, 0);
    assert_eq!(h.stats.streams_started.value(), 0);
    sent(&h.data(Write, b"x", false));
}

#[test]
fn unmodified_with_empty_data_forwards_the_original_bytes() {
    let mut h = Harness::new(settings());
    h.data(Read, b"one", false);
    h.data(Read, b"two", false);
    h.data(Read, b"three", false);
    let unmodified = |data: &[u8]| ProcessingResponse {
        data_processing_status: DataProcessedStatus::Unmodified as i32,
        ..read(data, false)
    };
    assert_eq!(
        h.respond(unmodified(b"")),
        vec![fwd(Read, b"one", false)],
        "N1"
    );
    assert_eq!(
        h.respond(unmodified(b"XYZ")),
        vec![fwd(Read, b"XYZ", false)],
        "non-empty data wins (A3)"
    );
    let modified_empty = ProcessingResponse {
        data_processing_status: DataProcessedStatus::Modified as i32,
        ..read(b"", false)
    };
    assert_eq!(
        h.respond(modified_empty),
        vec![],
        "MODIFIED + empty forwards nothing, as 1.40"
    );
    assert_eq!(h.stats.read_data_injected.value(), 3);
    assert_eq!(h.sm.in_flight(Read), 0);
}

#[test]
fn unsolicited_responses_are_injected() {
    let mut h = Harness::new(settings());
    h.data(Read, b"a", false);
    assert_eq!(h.respond(read(b"A", false)), vec![fwd(Read, b"A", false)]);
    assert_eq!(
        h.respond(read(b"UNSOLICITED-READ", false)),
        vec![fwd(Read, b"UNSOLICITED-READ", false)]
    );
    assert_eq!(
        h.respond(write(b"UNSOLICITED-WRITE", false)),
        vec![fwd(Write, b"UNSOLICITED-WRITE", false)]
    );
}

#[test]
fn empty_response_keeps_the_timer_and_times_out_closed() {
    let mut h = Harness::new(settings());
    h.data(Read, b"x", false);
    let empty = ProcessingResponse {
        data_processing_status: 1,
        ..Default::default()
    };
    assert_eq!(h.respond(empty), vec![]);
    assert_eq!(h.stats.empty_response_received.value(), 1);
    assert_eq!(h.advance(T / 2), vec![]);
    assert_eq!(
        h.advance(T),
        vec![
            Action::CloseStream,
            Action::CloseConnection(CloseKind::Flush, "ext_proc_message_timeout")
        ]
    );
    let s = &h.stats;
    assert_eq!(
        (
            s.message_timeouts.value(),
            s.streams_closed.value(),
            s.connections_closed.value()
        ),
        (1, 1, 1)
    );
    // Processing is complete: later bytes pass through, later responses are spurious.
    assert_eq!(
        h.data(Read, b"later", false),
        vec![fwd(Read, b"later", false)]
    );
    assert_eq!(h.respond(read(b"late", false)), vec![]);
    assert_eq!(h.stats.spurious_msgs_received.value(), 1);
}

#[test]
fn timeout_fail_open_forwards_the_unanswered_chunks_in_order() {
    let mut h = Harness::new(Settings {
        failure_mode_allow: true,
        ..settings()
    });
    h.data(Read, b"hello", false);
    h.data(Read, b" world", false);
    h.data(Write, b"down", true);
    let out = h.advance(T);
    assert_eq!(
        out,
        vec![
            Action::CloseStream,
            fwd(Read, b"hello", false),
            fwd(Read, b" world", false),
            fwd(Write, b"down", true)
        ],
        "N3"
    );
    assert_eq!(
        (
            h.stats.failure_mode_allowed.value(),
            h.stats.connections_closed.value()
        ),
        (1, 0)
    );
    assert_eq!(
        h.data(Read, b"after", false),
        vec![fwd(Read, b"after", false)]
    );
    assert!(!h.sm.has_pending());
}

#[test]
fn zero_timeout_never_fires() {
    let mut h = Harness::new(Settings {
        message_timeout: None,
        ..settings()
    });
    h.data(Read, b"x", false);
    assert_eq!(h.sm.deadline(), None);
    assert_eq!(h.advance(Duration::from_secs(3600)), vec![]);
}

#[test]
fn timer_keeps_running_while_chunks_are_unanswered() {
    let mut h = Harness::new(settings());
    h.data(Read, b"first", false);
    h.now += T / 2;
    h.data(Read, b"second", false);
    h.now += T / 2;
    h.respond(read(b"FIRST", false));
    assert_eq!(
        h.sm.deadline(),
        Some(h.now + T),
        "N5: re-armed, not stopped"
    );
    // A write answer does not touch the read timer.
    h.data(Write, b"w", false);
    h.respond(write(b"W", false));
    assert_eq!(h.sm.deadline(), Some(h.now + T));
    assert_eq!(
        h.advance(T).last(),
        Some(&Action::CloseConnection(
            CloseKind::Flush,
            "ext_proc_message_timeout"
        ))
    );
}

#[test]
fn close_injects_data_and_metadata_before_closing() {
    let mut h = Harness::new(Settings {
        receive_untyped: vec!["ns".into()],
        ..settings()
    });
    h.data(Read, b"x", false);
    let resp = ProcessingResponse {
        connection_status: ConnectionStatus::Close as i32,
        dynamic_metadata: Some(value::fields([(
            "ns",
            value::structure(value::fields([("k", value::string("v"))])),
        )])),
        ..read(b"LAST", false)
    };
    assert_eq!(
        h.respond(resp),
        vec![
            fwd(Read, b"LAST", false),
            Action::CloseStream,
            Action::CloseConnection(CloseKind::Flush, "ext_proc_close_requested")
        ],
        "N6"
    );
    assert_eq!(h.md.filter_metadata["ns"].fields["k"], value::string("v"));
    let s = &h.stats;
    assert_eq!(
        (
            s.connections_closed.value(),
            s.connections_reset.value(),
            s.streams_closed.value()
        ),
        (1, 0, 1)
    );
}

#[test]
fn close_rst_resets_without_data() {
    let mut h = Harness::new(settings());
    h.data(Read, b"x", false);
    let resp = ProcessingResponse {
        connection_status: ConnectionStatus::CloseRst as i32,
        ..read(b"NOPE", false)
    };
    assert_eq!(
        h.respond(resp),
        vec![
            Action::CloseStream,
            Action::CloseConnection(CloseKind::Reset, "ext_proc_reset_requested")
        ]
    );
    assert_eq!(
        (
            h.stats.connections_closed.value(),
            h.stats.connections_reset.value()
        ),
        (1, 1)
    );
}

#[test]
fn unknown_connection_status_continues() {
    let mut h = Harness::new(settings());
    h.data(Read, b"x", false);
    let resp = ProcessingResponse {
        connection_status: 999,
        ..read(b"X", false)
    };
    assert_eq!(h.respond(resp), vec![fwd(Read, b"X", false)]);
    assert_eq!(h.stats.connections_closed.value(), 0);
}

#[test]
fn grpc_error_fails_closed() {
    let mut h = Harness::new(settings());
    h.data(Read, b"x", false);
    assert_eq!(
        h.end(StreamEnd::Error("PERMISSION_DENIED".into())),
        vec![
            Action::CloseStream,
            Action::CloseConnection(CloseKind::Flush, "ext_proc_grpc_error")
        ]
    );
    let s = &h.stats;
    assert_eq!(
        (
            s.streams_grpc_error.value(),
            s.connections_closed.value(),
            s.streams_closed.value()
        ),
        (1, 1, 0)
    );
}

#[test]
fn grpc_error_fail_open_and_ok_close_forward_pending() {
    for (allow, end) in [(true, StreamEnd::Error("x".into())), (false, StreamEnd::Ok)] {
        let mut h = Harness::new(Settings {
            failure_mode_allow: allow,
            ..settings()
        });
        h.data(Read, b"held", false);
        assert_eq!(
            h.end(end.clone()),
            vec![Action::CloseStream, fwd(Read, b"held", false)],
            "{end:?}"
        );
        assert_eq!(h.data(Write, b"w", false), vec![fwd(Write, b"w", false)]);
        let s = &h.stats;
        assert_eq!(s.connections_closed.value(), 0);
        assert_eq!(
            s.streams_closed.value(),
            0,
            "remote closes do not count streams_closed"
        );
        if end == StreamEnd::Ok {
            assert_eq!(
                (s.streams_grpc_close.value(), s.failure_mode_allowed.value()),
                (1, 0)
            );
        } else {
            assert_eq!(
                (s.streams_grpc_error.value(), s.failure_mode_allowed.value()),
                (1, 1)
            );
        }
    }
}

#[test]
fn missing_cluster_counts_like_envoy() {
    let mut h = Harness::new(settings());
    h.open_result = Err(OpenError::ClusterMissing);
    assert_eq!(
        h.data(Read, b"x", false),
        vec![Action::CloseConnection(
            CloseKind::Flush,
            "ext_proc_stream_error"
        )]
    );
    let s = &h.stats;
    assert_eq!(
        (
            s.streams_grpc_error.value(),
            s.stream_open_failures.value(),
            s.connections_closed.value(),
            s.streams_started.value()
        ),
        (1, 1, 2, 0)
    );

    let mut h = Harness::new(Settings {
        failure_mode_allow: true,
        ..settings()
    });
    h.open_result = Err(OpenError::ClusterMissing);
    assert_eq!(
        h.data(Read, b"x", false),
        vec![fwd(Read, b"x", false)],
        "the chunk passes through"
    );
    assert_eq!(h.data(Read, b"y", false), vec![fwd(Read, b"y", false)]);
    assert_eq!(h.opens, 1, "never re-opened");
    assert_eq!(h.stats.failure_mode_allowed.value(), 2);
}

#[test]
fn close_stream_to_ext_proc_server_injects_then_bypasses() {
    let mut h = Harness::new(settings());
    h.data(Read, b"hello", false);
    h.data(Read, b"inflight", false);
    let resp = ProcessingResponse {
        close_stream_to_ext_proc_server: true,
        ..read(b"[hello]", false)
    };
    assert_eq!(
        h.respond(resp),
        vec![
            fwd(Read, b"[hello]", false),
            Action::CloseStream,
            fwd(Read, b"inflight", false)
        ],
        "L, and N3 for L2"
    );
    assert_eq!(h.stats.streams_closed.value(), 1);
    assert_eq!(h.data(Write, b"w", true), vec![fwd(Write, b"w", true)]);
}

#[test]
fn bytes_after_a_processor_eos_are_dropped_visibly() {
    let mut h = Harness::new(settings());
    h.data(Read, b"a", false);
    h.data(Read, b"b", false);
    assert_eq!(h.respond(read(b"A", true)), vec![fwd(Read, b"A", true)]);
    assert_eq!(h.respond(read(b"B", false)), vec![]);
    assert_eq!(h.stats.read_data_dropped_after_eos.value(), 1, "N7");
    assert_eq!(h.stats.read_data_injected.value(), 2);
}

#[test]
fn metadata_is_forwarded_on_every_message_and_received_by_allowlist() {
    let mut h = Harness::new(Settings {
        forward_untyped: vec!["fwd".into()],
        receive_untyped: vec!["fwd".into()],
        ..settings()
    });
    assert!(
        sent(&h.data(Read, b"1", false)).metadata.is_none(),
        "omitted while the namespace is absent"
    );
    let md = value::fields([
        (
            "fwd",
            value::structure(value::fields([("k", value::string("v1"))])),
        ),
        ("other", value::structure(Struct::default())),
        ("scalar_ns", value::string("str")),
    ]);
    h.respond(ProcessingResponse {
        dynamic_metadata: Some(md),
        ..read(b"1", false)
    });
    assert_eq!(h.md.filter_metadata.keys().collect::<Vec<_>>(), ["fwd"]);
    let req = h.data(Read, b"2", false);
    let fwd_md = sent(&req).metadata.as_ref().unwrap();
    assert_eq!(
        fwd_md.filter_metadata["fwd"].fields["k"],
        value::string("v1")
    );
}

#[test]
fn attributes_go_on_the_first_message_only() {
    let attrs = compile_all(&["connection.id".into(), "bogus.attr".into()]).unwrap();
    let mut h = Harness::new(Settings {
        attributes: attrs,
        ..settings()
    });
    let out = h.data(Write, b"server-first", false);
    let a = &sent(&out).attributes;
    assert_eq!(a[ATTRIBUTES_KEY].fields.len(), 1);
    assert_eq!(
        a[ATTRIBUTES_KEY].fields["connection.id"],
        value::number(1.0)
    );
    assert!(sent(&h.data(Read, b"r", false)).attributes.is_empty());
}

#[test]
fn connection_close_closes_an_open_stream_once() {
    let mut h = Harness::new(settings());
    let mut out = Vec::new();
    h.sm.on_connection_closed(&mut out);
    assert_eq!(out, vec![], "no stream yet");
    let mut h = Harness::new(settings());
    h.data(Read, b"x", false);
    h.sm.on_connection_closed(&mut out);
    h.sm.on_connection_closed(&mut out);
    assert_eq!(out, vec![Action::CloseStream]);
    assert_eq!(h.stats.streams_closed.value(), 1);
    assert!(!h.sm.has_pending());
}

#[test]
fn bare_fin_is_sent_and_needs_an_eos_answer_to_propagate() {
    let mut h = Harness::new(settings());
    let req = h.data(Read, b"", true);
    assert_eq!(
        sent(&req).read_data,
        Some(Data {
            data: Bytes::new(),
            end_of_stream: true
        })
    );
    assert!(h.sm.has_pending());
    assert_eq!(
        h.respond(read(b"", false)),
        vec![],
        "eos:false keeps the upstream open (C)"
    );
    assert!(!h.sm.has_pending());
}
