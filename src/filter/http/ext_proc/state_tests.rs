//! Ordering tests of the state machine, in the spirit of Envoy's `ordering_test.cc`.

use super::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;

struct T {
    core: Core,
    stats: Stats,
}

fn policy(f: impl FnOnce(&mut Policy)) -> (Arc<Policy>, Stats) {
    let stats = Stats::detached();
    let mut p = Policy::defaults(stats.clone());
    f(&mut p);
    (Arc::new(p), stats)
}

fn t(mode: Mode, f: impl FnOnce(&mut Policy)) -> T {
    t_open(mode, false, f)
}

fn t_open(mode: Mode, fail_open: bool, f: impl FnOnce(&mut Policy)) -> T {
    let (p, stats) = policy(f);
    T {
        core: Core::new(p, mode, fail_open, Arc::new(vec!["ns".into()])),
        stats,
    }
}

fn mode(req_body: BodyMode, resp_body: BodyMode) -> Mode {
    let mut m = Mode::default();
    m.request.body = req_body;
    m.response.body = resp_body;
    m
}

fn req_head(cl: Option<usize>) -> Head {
    let mut b = http::Request::builder()
        .method("POST")
        .uri("/p")
        .header("host", "h");
    if let Some(n) = cl {
        b = b.header("content-length", n.to_string());
    }
    Head::Request(b.body(()).unwrap().into_parts().0)
}

fn resp_head() -> Head {
    Head::Response(
        http::Response::builder()
            .status(200)
            .header("content-length", "3")
            .body(())
            .unwrap()
            .into_parts()
            .0,
    )
}

/// A compact rendering of the actions: `send:rh`, `timer:req`, `hdr:req`, `data:req:abc`, …
fn drain(c: &mut Core) -> Vec<String> {
    let mut v = Vec::new();
    while let Some(a) = c.poll_action() {
        v.push(match a {
            Action::Send(m) => format!(
                "send:{}",
                match m.request {
                    Some(Req::RequestHeaders(h)) =>
                        format!("rh{}", if h.end_of_stream { "!" } else { "" }),
                    Some(Req::ResponseHeaders(h)) =>
                        format!("sh{}", if h.end_of_stream { "!" } else { "" }),
                    Some(Req::RequestBody(b)) => format!(
                        "rb:{}{}",
                        String::from_utf8_lossy(&b.body),
                        if b.end_of_stream { "!" } else { "" }
                    ),
                    Some(Req::ResponseBody(b)) => format!(
                        "sb:{}{}",
                        String::from_utf8_lossy(&b.body),
                        if b.end_of_stream { "!" } else { "" }
                    ),
                    Some(Req::RequestTrailers(_)) => "rt".into(),
                    Some(Req::ResponseTrailers(_)) => "st".into(),
                    None => "?".into(),
                }
            ),
            Action::Timer(d, Some(_)) => format!("timer:{}", dn(d)),
            Action::Timer(d, None) => format!("stop:{}", dn(d)),
            Action::Headers(d, _, _) => format!("hdr:{}", dn(d)),
            Action::Data(d, b) => format!("data:{}:{}", dn(d), String::from_utf8_lossy(&b)),
            Action::Trailers(d, _) => format!("trl:{}", dn(d)),
            Action::End(d) => format!("end:{}", dn(d)),
            Action::LocalReply(r) => format!("reply:{}:{}", r.status.as_u16(), r.details),
            Action::LocalStream(r) => format!("stream:{}:{}", r.status.as_u16(), r.details),
            Action::ClearRouteCache => "clear".into(),
            Action::Metadata(_) => "md".into(),
            Action::Close => "close".into(),
        });
    }
    v
}

fn dn(d: Dir) -> &'static str {
    match d {
        Dir::Request => "req",
        Dir::Response => "resp",
    }
}

fn resp(r: Resp) -> pb::ProcessingResponse {
    pb::ProcessingResponse {
        response: Some(r),
        ..Default::default()
    }
}

fn rh() -> pb::ProcessingResponse {
    resp(Resp::RequestHeaders(pb::HeadersResponse::default()))
}

fn sh() -> pb::ProcessingResponse {
    resp(Resp::ResponseHeaders(pb::HeadersResponse::default()))
}

fn body_reply(d: Dir, body: Option<&str>) -> pb::ProcessingResponse {
    let common = pb::CommonResponse {
        body_mutation: body.map(|b| pb::BodyMutation {
            mutation: Some(BodyMut::Body(Bytes::copy_from_slice(b.as_bytes()))),
        }),
        ..Default::default()
    };
    let b = pb::BodyResponse {
        response: Some(common),
    };
    resp(match d {
        Dir::Request => Resp::RequestBody(b),
        Dir::Response => Resp::ResponseBody(b),
    })
}

fn streamed(d: Dir, body: &str, eos: bool) -> pb::ProcessingResponse {
    let common = pb::CommonResponse {
        body_mutation: Some(pb::BodyMutation {
            mutation: Some(BodyMut::StreamedResponse(pb::StreamedBodyResponse {
                body: Bytes::copy_from_slice(body.as_bytes()),
                end_of_stream: eos,
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let b = pb::BodyResponse {
        response: Some(common),
    };
    resp(match d {
        Dir::Request => Resp::RequestBody(b),
        Dir::Response => Resp::ResponseBody(b),
    })
}

#[test]
fn default_headers_only() {
    let mut t = t(Mode::default(), |_| {});
    t.core.on_headers(Dir::Request, req_head(None), true);
    assert_eq!(drain(&mut t.core), ["send:rh!", "timer:req"]);
    t.core.on_response(rh());
    assert_eq!(drain(&mut t.core), ["stop:req", "hdr:req", "end:req"]);
    t.core.on_headers(Dir::Response, resp_head(), false);
    assert_eq!(drain(&mut t.core), ["send:sh", "timer:resp"]);
    t.core.on_response(sh());
    assert_eq!(drain(&mut t.core), ["stop:resp", "hdr:resp", "close"]);
    t.core
        .on_data(Dir::Response, Bytes::from_static(b"abc"), true);
    assert_eq!(drain(&mut t.core), ["data:resp:abc", "end:resp"]);
    assert_eq!(t.stats.stream_msgs_sent.value(), 2);
    assert_eq!(t.stats.stream_msgs_received.value(), 2);
    assert_eq!(t.stats.streams_started.value(), 1);
    assert_eq!(t.stats.streams_closed.value(), 1);
}

#[test]
fn closes_after_request_headers_when_response_skipped() {
    let mut m = Mode::default();
    m.response.send_headers = false;
    let mut t = t(m, |_| {});
    t.core.on_headers(Dir::Request, req_head(Some(3)), false);
    t.core.on_response(rh());
    assert_eq!(
        drain(&mut t.core),
        ["send:rh", "timer:req", "stop:req", "hdr:req", "close"]
    );
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"abc"), true);
    assert_eq!(drain(&mut t.core), ["data:req:abc", "end:req"]);
}

#[test]
fn body_arriving_before_headers_reply_is_held() {
    let mut t = t(mode(BodyMode::Buffered, BodyMode::None), |_| {});
    t.core.on_headers(Dir::Request, req_head(Some(6)), false);
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"abc"), false);
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"def"), true);
    assert_eq!(drain(&mut t.core), ["send:rh", "timer:req"]);
    t.core.on_response(rh());
    assert_eq!(
        drain(&mut t.core),
        ["stop:req", "send:rb:abcdef!", "timer:req"]
    );
    t.core.on_response(body_reply(Dir::Request, None));
    assert_eq!(
        drain(&mut t.core),
        ["stop:req", "hdr:req", "data:req:abcdef", "end:req"]
    );
}

#[test]
fn buffered_content_length_mismatch_is_500() {
    let mut t = t(mode(BodyMode::Buffered, BodyMode::None), |_| {});
    t.core.on_headers(Dir::Request, req_head(Some(3)), false);
    t.core.on_response(rh());
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"abc"), true);
    drain(&mut t.core);
    t.core.on_response(body_reply(Dir::Request, Some("longer")));
    assert_eq!(
        drain(&mut t.core),
        [
            "stop:req",
            "close",
            "reply:500:mismatch_between_content_length_and_the_length_of_the_mutated_body"
        ]
    );
}

#[test]
fn buffered_over_limit_is_413_then_500_on_response() {
    let mut t = t(mode(BodyMode::Buffered, BodyMode::None), |p| {
        p.buffer_limit = 4
    });
    t.core.on_headers(Dir::Request, req_head(None), false);
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"abcdef"), false);
    let a = drain(&mut t.core);
    assert_eq!(
        a.last().map(String::as_str),
        Some("reply:413:request_payload_too_large"),
        "{a:?}"
    );

    let mut t2 = self::t(mode(BodyMode::None, BodyMode::Buffered), |p| {
        p.buffer_limit = 4
    });
    t2.core.on_headers(Dir::Request, req_head(None), true);
    t2.core.on_response(rh());
    t2.core.on_headers(Dir::Response, resp_head(), false);
    t2.core.on_response(sh());
    t2.core
        .on_data(Dir::Response, Bytes::from_static(b"abcdef"), false);
    let a = drain(&mut t2.core);
    assert_eq!(
        a.last().map(String::as_str),
        Some("reply:500:response_payload_too_large"),
        "{a:?}"
    );
}

#[test]
fn streamed_fifo_with_trailing_empty_eos() {
    let mut t = t(mode(BodyMode::Streamed, BodyMode::None), |_| {});
    t.core.on_headers(Dir::Request, req_head(Some(6)), false);
    t.core.on_response(rh());
    drain(&mut t.core);
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"aaa"), false);
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"bbb"), false);
    t.core.on_data(Dir::Request, Bytes::new(), true);
    assert_eq!(
        drain(&mut t.core),
        [
            "send:rb:aaa",
            "timer:req",
            "send:rb:bbb",
            "timer:req",
            "send:rb:!",
            "timer:req"
        ]
    );
    t.core.on_response(body_reply(Dir::Request, Some("AAA")));
    t.core.on_response(body_reply(Dir::Request, None));
    t.core.on_response(body_reply(Dir::Request, None));
    assert_eq!(
        drain(&mut t.core),
        [
            "data:req:AAA",
            "timer:req",
            "data:req:bbb",
            "timer:req",
            "stop:req",
            "end:req"
        ]
    );
}

#[test]
fn streamed_strips_content_length_after_sending() {
    let mut t = t(mode(BodyMode::Streamed, BodyMode::None), |_| {});
    t.core.on_headers(Dir::Request, req_head(Some(6)), false);
    let Some(Action::Send(m)) = t.core.poll_action() else {
        panic!()
    };
    let Some(Req::RequestHeaders(h)) = m.request else {
        panic!()
    };
    assert!(
        h.headers
            .unwrap()
            .headers
            .iter()
            .any(|h| h.key == "content-length"),
        "the processor sees it"
    );
    assert!(
        m.protocol_config.is_some(),
        "protocol_config on the first message"
    );
    t.core.on_response(rh());
    let head = std::iter::from_fn(|| t.core.poll_action()).find_map(|a| match a {
        Action::Headers(_, h, _) => Some(h),
        _ => None,
    });
    assert!(
        head.unwrap().content_length().is_none(),
        "forwarded without content-length"
    );
}

#[test]
fn immediate_response_on_request_headers() {
    let mut t = t(Mode::default(), |_| {});
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    let i = pb::ImmediateResponse {
        status: Some(HttpStatus { code: 100 }),
        details: "my details".into(),
        body: Bytes::from_static(b"no"),
        headers: Some(pb::HeaderMutation {
            set_headers: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: "x-envoy-a".into(),
                    value: String::new(),
                    raw_value: b"1".to_vec(),
                }),
                ..Default::default()
            }],
            remove_headers: vec![],
        }),
        ..Default::default()
    };
    t.core.on_response(resp(Resp::ImmediateResponse(i)));
    assert_eq!(
        drain(&mut t.core),
        ["close", "stop:req", "reply:200:my_details"]
    );
    assert_eq!(t.stats.immediate_responses_sent.value(), 1);
    assert_eq!(t.stats.rejected_header_mutations.value(), 1);
    // Late replies are ignored.
    t.core.on_response(rh());
    assert!(drain(&mut t.core).is_empty());
}

#[test]
fn spurious_reply_fails_closed_or_open() {
    let mut t = t(Mode::default(), |_| {});
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    t.core.on_response(sh());
    assert_eq!(
        drain(&mut t.core),
        ["close", "stop:req", "reply:500:spurious_message"]
    );
    assert_eq!(t.stats.spurious_msgs_received.value(), 1);

    let mut t = t_open(Mode::default(), true, |_| {});
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    t.core.on_response(pb::ProcessingResponse::default());
    assert_eq!(
        drain(&mut t.core),
        ["close", "stop:req", "hdr:req", "end:req"]
    );
    assert_eq!(t.stats.failure_mode_allowed.value(), 1);
}

#[test]
fn timeout_is_504_regardless_of_status_on_error() {
    let mut t = t(Mode::default(), |p| {
        p.status_on_error = StatusCode::BAD_GATEWAY
    });
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    t.core.on_timeout(Dir::Request);
    assert_eq!(
        drain(&mut t.core),
        [
            "close",
            "reply:504:ext_proc_error_per-message_timeout_exceeded"
        ]
    );
    assert_eq!(t.stats.message_timeouts.value(), 1);
    // A reply after the timeout is ignored.
    t.core.on_response(rh());
    assert!(drain(&mut t.core).is_empty());
}

#[test]
fn grpc_error_uses_status_on_error_and_fail_open_continues() {
    let mut t = t(Mode::default(), |p| {
        p.status_on_error = StatusCode::SERVICE_UNAVAILABLE
    });
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    t.core.on_stream_error(13, "boom");
    assert_eq!(
        drain(&mut t.core),
        ["stop:req", "reply:503:ext_proc_error_gRPC_error_13{boom}"]
    );
    let mut t = t_open(Mode::default(), true, |_| {});
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    t.core.on_stream_error(14, "down");
    assert_eq!(drain(&mut t.core), ["stop:req", "hdr:req", "end:req"]);
    assert_eq!(t.stats.streams_failed.value(), 1);
    assert_eq!(t.stats.failure_mode_allowed.value(), 1);
}

#[test]
fn missing_cluster_fails_before_any_message() {
    let mut t = t(Mode::default(), |_| {});
    t.core.set_channel_unavailable();
    t.core.on_headers(Dir::Request, req_head(None), true);
    let a = drain(&mut t.core);
    assert_eq!(
        a,
        ["reply:500:ext_proc_error_gRPC_error_14{Cluster_not_available}"]
    );
    assert_eq!(t.stats.streams_started.value(), 0);
    assert_eq!(t.stats.stream_msgs_sent.value(), 0);
}

#[test]
fn full_duplex_many_replies_and_trailers() {
    let mut m = mode(BodyMode::FullDuplex, BodyMode::None);
    m.request.send_trailers = true;
    let mut t = t(m, |_| {});
    t.core.on_headers(Dir::Request, req_head(Some(3)), false);
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"abc"), false);
    t.core.on_trailers(Dir::Request, HeaderMap::new());
    assert_eq!(
        drain(&mut t.core),
        ["send:rh", "timer:req", "send:rb:abc", "send:rt"]
    );
    // Out of order: a body reply before the headers reply.
    t.core.on_response(streamed(Dir::Request, "x", false));
    assert_eq!(
        drain(&mut t.core),
        ["close", "stop:req", "reply:500:spurious_message"]
    );

    let mut t = t_open(m, true, |_| {});
    t.core.on_headers(Dir::Request, req_head(Some(3)), false);
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"abc"), false);
    t.core.on_trailers(Dir::Request, HeaderMap::new());
    drain(&mut t.core);
    t.core.on_response(rh());
    t.core.on_response(streamed(Dir::Request, "A", false));
    t.core.on_response(streamed(Dir::Request, "B", false));
    t.core.on_response(streamed(Dir::Request, "C", true));
    t.core
        .on_response(resp(Resp::RequestTrailers(pb::TrailersResponse::default())));
    assert_eq!(
        drain(&mut t.core),
        [
            "stop:req",
            "hdr:req",
            "data:req:A",
            "data:req:B",
            "data:req:C",
            "trl:req",
            "end:req"
        ]
    );
    // Fail-open is not possible after a body chunk.
    t.core.on_headers(Dir::Response, resp_head(), false);
    t.core.on_stream_error(13, "x");
    let a = drain(&mut t.core);
    assert_eq!(
        a.last().map(String::as_str),
        Some("reply:500:ext_proc_error_gRPC_error_13{x}"),
        "{a:?}"
    );
}

#[test]
fn continue_and_replace_with_body() {
    let mut t = t(mode(BodyMode::Buffered, BodyMode::None), |_| {});
    t.core.on_headers(Dir::Request, req_head(Some(3)), false);
    drain(&mut t.core);
    let common = pb::CommonResponse {
        status: pb::common_response::ResponseStatus::ContinueAndReplace as i32,
        body_mutation: Some(pb::BodyMutation {
            mutation: Some(BodyMut::Body(Bytes::from_static(b"new"))),
        }),
        ..Default::default()
    };
    t.core
        .on_response(resp(Resp::RequestHeaders(pb::HeadersResponse {
            response: Some(common),
        })));
    assert_eq!(
        drain(&mut t.core),
        ["stop:req", "hdr:req", "data:req:new", "end:req"]
    );
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"old"), true);
    assert!(drain(&mut t.core).is_empty());
}

#[test]
fn override_message_timeout() {
    let mut t = t(Mode::default(), |p| {
        p.max_message_timeout = Duration::from_secs(10)
    });
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    let o = |s| pb::ProcessingResponse {
        override_message_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: s,
            nanos: 0,
        }),
        ..Default::default()
    };
    t.core.on_response(o(5));
    t.core.on_response(o(5));
    t.core.on_response(o(50));
    assert_eq!(drain(&mut t.core), ["timer:req"]);
    assert_eq!(t.stats.override_message_timeout_received.value(), 1);
    assert_eq!(t.stats.override_message_timeout_ignored.value(), 2);
}

#[test]
fn mode_override_on_headers_reply() {
    let mut t = t(Mode::default(), |p| p.allow_mode_override = true);
    t.core.on_headers(Dir::Request, req_head(Some(3)), false);
    let mut r = rh();
    r.mode_override = Some(PbMode {
        request_body_mode: 2,
        response_header_mode: 2,
        ..Default::default()
    });
    t.core.on_response(r);
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"abc"), true);
    let a = drain(&mut t.core);
    assert!(a.contains(&"send:rb:abc!".to_string()), "{a:?}");
    t.core.on_response(body_reply(Dir::Request, None));
    let a = drain(&mut t.core);
    assert_eq!(
        a.last().map(String::as_str),
        Some("close"),
        "nothing left to send: {a:?}"
    );
    t.core.on_headers(Dir::Response, resp_head(), true);
    assert_eq!(drain(&mut t.core), ["hdr:resp", "end:resp"]);
}

#[test]
fn trailers_held_while_streamed_reply_pending() {
    let mut m = mode(BodyMode::Streamed, BodyMode::None);
    m.request.send_trailers = true;
    let mut t = t(m, |_| {});
    t.core.on_headers(Dir::Request, req_head(None), false);
    t.core.on_response(rh());
    t.core
        .on_data(Dir::Request, Bytes::from_static(b"a"), false);
    t.core.on_trailers(Dir::Request, HeaderMap::new());
    assert_eq!(
        drain(&mut t.core),
        [
            "send:rh",
            "timer:req",
            "stop:req",
            "hdr:req",
            "send:rb:a",
            "timer:req"
        ]
    );
    t.core.on_response(body_reply(Dir::Request, None));
    assert_eq!(
        drain(&mut t.core),
        ["data:req:a", "stop:req", "send:rt", "timer:req"]
    );
    t.core
        .on_response(resp(Resp::RequestTrailers(pb::TrailersResponse::default())));
    assert_eq!(drain(&mut t.core), ["stop:req", "trl:req", "end:req"]);
}

#[test]
fn metadata_only_message_is_spurious_and_receiving_filters() {
    let mut t = t(Mode::default(), |_| {});
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    let md = Struct {
        fields: [
            ("ns".to_string(), Default::default()),
            ("other".to_string(), Default::default()),
        ]
        .into_iter()
        .collect(),
    };
    let mut r = rh();
    r.dynamic_metadata = Some(md.clone());
    t.core.on_response(r);
    let mut got = None;
    while let Some(a) = t.core.poll_action() {
        if let Action::Metadata(s) = a {
            got = Some(s);
        }
    }
    assert_eq!(got.unwrap().fields.keys().collect::<Vec<_>>(), ["ns"]);
    let mut t = self::t(Mode::default(), |_| {});
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    t.core.on_response(pb::ProcessingResponse {
        dynamic_metadata: Some(md),
        ..Default::default()
    });
    assert_eq!(
        drain(&mut t.core).last().map(String::as_str),
        Some("reply:500:unhandled_message")
    );
}

#[test]
fn streamed_immediate_response_is_streamed_with_trailers() {
    use pb::streamed_immediate_response::Response as Sir;
    let sir = |x: Sir| {
        resp(Resp::StreamedImmediateResponse(
            pb::StreamedImmediateResponse { response: Some(x) },
        ))
    };
    let status = core::HeaderMap {
        headers: vec![core::HeaderValue {
            key: ":status".into(),
            value: String::new(),
            raw_value: b"203".to_vec(),
        }],
    };
    // Not allowed with a BUFFERED request body.
    let mut t = t(mode(BodyMode::Buffered, BodyMode::None), |_| {});
    t.core.on_headers(Dir::Request, req_head(Some(1)), false);
    drain(&mut t.core);
    t.core
        .on_response(sir(Sir::HeadersResponse(pb::HttpHeaders {
            headers: Some(status.clone()),
            ..Default::default()
        })));
    assert_eq!(
        drain(&mut t.core).last().map(String::as_str),
        Some("reply:500:unhandled_message")
    );

    let mut t = self::t(Mode::default(), |_| {});
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    t.core
        .on_response(sir(Sir::HeadersResponse(pb::HttpHeaders {
            headers: Some(status),
            ..Default::default()
        })));
    assert_eq!(
        drain(&mut t.core),
        ["stop:req", "stream:203:ext_proc_local_response"]
    );
    t.core
        .on_response(sir(Sir::BodyResponse(pb::StreamedBodyResponse {
            body: Bytes::from_static(b"ab"),
            ..Default::default()
        })));
    assert_eq!(drain(&mut t.core), ["data:resp:ab"]);
    t.core
        .on_response(sir(Sir::BodyResponse(pb::StreamedBodyResponse {
            body: Bytes::from_static(b"c"),
            ..Default::default()
        })));
    assert_eq!(drain(&mut t.core), ["data:resp:c"]);
    t.core
        .on_response(sir(Sir::TrailersResponse(core::HeaderMap::default())));
    assert_eq!(drain(&mut t.core), ["trl:resp", "end:resp", "close"]);
    assert_eq!(t.stats.immediate_responses_sent.value(), 0);
    assert_eq!(t.stats.stream_msgs_received.value(), 4);
    // Messages after the end are ignored.
    t.core
        .on_response(sir(Sir::TrailersResponse(core::HeaderMap::default())));
    assert!(drain(&mut t.core).is_empty());
}

/// Streamed local-response headers carrying only `:status` (or none when `None`).
fn sir_status(status: Option<&str>, end_of_stream: bool) -> pb::ProcessingResponse {
    use pb::streamed_immediate_response::Response as Sir;
    let headers = status.map(|s| core::HeaderMap {
        headers: vec![core::HeaderValue {
            key: ":status".into(),
            value: String::new(),
            raw_value: s.as_bytes().to_vec(),
        }],
    });
    resp(Resp::StreamedImmediateResponse(
        pb::StreamedImmediateResponse {
            response: Some(Sir::HeadersResponse(pb::HttpHeaders {
                headers,
                end_of_stream,
                ..Default::default()
            })),
        },
    ))
}

#[test]
fn streamed_immediate_response_headers_only_is_one_reply() {
    let mut t = t(Mode::default(), |_| {});
    t.core.on_headers(Dir::Request, req_head(None), true);
    drain(&mut t.core);
    t.core.on_response(sir_status(Some("200"), true));
    assert_eq!(
        drain(&mut t.core),
        ["stop:req", "reply:200:ext_proc_local_response", "close"]
    );
}

/// As Envoy 1.40 (`tests/ext_proc_reply_status.rs`): `:status` must be a number of at least
/// 200, else the headers fail with `status_on_error`; without one, the filter manager's 502.
#[test]
fn streamed_immediate_response_status_rules() {
    let run = |status: Option<&str>| {
        let mut t = t(Mode::default(), |p| {
            p.status_on_error = StatusCode::SERVICE_UNAVAILABLE;
        });
        t.core.on_headers(Dir::Request, req_head(None), true);
        drain(&mut t.core);
        t.core.on_response(sir_status(status, false));
        let out = drain(&mut t.core);
        (
            out,
            t.stats.rejected_header_mutations.value(),
            t.stats.immediate_responses_sent.value(),
        )
    };
    for bad in ["100", "199", "abc", "", "-200"] {
        let (out, rejected, immediate) = run(Some(bad));
        assert_eq!(
            out.last().map(String::as_str),
            Some("reply:503:header_mutation_set_headers_failed"),
            "{bad:?}"
        );
        assert_eq!((rejected, immediate), (1, 1), "{bad:?}");
    }
    let (out, rejected, immediate) = run(None);
    assert_eq!(
        out.last().map(String::as_str),
        Some(
            "reply:502:filter_removed_required_response_headers{missing_required_header:_:status}"
        )
    );
    assert_eq!((rejected, immediate), (0, 0));
    for (ok, code) in [("200", 200), ("999", 999), ("1000", 200)] {
        let (out, _, _) = run(Some(ok));
        assert_eq!(
            out.last().map(String::as_str),
            Some(format!("stream:{code}:ext_proc_local_response").as_str()),
            "{ok}"
        );
    }
}

/// Found by `fuzz/fuzz_targets/http_ext_proc_state.rs`: the side stream ending (OK, or an
/// error with fail-open) in the middle of a streamed local reply forwarded the held request
/// headers upstream and left the local reply's body open. It is now reset.
#[test]
fn side_stream_end_during_streamed_immediate_response_resets_it() {
    let start = |fail_open: bool| {
        let mut t = t_open(Mode::default(), fail_open, |_| {});
        t.core.on_headers(Dir::Request, req_head(None), false);
        drain(&mut t.core);
        t.core.on_response(sir_status(Some("200"), false));
        assert_eq!(
            drain(&mut t.core),
            ["stop:req", "stream:200:ext_proc_local_response"]
        );
        t
    };
    let cut = "reply:500:ext_proc_streamed_immediate_response_incomplete";
    let mut t = start(false);
    t.core.on_stream_ok();
    assert_eq!(drain(&mut t.core), ["close", cut]);
    assert!(t.core.is_done());
    t.core.on_data(Dir::Request, Bytes::from_static(b"x"), true);
    assert!(drain(&mut t.core).iter().all(|a| !a.starts_with("hdr:")));

    let mut t = start(true);
    t.core.on_stream_error(14, "gone");
    // The failed stream is already closed.
    assert_eq!(drain(&mut t.core), [cut]);
}
