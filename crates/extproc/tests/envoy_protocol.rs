//! SDK features beyond the examples, checked against real Envoy 1.40: FULL_DUPLEX_STREAMED M:N
//! with hold and 64 KiB splitting, observability mode, CONTINUE_AND_REPLACE, `mode_override`,
//! `override_message_timeout`, and immediate responses to gRPC clients.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{generic_setup, BOTH};
use extproc::demo::AuthGate;
use extproc::{Body, BodyMode, Headers, HttpContext, HttpProcessor, Reply, Server};
use testenv::{HttpVersion, TestRequest};

/// FULL_DUPLEX_STREAMED: holds every request chunk, then emits `[`, the upper-cased body, `]`
/// as three chunks (the middle one far over 64 KiB, so the SDK splits it).
#[derive(Default)]
struct Bracket {
    /// Request bytes held so far.
    held: Vec<u8>,
}

impl HttpProcessor for Bracket {
    async fn request_body(&mut self, body: &Body, _cx: &mut HttpContext) -> Reply {
        self.held.extend_from_slice(body.data());
        if !body.end_of_stream() {
            return Reply::new().hold();
        }
        let all = std::mem::take(&mut self.held).to_ascii_uppercase();
        Reply::new()
            .stream_chunk("[", false)
            .stream_chunk(all, false)
            .stream_chunk("]", true)
    }
}

#[tokio::test]
async fn full_duplex_hold_then_emit_many_chunks() {
    let s = generic_setup(
        Server::new().http(Bracket::default),
        &[
            "processing_mode: {request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND, response_header_mode: SKIP}",
        ],
    )
    .await;
    let body: String = "abcdefghij".repeat(30_000); // 300 kB
    for v in BOTH {
        let resp = TestRequest::post("/big", body.clone())
            .send(s.addr, v)
            .await
            .expect("request");
        assert_eq!(resp.status, 200, "{v:?}");
        let seen = s.upstream.last_request();
        assert_eq!(seen.body.len(), body.len() + 2, "{v:?}");
        assert_eq!(
            seen.body,
            format!("[{}]", body.to_ascii_uppercase()),
            "{v:?}"
        );
        assert_eq!(
            seen.header("content-length"),
            None,
            "FDS strips content-length"
        );
    }
    assert_eq!(
        s.envoy
            .counter("http.ingress.ext_proc.spurious_msgs_received")
            .await,
        0
    );
}

/// Records the phases it sees; tries to mutate (which observability mode must ignore).
#[derive(Default, Clone)]
struct Observer {
    /// Phases seen, with body bytes.
    seen: Arc<Mutex<Vec<String>>>,
}

impl HttpProcessor for Observer {
    async fn request_headers(&mut self, h: &Headers, cx: &mut HttpContext) -> Reply {
        let obs = cx.observability_mode();
        self.seen
            .lock()
            .expect("lock")
            .push(format!("headers {} obs={obs}", h.path().unwrap_or("")));
        Reply::new().set_header("x-should-not-appear", "1")
    }
    async fn request_body(&mut self, b: &Body, _cx: &mut HttpContext) -> Reply {
        self.seen
            .lock()
            .expect("lock")
            .push(format!("body {}", String::from_utf8_lossy(b.data())));
        Reply::new().body("MUTATED")
    }
}

#[tokio::test]
async fn observability_mode_sees_everything_and_changes_nothing() {
    let obs = Observer::default();
    let seen = obs.seen.clone();
    let s = generic_setup(
        Server::new().http(move || obs.clone()),
        &[
            "observability_mode: true",
            "processing_mode: {request_body_mode: STREAMED, response_header_mode: SKIP}",
        ],
    )
    .await;
    let resp = TestRequest::post("/watch", "payload")
        .send(s.addr, HttpVersion::Http1)
        .await
        .expect("request");
    assert_eq!(resp.status, 200);
    let up = s.upstream.last_request();
    assert_eq!(up.body, "payload");
    assert_eq!(up.header("x-should-not-appear"), None);
    // "Send and go": the processor's view arrives independently of the request.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now: String = seen.lock().expect("lock").join("|");
        if now.contains("headers /watch obs=true") && now.contains("body payload") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processor saw only {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.proc.stats().messages_sent, 0);
}

/// Turns any request into `POST` with a new body, then tags the response.
#[derive(Default)]
struct Replace;

impl HttpProcessor for Replace {
    async fn request_headers(&mut self, _h: &Headers, _cx: &mut HttpContext) -> Reply {
        Reply::new()
            .set_header(":method", "POST")
            .body("replaced body")
            .continue_and_replace()
    }
    async fn response_headers(&mut self, _h: &Headers, _cx: &mut HttpContext) -> Reply {
        Reply::new().set_header("x-after-replace", "yes")
    }
}

#[tokio::test]
async fn continue_and_replace_rewrites_method_and_body() {
    let s = generic_setup(
        Server::new().http(Replace::default),
        &["message_timeout: 2s"],
    )
    .await;
    for v in BOTH {
        let resp = TestRequest::get("/r")
            .send(s.addr, v)
            .await
            .expect("request");
        assert_eq!(resp.status, 200, "{v:?}");
        assert_eq!(
            resp.header("x-after-replace"),
            Some("yes"),
            "the response path is still processed"
        );
        let up = s.upstream.last_request();
        assert_eq!(
            (up.method.as_str(), &up.body[..]),
            ("POST", &b"replaced body"[..]),
            "{v:?}"
        );
    }
}

/// Asks for the request body with `mode_override`, then rewrites it.
#[derive(Default)]
struct OverrideToBuffered;

impl HttpProcessor for OverrideToBuffered {
    async fn request_headers(&mut self, _h: &Headers, cx: &mut HttpContext) -> Reply {
        assert_eq!(cx.request_body_mode(), BodyMode::None);
        let mode = extproc::http::ProcessingMode {
            request_body_mode: BodyMode::Buffered as i32,
            ..Default::default()
        };
        Reply::new().mode_override(mode)
    }
    async fn request_body(&mut self, b: &Body, _cx: &mut HttpContext) -> Reply {
        assert_eq!(b.mode(), BodyMode::Buffered, "the SDK tracked the override");
        let new = format!("seen {} bytes", b.data().len());
        Reply::new()
            .set_header("content-length", new.len().to_string())
            .body(new)
    }
}

#[tokio::test]
async fn mode_override_switches_on_buffered_body() {
    let s = generic_setup(
        Server::new().http(OverrideToBuffered::default),
        &[
            "message_timeout: 2s",
            "allow_mode_override: true",
            "processing_mode: {response_header_mode: SKIP}",
        ],
    )
    .await;
    let resp = TestRequest::post("/m", "twelve bytes")
        .send(s.addr, HttpVersion::Http1)
        .await
        .expect("request");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(s.upstream.last_request().body, "seen 12 bytes");
}

/// Slow on every path except `/fast`; extends Envoy's timer first unless the path is `/no-override`.
#[derive(Default)]
struct Slow;

impl HttpProcessor for Slow {
    async fn request_headers(&mut self, h: &Headers, cx: &mut HttpContext) -> Reply {
        if h.path() != Some("/no-override") {
            cx.override_message_timeout(Duration::from_secs(10))
                .await
                .expect("sent");
        }
        tokio::time::sleep(Duration::from_millis(2000)).await;
        Reply::new().set_header("x-slow", "done")
    }
}

#[tokio::test]
async fn override_message_timeout_extends_envoys_timer() {
    let s = generic_setup(
        Server::new().http(Slow::default),
        &[
            "message_timeout: 1s",
            "max_message_timeout: 20s",
            "processing_mode: {response_header_mode: SKIP}",
        ],
    )
    .await;
    let (fast_req, slow_req) = (
        TestRequest::get("/override"),
        TestRequest::get("/no-override"),
    );
    let (with, without) = tokio::join!(
        fast_req.send(s.addr, HttpVersion::Http1),
        slow_req.send(s.addr, HttpVersion::Http2),
    );
    assert_eq!(with.expect("request").status, 200);
    assert_eq!(s.upstream.last_request().header("x-slow"), Some("done"));
    assert_eq!(
        without.expect("request").status,
        504,
        "control: no override means a timeout"
    );
    assert_eq!(
        s.envoy
            .counter("http.ingress.ext_proc.override_message_timeout_received")
            .await,
        1
    );
}

#[tokio::test]
async fn immediate_response_to_a_grpc_client_carries_grpc_status() {
    let gate = AuthGate::new(["t"]);
    let s = generic_setup(
        Server::new().http(move || gate.clone()),
        &["message_timeout: 2s"],
    )
    .await;
    let resp = TestRequest::post("/pkg.Svc/Method", vec![0u8, 0, 0, 0, 0])
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .send(s.addr, HttpVersion::Http2)
        .await
        .expect("request");
    assert_eq!(resp.status, 200, "gRPC errors are HTTP 200");
    let grpc_status = resp.header("grpc-status").or_else(|| {
        resp.trailers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    });
    assert_eq!(grpc_status, Some("16"));
    assert!(s.upstream.requests().is_empty());
}
