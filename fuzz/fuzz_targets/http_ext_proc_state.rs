//! The HTTP ext_proc state machine (`filter::http::ext_proc::state`, no I/O) driven the way its
//! async driver drives it, by arbitrary HTTP events and arbitrary processor replies (structured,
//! or any bytes decoded as a `ProcessingResponse`), under arbitrary modes and settings.
//!
//! Checks: no panic; each direction's output is well ordered (headers once, then data, then
//! trailers, then the end, nothing after it); after a local reply nothing more is forwarded;
//! no body message to the processor is larger than the buffer limit plus one chunk when the
//! driver honours `data_paused`; forwarded headers are still valid.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode as PbMode;
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use extproxy::pb::ext_proc as pb;
use extproxy::filter::http::ext_proc::config::RouteCacheAction;
use extproxy::filter::http::ext_proc::mutation::{Checker, Head};
use extproxy::filter::http::ext_proc::state::{raw_mode_key, Action, BodyMode, Core, Dir, DirMode, Mode, Policy};
use extproxy::filter::http::ext_proc::stats::Stats;
use extproxy_fuzz::{check_head, check_map, Name, Rules, Value};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use pb::processing_request::Request as Req;
use pb::processing_response::Response as Resp;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

/// Largest body chunk the harness feeds.
const MAX_CHUNK: usize = 512;

#[derive(Arbitrary, Debug, Clone, Copy)]
struct ModeIn {
    send_headers: bool,
    body: u8,
    send_trailers: bool,
}

impl ModeIn {
    fn get(self) -> DirMode {
        let body = match self.body % 5 {
            0 => BodyMode::None,
            1 => BodyMode::Streamed,
            2 => BodyMode::Buffered,
            3 => BodyMode::BufferedPartial,
            _ => BodyMode::FullDuplex,
        };
        DirMode { send_headers: self.send_headers, body, send_trailers: self.send_trailers }
    }
}

#[derive(Arbitrary, Debug)]
struct Settings {
    request: ModeIn,
    response: ModeIn,
    fail_open: bool,
    observability: bool,
    send_body_without_waiting: bool,
    allow_mode_override: bool,
    allowed_override_modes: Vec<[u8; 5]>,
    disable_immediate_response: bool,
    allow_content_length_header: bool,
    route_cache_action: u8,
    max_message_timeout_ms: u16,
    buffer_limit: u16,
    rules: Option<Rules>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum D {
    Request,
    Response,
}

impl D {
    fn get(self) -> Dir {
        match self {
            D::Request => Dir::Request,
            D::Response => Dir::Response,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Headers {
    headers: Vec<(Name, Value)>,
    content_length: Option<u16>,
    eos: bool,
}

#[derive(Arbitrary, Debug)]
enum Event {
    /// The upstream's response headers (only once the request headers went upstream).
    ResponseHeaders(Headers),
    Data { d: D, len: u16, byte: u8, eos: bool },
    Trailers { d: D, headers: Vec<(Name, Value)> },
    Reply(Reply),
    Timeout(D),
    StreamOk,
    StreamError(i32, String),
}

#[derive(Arbitrary, Debug)]
struct Mutation {
    set: Vec<(Name, Value, Option<bool>)>,
    remove: Vec<Name>,
}

impl Mutation {
    fn get(&self) -> pb::HeaderMutation {
        #[allow(deprecated)]
        pb::HeaderMutation {
            set_headers: self
                .set
                .iter()
                .map(|(n, v, append)| core::HeaderValueOption {
                    header: Some(core::HeaderValue {
                        key: n.text(),
                        raw_value: v.bytes(),
                        ..Default::default()
                    }),
                    append: append.map(|value| envoy_types::pb::google::protobuf::BoolValue { value }),
                    ..Default::default()
                })
                .collect(),
            remove_headers: self.remove.iter().map(Name::text).collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum BodyMutation {
    Body(Vec<u8>),
    Clear(bool),
    Streamed(Vec<u8>, bool),
}

#[derive(Arbitrary, Debug)]
struct Common {
    status: u8,
    mutation: Option<Mutation>,
    body: Option<BodyMutation>,
    trailers: Option<Vec<(Name, Value)>>,
    clear_route_cache: bool,
}

impl Common {
    fn get(&self) -> pb::CommonResponse {
        pb::CommonResponse {
            // 0 CONTINUE, 1 CONTINUE_AND_REPLACE, 2 and 3 out of range.
            status: i32::from(self.status % 4),
            header_mutation: self.mutation.as_ref().map(Mutation::get),
            body_mutation: self.body.as_ref().map(|b| pb::BodyMutation {
                mutation: Some(match b {
                    BodyMutation::Body(v) => pb::body_mutation::Mutation::Body(v.clone().into()),
                    BodyMutation::Clear(c) => pb::body_mutation::Mutation::ClearBody(*c),
                    BodyMutation::Streamed(v, eos) => {
                        pb::body_mutation::Mutation::StreamedResponse(pb::StreamedBodyResponse {
                            body: v.clone().into(),
                            end_of_stream: *eos,
                            ..Default::default()
                        })
                    }
                }),
            }),
            trailers: self.trailers.as_ref().map(|t| proto_map(t)),
            clear_route_cache: self.clear_route_cache,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Headers(D, Common),
    Body(D, Common),
    Trailers(D, Option<Mutation>),
    Immediate { status: u16, headers: Option<Mutation>, body: Vec<u8>, details: String },
    StreamedHeaders(Vec<(Name, Value)>, bool),
    StreamedBody(Vec<u8>, bool),
    StreamedTrailers(Vec<(Name, Value)>),
    None,
}

#[derive(Arbitrary, Debug)]
enum Reply {
    /// Any bytes, decoded as a `ProcessingResponse` (skipped when they do not decode).
    Raw(Vec<u8>),
    Structured {
        kind: Kind,
        mode_override: Option<[u8; 5]>,
        override_timeout_ms: Option<u16>,
    },
}

fn proto_map(h: &[(Name, Value)]) -> core::HeaderMap {
    core::HeaderMap {
        headers: h
            .iter()
            .map(|(n, v)| core::HeaderValue { key: n.text(), raw_value: v.bytes(), ..Default::default() })
            .collect(),
    }
}

impl Reply {
    fn get(&self) -> Option<pb::ProcessingResponse> {
        let (kind, mode_override, timeout) = match self {
            Reply::Raw(b) => return pb::ProcessingResponse::decode(b.as_slice()).ok(),
            Reply::Structured { kind, mode_override, override_timeout_ms } => {
                (kind, mode_override, override_timeout_ms)
            }
        };
        let sir = |r| Some(Resp::StreamedImmediateResponse(pb::StreamedImmediateResponse { response: Some(r) }));
        use pb::streamed_immediate_response::Response as Sir;
        let response = match kind {
            Kind::Headers(D::Request, c) => Some(Resp::RequestHeaders(pb::HeadersResponse { response: Some(c.get()) })),
            Kind::Headers(D::Response, c) => Some(Resp::ResponseHeaders(pb::HeadersResponse { response: Some(c.get()) })),
            Kind::Body(D::Request, c) => Some(Resp::RequestBody(pb::BodyResponse { response: Some(c.get()) })),
            Kind::Body(D::Response, c) => Some(Resp::ResponseBody(pb::BodyResponse { response: Some(c.get()) })),
            Kind::Trailers(D::Request, m) => Some(Resp::RequestTrailers(pb::TrailersResponse { header_mutation: m.as_ref().map(Mutation::get) })),
            Kind::Trailers(D::Response, m) => Some(Resp::ResponseTrailers(pb::TrailersResponse { header_mutation: m.as_ref().map(Mutation::get) })),
            Kind::Immediate { status, headers, body, details } => Some(Resp::ImmediateResponse(pb::ImmediateResponse {
                status: Some(HttpStatus { code: i32::from(*status) }),
                headers: headers.as_ref().map(Mutation::get),
                body: body.clone().into(),
                grpc_status: None,
                details: details.clone(),
            })),
            Kind::StreamedHeaders(h, eos) => sir(Sir::HeadersResponse(pb::HttpHeaders {
                headers: Some(proto_map(h)),
                end_of_stream: *eos,
                ..Default::default()
            })),
            Kind::StreamedBody(b, eos) => sir(Sir::BodyResponse(pb::StreamedBodyResponse { body: b.clone().into(), end_of_stream: *eos, ..Default::default() })),
            Kind::StreamedTrailers(t) => sir(Sir::TrailersResponse(proto_map(t))),
            Kind::None => None,
        };
        Some(pb::ProcessingResponse {
            response,
            mode_override: mode_override.map(pb_mode),
            override_message_timeout: timeout.map(|ms| envoy_types::pb::google::protobuf::Duration {
                seconds: i64::from(ms / 1000),
                nanos: i32::from(ms % 1000) * 1_000_000,
            }),
            ..Default::default()
        })
    }
}

fn pb_mode(m: [u8; 5]) -> PbMode {
    PbMode {
        request_header_mode: i32::from(m[0] % 3),
        response_header_mode: i32::from(m[1] % 3),
        request_body_mode: i32::from(m[2] % 6),
        response_body_mode: i32::from(m[3] % 6),
        request_trailer_mode: i32::from(m[4] % 3),
        response_trailer_mode: i32::from(m[4] / 3 % 3),
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    settings: Settings,
    request: Headers,
    events: Vec<Event>,
}

fn header_map(h: &[(Name, Value)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (n, v) in h {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.text().as_bytes()),
            http::HeaderValue::from_bytes(&v.bytes()),
        ) {
            map.append(n, v);
        }
    }
    map
}

fn head(d: Dir, h: &Headers) -> Head {
    let mut headers = header_map(&h.headers);
    if let Some(n) = h.content_length {
        headers.insert(http::header::CONTENT_LENGTH, n.into());
    }
    match d {
        Dir::Request => {
            let mut p = http::Request::builder().method("POST").uri("/p").body(()).expect("static").into_parts().0;
            p.headers = headers;
            p.headers.insert(http::header::HOST, http::HeaderValue::from_static("h.test"));
            Head::Request(p)
        }
        Dir::Response => {
            let mut p = http::Response::builder().status(200).body(()).expect("static").into_parts().0;
            p.headers = headers;
            Head::Response(p)
        }
    }
}

/// What the harness knows about one direction.
#[derive(Default)]
struct Side {
    /// Input: headers given, input complete.
    started: bool,
    input_done: bool,
    /// Output: headers forwarded, trailers forwarded, ended.
    out_headers: bool,
    out_eos: bool,
    out_trailers: bool,
    out_end: bool,
    /// The direction's timer is armed.
    timer: bool,
}

struct Harness {
    core: Core,
    sides: [Side; 2],
    limit: usize,
    local_reply: bool,
    local_stream: bool,
}

fn idx(d: Dir) -> usize {
    match d {
        Dir::Request => 0,
        Dir::Response => 1,
    }
}

impl Harness {
    /// Executes the queued actions, checking the output invariants.
    fn drain(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Send(m) => {
                    let body = match &m.request {
                        Some(Req::RequestBody(b)) | Some(Req::ResponseBody(b)) => b.body.len(),
                        _ => 0,
                    };
                    assert!(body <= self.limit + MAX_CHUNK, "body message of {body} bytes (limit {})", self.limit);
                }
                Action::Timer(d, t) => self.sides[idx(d)].timer = t.is_some(),
                Action::Headers(d, h, eos) => {
                    self.output_allowed(d);
                    let s = &mut self.sides[idx(d)];
                    assert!(!s.out_headers, "{d:?} headers forwarded twice");
                    s.out_headers = true;
                    s.out_eos = eos;
                    check_head(&h);
                }
                Action::Data(d, _) => {
                    self.output_allowed(d);
                    let s = &self.sides[idx(d)];
                    assert!(s.out_headers && !s.out_eos && !s.out_trailers, "{d:?} data out of order");
                }
                Action::Trailers(d, t) => {
                    self.output_allowed(d);
                    let s = &mut self.sides[idx(d)];
                    assert!(s.out_headers && !s.out_eos && !s.out_trailers, "{d:?} trailers out of order");
                    s.out_trailers = true;
                    check_map(&t);
                }
                Action::End(d) => {
                    self.output_allowed(d);
                    let s = &mut self.sides[idx(d)];
                    assert!(s.out_headers, "{d:?} ended before its headers");
                    s.out_end = true;
                }
                Action::LocalReply(r) => {
                    // A late local reply resets a streamed one that is still going.
                    let resets_stream = self.local_stream && !self.sides[1].out_end;
                    assert!(!self.local_reply || resets_stream, "a second local reply: {r:?}");
                    self.local_reply = true;
                    self.local_stream = false;
                }
                Action::LocalStream(r) => {
                    assert!(!self.local_reply, "a streamed local reply after a local reply: {r:?}");
                    assert!(!self.sides[1].out_headers, "a streamed local reply after the response headers");
                    self.local_reply = true;
                    self.local_stream = true;
                    // Its body is the response direction's output.
                    let s = &mut self.sides[1];
                    s.out_headers = true;
                }
                Action::ClearRouteCache | Action::Metadata(_) | Action::Close => {}
            }
        }
    }

    fn output_allowed(&self, d: Dir) {
        let s = &self.sides[idx(d)];
        assert!(!s.out_end, "{d:?} output after its end");
        if self.local_reply {
            assert!(self.local_stream && d == Dir::Response, "{d:?} output after a local reply");
        }
    }

    fn http_open(&self, d: Dir) -> bool {
        let s = &self.sides[idx(d)];
        !self.local_reply && s.started && !s.input_done
    }

    fn step(&mut self, ev: &Event) {
        match ev {
            Event::ResponseHeaders(h) => {
                // The upstream answers once it has the request headers.
                if self.local_reply || !self.sides[0].out_headers || self.sides[1].started {
                    return;
                }
                let s = &mut self.sides[1];
                s.started = true;
                s.input_done = h.eos;
                self.core.on_headers(Dir::Response, head(Dir::Response, h), h.eos);
            }
            Event::Data { d, len, byte, eos } => {
                let d = d.get();
                // The driver reads no frame of a paused direction (data, end or trailers).
                if !self.http_open(d) || self.core.data_paused(d) {
                    return;
                }
                let data = Bytes::from(vec![*byte; usize::from(*len) % (MAX_CHUNK + 1)]);
                self.sides[idx(d)].input_done = *eos;
                self.core.on_data(d, data, *eos);
            }
            Event::Trailers { d, headers } => {
                let d = d.get();
                if !self.http_open(d) || self.core.data_paused(d) {
                    return;
                }
                self.sides[idx(d)].input_done = true;
                self.core.on_trailers(d, header_map(headers));
            }
            Event::Reply(r) => {
                if let Some(r) = r.get() {
                    self.core.on_response(r);
                }
            }
            Event::Timeout(d) => {
                let d = d.get();
                if self.sides[idx(d)].timer {
                    self.sides[idx(d)].timer = false;
                    self.core.on_timeout(d);
                }
            }
            Event::StreamOk => self.core.on_stream_ok(),
            Event::StreamError(code, msg) => self.core.on_stream_error(*code, msg),
        }
    }
}

fuzz_target!(|input: Input| {
    let s = &input.settings;
    let checker = match s.rules.clone().map(Rules::config) {
        Some(cfg) => match Checker::build(Some(&cfg), "rules") {
            Ok(c) => c,
            Err(_) => return,
        },
        None => Checker::default(),
    };
    let limit = usize::from(s.buffer_limit % 4096);
    let mut policy = Policy::defaults(Stats::detached());
    policy.max_message_timeout = Duration::from_millis(u64::from(s.max_message_timeout_ms));
    policy.checker = checker;
    policy.route_cache_action = match s.route_cache_action % 3 {
        0 => RouteCacheAction::Default,
        1 => RouteCacheAction::Clear,
        _ => RouteCacheAction::Retain,
    };
    policy.allow_mode_override = s.allow_mode_override;
    policy.allowed_override_modes = s
        .allowed_override_modes
        .iter()
        .map(|m| raw_mode_key(&pb_mode(*m)))
        .collect();
    policy.disable_immediate_response = s.disable_immediate_response;
    policy.observability_mode = s.observability;
    policy.send_body_without_waiting = s.send_body_without_waiting;
    policy.allow_content_length_header = s.allow_content_length_header;
    policy.buffer_limit = limit;
    let mode = Mode { request: s.request.get(), response: s.response.get() };
    let core = Core::new(Arc::new(policy), mode, s.fail_open, Arc::new(vec!["ns".to_string()]));
    let mut h = Harness { core, sides: Default::default(), limit, local_reply: false, local_stream: false };

    h.sides[0].started = true;
    h.sides[0].input_done = input.request.eos;
    h.core.on_headers(Dir::Request, head(Dir::Request, &input.request), input.request.eos);
    h.drain();
    for ev in &input.events {
        h.step(ev);
        h.drain();
    }
    h.core.shutdown();
    h.drain();
});
