//! HTTP/2 floods are bounded: rapid reset (CVE-2023-44487), CONTINUATION flood
//! (CVE-2024-27316 style), SETTINGS and PING floods. Each ends with the attacker's connection
//! closed (with GOAWAY where the codec sends one) or stalled by back-pressure after a bounded
//! number of bytes, and the proxy keeps serving other connections.
#![allow(clippy::unwrap_used)]

mod bad_input_support;
mod http_support;

use bad_input_support::h2frames::{
    self, frame, read_frames, ACK, CONTINUATION, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM,
    HEADERS, PING, RST_STREAM, SETTINGS,
};
use bad_input_support::{yaml, RecordingUpstream};
use http_support::TestProxy;
use std::time::Duration;
use testenv::{HttpVersion, TestRequest};
use tokio::io::AsyncWriteExt;

/// A normal HTTP/2 request on a new connection still works.
async fn still_serving(proxy: &TestProxy) {
    let resp = TestRequest::get("/after")
        .send(proxy.ingress(), HttpVersion::Http2)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
}

/// Writes `bytes` in pieces until done, the peer closes, or `limit` passes; returns how many
/// bytes the socket took.
async fn flood(s: &mut tokio::net::TcpStream, bytes: &[u8], limit: Duration) -> usize {
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + limit;
    for piece in bytes.chunks(64 * 1024) {
        match tokio::time::timeout_at(deadline, s.write_all(piece)).await {
            Ok(Ok(())) => sent += piece.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    sent
}

#[tokio::test]
async fn rapid_reset_is_cut_with_goaway() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(up.addr, &[])).await;
    let mut s = h2frames::connect(proxy.ingress()).await;
    let block = h2frames::get_block("/reset");
    let mut burst = Vec::new();
    let n = 5000u32;
    for i in 0..n {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    flood(&mut s, &burst, Duration::from_secs(5)).await;
    let seen = read_frames(&mut s, Duration::from_secs(3)).await;
    assert_eq!(
        seen.goaway,
        Some(ENHANCE_YOUR_CALM),
        "{:?}",
        &seen.frames[seen.frames.len().saturating_sub(5)..]
    );
    assert!(seen.closed);
    let forwarded = up.request_lines().len();
    assert!(
        forwarded < n as usize / 10,
        "{forwarded} of {n} reset streams were forwarded"
    );
    still_serving(&proxy).await;
}

#[tokio::test]
async fn continuation_flood_is_cut() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(up.addr, &[])).await;
    let mut s = h2frames::connect(proxy.ingress()).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block: 64 MiB
    // of header block against a 60 KiB limit.
    let mut first = h2frames::get_block("/cont");
    first.extend(h2frames::junk_header(1000));
    let mut burst = frame(HEADERS, END_STREAM, 1, &first);
    let piece = frame(CONTINUATION, 0, 1, &h2frames::junk_header(16_000));
    let total = 64 << 20;
    while burst.len() < total {
        burst.extend_from_slice(&piece);
    }
    let sent = flood(&mut s, &burst, Duration::from_secs(10)).await;
    assert!(
        sent < total / 2,
        "the proxy kept reading the header block: {sent} bytes"
    );
    let seen = read_frames(&mut s, Duration::from_secs(3)).await;
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    assert!(seen.closed);
    assert!(up.request_lines().is_empty());
    still_serving(&proxy).await;
}

#[tokio::test]
async fn settings_flood_is_cut_or_back_pressured() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(up.addr, &[])).await;
    let mut s = h2frames::connect(proxy.ingress()).await;
    // 3M SETTINGS frames (each wants an ACK) while never reading the ACKs: h2 holds one
    // pending ACK at a time and stops reading while it cannot write it, so the flood stalls in
    // the socket buffers (Envoy instead closes after `max_outbound_control_frames`).
    let one = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    let n = 3_000_000;
    let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
    let sent = flood(&mut s, &burst, Duration::from_secs(2)).await;
    assert!(
        sent < burst.len() / 2,
        "{sent} bytes were taken without back-pressure or a close"
    );
    // Every SETTINGS the proxy read was acknowledged, no more.
    let seen = read_frames(&mut s, Duration::from_millis(500)).await;
    let acks = seen
        .frames
        .iter()
        .filter(|f| f.0 == SETTINGS && f.1 & ACK != 0)
        .count();
    // (`sent` leaves out the piece being written when the flood stopped, and the preface's
    // SETTINGS is acknowledged too.)
    let most = (sent + 64 * 1024) / one.len() + 1;
    assert!(
        acks > 0 && acks <= most,
        "{acks} ACKs for at most {most} frames sent"
    );
    still_serving(&proxy).await;
}

#[tokio::test]
async fn ping_flood_is_back_pressured() {
    let up = RecordingUpstream::start().await;
    let proxy = TestProxy::start(&yaml(up.addr, &[])).await;
    let mut s = h2frames::connect(proxy.ingress()).await;
    // As SETTINGS: one pending PING ACK at a time, reading stops while it cannot be written.
    let one = frame(PING, 0, 0, &[7; 8]);
    let burst: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 2_000_000)
        .collect();
    let sent = flood(&mut s, &burst, Duration::from_secs(2)).await;
    assert!(
        sent < burst.len() / 2,
        "{sent} bytes were taken: the PING ACKs are not back-pressured"
    );
    let seen = read_frames(&mut s, Duration::from_millis(500)).await;
    let acks = seen
        .frames
        .iter()
        .filter(|f| f.0 == PING && f.1 & ACK != 0)
        .count();
    // (`sent` leaves out the piece being written when the flood stopped, and the preface's
    // SETTINGS is acknowledged too.)
    let most = (sent + 64 * 1024) / one.len() + 1;
    assert!(
        acks > 0 && acks <= most,
        "{acks} ACKs for at most {most} frames sent"
    );
    still_serving(&proxy).await;
}

#[tokio::test]
async fn http2_protocol_options_are_applied_or_refused_by_path() {
    let up = RecordingUpstream::start().await;
    // Accepted: h2 has the setting, or bounds the same flood its own way.
    let accepted = "http2_protocol_options: {hpack_table_size: 8192, max_concurrent_streams: 10, initial_stream_window_size: 65535, \
        initial_connection_window_size: 1048576, max_outbound_frames: 10000, max_outbound_control_frames: 1000, \
        max_inbound_priority_frames_per_stream: 100, max_inbound_window_update_frames_per_data_frame_sent: 10, \
        connection_keepalive: {interval: 30s, timeout: 5s}}";
    let proxy = TestProxy::start(&yaml(up.addr, &[accepted])).await;
    still_serving(&proxy).await;
    for (option, field) in [
        ("http2_protocol_options: {max_consecutive_inbound_frames_with_empty_payload: 1}", "http2_protocol_options.max_consecutive_inbound_frames_with_empty_payload"),
        ("http2_protocol_options: {allow_connect: true}", "http2_protocol_options.allow_connect"),
        ("http2_protocol_options: {stream_error_on_invalid_http_messaging: true}", "http2_protocol_options.stream_error_on_invalid_http_messaging"),
        ("http2_protocol_options: {connection_keepalive: {interval: 1s, connection_idle_interval: 2s}}", "http2_protocol_options.connection_keepalive.connection_idle_interval"),
        ("http2_protocol_options: {bogus: 1}", "bogus"),
    ] {
        let b = extproxy::config::parse(&yaml(up.addr, &[option])).unwrap();
        let err = extproxy::Server::bind(&b, extproxy::Options::default()).await.unwrap_err().to_string();
        assert!(err.contains(field), "{option}: {err}");
    }
}
