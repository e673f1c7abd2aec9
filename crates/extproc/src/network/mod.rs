//! Network (L4) processors (`envoy.service.network_ext_proc.v3.NetworkExternalProcessor`).
//!
//! Envoy opens one gRPC stream per TCP connection, on its first byte, and sends every chunk it
//! reads: client bytes as `read_data` ([`NetworkProcessor::on_read`]), upstream bytes as
//! `write_data` ([`NetworkProcessor::on_write`]). A bare FIN arrives as an empty chunk with
//! `end_of_stream`. Each request gets exactly one response on the same path.
//!
//! **Envoy 1.40 detail the SDK hides:** Envoy drains the bytes it sends to the processor and
//! forwards whatever `data` the response carries, ignoring `data_processing_status`. So
//! [`NetworkReply::pass`] answers `UNMODIFIED` *with the original bytes and `end_of_stream`*,
//! which is correct on Envoy and on proxies that honour the status.

mod driver;
pub(crate) mod service;
mod state;

use std::collections::HashMap;
use std::future::{ready, Future};

use bytes::Bytes;

pub(crate) use driver::drive;
pub(crate) use state::NetworkState;

use crate::error::Error;
use crate::metadata::{put, IntoValue};
use crate::pb::envoy::config::core::v3::Metadata;
use crate::pb::google::protobuf::Struct;

pub use crate::pb::envoy::service::network_ext_proc::v3::processing_response::{
    ConnectionStatus, DataProcessedStatus,
};

/// One chunk of connection data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The bytes (may be empty for a bare FIN).
    pub(crate) data: Bytes,
    /// The sender half-closed after these bytes.
    pub(crate) end_of_stream: bool,
}

impl Chunk {
    /// A chunk (for tests).
    pub fn new(data: impl Into<Bytes>, end_of_stream: bool) -> Chunk {
        Chunk {
            data: data.into(),
            end_of_stream,
        }
    }

    /// The bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// True if the sender half-closed (FIN) after these bytes.
    pub fn end_of_stream(&self) -> bool {
        self.end_of_stream
    }
}

/// What to do with one chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum Verdict {
    /// Forward the original bytes.
    #[default]
    Pass,
    /// Forward these bytes instead.
    Replace(Bytes),
    /// Close the connection (FIN, after flushing what is queued).
    Close,
    /// Reset the connection (RST).
    Reset,
}

/// A network processor's answer to one chunk.
///
/// ```
/// use extproc::NetworkReply;
/// let pass = NetworkReply::pass();
/// let swap = NetworkReply::replace("redacted").metadata("tcp.ns", "seen", true);
/// let kill = NetworkReply::reset();
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkReply {
    /// Data verdict.
    pub(crate) verdict: Verdict,
    /// Overrides the `end_of_stream` echoed back (default: the chunk's own).
    pub(crate) end_of_stream: Option<bool>,
    /// `dynamic_metadata` (top-level keys are namespaces).
    pub(crate) dynamic_metadata: Option<Struct>,
    /// `close_stream_to_ext_proc_server`: stop processing this connection after this reply.
    pub(crate) close_stream: bool,
}

impl NetworkReply {
    /// Forward the chunk unmodified (`UNMODIFIED` with the original bytes).
    pub fn pass() -> NetworkReply {
        NetworkReply::default()
    }

    /// Forward `data` instead of the chunk (`MODIFIED`). Empty `data` forwards nothing, which
    /// lets a processor hold bytes back and release them later with another `replace`.
    pub fn replace(data: impl Into<Bytes>) -> NetworkReply {
        NetworkReply {
            verdict: Verdict::Replace(data.into()),
            ..NetworkReply::default()
        }
    }

    /// Close the connection with a FIN (`ConnectionStatus::Close`); the chunk is not forwarded.
    pub fn close() -> NetworkReply {
        NetworkReply {
            verdict: Verdict::Close,
            ..NetworkReply::default()
        }
    }

    /// Reset the connection (`ConnectionStatus::CloseRst`); the chunk is not forwarded.
    pub fn reset() -> NetworkReply {
        NetworkReply {
            verdict: Verdict::Reset,
            ..NetworkReply::default()
        }
    }

    /// Send this `end_of_stream` instead of the chunk's (it drives the proxy's half-close).
    pub fn end_of_stream(mut self, eos: bool) -> NetworkReply {
        self.end_of_stream = Some(eos);
        self
    }

    /// Set `dynamic_metadata[namespace][key] = value` (Envoy applies it unless the connection
    /// is closed by the same reply).
    pub fn metadata(mut self, namespace: &str, key: &str, value: impl IntoValue) -> NetworkReply {
        put(
            self.dynamic_metadata.get_or_insert_with(Struct::default),
            namespace,
            key,
            value,
        );
        self
    }

    /// Set the whole `dynamic_metadata` struct.
    pub fn dynamic_metadata(mut self, metadata: Struct) -> NetworkReply {
        self.dynamic_metadata = Some(metadata);
        self
    }

    /// After this reply, the proxy stops sending this connection's data (bytes flow
    /// unprocessed) and closes the gRPC stream.
    pub fn close_stream_to_ext_proc_server(mut self) -> NetworkReply {
        self.close_stream = true;
        self
    }
}

/// A network external processor: one value per TCP connection.
///
/// ```
/// use extproc::{Chunk, NetworkContext, NetworkProcessor, NetworkReply};
///
/// /// Resets any connection whose client sends the byte 0xFF.
/// #[derive(Default)]
/// struct NoFf;
///
/// impl NetworkProcessor for NoFf {
///     async fn on_read(&mut self, chunk: &Chunk, _cx: &mut NetworkContext) -> NetworkReply {
///         if chunk.data().contains(&0xff) { NetworkReply::reset() } else { NetworkReply::pass() }
///     }
/// }
/// ```
pub trait NetworkProcessor: Send + 'static {
    /// Client → upstream bytes (`read_data`). Default: pass.
    fn on_read(
        &mut self,
        chunk: &Chunk,
        cx: &mut NetworkContext,
    ) -> impl Future<Output = NetworkReply> + Send {
        let _ = (chunk, cx);
        ready(NetworkReply::pass())
    }

    /// Upstream → client bytes (`write_data`). Default: pass.
    fn on_write(
        &mut self,
        chunk: &Chunk,
        cx: &mut NetworkContext,
    ) -> impl Future<Output = NetworkReply> + Send {
        let _ = (chunk, cx);
        ready(NetworkReply::pass())
    }

    /// The stream failed; called once before it ends with `error.to_status()`.
    fn on_error(&mut self, error: &Error) {
        let _ = error;
    }
}

/// Per-message context for [`NetworkProcessor`] methods.
#[derive(Debug, Default)]
pub struct NetworkContext {
    /// `metadata` of the message (forwarded namespaces).
    metadata: Option<Metadata>,
    /// `attributes` (first message only, when `connection_attributes` is configured).
    attributes: HashMap<String, Struct>,
}

impl NetworkContext {
    /// A detached context, for calling a processor directly in unit tests.
    pub fn detached() -> NetworkContext {
        NetworkContext::default()
    }

    /// The connection's forwarded dynamic metadata, if any namespace exists.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// Connection attributes (first message of the stream only), keyed by
    /// `"envoy.filters.network.ext_proc"`.
    pub fn attributes(&self) -> &HashMap<String, Struct> {
        &self.attributes
    }
}
