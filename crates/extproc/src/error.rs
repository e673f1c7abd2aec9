//! The SDK's error type, and its mapping to the gRPC status that ends a stream.
//!
//! Every way a stream can go wrong is one variant of [`Error`], tagged with where it came from:
//! the proxy (peer data the SDK rejects), the processor (a reply the SDK cannot encode, an abort,
//! a panic) or the transport. [`Error::to_status`] is the one place errors meet the wire.

use std::fmt;

use tonic::{Code, Status};

/// Which path of a stream a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// HTTP request path (`request_headers`, `request_body`, `request_trailers`).
    Request,
    /// HTTP response path.
    Response,
    /// Network read path (downstream → upstream bytes).
    Read,
    /// Network write path (upstream → downstream bytes).
    Write,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Request => "request",
            Side::Response => "response",
            Side::Read => "read",
            Side::Write => "write",
        })
    }
}

/// Why a processing stream failed.
///
/// Processors see these in [`crate::HttpProcessor::on_error`] /
/// [`crate::NetworkProcessor::on_error`]; the proxy sees [`Error::to_status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The proxy sent a `ProcessingRequest` with no `request` oneof set (an empty message, or a
    /// oneof variant this SDK's protos do not know). Status `INVALID_ARGUMENT`.
    #[error("ProcessingRequest has no request set (empty message or unknown oneof)")]
    EmptyRequest,

    /// A network `ProcessingRequest` carried neither or both of `read_data` / `write_data`.
    /// Status `INVALID_ARGUMENT`.
    #[error("network ProcessingRequest must carry exactly one of read_data and write_data")]
    BadNetworkRequest,

    /// The proxy sent a message that cannot follow the previous ones on that path, for any
    /// processing mode (e.g. body after trailers, headers twice). Status `FAILED_PRECONDITION`.
    #[error("out-of-order message on the {side} path: {got} after {after}")]
    OutOfOrder {
        /// The path.
        side: Side,
        /// What arrived.
        got: &'static str,
        /// What had been seen before on that path.
        after: &'static str,
    },

    /// The proxy ended the stream after part of a body, without its end. The processor is told;
    /// the stream ends with status `ABORTED`.
    #[error("stream ended in the middle of the {side} body")]
    IncompleteBody {
        /// The path whose body was cut short.
        side: Side,
    },

    /// The processor returned a reply that is not valid for the current phase or body mode (e.g.
    /// [`crate::Reply::stream_chunk`] outside FULL_DUPLEX_STREAMED). Status `INTERNAL`.
    #[error("invalid reply from the processor: {0}")]
    InvalidReply(String),

    /// The processor ended the stream on purpose ([`crate::Reply::abort`]). That status is sent.
    #[error("processor aborted the stream: {0}")]
    Aborted(Status),

    /// The processor panicked. Status `INTERNAL`; the server keeps serving other streams.
    #[error("processor panicked: {0}")]
    Panicked(String),

    /// Receiving from the proxy failed (e.g. a message over the decoding limit gives
    /// `OUT_OF_RANGE`, a reset gives `CANCELLED`). That status is sent back when possible.
    #[error("transport error: {0}")]
    Transport(Status),
}

impl Error {
    /// The gRPC status that ends the stream for this error.
    ///
    /// ```
    /// use extproc::Error;
    /// assert_eq!(Error::EmptyRequest.to_status().code(), tonic::Code::InvalidArgument);
    /// ```
    pub fn to_status(&self) -> Status {
        match self {
            Error::EmptyRequest | Error::BadNetworkRequest => {
                Status::invalid_argument(self.to_string())
            }
            Error::OutOfOrder { .. } => Status::failed_precondition(self.to_string()),
            Error::IncompleteBody { .. } => Status::aborted(self.to_string()),
            Error::InvalidReply(_) | Error::Panicked(_) => Status::internal(self.to_string()),
            Error::Aborted(s) | Error::Transport(s) => Status::new(s.code(), s.message()),
        }
    }

    /// True for an inbound reset/cancel, which is how Envoy normally ends side streams.
    pub(crate) fn is_cancel(status: &Status) -> bool {
        status.code() == Code::Cancelled
    }
}
