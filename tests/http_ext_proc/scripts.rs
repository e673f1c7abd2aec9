//! The processor behaviours of the differential scenarios: what the test processor answers to
//! each message of a scenario's side stream.

use super::Req;
use crate::ext_proc_support::*;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use std::time::Duration;
use tonic::Status;

pub(super) fn send(r: pb::ProcessingResponse) -> Vec<Step> {
    vec![Step::Send(r)]
}

pub(super) fn common_on(req: &Req, k: &str, common: pb::CommonResponse) -> Vec<Step> {
    if kind(req) == k {
        send(with_common(req, common, None))
    } else {
        send(continue_for(req))
    }
}

pub(super) fn hm(sets: &[(&str, &str)], removes: &[&str]) -> pb::CommonResponse {
    pb::CommonResponse {
        header_mutation: Some(mutation(sets, removes)),
        ..Default::default()
    }
}

pub(super) fn pass(_: &mut Ctx, r: &Req) -> Vec<Step> {
    send(continue_for(r))
}

pub(super) fn set_remove(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match kind(r) {
        "rh" => send(with_common(
            r,
            hm(&[("x-new", "n"), ("X-Upper", "u")], &["x-a"]),
            None,
        )),
        "sh" => send(with_common(
            r,
            hm(&[("x-resp", "r")], &["content-type"]),
            None,
        )),
        _ => send(continue_for(r)),
    }
}

pub(super) fn path_rewrite(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(r, "rh", hm(&[(":path", "/rewritten?x=2")], &[]))
}

pub(super) fn routing_headers(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(
        r,
        "rh",
        hm(
            &[
                (":method", "PUT"),
                (":scheme", "https"),
                (":authority", "other.example"),
                ("host", "h2.example"),
            ],
            &[],
        ),
    )
}

pub(super) fn status_201(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(r, "sh", hm(&[(":status", "201"), ("x-s", "1")], &[]))
}

pub(super) fn status_100(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(r, "sh", hm(&[(":status", "100"), ("x-s", "1")], &[]))
}

pub(super) fn append_true(_: &mut Ctx, r: &Req) -> Vec<Step> {
    let mut m = mutation(&[("x-a", "2")], &[]);
    #[allow(deprecated)]
    {
        m.set_headers[0].append =
            Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
    }
    common_on(
        r,
        "rh",
        pb::CommonResponse {
            header_mutation: Some(m),
            ..Default::default()
        },
    )
}

pub(super) fn append_action(_: &mut Ctx, r: &Req) -> Vec<Step> {
    let mut m = mutation(&[("x-a", "if-absent"), ("x-missing", "if-exists")], &[]);
    m.set_headers[0].append_action = 1; // ADD_IF_ABSENT
    m.set_headers[1].append_action = 3; // OVERWRITE_IF_EXISTS
    common_on(
        r,
        "rh",
        pb::CommonResponse {
            header_mutation: Some(m),
            ..Default::default()
        },
    )
}

pub(super) fn value_only(_: &mut Ctx, r: &Req) -> Vec<Step> {
    let mut m = mutation(&[("x-v", "")], &[]);
    if let Some(h) = m.set_headers[0].header.as_mut() {
        h.value = "text".into();
    }
    common_on(
        r,
        "rh",
        pb::CommonResponse {
            header_mutation: Some(m),
            ..Default::default()
        },
    )
}

pub(super) fn envoy_header(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(
        r,
        "rh",
        hm(&[("x-envoy-foo", "1"), ("x-ok", "1")], &[":path", "host"]),
    )
}

pub(super) fn scheme_change(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(r, "rh", hm(&[(":scheme", "https")], &[]))
}

pub(super) fn bad_value(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(r, "rh", hm(&[("x-bad", "a\r\nx-injected: 1")], &[]))
}

pub(super) fn nul_value(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(r, "rh", hm(&[("x-bad", "a\0b"), ("x-ok", "1")], &[]))
}

pub(super) fn unknown_pseudo(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(r, "rh", hm(&[(":foo", "x"), ("x-ok", "1")], &[":foo"]))
}

pub(super) fn response_protected(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(
        r,
        "sh",
        hm(
            &[("x-envoy-r", "1"), ("x-ok", "1"), (":path", "/nope")],
            &[":status", "x-envoy-upstream-service-time"],
        ),
    )
}

pub(super) fn bad_name(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(r, "sh", hm(&[("x bad", "1")], &[]))
}

pub(super) fn deny(_: &mut Ctx, _: &Req) -> Vec<Step> {
    send(immediate(
        401,
        "denied",
        &[("x-why", "auth"), ("x-envoy-no", "1")],
        "auth failed",
    ))
}

pub(super) fn deny_bad_status(_: &mut Ctx, _: &Req) -> Vec<Step> {
    send(immediate(100, "", &[], ""))
}

pub(super) fn deny_on_response(_: &mut Ctx, r: &Req) -> Vec<Step> {
    if kind(r) == "sh" {
        send(immediate(403, "late", &[], "resp"))
    } else {
        send(continue_for(r))
    }
}

pub(super) fn deny_on_response_body(_: &mut Ctx, r: &Req) -> Vec<Step> {
    if kind(r) == "sb" {
        send(immediate(502, "bad body", &[("x-why", "body")], ""))
    } else {
        send(continue_for(r))
    }
}

pub(super) fn deny_on_body(_: &mut Ctx, r: &Req) -> Vec<Step> {
    if kind(r) == "rb" {
        send(immediate(418, "teapot", &[], ""))
    } else {
        send(continue_for(r))
    }
}

pub(super) fn empty_message(_: &mut Ctx, _: &Req) -> Vec<Step> {
    send(pb::ProcessingResponse::default())
}

pub(super) fn wrong_reply(_: &mut Ctx, r: &Req) -> Vec<Step> {
    if kind(r) == "rh" {
        send(with_common(
            &Req {
                request: Some(pb::processing_request::Request::ResponseHeaders(
                    Default::default(),
                )),
                ..Default::default()
            },
            Default::default(),
            None,
        ))
    } else {
        send(continue_for(r))
    }
}

pub(super) fn double_reply(_: &mut Ctx, r: &Req) -> Vec<Step> {
    if kind(r) == "rh" {
        vec![Step::Send(continue_for(r)), Step::Send(continue_for(r))]
    } else {
        send(continue_for(r))
    }
}

pub(super) fn grpc_error(_: &mut Ctx, _: &Req) -> Vec<Step> {
    vec![Step::Fail(Status::internal("boom"))]
}

pub(super) fn grpc_error_on_response(_: &mut Ctx, r: &Req) -> Vec<Step> {
    if kind(r) == "sh" {
        vec![Step::Fail(Status::internal("boom"))]
    } else {
        send(continue_for(r))
    }
}

pub(super) fn close_ok(_: &mut Ctx, _: &Req) -> Vec<Step> {
    vec![Step::CloseOk]
}

/// Answers the headers, then fails (or closes OK) on the first body chunk, which it holds.
pub(super) fn grpc_error_mid_body(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match kind(r) {
        "rb" => vec![Step::Fail(Status::internal("boom"))],
        _ => send(continue_for(r)),
    }
}

pub(super) fn close_ok_mid_body(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match kind(r) {
        "rb" => vec![Step::CloseOk],
        _ => send(continue_for(r)),
    }
}

pub(super) fn slow(_: &mut Ctx, _: &Req) -> Vec<Step> {
    vec![Step::Sleep(Duration::from_millis(800))]
}

pub(super) fn slow_response(_: &mut Ctx, r: &Req) -> Vec<Step> {
    if kind(r) == "sh" {
        vec![Step::Sleep(Duration::from_millis(800))]
    } else {
        send(continue_for(r))
    }
}

pub(super) fn override_timeout(_: &mut Ctx, r: &Req) -> Vec<Step> {
    let o = |s| pb::ProcessingResponse {
        override_message_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: s,
            nanos: 0,
        }),
        ..Default::default()
    };
    if kind(r) == "rh" {
        vec![
            Step::Send(o(2)),
            Step::Send(o(3)),
            Step::Sleep(Duration::from_millis(400)),
            Step::Send(continue_for(r)),
        ]
    } else {
        send(continue_for(r))
    }
}

pub(super) fn buffered_upper(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match kind(r) {
        "rh" => send(with_common(r, hm(&[("content-length", "11")], &[]), None)),
        "rb" => {
            let b = String::from_utf8_lossy(&upper(body_of(r).unwrap().0)).into_owned() + " WORLD";
            send(with_common(
                r,
                pb::CommonResponse {
                    body_mutation: Some(body(&b)),
                    ..Default::default()
                },
                None,
            ))
        }
        _ => send(continue_for(r)),
    }
}

pub(super) fn buffered_mismatch(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(
        r,
        "rb",
        pb::CommonResponse {
            body_mutation: Some(body("longer body")),
            ..Default::default()
        },
    )
}

pub(super) fn upper_bodies(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match body_of(r) {
        Some((b, _)) => {
            let b = String::from_utf8_lossy(&upper(b)).into_owned();
            send(with_common(
                r,
                pb::CommonResponse {
                    body_mutation: Some(body(&b)),
                    ..Default::default()
                },
                None,
            ))
        }
        None => send(continue_for(r)),
    }
}

pub(super) fn response_body_and_headers(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match kind(r) {
        "sb" => send(with_common(
            r,
            pb::CommonResponse {
                body_mutation: Some(body("replaced")),
                header_mutation: Some(mutation(
                    &[("x-body", "done"), ("content-length", "8")],
                    &[],
                )),
                ..Default::default()
            },
            None,
        )),
        _ => send(continue_for(r)),
    }
}

pub(super) fn trailers_mutation(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match kind(r) {
        "st" => send(with_common(
            r,
            Default::default(),
            Some(mutation(&[("t2", "added")], &["t1"])),
        )),
        _ => send(continue_for(r)),
    }
}

pub(super) fn replace_get_to_post(_: &mut Ctx, r: &Req) -> Vec<Step> {
    let common = pb::CommonResponse {
        status: pb::common_response::ResponseStatus::ContinueAndReplace as i32,
        header_mutation: Some(mutation(&[(":method", "POST")], &[])),
        body_mutation: Some(body("new body")),
        ..Default::default()
    };
    common_on(r, "rh", common)
}

pub(super) fn replace_no_body(_: &mut Ctx, r: &Req) -> Vec<Step> {
    let common = pb::CommonResponse {
        status: pb::common_response::ResponseStatus::ContinueAndReplace as i32,
        header_mutation: Some(mutation(&[("x-replaced", "1")], &[])),
        ..Default::default()
    };
    common_on(r, "rh", common)
}

pub(super) fn mode_override(_: &mut Ctx, r: &Req) -> Vec<Step> {
    if kind(r) == "rh" {
        let mut resp = continue_for(r);
        resp.mode_override = Some(
            envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode {
                response_header_mode: 2,
                request_body_mode: 2,
                ..Default::default()
            },
        );
        send(resp)
    } else {
        send(continue_for(r))
    }
}

pub(super) fn route_switch(_: &mut Ctx, r: &Req) -> Vec<Step> {
    let mut c = hm(&[("x-route", "b")], &[]);
    c.clear_route_cache = true;
    common_on(r, "rh", c)
}

pub(super) fn route_switch_no_flag(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(r, "rh", hm(&[("x-route", "b")], &[]))
}

pub(super) fn clear_without_mutation(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(
        r,
        "rh",
        pb::CommonResponse {
            clear_route_cache: true,
            ..Default::default()
        },
    )
}

pub(super) fn duplex_upper(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match body_of(r) {
        Some((b, eos)) => {
            let up = upper(b);
            vec![
                Step::Send(streamed(r, &up, false)),
                Step::Send(streamed(r, b"+", eos)),
            ]
        }
        None => send(continue_for(r)),
    }
}

pub(super) fn duplex_out_of_order(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match kind(r) {
        "rh" => send(streamed(
            &Req {
                request: Some(pb::processing_request::Request::RequestBody(
                    Default::default(),
                )),
                ..Default::default()
            },
            b"early",
            false,
        )),
        _ => send(continue_for(r)),
    }
}

pub(super) fn normal_body_in_duplex(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(
        r,
        "rb",
        pb::CommonResponse {
            body_mutation: Some(body("x")),
            ..Default::default()
        },
    )
}

pub(super) fn short_content_length(_: &mut Ctx, r: &Req) -> Vec<Step> {
    common_on(r, "rh", hm(&[("content-length", "3")], &[]))
}

pub(super) fn standalone_override(_: &mut Ctx, r: &Req) -> Vec<Step> {
    use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
    match kind(r) {
        "rh" => vec![
            Step::Send(pb::ProcessingResponse {
                mode_override: Some(ProcessingMode {
                    request_body_mode: 4,
                    request_trailer_mode: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Step::Send(continue_for(r)),
        ],
        _ => match body_of(r) {
            Some((b, eos)) => vec![Step::Send(streamed(r, &upper(b), eos))],
            None => send(continue_for(r)),
        },
    }
}

pub(super) fn standalone_override_invalid(_: &mut Ctx, r: &Req) -> Vec<Step> {
    use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
    match kind(r) {
        "rh" => vec![
            Step::Send(pb::ProcessingResponse {
                mode_override: Some(ProcessingMode {
                    request_body_mode: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Step::Send(continue_for(r)),
        ],
        _ => send(continue_for(r)),
    }
}

pub(super) fn deny_grpc(_: &mut Ctx, _: &Req) -> Vec<Step> {
    let mut r = immediate(403, "not allowed", &[], "");
    if let Some(pb::processing_response::Response::ImmediateResponse(i)) = r.response.as_mut() {
        i.grpc_status = Some(pb::GrpcStatus { status: 7 });
    }
    send(r)
}

/// Denies on the body message carrying the second chunk (`bbb`), however reads coalesced.
pub(super) fn deny_on_second_chunk(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match body_of(r) {
        Some((b, _)) if b.contains(&b'b') => send(immediate(429, "slow down", &[], "")),
        _ => send(continue_for(r)),
    }
}

pub(super) fn slow_on_body(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match kind(r) {
        "rb" => vec![Step::Sleep(Duration::from_millis(800))],
        _ => send(continue_for(r)),
    }
}

pub(super) fn trailer_tagger(_: &mut Ctx, r: &Req) -> Vec<Step> {
    match kind(r) {
        "rt" => send(with_common(
            r,
            Default::default(),
            Some(mutation(&[("x-t", "tagged")], &[])),
        )),
        _ => send(continue_for(r)),
    }
}

pub(super) fn non_utf8(_: &mut Ctx, r: &Req) -> Vec<Step> {
    let mut m = mutation(&[("x-latin1", "")], &[]);
    if let Some(h) = m.set_headers[0].header.as_mut() {
        h.raw_value = vec![b'c', b'a', b'f', 0xE9];
    }
    common_on(
        r,
        "rh",
        pb::CommonResponse {
            header_mutation: Some(m),
            ..Default::default()
        },
    )
}

pub(super) fn big_reply(_: &mut Ctx, r: &Req) -> Vec<Step> {
    let long = "v".repeat(500);
    common_on(r, "rh", hm(&[("x-long", &long)], &[]))
}

pub(super) fn close_on_response(_: &mut Ctx, r: &Req) -> Vec<Step> {
    if kind(r) == "sh" {
        vec![Step::CloseOk]
    } else {
        send(continue_for(r))
    }
}

pub(super) fn fail_out_of_line(_: &mut Ctx, r: &Req) -> Vec<Step> {
    if kind(r) == "rh" {
        vec![
            Step::Send(continue_for(r)),
            Step::Fail(Status::internal("later")),
        ]
    } else {
        send(continue_for(r))
    }
}

pub(super) fn replace_body_buffered(_: &mut Ctx, r: &Req) -> Vec<Step> {
    let common = pb::CommonResponse {
        status: pb::common_response::ResponseStatus::ContinueAndReplace as i32,
        body_mutation: Some(body("replaced")),
        ..Default::default()
    };
    common_on(r, "rh", common)
}

pub(super) fn streamed_local_response(_: &mut Ctx, r: &Req) -> Vec<Step> {
    use pb::streamed_immediate_response::Response as Sir;
    let sir = |x: Sir| {
        Step::Send(pb::ProcessingResponse {
            response: Some(
                pb::processing_response::Response::StreamedImmediateResponse(
                    pb::StreamedImmediateResponse { response: Some(x) },
                ),
            ),
            ..Default::default()
        })
    };
    if kind(r) != "rh" {
        return send(continue_for(r));
    }
    let headers = envoy_types::pb::envoy::config::core::v3::HeaderMap {
        headers: vec![
            envoy_types::pb::envoy::config::core::v3::HeaderValue {
                key: ":status".into(),
                value: String::new(),
                raw_value: b"203".to_vec(),
            },
            envoy_types::pb::envoy::config::core::v3::HeaderValue {
                key: "x-local".into(),
                value: String::new(),
                raw_value: b"yes".to_vec(),
            },
        ],
    };
    vec![
        sir(Sir::HeadersResponse(pb::HttpHeaders {
            headers: Some(headers),
            end_of_stream: false,
            ..Default::default()
        })),
        sir(Sir::BodyResponse(pb::StreamedBodyResponse {
            body: b"part1-".to_vec(),
            end_of_stream: false,
            ..Default::default()
        })),
        sir(Sir::BodyResponse(pb::StreamedBodyResponse {
            body: b"part2".to_vec(),
            end_of_stream: false,
            ..Default::default()
        })),
        sir(Sir::TrailersResponse(
            envoy_types::pb::envoy::config::core::v3::HeaderMap {
                headers: vec![envoy_types::pb::envoy::config::core::v3::HeaderValue {
                    key: "x-local-trailer".into(),
                    value: String::new(),
                    raw_value: b"done".to_vec(),
                }],
            },
        )),
    ]
}

pub(super) fn metadata_only(_: &mut Ctx, _: &Req) -> Vec<Step> {
    send(pb::ProcessingResponse {
        dynamic_metadata: Some(envoy_types::pb::google::protobuf::Struct::default()),
        ..Default::default()
    })
}
