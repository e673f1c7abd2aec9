//! The HTTP ext_proc stream as a plain state machine, with no I/O.
//!
//! [`HttpState::on_request`] checks an incoming `ProcessingRequest` against what has been seen
//! on its path and turns it into a typed [`Inbound`]; [`HttpState::encode`] turns the processor's
//! [`Reply`] into the `ProcessingResponse`s Envoy expects for that phase and body mode. The async
//! driver only moves messages between these two and the processor.
//!
//! Per path (request, response) the accepted order is
//! `headers? → body* → trailers?`, with `end_of_stream` closing the path. Anything else is
//! out of order under every processing mode and fails the stream (`FAILED_PRECONDITION`).

use bytes::Bytes;

use super::headers::Headers;
use super::reply::{Action, BodyOp, Reply};
use super::BodyMode;
use crate::error::{Error, Side};
use crate::pb::envoy::config::core::v3::Metadata;
use crate::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use crate::pb::envoy::service::ext_proc::v3::{
    body_mutation, common_response, processing_request, processing_response, BodyMutation,
    BodyResponse, CommonResponse, HeadersResponse, ProcessingRequest, ProcessingResponse,
    StreamedBodyResponse, TrailersResponse,
};
use crate::pb::google::protobuf::{Duration, Struct};

/// The largest `streamed_response` chunk the SDK sends; bigger chunks are split.
pub const MAX_STREAMED_CHUNK: usize = 64 * 1024;

/// One of the six HTTP processing phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// `request_headers`.
    RequestHeaders,
    /// `request_body`.
    RequestBody,
    /// `request_trailers`.
    RequestTrailers,
    /// `response_headers`.
    ResponseHeaders,
    /// `response_body`.
    ResponseBody,
    /// `response_trailers`.
    ResponseTrailers,
}

impl Phase {
    /// The path this phase belongs to ([`Side::Request`] or [`Side::Response`]).
    pub fn side(self) -> Side {
        match self {
            Phase::RequestHeaders | Phase::RequestBody | Phase::RequestTrailers => Side::Request,
            _ => Side::Response,
        }
    }

    /// The proto oneof name, e.g. `"request_body"`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request_headers",
            Phase::RequestBody => "request_body",
            Phase::RequestTrailers => "request_trailers",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::ResponseTrailers => "response_trailers",
        }
    }
}

/// A body message (one chunk, or the whole buffered body).
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    /// The bytes.
    pub(crate) data: Bytes,
    /// Last body message of this path (and no trailers follow).
    pub(crate) end_of_stream: bool,
    /// The body mode in force when it arrived.
    pub(crate) mode: BodyMode,
}

impl Body {
    /// A body message (for tests and custom drivers).
    pub fn new(data: impl Into<Bytes>, end_of_stream: bool, mode: BodyMode) -> Body {
        Body {
            data: data.into(),
            end_of_stream,
            mode,
        }
    }

    /// The bytes of this message.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// True for the last body message of this path (no trailers follow).
    pub fn end_of_stream(&self) -> bool {
        self.end_of_stream
    }

    /// The body mode in force (STREAMED, BUFFERED, ...).
    pub fn mode(&self) -> BodyMode {
        self.mode
    }
}

/// The typed content of one incoming message.
#[derive(Debug, Clone)]
pub(crate) enum Message {
    /// Request or response headers.
    Headers(Headers),
    /// A body message.
    Body(Body),
    /// Trailers.
    Trailers(Headers),
}

/// An accepted incoming message, ready for the processor.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// Which phase.
    pub phase: Phase,
    /// The content.
    pub message: Message,
    /// `metadata_context` of this message.
    pub metadata: Option<Metadata>,
    /// `attributes` of this message (sent on the first message of each path).
    pub attributes: std::collections::HashMap<String, Struct>,
}

/// Where a path stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing seen yet.
    Start,
    /// Headers seen, more to come.
    Headers,
    /// Some body seen, more to come.
    Body,
    /// Body finished but trailers may follow (BUFFERED with trailers, BUFFERED_PARTIAL).
    BodyClosed,
    /// Path complete.
    Done,
    /// `CONTINUE_AND_REPLACE` sent: Envoy stops sending this path; stragglers are ignored.
    Replaced,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Start => "nothing",
            Stage::Headers => "headers",
            Stage::Body => "body",
            Stage::BodyClosed => "the last body message",
            Stage::Done => "end of stream",
            Stage::Replaced => "CONTINUE_AND_REPLACE",
        }
    }
}

/// One path's state.
#[derive(Debug, Clone, Copy)]
struct Path {
    /// Progress through headers → body → trailers.
    stage: Stage,
    /// Body mode in force (from `protocol_config`, then `mode_override`).
    body_mode: BodyMode,
}

impl Default for Path {
    fn default() -> Path {
        Path {
            stage: Stage::Start,
            body_mode: BodyMode::None,
        }
    }
}

/// The state of one HTTP ext_proc stream.
#[derive(Debug, Default)]
pub(crate) struct HttpState {
    /// At least one message seen.
    started: bool,
    /// `observability_mode` seen: replies are computed but never sent.
    pub observability: bool,
    /// An immediate response was sent: later messages are ignored.
    finished: bool,
    /// Request path.
    request: Path,
    /// Response path.
    response: Path,
}

fn oneof_name(r: &processing_request::Request) -> Phase {
    use processing_request::Request as R;
    match r {
        R::RequestHeaders(_) => Phase::RequestHeaders,
        R::ResponseHeaders(_) => Phase::ResponseHeaders,
        R::RequestBody(_) => Phase::RequestBody,
        R::ResponseBody(_) => Phase::ResponseBody,
        R::RequestTrailers(_) => Phase::RequestTrailers,
        R::ResponseTrailers(_) => Phase::ResponseTrailers,
    }
}

impl HttpState {
    /// The body mode in force on `side`.
    pub fn body_mode(&self, side: Side) -> BodyMode {
        self.path(side).body_mode
    }

    fn path(&self, side: Side) -> &Path {
        if side == Side::Request {
            &self.request
        } else {
            &self.response
        }
    }

    fn path_mut(&mut self, side: Side) -> &mut Path {
        if side == Side::Request {
            &mut self.request
        } else {
            &mut self.response
        }
    }

    /// A path that saw part of a body but not its end (for a stream that ends early).
    pub fn incomplete_side(&self) -> Option<Side> {
        [Side::Request, Side::Response]
            .into_iter()
            .find(|s| self.path(*s).stage == Stage::Body)
    }

    /// Accepts one incoming message. `Ok(None)` means "ignore it" (after an immediate response,
    /// or a straggler after `CONTINUE_AND_REPLACE`).
    pub fn on_request(&mut self, req: ProcessingRequest) -> Result<Option<Inbound>, Error> {
        use processing_request::Request as R;
        let ProcessingRequest {
            metadata_context,
            attributes,
            observability_mode,
            protocol_config,
            flow_control_init: _,
            client_window_update: _,
            request,
        } = req;
        let request = request.ok_or(Error::EmptyRequest)?;
        if !self.started {
            self.started = true;
            if let Some(pc) = protocol_config {
                self.request.body_mode = mode_of(pc.request_body_mode);
                self.response.body_mode = mode_of(pc.response_body_mode);
            }
        }
        self.observability |= observability_mode;
        if self.finished {
            return Ok(None);
        }
        let phase = oneof_name(&request);
        let side = phase.side();
        let path = *self.path(side);
        if path.stage == Stage::Replaced {
            return Ok(None);
        }
        let out_of_order = |got| Error::OutOfOrder {
            side,
            got,
            after: path.stage.name(),
        };
        let (message, next) = match request {
            R::RequestHeaders(h) | R::ResponseHeaders(h) => {
                if path.stage != Stage::Start {
                    return Err(out_of_order("headers"));
                }
                let eos = h.end_of_stream;
                let next = if eos { Stage::Done } else { Stage::Headers };
                (Message::Headers(Headers::from_proto(h.headers, eos)), next)
            }
            R::RequestBody(b) | R::ResponseBody(b) => {
                if !matches!(path.stage, Stage::Start | Stage::Headers | Stage::Body) {
                    return Err(out_of_order("body"));
                }
                let next = if b.end_of_stream {
                    Stage::Done
                } else {
                    match path.body_mode {
                        // One body message only; trailers may follow.
                        BodyMode::Buffered | BodyMode::BufferedPartial => Stage::BodyClosed,
                        _ => Stage::Body,
                    }
                };
                let body = Body {
                    data: Bytes::from(b.body),
                    end_of_stream: b.end_of_stream,
                    mode: path.body_mode,
                };
                (Message::Body(body), next)
            }
            R::RequestTrailers(t) | R::ResponseTrailers(t) => {
                if matches!(path.stage, Stage::Done) {
                    return Err(out_of_order("trailers"));
                }
                (
                    Message::Trailers(Headers::from_proto(t.trailers, true)),
                    Stage::Done,
                )
            }
        };
        self.path_mut(side).stage = next;
        Ok(Some(Inbound {
            phase,
            message,
            metadata: metadata_context,
            attributes,
        }))
    }

    /// Encodes the processor's reply to a message of `phase`.
    ///
    /// Returns the responses to send (possibly none, e.g. a held FULL_DUPLEX_STREAMED chunk), or
    /// the status to end the stream with.
    pub fn encode(
        &mut self,
        phase: Phase,
        message: &Message,
        reply: Reply,
    ) -> Result<Vec<ProcessingResponse>, Error> {
        let side = phase.side();
        let Reply {
            action,
            headers,
            body,
            dynamic_metadata,
            mode_override,
            clear_route_cache,
        } = reply;
        let mode = self.path(side).body_mode;
        let fds = mode == BodyMode::FullDuplexStreamed;
        let status = match action {
            Action::Abort(s) => return Err(Error::Aborted(s)),
            Action::Immediate(imm) => {
                if !self.observability {
                    self.finished = true;
                }
                return Ok(vec![ProcessingResponse {
                    dynamic_metadata,
                    response: Some(processing_response::Response::ImmediateResponse(
                        imm.to_proto(),
                    )),
                    ..Default::default()
                }]);
            }
            Action::Continue => common_response::ResponseStatus::Continue,
            Action::ContinueAndReplace => common_response::ResponseStatus::ContinueAndReplace,
        };
        let header_mutation = headers.to_proto();
        let mut out = Vec::new();
        match (phase, message) {
            (Phase::RequestHeaders | Phase::ResponseHeaders, _) => {
                let body_mutation = match body {
                    BodyOp::Unchanged => None,
                    BodyOp::Replace(b) => Some(body_mutation::Mutation::Body(b.to_vec())),
                    BodyOp::Clear => Some(body_mutation::Mutation::ClearBody(true)),
                    BodyOp::Chunks(_) => {
                        return Err(Error::InvalidReply(format!(
                            "stream_chunk/hold in a {} reply (only valid for FULL_DUPLEX_STREAMED bodies)",
                            phase.name()
                        )))
                    }
                };
                let common = CommonResponse {
                    status: status as i32,
                    header_mutation,
                    body_mutation: body_mutation.map(|m| BodyMutation { mutation: Some(m) }),
                    trailers: None,
                    clear_route_cache,
                };
                let hr = HeadersResponse {
                    response: Some(common),
                };
                let response = if phase == Phase::RequestHeaders {
                    processing_response::Response::RequestHeaders(hr)
                } else {
                    processing_response::Response::ResponseHeaders(hr)
                };
                if status == common_response::ResponseStatus::ContinueAndReplace
                    && !self.observability
                {
                    self.path_mut(side).stage = Stage::Replaced;
                }
                if let Some(m) = &mode_override {
                    self.apply_mode_override(m);
                }
                out.push(ProcessingResponse {
                    dynamic_metadata,
                    mode_override,
                    response: Some(response),
                    ..Default::default()
                });
            }
            (_, Message::Body(received)) if fds => {
                if !headers.is_empty() {
                    tracing::debug!("header mutation in a FULL_DUPLEX_STREAMED body reply is ignored by Envoy; dropped");
                }
                let chunks = match body {
                    BodyOp::Unchanged => vec![(received.data.clone(), received.end_of_stream)],
                    BodyOp::Replace(b) => vec![(b, received.end_of_stream)],
                    BodyOp::Clear => {
                        if received.end_of_stream {
                            vec![(Bytes::new(), true)]
                        } else {
                            Vec::new()
                        }
                    }
                    BodyOp::Chunks(v) => v,
                };
                out.extend(streamed_responses(side, chunks));
                attach_metadata(&mut out, dynamic_metadata);
            }
            (_, Message::Body(_)) => {
                let body_mutation = match body {
                    BodyOp::Unchanged => None,
                    BodyOp::Replace(b) => Some(body_mutation::Mutation::Body(b.to_vec())),
                    BodyOp::Clear => Some(body_mutation::Mutation::ClearBody(true)),
                    BodyOp::Chunks(_) => {
                        return Err(Error::InvalidReply(format!(
                            "stream_chunk/hold in a {} reply while the body mode is {:?} (only valid for FULL_DUPLEX_STREAMED)",
                            phase.name(),
                            mode
                        )))
                    }
                };
                let common = CommonResponse {
                    status: status as i32,
                    header_mutation,
                    body_mutation: body_mutation.map(|m| BodyMutation { mutation: Some(m) }),
                    trailers: None,
                    clear_route_cache,
                };
                let br = BodyResponse {
                    response: Some(common),
                };
                out.push(ProcessingResponse {
                    dynamic_metadata,
                    response: Some(if side == Side::Request {
                        processing_response::Response::RequestBody(br)
                    } else {
                        processing_response::Response::ResponseBody(br)
                    }),
                    ..Default::default()
                });
            }
            (_, _) => {
                // Trailers. In FULL_DUPLEX_STREAMED the processor may flush held body first.
                match body {
                    BodyOp::Unchanged => {}
                    BodyOp::Chunks(v) if fds => out.extend(streamed_responses(side, v)),
                    _ => {
                        return Err(Error::InvalidReply(format!(
                            "body mutation in a {} reply{}",
                            phase.name(),
                            if fds { " (use stream_chunk)" } else { "" }
                        )))
                    }
                }
                let tr = TrailersResponse { header_mutation };
                out.push(ProcessingResponse {
                    response: Some(if side == Side::Request {
                        processing_response::Response::RequestTrailers(tr)
                    } else {
                        processing_response::Response::ResponseTrailers(tr)
                    }),
                    ..Default::default()
                });
                attach_metadata(&mut out, dynamic_metadata);
            }
        }
        Ok(out)
    }

    /// Envoy's rules (spec §4.9): ignored when a configured body mode is FULL_DUPLEX_STREAMED;
    /// otherwise body modes are literal and apply to both paths.
    fn apply_mode_override(&mut self, m: &ProcessingMode) {
        if self.request.body_mode == BodyMode::FullDuplexStreamed
            || self.response.body_mode == BodyMode::FullDuplexStreamed
        {
            return;
        }
        self.request.body_mode = mode_of(m.request_body_mode);
        self.response.body_mode = mode_of(m.response_body_mode);
    }

    /// Notes a response the processor sent itself (through `HttpContext::send_raw`).
    pub fn observe_raw(&mut self, resp: &ProcessingResponse) {
        if let Some(m) = &resp.mode_override {
            // A standalone override may switch NONE/STREAMED to FULL_DUPLEX_STREAMED.
            if resp.response.is_none() {
                self.request.body_mode = mode_of(m.request_body_mode);
            } else {
                self.apply_mode_override(m);
            }
        }
        if let Some(processing_response::Response::ImmediateResponse(_)) = resp.response {
            self.finished = !self.observability;
        }
    }
}

fn mode_of(v: i32) -> BodyMode {
    BodyMode::try_from(v).unwrap_or(BodyMode::None)
}

/// A standalone `override_message_timeout` response.
pub(crate) fn timeout_override(d: std::time::Duration) -> ProcessingResponse {
    ProcessingResponse {
        override_message_timeout: Some(Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }),
        ..Default::default()
    }
}

/// One `streamed_response` message per chunk, split at [`MAX_STREAMED_CHUNK`]; the end-of-stream
/// flag stays on the last piece. Empty non-final chunks are dropped (they carry nothing).
fn streamed_responses(side: Side, chunks: Vec<(Bytes, bool)>) -> Vec<ProcessingResponse> {
    let mut out = Vec::new();
    for (data, eos) in chunks {
        if data.is_empty() && !eos {
            continue;
        }
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let end = (off + MAX_STREAMED_CHUNK).min(data.len());
            pieces.push(data.slice(off..end));
            off = end;
        }
        if pieces.is_empty() {
            pieces.push(Bytes::new());
        }
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            let sr = StreamedBodyResponse {
                body: piece.to_vec(),
                end_of_stream: eos && i == last,
                ..Default::default()
            };
            let br = BodyResponse {
                response: Some(CommonResponse {
                    body_mutation: Some(BodyMutation {
                        mutation: Some(body_mutation::Mutation::StreamedResponse(sr)),
                    }),
                    ..Default::default()
                }),
            };
            out.push(ProcessingResponse {
                response: Some(if side == Side::Request {
                    processing_response::Response::RequestBody(br)
                } else {
                    processing_response::Response::ResponseBody(br)
                }),
                ..Default::default()
            });
        }
    }
    out
}

/// Dynamic metadata travels on the first response; a metadata-only message would be spurious.
fn attach_metadata(out: &mut [ProcessingResponse], md: Option<Struct>) {
    if let Some(md) = md {
        match out.first_mut() {
            Some(first) => first.dynamic_metadata = Some(md),
            None => tracing::warn!("dynamic metadata dropped: nothing to send it with"),
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
