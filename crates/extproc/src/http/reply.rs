//! [`Reply`]: what a processor answers to one HTTP phase, and [`ImmediateResponse`].

use bytes::Bytes;

use super::headers::HeaderMutation;
use crate::metadata::{put, IntoValue};
use crate::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use crate::pb::google::protobuf::Struct;

/// What happens to the body in this reply. The SDK maps it onto the body mode in force:
///
/// | `BodyOp`      | STREAMED / BUFFERED / BUFFERED_PARTIAL | FULL_DUPLEX_STREAMED |
/// |---------------|----------------------------------------|----------------------|
/// | `Unchanged`   | no `body_mutation`                     | the received chunk is echoed as `streamed_response` (Envoy has drained it) |
/// | `Replace(b)`  | `body_mutation.body = b`               | `streamed_response{b, end_of_stream of the received chunk}` |
/// | `Clear`       | `body_mutation.clear_body = true`      | nothing, or an empty end-of-stream chunk on the last message |
/// | `Chunks(v)`   | invalid ([`crate::Error::InvalidReply`]) | one `streamed_response` per chunk (any number, also zero) |
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum BodyOp {
    /// Leave the body (or chunk) as it is.
    #[default]
    Unchanged,
    /// Replace the body (or this chunk).
    Replace(Bytes),
    /// Drop the body (or this chunk).
    Clear,
    /// FULL_DUPLEX_STREAMED: emit exactly these `(data, end_of_stream)` chunks.
    Chunks(Vec<(Bytes, bool)>),
}

/// What the reply does besides mutations.
#[derive(Debug, Clone, Default)]
pub(crate) enum Action {
    /// `CommonResponse.status = CONTINUE`.
    #[default]
    Continue,
    /// `CommonResponse.status = CONTINUE_AND_REPLACE`.
    ContinueAndReplace,
    /// Answer the client now, from the proxy.
    Immediate(Box<ImmediateResponse>),
    /// End the gRPC stream with this status.
    Abort(tonic::Status),
}

/// A processor's answer to one message (one phase of one HTTP request).
///
/// `Reply::new()` (also the default of every [`crate::HttpProcessor`] method) continues
/// unchanged. Builder methods add mutations:
///
/// ```
/// use extproc::Reply;
/// let r = Reply::new()
///     .set_header("x-ext-proc-header", "hello-to-asm")
///     .append_header("x-trace", "proc")
///     .remove_header("x-internal")
///     .metadata("my.ns", "user", "alice");
/// ```
///
/// Which fields matter depends on the phase; the SDK encodes the reply for the phase and body
/// mode in force (see [`Reply::body`] and [`Reply::stream_chunk`]).
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Status / immediate / abort.
    pub(crate) action: Action,
    /// Header (or trailer) edits.
    pub(crate) headers: HeaderMutation,
    /// Body edit.
    pub(crate) body: BodyOp,
    /// `ProcessingResponse.dynamic_metadata`.
    pub(crate) dynamic_metadata: Option<Struct>,
    /// `ProcessingResponse.mode_override`.
    pub(crate) mode_override: Option<ProcessingMode>,
    /// `CommonResponse.clear_route_cache`.
    pub(crate) clear_route_cache: bool,
}

impl Reply {
    /// Continue unchanged.
    pub fn new() -> Reply {
        Reply::default()
    }

    /// Answer the client directly with `response`; the request goes no further.
    ///
    /// ```
    /// use extproc::{ImmediateResponse, Reply};
    /// let r = Reply::immediate(ImmediateResponse::new(401).body("no token"));
    /// ```
    pub fn immediate(response: ImmediateResponse) -> Reply {
        Reply {
            action: Action::Immediate(Box::new(response)),
            ..Reply::default()
        }
    }

    /// End the processing stream with `status`. Envoy then fails the request (500, or continues
    /// if `failure_mode_allow` is set).
    pub fn abort(status: tonic::Status) -> Reply {
        Reply {
            action: Action::Abort(status),
            ..Reply::default()
        }
    }

    /// Overwrite (or add) header `name` (`append: false`).
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Reply {
        self.headers.set(name, value);
        self
    }

    /// Add another value for header `name` (`append: true`).
    pub fn append_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Reply {
        self.headers.append(name, value);
        self
    }

    /// Remove header `name`.
    pub fn remove_header(mut self, name: impl Into<String>) -> Reply {
        self.headers.remove(name);
        self
    }

    /// Replace the body: the whole body in BUFFERED modes, this chunk in STREAMED, and in
    /// FULL_DUPLEX_STREAMED this chunk is emitted as one `streamed_response` carrying the
    /// received `end_of_stream`. So a per-chunk transform works in every streaming mode.
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = BodyOp::Replace(body.into());
        self
    }

    /// Drop the body (or this chunk).
    pub fn clear_body(mut self) -> Reply {
        self.body = BodyOp::Clear;
        self
    }

    /// FULL_DUPLEX_STREAMED only: emit one `streamed_response` chunk (call it any number of
    /// times; chunks over 64 KiB are split). Set `end_of_stream` on the last chunk of the body.
    pub fn stream_chunk(mut self, data: impl Into<Bytes>, end_of_stream: bool) -> Reply {
        match &mut self.body {
            BodyOp::Chunks(v) => v.push((data.into(), end_of_stream)),
            _ => self.body = BodyOp::Chunks(vec![(data.into(), end_of_stream)]),
        }
        self
    }

    /// FULL_DUPLEX_STREAMED only: emit nothing for this message (keep the data to emit later
    /// with [`Reply::stream_chunk`]).
    pub fn hold(mut self) -> Reply {
        if !matches!(self.body, BodyOp::Chunks(_)) {
            self.body = BodyOp::Chunks(Vec::new());
        }
        self
    }

    /// `CONTINUE_AND_REPLACE`: on a headers reply, apply the mutations (and body, if set) and
    /// stop processing this direction (Envoy sends no more body or trailers for it).
    pub fn continue_and_replace(mut self) -> Reply {
        self.action = Action::ContinueAndReplace;
        self
    }

    /// Ask Envoy to re-pick the route after this reply's request-header mutation.
    pub fn clear_route_cache(mut self) -> Reply {
        self.clear_route_cache = true;
        self
    }

    /// Set `dynamic_metadata[namespace][key] = value`.
    pub fn metadata(mut self, namespace: &str, key: &str, value: impl IntoValue) -> Reply {
        put(
            self.dynamic_metadata.get_or_insert_with(Struct::default),
            namespace,
            key,
            value,
        );
        self
    }

    /// Set the whole `dynamic_metadata` struct (top-level keys are namespaces).
    pub fn dynamic_metadata(mut self, metadata: Struct) -> Reply {
        self.dynamic_metadata = Some(metadata);
        self
    }

    /// Change the processing mode for the rest of this request (needs `allow_mode_override` in
    /// the filter config; honoured on headers replies). Body modes are literal: an unset body
    /// mode means NONE. The SDK tracks the new body modes.
    pub fn mode_override(mut self, mode: ProcessingMode) -> Reply {
        self.mode_override = Some(mode);
        self
    }

    /// The header mutation built so far.
    pub fn header_mutation(&self) -> &HeaderMutation {
        &self.headers
    }

    /// True if this reply is an immediate response.
    pub fn is_immediate(&self) -> bool {
        matches!(self.action, Action::Immediate(_))
    }
}

/// A response sent to the client by the proxy on the processor's behalf.
///
/// ```
/// use extproc::ImmediateResponse;
/// let r = ImmediateResponse::new(401)
///     .header("www-authenticate", "Bearer")
///     .body("missing or invalid bearer token")
///     .details("auth_gate_denied");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImmediateResponse {
    /// HTTP status (Envoy turns a missing or < 200 status into 200).
    pub(crate) status: u32,
    /// Response headers.
    pub(crate) headers: HeaderMutation,
    /// Response body (Envoy adds `content-type: text/plain` when non-empty and unset).
    pub(crate) body: Vec<u8>,
    /// gRPC status for gRPC requests (`grpc-status` trailer).
    pub(crate) grpc_status: Option<u32>,
    /// `%RESPONSE_CODE_DETAILS%` (whitespace becomes `_`).
    pub(crate) details: String,
}

impl ImmediateResponse {
    /// A response with this HTTP status and nothing else.
    pub fn new(status: u16) -> ImmediateResponse {
        ImmediateResponse {
            status: u32::from(status),
            ..ImmediateResponse::default()
        }
    }

    /// Set a response header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.set(name, value);
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// For gRPC requests: the `grpc-status` code to send.
    pub fn grpc_status(mut self, code: tonic::Code) -> Self {
        self.grpc_status = Some(code as u32);
        self
    }

    /// Response code details for access logs.
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The proto form.
    pub fn to_proto(&self) -> crate::pb::envoy::service::ext_proc::v3::ImmediateResponse {
        use crate::pb::envoy::r#type::v3::HttpStatus;
        use crate::pb::envoy::service::ext_proc::v3::{GrpcStatus, ImmediateResponse as Pb};
        #[allow(clippy::cast_possible_wrap)]
        Pb {
            status: Some(HttpStatus {
                code: self.status as i32,
            }),
            headers: self.headers.to_proto(),
            body: self.body.clone(),
            grpc_status: self.grpc_status.map(|status| GrpcStatus { status }),
            details: self.details.clone(),
        }
    }
}
