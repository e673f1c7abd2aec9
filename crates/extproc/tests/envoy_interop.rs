//! Every example processor behind a real Envoy 1.40, driven by a real client.
//!
//! Envoy is installed by `testenv` when missing; if that fails these tests fail loudly (they are
//! never skipped). Configs live in `tests/envoy/*.yaml`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_setup, spawn_processor, BOTH};
use extproc::demo::{AddHeaders, AuthGate, RedactBody, StreamingUpper, TcpInspect};
use extproc::{Server, ServerHandle};
use testenv::{
    render, tcp_echo_upstream, tcp_recording_upstream, CloseKind, HttpVersion, ProxyProcess,
    TestRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn add_headers_on_both_paths_http1_and_http2() {
    let s = http_setup(
        Server::new().http(AddHeaders::default),
        include_str!("envoy/add_headers.yaml"),
        &[],
    )
    .await;
    for v in BOTH {
        let resp = TestRequest::get("/hello")
            .send(s.addr, v)
            .await
            .expect("request");
        assert_eq!(resp.status, 200, "{v:?}: {}", resp.text());
        assert_eq!(
            resp.header("x-ext-proc-header"),
            Some("hello-from-asm"),
            "{v:?}"
        );
        assert_eq!(
            s.upstream.last_request().header("x-ext-proc-header"),
            Some("hello-to-asm"),
            "{v:?}"
        );
    }
    assert!(
        s.envoy
            .counter("http.ingress.ext_proc.streams_started")
            .await
            >= 2
    );
    assert_eq!(
        s.envoy
            .counter("http.ingress.ext_proc.spurious_msgs_received")
            .await,
        0
    );
    assert!(s.proc.stats().messages_sent >= 4);
}

#[tokio::test]
async fn auth_gate_401_without_token_and_pass_with_token() {
    let gate = AuthGate::new(["s3cret"]);
    let s = http_setup(
        Server::new().http(move || gate.clone()),
        include_str!("envoy/auth_gate.yaml"),
        &[],
    )
    .await;
    for v in BOTH {
        let denied = TestRequest::get("/private")
            .send(s.addr, v)
            .await
            .expect("request");
        assert_eq!(denied.status, 401, "{v:?}");
        assert_eq!(
            denied.header("www-authenticate"),
            Some("Bearer realm=\"extproc\"")
        );
        assert_eq!(denied.text(), "missing or invalid bearer token\n");
        let wrong = TestRequest::get("/private")
            .header("authorization", "Bearer nope")
            .send(s.addr, v)
            .await;
        assert_eq!(wrong.expect("request").status, 401);
    }
    assert!(
        s.upstream.requests().is_empty(),
        "denied requests never reach the upstream"
    );
    for v in BOTH {
        let ok = TestRequest::get("/private")
            .header("authorization", "Bearer s3cret")
            .send(s.addr, v)
            .await
            .expect("request");
        assert_eq!(ok.status, 200, "{v:?}");
        let seen = s.upstream.last_request();
        assert_eq!(seen.header("authorization"), None, "the token is stripped");
        assert_eq!(seen.header("x-auth-token-index"), Some("0"));
    }
    assert_eq!(
        s.envoy
            .counter("http.ingress.ext_proc.immediate_responses_sent")
            .await,
        4
    );
}

#[tokio::test]
async fn redact_body_buffered_request_and_response_with_content_length() {
    let s = http_setup(
        Server::new().http(RedactBody::default),
        include_str!("envoy/redact_body.yaml"),
        &[],
    )
    .await;
    for v in BOTH {
        let resp = TestRequest::post("/pay", "card=4111 1111 1111 1111&amount=3")
            // Echoed back inside the JSON response body, so the response path has a card too.
            .header("x-card", "5500-0000-0000-0004")
            .send(s.addr, v)
            .await
            .expect("request");
        assert_eq!(resp.status, 200, "{v:?}: {}", resp.text());
        let seen = s.upstream.last_request();
        assert_eq!(seen.body, "card=****1111&amount=3", "{v:?}");
        assert_eq!(
            seen.header("content-length"),
            Some("22"),
            "{v:?}: request content-length fixed"
        );
        let text = resp.text();
        assert!(text.contains("****0004"), "{v:?}: response masked: {text}");
        assert!(!text.contains("5500-0000-0000-0004"), "{v:?}: {text}");
        let cl: usize = resp
            .header("content-length")
            .expect("content-length")
            .parse()
            .expect("number");
        assert_eq!(cl, resp.body.len(), "{v:?}: response content-length fixed");
    }
    // A clean body goes through unchanged.
    let resp = TestRequest::post("/pay", "nothing to hide")
        .send(s.addr, HttpVersion::Http1)
        .await;
    assert_eq!(resp.expect("request").status, 200);
    assert_eq!(s.upstream.last_request().body, "nothing to hide");
}

async fn streaming_upper(body_mode: &str, trailer_mode: &str) {
    let s = http_setup(
        Server::new().http(StreamingUpper::default),
        include_str!("envoy/streaming_upper.yaml"),
        &[("BODY_MODE", body_mode), ("TRAILER_MODE", trailer_mode)],
    )
    .await;
    for v in BOTH {
        let resp = TestRequest::new("POST", "/up")
            .chunked(&["aaa", "bbb", "ccc"], Duration::from_millis(30))
            .header("x-echo-chunks", "3")
            .send(s.addr, v)
            .await
            .expect("request");
        assert_eq!(resp.status, 200, "{body_mode} {v:?}: {}", resp.text());
        let seen = s.upstream.last_request();
        assert_eq!(seen.body, "AAABBBCCC", "{body_mode} {v:?}");
        // The JSON echo was upper-cased on the way back, chunk by chunk.
        let text = resp.text();
        assert!(
            text.contains("\"METHOD\":\"POST\""),
            "{body_mode} {v:?}: {text}"
        );
        assert!(
            text.contains("\"BODY\":\"AAABBBCCC\""),
            "{body_mode} {v:?}: {text}"
        );
    }
    assert_eq!(
        s.envoy
            .counter("http.ingress.ext_proc.spurious_msgs_received")
            .await,
        0
    );
}

#[tokio::test]
async fn streaming_upper_streamed() {
    streaming_upper("STREAMED", "SKIP").await;
}

#[tokio::test]
async fn streaming_upper_full_duplex_streamed() {
    streaming_upper("FULL_DUPLEX_STREAMED", "SEND").await;
}

async fn tcp_setup(upstream_port: u16) -> (ServerHandle, ProxyProcess, SocketAddr) {
    let inspect = TcpInspect::new(|line: &[u8]| line.starts_with(b"DROP"));
    let proc = spawn_processor(Server::new().network(move || inspect.clone())).await;
    let yaml = render(
        include_str!("envoy/tcp_inspect.yaml"),
        &[
            ("PROC_PORT", &proc.addr().port().to_string()),
            ("UPSTREAM_PORT", &upstream_port.to_string()),
        ],
    );
    let envoy = ProxyProcess::envoy(&yaml).await.expect("envoy starts");
    let addr = envoy.listener_addr("tcp").await;
    (proc, envoy, addr)
}

#[tokio::test]
async fn tcp_inspect_passes_allowed_connections_both_ways() {
    let up = tcp_echo_upstream().await;
    let (_proc, envoy, addr) = tcp_setup(up.addr().port()).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"HELLO there\n").await.expect("write");
    let mut buf = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(buf, b"HELLO there\n");
    let second = b"DROP is fine after the first line\n";
    c.write_all(second).await.expect("write");
    let mut buf = vec![0u8; second.len()];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(buf, second);
    // Our FIN goes through the processor (a bare FIN is answered with end_of_stream), the echo
    // server half-closes back, and we see EOF. (Bytes sent together with the FIN could be lost:
    // Envoy 1.40 closes both sides once both have ended, see the network spec's scenario T6.)
    c.shutdown().await.expect("fin");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("eof in time")
        .expect("read");
    assert_eq!(rest, b"");
    assert!(envoy.counter("network_ext_proc.ep.write_data_sent").await >= 1);
    assert_eq!(
        envoy.counter("network_ext_proc.ep.connections_reset").await,
        0
    );
}

#[tokio::test]
async fn tcp_inspect_resets_denied_connection_and_upstream_sees_nothing() {
    let up = tcp_recording_upstream(b"").await;
    let (_proc, envoy, addr) = tcp_setup(up.addr().port()).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    // The first line arrives in two pieces: held, then judged.
    c.write_all(b"DR").await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"OP TABLE users;\r\n").await.expect("write");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed in time");
    let err = read.expect_err("the client must see a reset, not data or a clean EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let conns = up
        .wait_for(Duration::from_secs(5), |c| {
            c.first().is_some_and(|c| c.closed.is_some())
        })
        .await;
    assert_eq!(
        conns[0].data, b"",
        "no byte of a denied connection reaches the upstream"
    );
    assert!(matches!(
        conns[0].closed,
        Some(CloseKind::Fin | CloseKind::Rst)
    ));
    envoy
        .wait_counter(
            "network_ext_proc.ep.connections_reset",
            1,
            Duration::from_secs(5),
        )
        .await;
}
