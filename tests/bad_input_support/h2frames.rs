//! A raw HTTP/2 client for flood tests: frames written by hand over a `TcpStream`, so the
//! client can do what no well-behaved library would.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types used here.
pub const DATA: u8 = 0x0;
/// HEADERS.
pub const HEADERS: u8 = 0x1;
/// RST_STREAM.
pub const RST_STREAM: u8 = 0x3;
/// SETTINGS.
pub const SETTINGS: u8 = 0x4;
/// PING.
pub const PING: u8 = 0x6;
/// GOAWAY.
pub const GOAWAY: u8 = 0x7;
/// CONTINUATION.
pub const CONTINUATION: u8 = 0x9;

/// END_STREAM flag.
pub const END_STREAM: u8 = 0x1;
/// END_HEADERS flag.
pub const END_HEADERS: u8 = 0x4;
/// ACK flag (SETTINGS, PING).
pub const ACK: u8 = 0x1;

/// GOAWAY / RST_STREAM error codes.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One encoded frame.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = Vec::with_capacity(9 + len);
    f.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK block for `GET <path>` with `:authority: a` (static-table indices, literal path).
pub fn get_block(path: &str) -> Vec<u8> {
    // :method GET (2), :scheme http (6), :authority literal with indexed name (1),
    // :path literal with indexed name (4).
    let mut b = vec![0x82, 0x86, 0x41, 1, b'a', 0x44];
    assert!(path.len() < 127);
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b
}

/// A literal header `x-junk: <value>` (without indexing, new name) for padding header blocks.
pub fn junk_header(value_len: usize) -> Vec<u8> {
    let mut b = vec![0x00, 6];
    b.extend_from_slice(b"x-junk");
    // A 7-bit prefixed integer for the value length.
    if value_len < 127 {
        b.push(value_len as u8);
    } else {
        b.push(127);
        let mut rest = value_len - 127;
        while rest >= 128 {
            b.push((rest % 128 + 128) as u8);
            rest /= 128;
        }
        b.push(rest as u8);
    }
    b.extend(std::iter::repeat_n(b'j', value_len));
    b
}

/// Connects and sends the preface and an empty SETTINGS frame.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    s
}

/// What the server sent until it closed (or `wait` passed without a byte).
#[derive(Debug, Default)]
pub struct ServerFrames {
    /// (type, flags, stream) of every frame.
    pub frames: Vec<(u8, u8, u32)>,
    /// The GOAWAY error code, if one came.
    pub goaway: Option<u32>,
    /// Whether the server closed the connection.
    pub closed: bool,
}

impl ServerFrames {
    /// How many frames of `ty` came.
    pub fn count(&self, ty: u8) -> usize {
        self.frames.iter().filter(|f| f.0 == ty).count()
    }
}

/// Reads frames until the server closes, or until `wait` passes without data.
pub async fn read_frames(s: &mut TcpStream, wait: Duration) -> ServerFrames {
    let mut out = ServerFrames::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(wait, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                out.closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            if ty == GOAWAY && len >= 8 {
                out.goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            out.frames.push((ty, flags, stream));
            buf.drain(..9 + len);
        }
    }
    out
}
