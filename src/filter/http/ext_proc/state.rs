//! The ext_proc protocol state machine of one HTTP stream, without I/O (§4.2, §4.19).
//!
//! The async driver ([`super::stream`]) feeds it the HTTP events of both directions
//! ([`Core::on_headers`], [`Core::on_data`], [`Core::on_trailers`]), the processor's responses
//! ([`Core::on_response`]), timer expiries and side-stream failures, and executes the
//! [`Action`]s it queues: messages to send, timers to (re)arm, headers / data / trailers to
//! forward, local replies. Each direction has its own callback state, queue and timer.

use super::config::RouteCacheAction;
use super::mutation::{self, Checker, Context, ForwardRules, Head, MutationError, Target};
use super::stats::Stats;
use crate::filter::http::LocalReply;
use crate::pb::ext_proc as pb;
use bytes::{Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode as PbMode;
use envoy_types::pb::google::protobuf::Struct;
use http::{HeaderMap, StatusCode};
use pb::body_mutation::Mutation as BodyMut;
use pb::processing_request::Request as Req;
use pb::processing_response::Response as Resp;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// A direction of the HTTP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client → upstream (Envoy's decoding path).
    Request,
    /// Upstream → client (encoding path).
    Response,
}

pub use super::mode::{raw_mode_key, raw_mode_key_cfg, BodyMode, DirMode, Mode};

/// The filter settings the state machine needs (shared by all streams of a filter).
#[derive(Debug)]
pub struct Policy {
    /// Per-message deadline.
    pub message_timeout: Duration,
    /// Upper bound of `override_message_timeout` (zero disables overrides).
    pub max_message_timeout: Duration,
    /// Header mutation rules.
    pub checker: Checker,
    /// Which headers are sent.
    pub forward: ForwardRules,
    /// Route cache policy.
    pub route_cache_action: RouteCacheAction,
    /// Honour `mode_override`.
    pub allow_mode_override: bool,
    /// Allowed override keys (empty = any).
    pub allowed_override_modes: Vec<[i32; 5]>,
    /// Immediate responses are spurious.
    pub disable_immediate_response: bool,
    /// Send and go.
    pub observability_mode: bool,
    /// STREAMED: send chunks before the headers reply.
    pub send_body_without_waiting: bool,
    /// Status of error local replies.
    pub status_on_error: StatusCode,
    /// Keep `content-length` where Envoy strips it.
    pub allow_content_length_header: bool,
    /// Buffer limit for BUFFERED / BUFFERED_PARTIAL.
    pub buffer_limit: usize,
    /// Counters.
    pub stats: Stats,
}

impl Policy {
    /// A policy with Envoy's defaults, for tests.
    pub fn defaults(stats: Stats) -> Policy {
        Policy {
            message_timeout: Duration::from_millis(200),
            max_message_timeout: Duration::ZERO,
            checker: Checker::default(),
            forward: ForwardRules::default(),
            route_cache_action: RouteCacheAction::Default,
            allow_mode_override: false,
            allowed_override_modes: Vec::new(),
            disable_immediate_response: false,
            observability_mode: false,
            send_body_without_waiting: false,
            status_on_error: StatusCode::INTERNAL_SERVER_ERROR,
            allow_content_length_header: false,
            buffer_limit: 1024 * 1024,
            stats,
        }
    }
}

/// Something the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Send this message (the first one opens the side stream).
    Send(Box<pb::ProcessingRequest>),
    /// (Re)start a direction's message timer, or stop it (`None`).
    Timer(Dir, Option<Duration>),
    /// Forward the (mutated) headers; `true` if nothing follows them (no body, no trailers).
    Headers(Dir, Head, bool),
    /// Forward body bytes.
    Data(Dir, Bytes),
    /// Forward trailers (the direction ends after them).
    Trailers(Dir, HeaderMap),
    /// The direction's output is complete.
    End(Dir),
    /// Answer with a local reply (or reset if the response has started).
    LocalReply(LocalReply),
    /// Answer with a streamed local reply (`StreamedImmediateResponse`): its body is the
    /// response direction's output, fed by the `Data` / `Trailers` / `End(Response)` that follow.
    LocalStream(LocalReply),
    /// The router must match the route again.
    ClearRouteCache,
    /// Write these namespaces into the stream's dynamic metadata.
    Metadata(Struct),
    /// Close (reset) the side stream.
    Close,
}

/// The callback a direction waits for (`processor_state.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Callback {
    Idle,
    Headers,
    BufferedBody,
    StreamedBody,
    PartialBody,
    Trailers,
}

#[derive(Debug)]
struct DirState {
    mode: DirMode,
    cb: Callback,
    /// Headers have been received.
    started: bool,
    /// Held headers, not forwarded yet.
    head: Option<Head>,
    /// The headers ended the message.
    head_eos: bool,
    /// The source is complete (end of stream or trailers received).
    input_done: bool,
    /// Some body data was received.
    data_seen: bool,
    /// Received data not yet sent to the processor nor forwarded.
    queue: VecDeque<Bytes>,
    queued: usize,
    /// STREAMED chunks sent and awaiting their reply (FIFO); BUFFERED: the sent body.
    inflight: VecDeque<Bytes>,
    /// Held trailers.
    trailers: Option<HeaderMap>,
    /// Trailers were received.
    got_trailers: bool,
    /// The end of the body has been sent to the processor.
    eos_sent: bool,
    /// BUFFERED / BUFFERED_PARTIAL: the body message was sent (or skipped).
    body_sent: bool,
    /// Data now flows without processing (BUFFERED_PARTIAL after its reply, …).
    passthrough: bool,
    /// CONTINUE_AND_REPLACE with a body: the original body is dropped.
    drop_body: bool,
    /// Trailers were sent to the processor.
    trailers_sent: bool,
    /// FULL_DUPLEX_STREAMED: the processor ended the body.
    fd_body_done: bool,
    /// Output ended.
    ended: bool,
    /// The direction's message timer is running.
    timer: bool,
    /// An `override_message_timeout` was applied in the current callback.
    override_used: bool,
    /// Attributes for the first message of this direction.
    attributes: Option<Struct>,
    /// The first message of this direction was sent.
    first_sent: bool,
}

impl DirState {
    fn new(mode: DirMode) -> Self {
        DirState {
            mode,
            cb: Callback::Idle,
            started: false,
            head: None,
            head_eos: false,
            input_done: false,
            data_seen: false,
            queue: VecDeque::new(),
            queued: 0,
            inflight: VecDeque::new(),
            trailers: None,
            got_trailers: false,
            eos_sent: false,
            body_sent: false,
            passthrough: false,
            drop_body: false,
            trailers_sent: false,
            fd_body_done: false,
            ended: false,
            timer: false,
            override_used: false,
            attributes: None,
            first_sent: false,
        }
    }

    fn take_queue(&mut self) -> Bytes {
        self.queued = 0;
        concat(self.queue.drain(..))
    }
}

fn concat(parts: impl Iterator<Item = Bytes>) -> Bytes {
    let parts: Vec<Bytes> = parts.collect();
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => {
            let mut b = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts {
                b.extend_from_slice(&p);
            }
            b.freeze()
        }
    }
}

/// Replaces whitespace with `_`, as Envoy does for response-code details.
pub fn underscore(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

/// The state machine of one HTTP stream's external processing.
#[derive(Debug)]
pub struct Core {
    policy: Arc<Policy>,
    fail_open: bool,
    /// Top-level namespaces of `dynamic_metadata` that may be written.
    receiving: Arc<Vec<String>>,
    initial_mode: Mode,
    req: DirState,
    resp: DirState,
    /// External processing is over: everything passes through.
    done: bool,
    /// Set when the side stream could not be created (missing cluster).
    channel_unavailable: bool,
    opened: bool,
    closed: bool,
    /// A FULL_DUPLEX_STREAMED body chunk was sent: failures can no longer fail open.
    fd_seen: bool,
    /// `metadata_context` sent with every message.
    pub metadata_context: core::Metadata,
    /// A `StreamedImmediateResponse` is being received (its headers went downstream).
    local_response: bool,
    out: VecDeque<Action>,
}

impl Core {
    /// A new stream. `mode`, `fail_open` and `receiving` are the per-route merged values.
    pub fn new(
        policy: Arc<Policy>,
        mode: Mode,
        fail_open: bool,
        receiving: Arc<Vec<String>>,
    ) -> Self {
        Core {
            policy,
            fail_open,
            receiving,
            initial_mode: mode,
            req: DirState::new(mode.request),
            resp: DirState::new(mode.response),
            done: false,
            channel_unavailable: false,
            opened: false,
            closed: false,
            fd_seen: false,
            metadata_context: core::Metadata::default(),
            local_response: false,
            out: VecDeque::new(),
        }
    }

    /// Marks the side stream as impossible to create (cluster missing): the first message
    /// fails the stream instead (`…gRPC_error_14{Cluster_not_available}`).
    pub fn set_channel_unavailable(&mut self) {
        self.channel_unavailable = true;
    }

    /// Attributes to send with the first message of a direction.
    pub fn set_attributes(&mut self, d: Dir, attrs: Struct) {
        self.ds(d).attributes = Some(attrs);
    }

    /// The next action to execute.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// True once external processing is over for the stream.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True if the side stream was opened and not closed yet.
    pub fn is_open(&self) -> bool {
        self.opened && !self.closed
    }

    /// True if a direction would send anything to the processor for a message.
    pub fn wants(&self, d: Dir) -> bool {
        let m = self.mode(d);
        !self.done && (m.send_headers || m.body != BodyMode::None || m.send_trailers)
    }

    /// True if the driver should not read more data of `d` for now: the bytes held for the
    /// processor (queued, or sent and awaiting their reply) are over the buffer limit (Envoy
    /// raises its watermark there). BUFFERED keeps reading, to answer 413 / 500 at the limit.
    pub fn data_paused(&self, d: Dir) -> bool {
        let ds = self.ds_ref(d);
        let held = ds.queued + ds.inflight.iter().map(Bytes::len).sum::<usize>();
        !self.done && ds.mode.body != BodyMode::Buffered && held > self.policy.buffer_limit
    }

    /// Lets the rest of `d`'s body bypass the state machine when nothing will ever process it
    /// (body NONE, trailers not sent, no data seen yet, headers already forwarded). Returns true
    /// if the driver may hand the original body on untouched.
    pub fn body_bypass(&mut self, d: Dir) -> bool {
        let observability = self.policy.observability_mode;
        let ds = self.ds(d);
        let m = ds.mode;
        let ok = !observability
            && m.body == BodyMode::None
            && !m.send_trailers
            && ds.head.is_none()
            && !ds.data_seen
            && !ds.input_done
            && !ds.ended
            && ds.queue.is_empty()
            && ds.trailers.is_none()
            && (ds.cb == Callback::Idle);
        if ok {
            ds.passthrough = true;
            ds.input_done = true;
            ds.ended = true;
        }
        ok
    }

    /// True if the direction's output has ended.
    pub fn ended(&self, d: Dir) -> bool {
        self.ds_ref(d).ended
    }

    fn mode(&self, d: Dir) -> DirMode {
        self.ds_ref(d).mode
    }

    fn ds(&mut self, d: Dir) -> &mut DirState {
        match d {
            Dir::Request => &mut self.req,
            Dir::Response => &mut self.resp,
        }
    }

    fn ds_ref(&self, d: Dir) -> &DirState {
        match d {
            Dir::Request => &self.req,
            Dir::Response => &self.resp,
        }
    }

    fn stats(&self) -> &Stats {
        &self.policy.stats
    }

    fn should_strip_cl(&self, d: Dir) -> bool {
        let m = self.mode(d);
        !self.policy.allow_content_length_header
            && !self.policy.observability_mode
            && match m.body {
                BodyMode::Streamed | BodyMode::BufferedPartial | BodyMode::FullDuplex => true,
                BodyMode::Buffered => !m.send_headers,
                BodyMode::None => false,
            }
    }

    // === sending ===

    fn send(&mut self, d: Dir, request: Req) {
        if self.channel_unavailable && !self.opened {
            // Envoy: the client cannot be created ⇒ no stream, a gRPC error 14.
            self.opened = true;
            self.closed = true;
            self.on_stream_error(14, "Cluster not available");
            return;
        }
        let observability = self.policy.observability_mode;
        let first = !self.opened;
        if first {
            self.opened = true;
            self.stats().streams_started.inc();
        }
        let attributes = match self.ds(d).attributes.take() {
            Some(a) if !self.ds_ref(d).first_sent => {
                std::collections::HashMap::from([("envoy.filters.http.ext_proc".to_string(), a)])
            }
            _ => Default::default(),
        };
        self.ds(d).first_sent = true;
        let protocol_config = (first && !observability).then(|| pb::ProtocolConfiguration {
            request_body_mode: self.initial_mode.request.body.number(),
            response_body_mode: self.initial_mode.response.body.number(),
            send_body_without_waiting_for_header_response: self.policy.send_body_without_waiting,
        });
        let msg = pb::ProcessingRequest {
            metadata_context: Some(self.metadata_context.clone()),
            attributes,
            observability_mode: observability,
            protocol_config,
            request: Some(request),
            ..Default::default()
        };
        self.stats().stream_msgs_sent.inc();
        self.out.push_back(Action::Send(Box::new(msg)));
    }

    fn start_timer(&mut self, d: Dir) {
        if self.policy.observability_mode {
            return;
        }
        let t = self.policy.message_timeout;
        let ds = self.ds(d);
        ds.timer = true;
        ds.override_used = false;
        self.out.push_back(Action::Timer(d, Some(t)));
    }

    fn stop_timer(&mut self, d: Dir) {
        let ds = self.ds(d);
        if ds.timer {
            ds.timer = false;
            self.out.push_back(Action::Timer(d, None));
        }
    }

    fn headers_msg(&self, d: Dir, head: &Head, eos: bool) -> Req {
        let h = pb::HttpHeaders {
            headers: Some(mutation::to_proto(head, &self.policy.forward)),
            end_of_stream: eos,
            ..Default::default()
        };
        match d {
            Dir::Request => Req::RequestHeaders(h),
            Dir::Response => Req::ResponseHeaders(h),
        }
    }

    fn body_msg(d: Dir, body: &Bytes, eos: bool) -> Req {
        let b = pb::HttpBody {
            body: body.clone(),
            end_of_stream: eos,
            ..Default::default()
        };
        match d {
            Dir::Request => Req::RequestBody(b),
            Dir::Response => Req::ResponseBody(b),
        }
    }

    fn trailers_msg(&self, d: Dir, t: &HeaderMap) -> Req {
        let t = pb::HttpTrailers {
            trailers: Some(mutation::trailers_to_proto(t, &self.policy.forward)),
        };
        match d {
            Dir::Request => Req::RequestTrailers(t),
            Dir::Response => Req::ResponseTrailers(t),
        }
    }

    // === forwarding ===

    fn emit_head(&mut self, d: Dir) {
        let ds = self.ds(d);
        let end = ds.head_eos && !ds.drop_body;
        if let Some(head) = ds.head.take() {
            self.out.push_back(Action::Headers(d, head, end));
        }
    }

    fn emit_data(&mut self, d: Dir, b: Bytes) {
        if !b.is_empty() && !self.ds_ref(d).ended {
            self.out.push_back(Action::Data(d, b));
        }
    }

    fn emit_trailers(&mut self, d: Dir, t: HeaderMap) {
        let ds = self.ds(d);
        if !ds.ended {
            ds.ended = true;
            self.out.push_back(Action::Trailers(d, t));
            self.out.push_back(Action::End(d));
        }
    }

    fn emit_end(&mut self, d: Dir) {
        let ds = self.ds(d);
        if !ds.ended {
            ds.ended = true;
            self.out.push_back(Action::End(d));
        }
    }

    /// Forwards everything held for `d`, unprocessed (processing is over).
    fn flush(&mut self, d: Dir) {
        if !self.ds_ref(d).started {
            return;
        }
        self.emit_head(d);
        let inflight: Vec<Bytes> = self.ds(d).inflight.drain(..).collect();
        if !self.ds_ref(d).drop_body {
            for b in inflight {
                self.emit_data(d, b);
            }
            let q = self.ds(d).take_queue();
            self.emit_data(d, q);
        }
        if let Some(t) = self.ds(d).trailers.take() {
            self.emit_trailers(d, t);
        } else if self.ds_ref(d).input_done {
            self.emit_end(d);
        }
    }

    /// Ends external processing; held data flows on unmodified.
    fn finish_processing(&mut self) {
        if self.local_response {
            return self.cut_local_response();
        }
        self.done = true;
        self.close();
        self.stop_timer(Dir::Request);
        self.stop_timer(Dir::Response);
        self.flush(Dir::Request);
        self.flush(Dir::Response);
    }

    /// Processing ended in the middle of a streamed local reply (side stream closed, fail-open
    /// error): reset it rather than let the client take a cut body for a complete one. The
    /// request was answered locally, so its held headers are never forwarded.
    fn cut_local_response(&mut self) {
        self.local_response = false;
        self.done = true;
        self.close();
        self.stop_timer(Dir::Request);
        self.stop_timer(Dir::Response);
        self.out.push_back(Action::LocalReply(LocalReply::new(
            self.policy.status_on_error,
            Bytes::new(),
            "ext_proc_streamed_immediate_response_incomplete",
        )));
    }

    fn close(&mut self) {
        if self.opened && !self.closed {
            self.closed = true;
            self.stats().streams_closed.inc();
            self.out.push_back(Action::Close);
        }
    }

    /// Sends a local reply for an error and ends processing.
    fn error_reply(&mut self, status: StatusCode, details: &str) {
        self.done = true;
        self.close();
        self.stop_timer(Dir::Request);
        self.stop_timer(Dir::Response);
        self.stats().immediate_responses_sent.inc();
        self.out.push_back(Action::LocalReply(LocalReply::new(
            status,
            Bytes::new(),
            underscore(details),
        )));
    }

    /// A local reply that is not ext_proc's own (buffer overflow: the filter manager's).
    fn overflow(&mut self, d: Dir) {
        self.done = true;
        self.close();
        self.stop_timer(Dir::Request);
        self.stop_timer(Dir::Response);
        let reply = match d {
            Dir::Request => LocalReply::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
                "request_payload_too_large",
            ),
            Dir::Response => LocalReply::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                "response_payload_too_large",
            ),
        };
        self.out.push_back(Action::LocalReply(reply));
    }

    fn may_close_early(&mut self) {
        if !self.done
            && self.opened
            && !self.closed
            && !self.will_send_more(Dir::Request)
            && !self.will_send_more(Dir::Response)
        {
            self.close();
        }
    }

    fn will_send_more(&self, d: Dir) -> bool {
        let ds = self.ds_ref(d);
        let m = ds.mode;
        if ds.cb != Callback::Idle {
            return true;
        }
        if m.body == BodyMode::FullDuplex
            && ds.started
            && !ds.head_eos
            && (!ds.fd_body_done || (ds.trailers_sent && !ds.ended))
        {
            return true;
        }
        if !ds.started {
            return m.send_headers || m.body != BodyMode::None || m.send_trailers;
        }
        if ds.ended {
            return false;
        }
        let body_pending = !ds.head_eos
            && !ds.passthrough
            && !ds.drop_body
            && match m.body {
                BodyMode::None => false,
                BodyMode::Buffered | BodyMode::BufferedPartial => !ds.body_sent,
                BodyMode::Streamed | BodyMode::FullDuplex => !ds.eos_sent,
            };
        let trailers_pending = m.send_trailers
            && !ds.trailers_sent
            && !ds.drop_body
            && (!ds.input_done || ds.trailers.is_some());
        body_pending || trailers_pending
    }

    /// The HTTP stream is over: close the side stream if it is still open.
    pub fn shutdown(&mut self) {
        self.close();
    }

    /// A direction's message timer fired.
    pub fn on_timeout(&mut self, d: Dir) {
        if self.done || !self.ds_ref(d).timer {
            return;
        }
        self.ds(d).timer = false;
        self.stats().message_timeouts.inc();
        if self.fail_open {
            self.stats().failure_mode_allowed.inc();
            self.finish_processing();
        } else {
            self.error_reply(
                StatusCode::GATEWAY_TIMEOUT,
                "ext_proc_error_per-message_timeout_exceeded",
            );
        }
    }

    /// The processor ended the side stream with grpc-status OK.
    pub fn on_stream_ok(&mut self) {
        self.stats().server_half_closed.inc();
        if self.done {
            return;
        }
        self.finish_processing();
    }

    /// The side stream failed (gRPC error, reset, connect failure).
    pub fn on_stream_error(&mut self, code: i32, message: &str) {
        if self.done {
            return;
        }
        self.stats().streams_failed.inc();
        // Envoy 1.40 counts the remote close on errors too, twice on the fail-open path where
        // it also closes the stream (quirk H15).
        self.stats().server_half_closed.inc();
        self.closed = true;
        if self.fail_open && !self.fd_seen {
            self.stats().server_half_closed.inc();
            self.stats().streams_closed.inc();
            self.stats().failure_mode_allowed.inc();
            self.finish_processing();
        } else {
            let status = self.policy.status_on_error;
            self.error_reply(
                status,
                &format!(
                    "ext_proc_error_gRPC_error_{code}{{{}}}",
                    underscore(message)
                ),
            );
        }
    }
}

enum Failure {
    Spurious(&'static str),
    Mutation(MutationError),
    Other(&'static str),
}

#[path = "state_replies.rs"]
mod replies;

#[path = "state_events.rs"]
mod events;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "state_tests.rs"]
mod tests;
