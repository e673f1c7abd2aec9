//! Fault injection for `envoy.filters.http.ext_proc`: every processor and upstream fault of
//! issue 6, fail-closed and fail-open (`failure_mode_allow`), through an in-process extproxy
//! (listener → HCM → ext_proc → router). Each case asserts what the client saw, the
//! `http.ingress.ext_proc.*` counters, what reached the upstream, that the proxy then serves a
//! new request, and that every connection / request gauge is back to zero.
//!
//! Cases already covered elsewhere (and not repeated here): `http_ext_proc_e2e`
//! (`processor_down_fails_closed_or_open` over both codecs, `processor_crash_mid_body_fails_the_request`,
//! the 504 on a slow processor), and the differential scenarios comparing counters on a gRPC
//! error and a spurious message with Envoy 1.40.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ext_proc_support;
mod faults_support;

use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use ext_proc_support::{continue_for, kind, Processor, Relay, Step};
use faults_support::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use testenv::{echo_http_upstream, HttpVersion, TestRequest};

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Nothing listens on the processor's port.
    Down,
    /// The processor's connection dies after the first body chunk reached it.
    Killed,
    /// The processor never answers the first body chunk (`message_timeout`).
    Silent,
    /// A body response when the request headers response was expected.
    OutOfOrder,
    /// A gRPC error (`INTERNAL`) after the first body chunk.
    GrpcError,
    /// Every stream is answered trailers-only (`UNAVAILABLE`), before any message.
    TrailersOnly,
    /// The processor ends the stream with OK after the first body chunk.
    OkClose,
    /// A 64 MiB body response (over the default 4 MiB gRPC receive limit).
    Huge,
    /// The upstream refuses the connection.
    UpstreamRefused,
    /// The upstream resets after part of the response body.
    UpstreamReset,
    /// The upstream never answers (route timeout 500 ms).
    UpstreamSlow,
    /// The client resets its connection mid-body.
    ClientAbort,
}

impl Fault {
    fn scenario(self) -> &'static str {
        match self {
            Fault::Silent => "silent",
            Fault::OutOfOrder => "ooo",
            Fault::GrpcError => "error",
            Fault::OkClose => "okclose",
            Fault::Killed => "killed",
            Fault::Huge => "huge",
            _ => "ok",
        }
    }

    /// Whether the processor is unusable afterwards (its port is dead).
    fn processor_dead(self) -> bool {
        matches!(self, Fault::Down | Fault::Killed | Fault::TrailersOnly)
    }
}

/// What a case must show.
struct Case {
    fault: Fault,
    open: bool,
    /// The client's status (0: the response was cut after its head, see `UpstreamReset`).
    status: u16,
    /// The upstream received the complete request body `onetwo`.
    upstream_got_body: bool,
    /// Every non-zero `http.ingress.ext_proc.*` counter.
    counters: &'static [(&'static str, i64)],
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    // A dead or failing processor: 500 fail-closed; fail-open, the request goes on unprocessed,
    // including the body chunk the processor held (nothing lost).
    Case { fault: Fault::Down, open: false, status: 500, upstream_got_body: false, counters: FAILED },
    Case { fault: Fault::Down, open: true, status: 200, upstream_got_body: true, counters: FAILED_OPEN },
    Case { fault: Fault::TrailersOnly, open: false, status: 500, upstream_got_body: false, counters: FAILED },
    Case { fault: Fault::TrailersOnly, open: true, status: 200, upstream_got_body: true, counters: FAILED_OPEN },
    Case { fault: Fault::Killed, open: false, status: 500, upstream_got_body: false, counters: FAILED },
    Case { fault: Fault::Killed, open: true, status: 200, upstream_got_body: true, counters: FAILED_OPEN },
    Case { fault: Fault::GrpcError, open: false, status: 500, upstream_got_body: false, counters: FAILED },
    Case { fault: Fault::GrpcError, open: true, status: 200, upstream_got_body: true, counters: FAILED_OPEN },
    Case { fault: Fault::Silent, open: false, status: 504, upstream_got_body: false,
        counters: &[("streams_started", 1), ("message_timeouts", 1), ("streams_closed", 1), ("immediate_responses_sent", 1)] },
    Case { fault: Fault::Silent, open: true, status: 200, upstream_got_body: true,
        counters: &[("streams_started", 1), ("message_timeouts", 1), ("streams_closed", 1), ("failure_mode_allowed", 1)] },
    Case { fault: Fault::OutOfOrder, open: false, status: 500, upstream_got_body: false,
        counters: &[("streams_started", 1), ("spurious_msgs_received", 1), ("streams_closed", 1), ("immediate_responses_sent", 1)] },
    Case { fault: Fault::OutOfOrder, open: true, status: 200, upstream_got_body: true,
        counters: &[("streams_started", 1), ("spurious_msgs_received", 1), ("streams_closed", 1), ("failure_mode_allowed", 1)] },
    // An OK close is not an error (Envoy: processing complete): the request goes on unprocessed.
    Case { fault: Fault::OkClose, open: false, status: 200, upstream_got_body: true, counters: OK_CLOSED },
    Case { fault: Fault::OkClose, open: true, status: 200, upstream_got_body: true, counters: OK_CLOSED },
    // No receive limit unless `max_receive_message_length` is set, as in Envoy: the 64 MiB
    // body replacement reaches the upstream (and comes back through the echo).
    Case { fault: Fault::Huge, open: false, status: 200, upstream_got_body: false, counters: CLOSED },
    Case { fault: Fault::Huge, open: true, status: 200, upstream_got_body: false, counters: CLOSED },
    // Upstream faults: the router's answer; the side stream is closed normally.
    Case { fault: Fault::UpstreamRefused, open: false, status: 503, upstream_got_body: false, counters: CLOSED },
    Case { fault: Fault::UpstreamRefused, open: true, status: 503, upstream_got_body: false, counters: CLOSED },
    Case { fault: Fault::UpstreamReset, open: false, status: 0, upstream_got_body: false, counters: CLOSED },
    Case { fault: Fault::UpstreamReset, open: true, status: 0, upstream_got_body: false, counters: CLOSED },
    Case { fault: Fault::UpstreamSlow, open: false, status: 504, upstream_got_body: false, counters: CLOSED },
    Case { fault: Fault::UpstreamSlow, open: true, status: 504, upstream_got_body: false, counters: CLOSED },
    // The client resets mid-body: the upstream never sees a complete request.
    Case { fault: Fault::ClientAbort, open: false, status: 0, upstream_got_body: false, counters: CLOSED },
    Case { fault: Fault::ClientAbort, open: true, status: 0, upstream_got_body: false, counters: CLOSED },
];

/// Envoy's counters on a failed side stream, fail-closed (see envoy-differences.md).
const FAILED: &[(&str, i64)] = &[
    ("streams_started", 1),
    ("streams_failed", 1),
    ("server_half_closed", 1),
    ("immediate_responses_sent", 1),
];
/// …and fail-open (`server_half_closed` twice: Envoy's quirk H15).
const FAILED_OPEN: &[(&str, i64)] = &[
    ("streams_started", 1),
    ("streams_failed", 1),
    ("server_half_closed", 2),
    ("streams_closed", 1),
    ("failure_mode_allowed", 1),
];
const OK_CLOSED: &[(&str, i64)] = &[
    ("streams_started", 1),
    ("server_half_closed", 1),
    ("streams_closed", 1),
];
const CLOSED: &[(&str, i64)] = &[("streams_started", 1), ("streams_closed", 1)];

fn scripts(p: &Processor) {
    let hold = |r: &pb::ProcessingRequest, then: Vec<Step>| match kind(r) {
        "rh" => vec![Step::Send(continue_for(r))],
        _ => then,
    };
    p.script("silent", move |_, r| {
        hold(r, vec![Step::Sleep(Duration::from_secs(30))])
    });
    p.script("killed", move |_, r| {
        hold(r, vec![Step::Sleep(Duration::from_secs(30))])
    });
    p.script("error", move |_, r| {
        hold(r, vec![Step::Fail(tonic::Status::internal("boom"))])
    });
    p.script("okclose", move |_, r| hold(r, vec![Step::CloseOk]));
    p.script("ooo", |_, _| {
        vec![Step::Send(pb::ProcessingResponse {
            response: Some(pb::processing_response::Response::RequestBody(
                pb::BodyResponse::default(),
            )),
            ..Default::default()
        })]
    });
    // 64 MiB replaces the first chunk; the later chunks are cleared.
    p.script("huge", move |ctx, r| {
        let body = match ctx.index {
            1 => vec![b'x'; HUGE],
            _ => Vec::new(),
        };
        let common = pb::CommonResponse {
            body_mutation: Some(pb::BodyMutation {
                mutation: Some(pb::body_mutation::Mutation::Body(body)),
            }),
            ..Default::default()
        };
        match kind(r) {
            "rb" => vec![Step::Send(ext_proc_support::with_common(r, common, None))],
            _ => vec![Step::Send(continue_for(r))],
        }
    });
}

const HUGE: usize = 64 << 20;

fn ext_proc_counters(proxy: &Proxy) -> BTreeMap<String, i64> {
    let prefix = "http.ingress.ext_proc.";
    proxy
        .stats
        .render_text(None, true)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.starts_with(prefix))
        .filter_map(|(k, v)| Some((k[prefix.len()..].to_string(), v.trim().parse().ok()?)))
        .filter(|(_, v): &(String, i64)| *v != 0)
        // How many body chunks went to the processor before a fault took effect depends on
        // timing (STREAMED sends chunks without waiting for answers); asserted separately.
        .filter(|(k, _)| k != "stream_msgs_sent" && k != "stream_msgs_received")
        .collect()
}

async fn run(case: &Case) {
    let fault = case.fault;
    let what = format!("{fault:?} failure_mode_allow={}", case.open);
    let echo = echo_http_upstream().await;
    let p = Processor::start().await;
    scripts(&p);
    let relay = Relay::start(p.addr).await;
    let proc_port = match fault {
        Fault::Down => closed_port(),
        Fault::TrailersOnly => trailers_only_processor(tonic::Code::Unavailable)
            .await
            .port(),
        Fault::Killed => relay.addr.port(),
        _ => p.addr.port(),
    };
    let bad = match fault {
        Fault::UpstreamReset => Some(BadUpstream::start(UpstreamFault::ResetMidResponse).await),
        Fault::UpstreamSlow => Some(BadUpstream::start(UpstreamFault::Silent).await),
        _ => None,
    };
    let upstream_port = match (&bad, fault) {
        (Some(b), _) => b.addr.port(),
        (None, Fault::UpstreamRefused) => closed_port(),
        _ => echo.addr().port(),
    };
    let filter = http_ext_proc(json!({
        "failure_mode_allow": case.open,
        "message_timeout": match fault {
            Fault::Silent => "0.5s",
            // 64 MiB through a debug build on loaded cores.
            Fault::Huge => "30s",
            _ => "2s",
        },
        "processing_mode": {"request_body_mode": "STREAMED", "response_body_mode": "STREAMED"},
    }));
    let yaml = http_bootstrap(
        vec![filter],
        upstream_port,
        echo.addr().port(),
        proc_port,
        // The route timeout covers the whole response: short only where it is the fault.
        if fault == Fault::UpstreamSlow {
            "0.5s"
        } else {
            "30s"
        },
    );
    let proxy = Proxy::start(&yaml, "ingress").await;
    let addr = proxy.addr;
    // Fail-open cases use HTTP/2, fail-closed HTTP/1.1: both codecs see every fault.
    let version = if case.open {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    };

    let status = match fault {
        Fault::ClientAbort => {
            let headers = [("x-scenario", "ok"), ("x-echo-mode", "raw")];
            post_and_abort(addr, "/f", &headers, b"one").await;
            0
        }
        Fault::UpstreamReset => {
            let req = b"GET /f HTTP/1.1\r\nhost: t\r\nx-scenario: ok\r\n\r\n";
            let (got, _) = raw_exchange(addr, req).await;
            let text = String::from_utf8_lossy(&got).to_string();
            assert!(text.starts_with("HTTP/1.1 200"), "{what}: {text}");
            assert!(
                !text.ends_with(&format!("partial{}", "x".repeat(993))),
                "{what}: the body cannot be complete"
            );
            0
        }
        _ => {
            let req = TestRequest::post("/f", "")
                .chunked(&["one", "two"], Duration::from_millis(50))
                .header("x-scenario", fault.scenario())
                .header("x-echo-mode", "raw");
            let send = tokio::spawn(async move { req.send(addr, version).await });
            if fault == Fault::Killed {
                wait_for(&p, "killed", |s| s.messages.len() >= 2).await;
                relay.kill();
            }
            let resp = send.await.unwrap().unwrap_or_else(|e| {
                panic!("{what}: {e:#}; counters {:?}", ext_proc_counters(&proxy))
            });
            if fault == Fault::Huge {
                assert_eq!(
                    resp.body.len(),
                    HUGE,
                    "{what}: the 64 MiB body went up and back"
                );
                assert!(resp.body.iter().all(|b| *b == b'x'), "{what}");
            } else if resp.status == 200 {
                assert_eq!(resp.body, "onetwo", "{what}: echoed body");
            }
            resp.status
        }
    };
    let got_body = echo
        .requests()
        .iter()
        .any(|r| r.path == "/f" && r.body == "onetwo");
    settled(&proxy.stats, &[]).await;
    let sent = proxy.get("http.ingress.ext_proc.stream_msgs_sent");
    let received = proxy.get("http.ingress.ext_proc.stream_msgs_received");
    assert!(
        sent >= 1 && received <= sent,
        "{what}: {sent} sent, {received} received"
    );
    let want: BTreeMap<String, i64> = case
        .counters
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(
        (status, got_body, ext_proc_counters(&proxy)),
        (case.status, case.upstream_got_body, want),
        "{what}: (client status, upstream got the body, counters)"
    );

    // A new request is served (and fails again only if the processor is gone, fail-closed).
    let next = TestRequest::get("/ok")
        .header("x-scenario", "ok")
        .send(addr, version)
        .await
        .expect("next request");
    let want = if fault.processor_dead() && !case.open {
        500
    } else {
        200
    };
    assert_eq!(next.status, want, "{what}: next request");
    settled(&proxy.stats, &[]).await;
}

/// Waits until a stream of `scenario` satisfies `pred`.
async fn wait_for(
    p: &Processor,
    scenario: &str,
    pred: impl Fn(&ext_proc_support::StreamLog) -> bool,
) {
    for _ in 0..500 {
        if p.streams(scenario).iter().any(&pred) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("processor never saw the expected messages for {scenario}");
}

async fn check(fault: Fault) {
    let cases: Vec<&Case> = CASES.iter().filter(|c| c.fault == fault).collect();
    assert_eq!(
        cases.len(),
        2,
        "{fault:?}: one case fail-closed, one fail-open"
    );
    for case in cases {
        run(case).await;
    }
}

#[tokio::test]
async fn processor_not_listening() {
    check(Fault::Down).await;
}
#[tokio::test]
async fn processor_killed_mid_body() {
    check(Fault::Killed).await;
}
#[tokio::test]
async fn processor_never_answers() {
    check(Fault::Silent).await;
}
#[tokio::test]
async fn processor_answers_out_of_order() {
    check(Fault::OutOfOrder).await;
}
#[tokio::test]
async fn processor_grpc_error_mid_body() {
    check(Fault::GrpcError).await;
}
#[tokio::test]
async fn processor_trailers_only() {
    check(Fault::TrailersOnly).await;
}
#[tokio::test]
async fn processor_closes_ok_mid_body() {
    check(Fault::OkClose).await;
}
#[tokio::test]
async fn processor_sends_64_mib() {
    check(Fault::Huge).await;
}
#[tokio::test]
async fn upstream_refused() {
    check(Fault::UpstreamRefused).await;
}
#[tokio::test]
async fn upstream_reset_mid_response() {
    check(Fault::UpstreamReset).await;
}
#[tokio::test]
async fn upstream_slow() {
    check(Fault::UpstreamSlow).await;
}
#[tokio::test]
async fn client_aborts_mid_body() {
    check(Fault::ClientAbort).await;
}
