//! Bad input and misbehaving processors, driven through the test kit (the server's own driver).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use extproc::pb::envoy::service::ext_proc::v3 as ep;
use extproc::pb::envoy::service::network_ext_proc::v3 as np;
use extproc::testkit::{HttpExchange, NetworkExchange};
use extproc::{
    Body, BodyMode, Chunk, Error, Headers, HttpContext, HttpProcessor, NetworkContext,
    NetworkProcessor, NetworkReply, Reply,
};
use tonic::Code;

/// Records every call and every error it is told about.
#[derive(Default, Clone)]
struct Recorder {
    /// `"request_headers"`, `"request_body:<data>"`, ..., `"error:<message>"`.
    log: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn push(&self, s: String) {
        self.log.lock().expect("lock").push(s);
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().expect("lock").clone()
    }
}

impl HttpProcessor for Recorder {
    async fn request_headers(&mut self, _h: &Headers, _cx: &mut HttpContext) -> Reply {
        self.push("request_headers".into());
        Reply::new()
    }
    async fn request_body(&mut self, b: &Body, _cx: &mut HttpContext) -> Reply {
        self.push(format!(
            "request_body:{}",
            String::from_utf8_lossy(b.data())
        ));
        Reply::new()
    }
    async fn response_headers(&mut self, _h: &Headers, _cx: &mut HttpContext) -> Reply {
        self.push("response_headers".into());
        Reply::new().set_header("x-r", "1")
    }
    fn on_error(&mut self, error: &Error) {
        self.push(format!("error:{error}"));
    }
}

impl NetworkProcessor for Recorder {
    async fn on_read(&mut self, chunk: &Chunk, _cx: &mut NetworkContext) -> NetworkReply {
        self.push(format!("read:{}", String::from_utf8_lossy(chunk.data())));
        NetworkReply::pass()
    }
    fn on_error(&mut self, error: &Error) {
        self.push(format!("error:{error}"));
    }
}

fn headers_msg(response: bool, eos: bool) -> ep::ProcessingRequest {
    let h = ep::HttpHeaders {
        end_of_stream: eos,
        ..Default::default()
    };
    ep::ProcessingRequest {
        request: Some(if response {
            ep::processing_request::Request::ResponseHeaders(h)
        } else {
            ep::processing_request::Request::RequestHeaders(h)
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn out_of_order_message_fails_precondition_and_tells_the_processor() {
    let rec = Recorder::default();
    let mut ex = HttpExchange::new(rec.clone());
    assert_eq!(ex.send_raw(headers_msg(false, false)).await.len(), 1);
    let r = ex.send_raw(headers_msg(false, false)).await;
    assert!(r.is_empty());
    assert_eq!(r.error_code(), Some(Code::FailedPrecondition));
    let log = rec.log();
    assert_eq!(log.len(), 2);
    assert!(
        log[1].starts_with("error:out-of-order message on the request path"),
        "{log:?}"
    );
    assert_eq!(ex.stats().errors, 1);
}

#[tokio::test]
async fn message_with_no_oneof_is_invalid_argument() {
    let rec = Recorder::default();
    let mut ex = HttpExchange::new(rec.clone());
    let r = ex.send_raw(ep::ProcessingRequest::default()).await;
    assert_eq!(r.error_code(), Some(Code::InvalidArgument));
    assert!(rec.log()[0].contains("no request set"));
    // The stream is over: further messages get nothing.
    assert!(ex.send_raw(headers_msg(false, true)).await.is_empty());
    assert_eq!(
        ex.finish().await.map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );
}

#[tokio::test]
async fn stream_ending_mid_body_is_reported() {
    let rec = Recorder::default();
    let mut ex = HttpExchange::with_modes(rec.clone(), BodyMode::Streamed, BodyMode::None);
    ex.request_headers(&[(":method", "POST")]).send().await;
    assert_eq!(ex.request_body("part", false).await.len(), 1);
    let end = ex.finish().await;
    assert_eq!(end.map_err(|s| s.code()), Err(Code::Aborted));
    assert_eq!(
        rec.log().last().map(String::as_str),
        Some("error:stream ended in the middle of the request body")
    );
}

#[tokio::test]
async fn envoy_reset_after_a_complete_exchange_is_not_an_error() {
    let rec = Recorder::default();
    let mut ex = HttpExchange::new(rec.clone());
    ex.get("/").await;
    let r = ex
        .send_error(tonic::Status::cancelled("stream reset"))
        .await;
    assert_eq!(r.error_code(), None);
    assert_eq!(ex.stats().errors, 0);
    assert!(rec.log().iter().all(|l| !l.starts_with("error")));
}

#[tokio::test]
async fn reset_mid_body_and_other_transport_errors_are_reported() {
    let rec = Recorder::default();
    let mut ex =
        HttpExchange::with_modes(rec.clone(), BodyMode::FullDuplexStreamed, BodyMode::None);
    ex.request_headers(&[(":method", "POST")]).send().await;
    ex.request_body("a", false).await;
    let r = ex.send_error(tonic::Status::cancelled("reset")).await;
    assert_eq!(r.error_code(), Some(Code::Aborted));

    let mut ex = HttpExchange::new(Recorder::default());
    let r = ex
        .send_error(tonic::Status::out_of_range(
            "decoded message length too large",
        ))
        .await;
    assert_eq!(
        r.error_code(),
        Some(Code::OutOfRange),
        "the transport's status is passed on"
    );
}

#[derive(Default)]
struct Panics;

impl HttpProcessor for Panics {
    async fn request_headers(&mut self, _h: &Headers, _cx: &mut HttpContext) -> Reply {
        panic!("boom in the processor");
    }
}

#[tokio::test]
async fn processor_panic_becomes_internal() {
    let mut ex = HttpExchange::new(Panics);
    let r = ex.request_headers(&[(":path", "/")]).send().await;
    assert_eq!(r.error_code(), Some(Code::Internal));
    assert!(r
        .status
        .as_ref()
        .is_some_and(|s| s.message().contains("boom in the processor")));
    assert_eq!(ex.stats().errors, 1);
    assert_eq!(ex.stats().streams_active, 0);
}

#[derive(Default)]
struct BadReply;

impl HttpProcessor for BadReply {
    async fn request_headers(&mut self, _h: &Headers, _cx: &mut HttpContext) -> Reply {
        Reply::new().stream_chunk("not in a headers reply", true)
    }
    async fn response_headers(&mut self, _h: &Headers, _cx: &mut HttpContext) -> Reply {
        Reply::abort(tonic::Status::permission_denied("policy"))
    }
}

#[tokio::test]
async fn invalid_reply_and_abort() {
    let mut ex = HttpExchange::new(BadReply);
    let r = ex.request_headers(&[(":path", "/")]).send().await;
    assert_eq!(r.error_code(), Some(Code::Internal));

    let mut ex = HttpExchange::new(BadReply);
    let r = ex.response_headers(&[(":status", "200")]).send().await;
    assert_eq!(r.error_code(), Some(Code::PermissionDenied));
    assert_eq!(
        r.status.as_ref().map(tonic::Status::message),
        Some("policy")
    );
}

#[tokio::test]
async fn observability_mode_calls_handlers_but_sends_nothing() {
    let rec = Recorder::default();
    let mut ex =
        HttpExchange::with_modes(rec.clone(), BodyMode::Streamed, BodyMode::None).observability();
    assert!(ex
        .request_headers(&[(":method", "POST")])
        .send()
        .await
        .is_empty());
    let replies = ex.streamed_request_body(&["a", "b"]).await;
    assert!(replies.iter().all(|r| r.is_empty() && r.status.is_none()));
    assert!(ex
        .response_headers(&[(":status", "200")])
        .eos(true)
        .send()
        .await
        .is_empty());
    assert_eq!(
        rec.log(),
        vec![
            "request_headers",
            "request_body:a",
            "request_body:b",
            "request_body:",
            "response_headers"
        ]
    );
    assert_eq!(ex.stats().messages_sent, 0);
    assert_eq!(ex.finish().await.map_err(|s| s.code()), Ok(()));
}

#[derive(Default)]
struct Slow;

impl HttpProcessor for Slow {
    async fn request_headers(&mut self, _h: &Headers, cx: &mut HttpContext) -> Reply {
        cx.override_message_timeout(Duration::from_secs(5))
            .await
            .expect("sent");
        tokio::time::sleep(Duration::from_secs(3)).await;
        Reply::new().set_header("x-slow", "done")
    }
}

#[tokio::test(start_paused = true)]
async fn override_message_timeout_goes_out_before_the_reply() {
    let mut ex = HttpExchange::new(Slow);
    let r = ex.request_headers(&[(":path", "/")]).eos(true).send().await;
    assert_eq!(r.len(), 2);
    assert_eq!(
        r.responses[0]
            .override_message_timeout
            .as_ref()
            .map(|d| d.seconds),
        Some(5)
    );
    assert!(r.responses[0].response.is_none(), "standalone");
    assert!(matches!(
        r.responses[1].response,
        Some(ep::processing_response::Response::RequestHeaders(_))
    ));
}

#[tokio::test]
async fn buffered_body_with_trailers_sequence() {
    let rec = Recorder::default();
    let mut ex = HttpExchange::with_modes(rec.clone(), BodyMode::Buffered, BodyMode::None);
    ex.request_headers(&[(":method", "POST")]).send().await;
    let b = ex.request_body("whole", false).await;
    assert_eq!(b.kind(), "request_body");
    let t = ex.request_trailers(&[("x-t", "1")]).await;
    assert_eq!(t.kind(), "request_trailers");
    let late = ex.request_body("late", true).await;
    assert_eq!(late.error_code(), Some(Code::FailedPrecondition));
}

#[tokio::test]
async fn network_rejects_bad_shapes_and_data_after_fin() {
    let rec = Recorder::default();
    let mut c = NetworkExchange::new(rec.clone());
    let r = c.send_raw(np::ProcessingRequest::default()).await;
    assert_eq!(r.error_code(), Some(Code::InvalidArgument));
    assert!(rec.log()[0].starts_with("error:network ProcessingRequest must carry exactly one"));

    let mut c = NetworkExchange::new(Recorder::default());
    let both = np::ProcessingRequest {
        read_data: Some(np::Data::default()),
        write_data: Some(np::Data::default()),
        ..Default::default()
    };
    assert_eq!(
        c.send_raw(both).await.error_code(),
        Some(Code::InvalidArgument)
    );

    let mut c = NetworkExchange::new(Recorder::default());
    assert!(c.read("x", true).await.end_of_stream());
    assert_eq!(
        c.read("after fin", false).await.error_code(),
        Some(Code::FailedPrecondition)
    );
}

#[tokio::test]
async fn network_pipelined_reads_and_writes_keep_order_and_direction() {
    let mut c = NetworkExchange::new(Recorder::default());
    for (i, chunk) in ["one", "two", "three"].into_iter().enumerate() {
        let r = c.read(chunk, false).await;
        assert!(r.is_read());
        assert_eq!(r.data(), chunk.as_bytes(), "chunk {i}");
        let w = c.write(format!("w{i}"), false).await;
        assert!(!w.is_read());
        assert_eq!(w.data(), format!("w{i}").as_bytes());
    }
    assert_eq!(c.stats().messages_sent, 6);
    assert_eq!(c.finish().await.map_err(|s| s.code()), Ok(()));
}
