//! HTTP processors (`envoy.service.ext_proc.v3.ExternalProcessor`).
//!
//! Envoy opens one gRPC stream per HTTP request and sends one message per phase it is configured
//! to send. The SDK creates one [`HttpProcessor`] value per stream (so per-request state lives in
//! `&mut self`) and calls the method for each phase:
//!
//! ```text
//!  client ──▶ Envoy ──────────────────────────────────────────▶ upstream
//!              │ request_headers ─▶ request_body* ─▶ request_trailers
//!              │                                                  │
//!  client ◀── Envoy ◀──────────────────────────────────────────  upstream
//!              │ response_headers ─▶ response_body* ─▶ response_trailers
//! ```
//!
//! Each method returns a [`Reply`]; the default continues unchanged. Which messages arrive
//! depends on the filter's `processing_mode`: headers are sent by default, bodies only with a
//! body mode, trailers only with `SEND`. Body modes, and what a reply to a body message means:
//!
//! | Body mode | Messages | Replies |
//! |-----------|----------|---------|
//! | NONE | none | — |
//! | STREAMED | one per chunk, often a final empty one with `end_of_stream` | exactly one per chunk, in order; `Reply::body` replaces that chunk |
//! | BUFFERED | the whole body, once | one; may also edit headers (they are still held) |
//! | BUFFERED_PARTIAL | the body up to the buffer limit, once | one |
//! | FULL_DUPLEX_STREAMED | one per chunk; Envoy has already drained it | any number of chunks ([`Reply::stream_chunk`]); `Reply::new()` echoes the chunk and `Reply::body` emits a replacement |
//!
//! The SDK learns the body modes from the first message's `protocol_config` and from any
//! `mode_override` the processor sends. In observability mode handlers run but nothing is sent.

mod driver;
mod headers;
mod reply;
pub(crate) mod service;
mod state;

use std::collections::HashMap;
use std::future::{ready, Future};

pub use crate::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode as BodyMode;
pub use crate::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
pub use headers::{HeaderMutation, Headers};
pub use reply::{ImmediateResponse, Reply};
pub use state::{Body, Phase, MAX_STREAMED_CHUNK};

pub(crate) use driver::drive;
pub(crate) use state::HttpState;

use crate::error::Error;
use crate::pb::envoy::config::core::v3::Metadata;
use crate::pb::envoy::service::ext_proc::v3::ProcessingResponse;
use crate::pb::google::protobuf::Struct;
use crate::stream::Outbound;

/// An HTTP external processor: one value per HTTP request (per gRPC stream).
///
/// Every method has a default that continues unchanged, so implement only the phases you need.
/// Implement them with `async fn`:
///
/// ```
/// use extproc::{Headers, HttpContext, HttpProcessor, Reply};
///
/// #[derive(Default)]
/// struct Tag;
///
/// impl HttpProcessor for Tag {
///     async fn request_headers(&mut self, headers: &Headers, _cx: &mut HttpContext) -> Reply {
///         let path = headers.path().unwrap_or("/").to_string();
///         Reply::new().set_header("x-seen-path", path)
///     }
/// }
/// ```
pub trait HttpProcessor: Send + 'static {
    /// Request headers arrived (`headers.end_of_stream()` means no body follows).
    fn request_headers(
        &mut self,
        headers: &Headers,
        cx: &mut HttpContext,
    ) -> impl Future<Output = Reply> + Send {
        let _ = (headers, cx);
        ready(Reply::new())
    }

    /// A request body message arrived (a chunk, or the whole body; see [`Body::mode`]).
    fn request_body(
        &mut self,
        body: &Body,
        cx: &mut HttpContext,
    ) -> impl Future<Output = Reply> + Send {
        let _ = (body, cx);
        ready(Reply::new())
    }

    /// Request trailers arrived.
    fn request_trailers(
        &mut self,
        trailers: &Headers,
        cx: &mut HttpContext,
    ) -> impl Future<Output = Reply> + Send {
        let _ = (trailers, cx);
        ready(Reply::new())
    }

    /// Response headers arrived (`:status` included).
    fn response_headers(
        &mut self,
        headers: &Headers,
        cx: &mut HttpContext,
    ) -> impl Future<Output = Reply> + Send {
        let _ = (headers, cx);
        ready(Reply::new())
    }

    /// A response body message arrived.
    fn response_body(
        &mut self,
        body: &Body,
        cx: &mut HttpContext,
    ) -> impl Future<Output = Reply> + Send {
        let _ = (body, cx);
        ready(Reply::new())
    }

    /// Response trailers arrived.
    fn response_trailers(
        &mut self,
        trailers: &Headers,
        cx: &mut HttpContext,
    ) -> impl Future<Output = Reply> + Send {
        let _ = (trailers, cx);
        ready(Reply::new())
    }

    /// The stream failed (bad message from the proxy, invalid reply, stream cut mid-body, ...).
    /// Called once, just before the stream ends with `error.to_status()`.
    fn on_error(&mut self, error: &Error) {
        let _ = error;
    }
}

/// Per-message context handed to [`HttpProcessor`] methods.
#[derive(Debug)]
pub struct HttpContext {
    /// The phase being processed.
    phase: Phase,
    /// `metadata_context` of the message.
    metadata: Option<Metadata>,
    /// `attributes` of the message.
    attributes: HashMap<String, Struct>,
    /// Body modes in force (request, response).
    modes: (BodyMode, BodyMode),
    /// Observability mode: nothing is sent.
    observability: bool,
    /// For early sends; `None` in contexts built by hand.
    out: Option<Outbound<ProcessingResponse>>,
    /// Responses sent through [`HttpContext::send_raw`], for the state machine to note.
    pub(crate) raw_sent: Vec<ProcessingResponse>,
}

impl HttpContext {
    /// A detached context (for calling a processor's methods directly in unit tests); early
    /// sends are no-ops.
    pub fn detached(phase: Phase) -> HttpContext {
        HttpContext {
            phase,
            metadata: None,
            attributes: HashMap::new(),
            modes: (BodyMode::None, BodyMode::None),
            observability: false,
            out: None,
            raw_sent: Vec::new(),
        }
    }

    pub(crate) fn new(
        phase: Phase,
        metadata: Option<Metadata>,
        attributes: HashMap<String, Struct>,
        state: &HttpState,
        out: Outbound<ProcessingResponse>,
    ) -> HttpContext {
        HttpContext {
            phase,
            metadata,
            attributes,
            modes: (
                state.body_mode(crate::Side::Request),
                state.body_mode(crate::Side::Response),
            ),
            observability: state.observability,
            out: Some(out),
            raw_sent: Vec::new(),
        }
    }

    /// The phase being processed.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The request-path body mode in force.
    pub fn request_body_mode(&self) -> BodyMode {
        self.modes.0
    }

    /// The response-path body mode in force.
    pub fn response_body_mode(&self) -> BodyMode {
        self.modes.1
    }

    /// True in observability mode: replies are not sent.
    pub fn observability_mode(&self) -> bool {
        self.observability
    }

    /// The message's `metadata_context` (namespaces forwarded by `metadata_options`).
    pub fn metadata_context(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// The message's `attributes` (on the first message of each path, when configured), keyed
    /// by `"envoy.filters.http.ext_proc"`.
    pub fn attributes(&self) -> &HashMap<String, Struct> {
        &self.attributes
    }

    /// Sends `override_message_timeout` now, restarting Envoy's timer for the pending reply
    /// (needs `max_message_timeout` in the filter config). Call it before slow work.
    pub async fn override_message_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<(), Error> {
        self.send_raw(state::timeout_override(timeout)).await
    }

    /// Sends a raw `ProcessingResponse` now, ahead of the phase's reply (e.g. a standalone
    /// `mode_override`). The one-reply-per-message accounting is then up to you.
    pub async fn send_raw(&mut self, response: ProcessingResponse) -> Result<(), Error> {
        if self.observability {
            return Ok(());
        }
        if let Some(out) = &self.out {
            out.send(response.clone())
                .await
                .map_err(|_| Error::Transport(tonic::Status::cancelled("stream closed")))?;
        }
        self.raw_sent.push(response);
        Ok(())
    }
}
