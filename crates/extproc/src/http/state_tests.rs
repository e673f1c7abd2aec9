//! Unit tests of the HTTP state machine: no I/O, messages in, responses out.

use super::*;
use crate::http::ImmediateResponse;
use crate::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, HttpTrailers, ProtocolConfiguration,
};
use processing_request::Request as R;
use processing_response::Response as PR;

fn headers(eos: bool) -> HttpHeaders {
    HttpHeaders {
        end_of_stream: eos,
        ..Default::default()
    }
}

fn body(data: &[u8], eos: bool) -> HttpBody {
    HttpBody {
        body: data.to_vec(),
        end_of_stream: eos,
        ..Default::default()
    }
}

fn req(r: R) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(r),
        ..Default::default()
    }
}

fn first(r: R, request_mode: BodyMode, response_mode: BodyMode) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(r),
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: request_mode as i32,
            response_body_mode: response_mode as i32,
            send_body_without_waiting_for_header_response: false,
        }),
        ..Default::default()
    }
}

/// Feeds a message and encodes `reply` for it.
fn step(
    s: &mut HttpState,
    r: ProcessingRequest,
    reply: Reply,
) -> Result<Vec<ProcessingResponse>, Error> {
    let inbound = s.on_request(r)?.expect("message accepted");
    s.encode(inbound.phase, &inbound.message, reply)
}

fn streamed(resp: &ProcessingResponse) -> (Vec<u8>, bool) {
    match &resp.response {
        Some(PR::RequestBody(b) | PR::ResponseBody(b)) => {
            match b
                .response
                .as_ref()
                .and_then(|c| c.body_mutation.as_ref())
                .and_then(|m| m.mutation.as_ref())
            {
                Some(body_mutation::Mutation::StreamedResponse(s)) => {
                    (s.body.clone(), s.end_of_stream)
                }
                other => panic!("not a streamed response: {other:?}"),
            }
        }
        other => panic!("not a body response: {other:?}"),
    }
}

#[test]
fn protocol_config_sets_body_modes_from_first_message_only() {
    let mut s = HttpState::default();
    s.on_request(first(
        R::RequestHeaders(headers(false)),
        BodyMode::Streamed,
        BodyMode::Buffered,
    ))
    .expect("ok");
    assert_eq!(s.body_mode(Side::Request), BodyMode::Streamed);
    assert_eq!(s.body_mode(Side::Response), BodyMode::Buffered);
    s.on_request(first(
        R::ResponseHeaders(headers(false)),
        BodyMode::None,
        BodyMode::None,
    ))
    .expect("ok");
    assert_eq!(
        s.body_mode(Side::Response),
        BodyMode::Buffered,
        "later protocol_config ignored"
    );
}

#[test]
fn empty_request_is_invalid_argument() {
    let mut s = HttpState::default();
    let e = s
        .on_request(ProcessingRequest::default())
        .expect_err("no oneof");
    assert!(matches!(e, Error::EmptyRequest));
    assert_eq!(e.to_status().code(), tonic::Code::InvalidArgument);
}

#[test]
fn out_of_order_messages_are_failed_precondition() {
    let cases: Vec<Vec<R>> = vec![
        vec![
            R::RequestHeaders(headers(false)),
            R::RequestHeaders(headers(false)),
        ],
        vec![
            R::RequestHeaders(headers(true)),
            R::RequestBody(body(b"x", true)),
        ],
        vec![
            R::RequestBody(body(b"x", true)),
            R::RequestBody(body(b"y", true)),
        ],
        vec![
            R::RequestBody(body(b"x", false)),
            R::RequestHeaders(headers(false)),
        ],
        vec![
            R::ResponseTrailers(HttpTrailers::default()),
            R::ResponseBody(body(b"x", false)),
        ],
        vec![
            R::ResponseHeaders(headers(true)),
            R::ResponseTrailers(HttpTrailers::default()),
        ],
    ];
    for seq in cases {
        let mut s = HttpState::default();
        let n = seq.len();
        let mut result = Ok(None);
        for (i, r) in seq.into_iter().enumerate() {
            result = s.on_request(req(r));
            if i + 1 < n {
                assert!(result.is_ok(), "prefix must be accepted");
            }
        }
        let e = result.expect_err("last message is out of order");
        assert_eq!(e.to_status().code(), tonic::Code::FailedPrecondition, "{e}");
    }
}

#[test]
fn paths_are_independent_and_headers_may_be_skipped() {
    let mut s = HttpState::default();
    // Request headers SKIP: the body comes first; the response may start before it ends.
    s.on_request(req(R::RequestBody(body(b"a", false))))
        .expect("body first");
    s.on_request(req(R::ResponseHeaders(headers(false))))
        .expect("response meanwhile");
    s.on_request(req(R::RequestBody(body(b"b", true))))
        .expect("request continues");
    s.on_request(req(R::ResponseTrailers(HttpTrailers::default())))
        .expect("trailers");
}

#[test]
fn buffered_body_then_trailers() {
    let mut s = HttpState::default();
    s.on_request(first(
        R::RequestHeaders(headers(false)),
        BodyMode::Buffered,
        BodyMode::None,
    ))
    .expect("ok");
    s.on_request(req(R::RequestBody(body(b"all", false))))
        .expect("buffered, trailers follow");
    assert_eq!(
        s.incomplete_side(),
        None,
        "a buffered body message is complete"
    );
    let e = s
        .on_request(req(R::RequestBody(body(b"more", false))))
        .expect_err("only one");
    assert!(matches!(e, Error::OutOfOrder { .. }));
}

#[test]
fn incomplete_side_tracks_streamed_bodies() {
    let mut s = HttpState::default();
    s.on_request(first(
        R::RequestHeaders(headers(false)),
        BodyMode::Streamed,
        BodyMode::None,
    ))
    .expect("ok");
    assert_eq!(
        s.incomplete_side(),
        None,
        "headers without body mode NONE body is normal"
    );
    s.on_request(req(R::RequestBody(body(b"a", false))))
        .expect("chunk");
    assert_eq!(s.incomplete_side(), Some(Side::Request));
    s.on_request(req(R::RequestBody(body(b"", true))))
        .expect("eos");
    assert_eq!(s.incomplete_side(), None);
}

#[test]
fn headers_reply_encodes_mutations_and_metadata() {
    let mut s = HttpState::default();
    let out = step(
        &mut s,
        req(R::RequestHeaders(headers(true))),
        Reply::new()
            .set_header("x-a", "1")
            .remove_header("x-b")
            .clear_route_cache()
            .metadata("ns", "k", "v"),
    )
    .expect("encode");
    assert_eq!(out.len(), 1);
    let Some(PR::RequestHeaders(h)) = &out[0].response else {
        panic!("{out:?}")
    };
    let c = h.response.as_ref().expect("common");
    assert!(c.clear_route_cache);
    assert_eq!(
        c.header_mutation.as_ref().map(|m| m.remove_headers.clone()),
        Some(vec!["x-b".to_string()])
    );
    assert!(out[0].dynamic_metadata.is_some());
}

#[test]
fn streamed_default_reply_is_one_unmutated_body_response_per_chunk() {
    let mut s = HttpState::default();
    step(
        &mut s,
        first(
            R::RequestHeaders(headers(false)),
            BodyMode::Streamed,
            BodyMode::None,
        ),
        Reply::new(),
    )
    .expect("headers");
    for (chunk, eos) in [(&b"aaa"[..], false), (b"", true)] {
        let out = step(&mut s, req(R::RequestBody(body(chunk, eos))), Reply::new()).expect("chunk");
        assert_eq!(out.len(), 1);
        let Some(PR::RequestBody(b)) = &out[0].response else {
            panic!("{out:?}")
        };
        assert!(b
            .response
            .as_ref()
            .is_some_and(|c| c.body_mutation.is_none()));
    }
}

#[test]
fn fds_default_echoes_and_body_replaces_with_received_eos() {
    let mut s = HttpState::default();
    step(
        &mut s,
        first(
            R::RequestHeaders(headers(false)),
            BodyMode::FullDuplexStreamed,
            BodyMode::None,
        ),
        Reply::new(),
    )
    .expect("headers");
    let out = step(
        &mut s,
        req(R::RequestBody(body(b"abc", false))),
        Reply::new(),
    )
    .expect("echo");
    assert_eq!(
        out.iter().map(streamed).collect::<Vec<_>>(),
        vec![(b"abc".to_vec(), false)]
    );
    let out = step(
        &mut s,
        req(R::RequestBody(body(b"def", true))),
        Reply::new().body("DEF"),
    )
    .expect("replace");
    assert_eq!(
        out.iter().map(streamed).collect::<Vec<_>>(),
        vec![(b"DEF".to_vec(), true)]
    );
}

#[test]
fn fds_hold_then_many_chunks_split_at_64k() {
    let mut s = HttpState::default();
    step(
        &mut s,
        first(
            R::ResponseHeaders(headers(false)),
            BodyMode::None,
            BodyMode::FullDuplexStreamed,
        ),
        Reply::new(),
    )
    .expect("headers");
    let held = step(
        &mut s,
        req(R::ResponseBody(body(b"part", false))),
        Reply::new().hold(),
    )
    .expect("hold");
    assert!(held.is_empty());
    let big = vec![b'x'; MAX_STREAMED_CHUNK * 2 + 10];
    let out = step(
        &mut s,
        req(R::ResponseBody(body(b"", true))),
        Reply::new()
            .stream_chunk(big.clone(), false)
            .stream_chunk("tail", true)
            .metadata("ns", "k", "v"),
    )
    .expect("flush");
    let chunks: Vec<_> = out.iter().map(streamed).collect();
    assert_eq!(chunks.len(), 4);
    assert!(chunks.iter().all(|(d, _)| d.len() <= MAX_STREAMED_CHUNK));
    assert_eq!(chunks.iter().filter(|(_, eos)| *eos).count(), 1);
    assert_eq!(chunks[3], (b"tail".to_vec(), true));
    assert_eq!(
        chunks[..3].iter().map(|(d, _)| d.len()).sum::<usize>(),
        big.len()
    );
    assert!(
        out[0].dynamic_metadata.is_some(),
        "metadata rides on the first chunk"
    );
}

#[test]
fn stream_chunk_outside_fds_is_an_invalid_reply() {
    let mut s = HttpState::default();
    step(
        &mut s,
        first(
            R::RequestHeaders(headers(false)),
            BodyMode::Buffered,
            BodyMode::None,
        ),
        Reply::new(),
    )
    .expect("headers");
    let e = step(
        &mut s,
        req(R::RequestBody(body(b"x", true))),
        Reply::new().stream_chunk("y", true),
    )
    .expect_err("invalid");
    assert_eq!(e.to_status().code(), tonic::Code::Internal);
}

#[test]
fn fds_trailers_reply_may_flush_held_chunks_first() {
    let mut s = HttpState::default();
    step(
        &mut s,
        first(
            R::RequestHeaders(headers(false)),
            BodyMode::FullDuplexStreamed,
            BodyMode::None,
        ),
        Reply::new(),
    )
    .expect("headers");
    step(
        &mut s,
        req(R::RequestBody(body(b"abc", false))),
        Reply::new().hold(),
    )
    .expect("hold");
    let out = step(
        &mut s,
        req(R::RequestTrailers(HttpTrailers::default())),
        Reply::new()
            .stream_chunk("abc", false)
            .set_header("x-t", "1"),
    )
    .expect("trailers");
    assert_eq!(out.len(), 2);
    assert_eq!(streamed(&out[0]), (b"abc".to_vec(), false));
    assert!(matches!(out[1].response, Some(PR::RequestTrailers(_))));
}

#[test]
fn continue_and_replace_stops_the_path() {
    let mut s = HttpState::default();
    step(
        &mut s,
        first(
            R::RequestHeaders(headers(false)),
            BodyMode::Streamed,
            BodyMode::None,
        ),
        Reply::new().continue_and_replace().body("new"),
    )
    .expect("car");
    assert!(
        s.on_request(req(R::RequestBody(body(b"old", true))))
            .expect("ok")
            .is_none(),
        "ignored"
    );
    assert!(s
        .on_request(req(R::ResponseHeaders(headers(true))))
        .expect("ok")
        .is_some());
}

#[test]
fn immediate_response_ends_processing_except_in_observability_mode() {
    let mut s = HttpState::default();
    let out = step(
        &mut s,
        req(R::RequestHeaders(headers(false))),
        Reply::immediate(ImmediateResponse::new(401).body("no")),
    )
    .expect("immediate");
    let Some(PR::ImmediateResponse(i)) = &out[0].response else {
        panic!("{out:?}")
    };
    assert_eq!(i.status.as_ref().map(|s| s.code), Some(401));
    assert!(s
        .on_request(req(R::RequestBody(body(b"x", true))))
        .expect("ok")
        .is_none());

    let mut obs = HttpState::default();
    let r = ProcessingRequest {
        observability_mode: true,
        request: Some(R::RequestHeaders(headers(false))),
        ..Default::default()
    };
    step(&mut obs, r, Reply::immediate(ImmediateResponse::new(403))).expect("computed");
    assert!(obs
        .on_request(req(R::RequestBody(body(b"x", true))))
        .expect("ok")
        .is_some());
}

#[test]
fn mode_override_is_tracked_unless_fds_is_configured() {
    let mut s = HttpState::default();
    let m = ProcessingMode {
        request_body_mode: BodyMode::Buffered as i32,
        response_body_mode: BodyMode::Streamed as i32,
        ..Default::default()
    };
    step(
        &mut s,
        first(
            R::RequestHeaders(headers(false)),
            BodyMode::None,
            BodyMode::None,
        ),
        Reply::new().mode_override(m),
    )
    .expect("override");
    assert_eq!(
        (s.body_mode(Side::Request), s.body_mode(Side::Response)),
        (BodyMode::Buffered, BodyMode::Streamed)
    );

    let mut fds = HttpState::default();
    step(
        &mut fds,
        first(
            R::RequestHeaders(headers(false)),
            BodyMode::FullDuplexStreamed,
            BodyMode::None,
        ),
        Reply::new().mode_override(m),
    )
    .expect("override");
    assert_eq!(
        fds.body_mode(Side::Request),
        BodyMode::FullDuplexStreamed,
        "Envoy ignores it"
    );
}

#[test]
fn abort_becomes_the_stream_status() {
    let mut s = HttpState::default();
    let e = step(
        &mut s,
        req(R::RequestHeaders(headers(true))),
        Reply::abort(tonic::Status::unavailable("db down")),
    )
    .expect_err("abort");
    assert_eq!(e.to_status().code(), tonic::Code::Unavailable);
}

#[test]
fn timeout_override_is_standalone() {
    let r = timeout_override(std::time::Duration::from_millis(1500));
    assert_eq!(
        r.override_message_timeout,
        Some(Duration {
            seconds: 1,
            nanos: 500_000_000
        })
    );
    assert!(r.response.is_none());
}
