//! Processing modes: what each direction sends (`ProcessingMode` resolved), and the keys
//! `allowed_override_modes` compares.

use super::config::{BodySendMode, HeaderSendMode, ProcessingModeConfig};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode as PbMode;

/// Body send mode of one direction (GRPC is refused by config validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// No body messages.
    None,
    /// One message per chunk, one reply per chunk.
    Streamed,
    /// The whole body in one message.
    Buffered,
    /// Up to the buffer limit in one message, the rest passes through.
    BufferedPartial,
    /// Chunks sent as they arrive, M:N `streamed_response` replies.
    FullDuplex,
}

impl BodyMode {
    fn from_cfg(m: Option<BodySendMode>) -> Self {
        match m {
            None | Some(BodySendMode::None) | Some(BodySendMode::Grpc) => BodyMode::None,
            Some(BodySendMode::Streamed) => BodyMode::Streamed,
            Some(BodySendMode::Buffered) => BodyMode::Buffered,
            Some(BodySendMode::BufferedPartial) => BodyMode::BufferedPartial,
            Some(BodySendMode::FullDuplexStreamed) => BodyMode::FullDuplex,
        }
    }

    fn from_pb(v: i32) -> Self {
        match v {
            1 => BodyMode::Streamed,
            2 => BodyMode::Buffered,
            3 => BodyMode::BufferedPartial,
            4 => BodyMode::FullDuplex,
            _ => BodyMode::None,
        }
    }

    /// The proto enum number.
    pub fn number(self) -> i32 {
        match self {
            BodyMode::None => 0,
            BodyMode::Streamed => 1,
            BodyMode::Buffered => 2,
            BodyMode::BufferedPartial => 3,
            BodyMode::FullDuplex => 4,
        }
    }
}

/// What is sent for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirMode {
    /// Headers are sent (SEND or DEFAULT).
    pub send_headers: bool,
    /// Body mode.
    pub body: BodyMode,
    /// Trailers are sent (only SEND).
    pub send_trailers: bool,
}

/// The effective processing mode of both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Request path.
    pub request: DirMode,
    /// Response path.
    pub response: DirMode,
}

impl Default for Mode {
    fn default() -> Self {
        Mode::from_config(None)
    }
}

impl Mode {
    /// Resolves a configured `ProcessingMode` (unset fields take Envoy's defaults).
    pub fn from_config(m: Option<&ProcessingModeConfig>) -> Self {
        let m = m.copied().unwrap_or_default();
        let headers = |h: Option<HeaderSendMode>| h != Some(HeaderSendMode::Skip);
        let trailers = |h: Option<HeaderSendMode>| h == Some(HeaderSendMode::Send);
        Mode {
            request: DirMode {
                send_headers: headers(m.request_header_mode),
                body: BodyMode::from_cfg(m.request_body_mode),
                send_trailers: trailers(m.request_trailer_mode),
            },
            response: DirMode {
                send_headers: headers(m.response_header_mode),
                body: BodyMode::from_cfg(m.response_body_mode),
                send_trailers: trailers(m.response_trailer_mode),
            },
        }
    }

    /// The mode after a `mode_override`: DEFAULT header/trailer modes keep the current value,
    /// body modes are literal (quirk H16). `request_header_mode` is ignored (the request
    /// headers have been sent already).
    pub fn overridden(self, o: &PbMode) -> Mode {
        let hdr = |v: i32, cur: bool| match v {
            1 => true,
            2 => false,
            _ => cur,
        };
        let trl = |v: i32, cur: bool| match v {
            1 => true,
            2 => false,
            _ => cur,
        };
        Mode {
            request: DirMode {
                send_headers: self.request.send_headers,
                body: BodyMode::from_pb(o.request_body_mode),
                send_trailers: trl(o.request_trailer_mode, self.request.send_trailers),
            },
            response: DirMode {
                send_headers: hdr(o.response_header_mode, self.response.send_headers),
                body: BodyMode::from_pb(o.response_body_mode),
                send_trailers: trl(o.response_trailer_mode, self.response.send_trailers),
            },
        }
    }
}

/// A `ProcessingMode` as raw enum numbers, for `allowed_override_modes` (which compares the
/// override literally, except `request_header_mode`).
pub fn raw_mode_key(m: &PbMode) -> [i32; 5] {
    [
        m.response_header_mode,
        m.request_body_mode,
        m.response_body_mode,
        m.request_trailer_mode,
        m.response_trailer_mode,
    ]
}

/// The same key for a configured mode.
pub fn raw_mode_key_cfg(m: &ProcessingModeConfig) -> [i32; 5] {
    fn h(v: Option<HeaderSendMode>) -> i32 {
        match v {
            None | Some(HeaderSendMode::Default) => 0,
            Some(HeaderSendMode::Send) => 1,
            Some(HeaderSendMode::Skip) => 2,
        }
    }
    fn b(v: Option<BodySendMode>) -> i32 {
        BodyMode::from_cfg(v).number()
    }
    [
        h(m.response_header_mode),
        b(m.request_body_mode),
        b(m.response_body_mode),
        h(m.request_trailer_mode),
        h(m.response_trailer_mode),
    ]
}
