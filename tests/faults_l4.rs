//! Fault injection for `envoy.filters.network.ext_proc` (in front of tcp_proxy): every
//! processor and upstream fault of issue 6, fail-closed and fail-open (`failure_mode_allow`).
//! Each case asserts what the client and the upstream saw (bytes, FIN or RST), the 17 Envoy
//! `network_ext_proc.ep.*` counters, that a new connection is then served, and that every
//! connection gauge (listener, tcp_proxy buffers, `cluster.upstream.upstream_cx_active`) is
//! back to zero.
//!
//! Not repeated here (covered in `l4_ext_proc`): fail-closed message timeout, processor down at
//! start, processor killed (fail-closed), gRPC error / OK close fail-open keeping pending bytes,
//! upstream refused, unsolicited ("out of order") responses, which are injected by design (N1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults_support;
mod l4_support;

use l4_support::{
    bootstrap, echo, ext_proc, fin, read_exact, read_resp, read_to_end, write, Ending,
    RawProcessor, Upstream,
};
use std::collections::BTreeMap;

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The processor dies (every connection dropped) while it holds the first chunk.
    Killed,
    /// The processor never answers the first chunk (`message_timeout: 300ms`).
    Silent,
    /// A gRPC error (`INTERNAL`) in answer to the first chunk.
    GrpcError,
    /// Every stream is answered trailers-only (`UNAVAILABLE`).
    TrailersOnly,
    /// The processor ends the stream with OK in answer to the first chunk.
    OkClose,
    /// The processor answers the first chunk with 64 MiB.
    Huge,
    /// The upstream resets after writing `partial`.
    UpstreamReset,
    /// The upstream never answers (tcp_proxy `idle_timeout: 500ms`).
    UpstreamSlow,
    /// The client resets after its first chunk went through.
    ClientAbort,
}

/// What a case must show.
struct Case {
    fault: Fault,
    open: bool,
    /// The connection carrying the fault ends for the client with this.
    client: Ending,
    /// …and for the upstream with this.
    upstream: Ending,
    /// Every non-zero `network_ext_proc.ep.*` counter (Envoy's 17).
    counters: &'static [(&'static str, i64)],
}

/// Shorthand for the counters every case starts with: one stream, one chunk sent.
macro_rules! sent1 {
    ($($k:literal: $v:expr),* $(,)?) => {
        &[("streams_started", 1), ("stream_msgs_sent", 1), ("read_data_sent", 1), $(($k, $v)),*]
    };
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    // Fail-closed: both sides get a FIN (Envoy closes with FlushWrite), nothing is forwarded.
    // Fail-open: the held chunk goes on unprocessed (N3) and the connection bypasses the
    // processor from then on.
    Case { fault: Fault::Killed, open: false, client: Ending::Fin, upstream: Ending::Fin,
        counters: sent1!("streams_grpc_error": 1, "connections_closed": 1) },
    Case { fault: Fault::Killed, open: true, client: Ending::Fin, upstream: Ending::Fin,
        counters: sent1!("streams_grpc_error": 1, "failure_mode_allowed": 1) },
    Case { fault: Fault::Silent, open: false, client: Ending::Fin, upstream: Ending::Fin,
        counters: sent1!("message_timeouts": 1, "streams_closed": 1, "connections_closed": 1) },
    Case { fault: Fault::Silent, open: true, client: Ending::Fin, upstream: Ending::Fin,
        counters: sent1!("message_timeouts": 1, "streams_closed": 1, "failure_mode_allowed": 1) },
    Case { fault: Fault::GrpcError, open: false, client: Ending::Fin, upstream: Ending::Fin,
        counters: sent1!("streams_grpc_error": 1, "connections_closed": 1) },
    Case { fault: Fault::GrpcError, open: true, client: Ending::Fin, upstream: Ending::Fin,
        counters: sent1!("streams_grpc_error": 1, "failure_mode_allowed": 1) },
    // The refusal arrives after the first chunk was queued on the stream: it counts as sent.
    Case { fault: Fault::TrailersOnly, open: false, client: Ending::Fin, upstream: Ending::Fin,
        counters: sent1!("streams_grpc_error": 1, "connections_closed": 1) },
    Case { fault: Fault::TrailersOnly, open: true, client: Ending::Fin, upstream: Ending::Fin,
        counters: sent1!("streams_grpc_error": 1, "failure_mode_allowed": 1) },
    // An OK close is not a failure: the held chunk goes on and the connection bypasses the
    // processor, whatever `failure_mode_allow` says.
    Case { fault: Fault::OkClose, open: false, client: Ending::Fin, upstream: Ending::Fin,
        counters: sent1!("streams_grpc_close": 1) },
    Case { fault: Fault::OkClose, open: true, client: Ending::Fin, upstream: Ending::Fin,
        counters: sent1!("streams_grpc_close": 1) },
    // No receive limit unless `max_receive_message_length` is set (as Envoy): the 64 MiB
    // answer replaces the chunk and the connection goes on through the processor.
    Case { fault: Fault::Huge, open: false, client: Ending::Fin, upstream: Ending::Fin,
        counters: HUGE_COUNTERS },
    Case { fault: Fault::Huge, open: true, client: Ending::Fin, upstream: Ending::Fin,
        counters: HUGE_COUNTERS },
    // Upstream RST reaches the client as RST (after the bytes before it).
    Case { fault: Fault::UpstreamReset, open: false, client: Ending::Rst, upstream: Ending::Rst,
        counters: RESET_COUNTERS },
    Case { fault: Fault::UpstreamReset, open: true, client: Ending::Rst, upstream: Ending::Rst,
        counters: RESET_COUNTERS },
    Case { fault: Fault::UpstreamSlow, open: false, client: Ending::Fin, upstream: Ending::Fin,
        counters: ONE_ANSWERED },
    Case { fault: Fault::UpstreamSlow, open: true, client: Ending::Fin, upstream: Ending::Fin,
        counters: ONE_ANSWERED },
    // Client RST reaches the upstream as RST.
    Case { fault: Fault::ClientAbort, open: false, client: Ending::Rst, upstream: Ending::Rst,
        counters: ONE_ANSWERED },
    Case { fault: Fault::ClientAbort, open: true, client: Ending::Rst, upstream: Ending::Rst,
        counters: ONE_ANSWERED },
];

const ONE_ANSWERED: &[(&str, i64)] =
    sent1!("stream_msgs_received": 1, "read_data_injected": 1, "streams_closed": 1);
const RESET_COUNTERS: &[(&str, i64)] = &[
    ("streams_started", 1),
    ("stream_msgs_sent", 2),
    ("stream_msgs_received", 2),
    ("read_data_sent", 1),
    ("read_data_injected", 1),
    ("write_data_sent", 1),
    ("write_data_injected", 1),
    ("streams_closed", 1),
];
/// `fault` (answered with 64 MiB), `more`, the FIN; `back`, the FIN.
const HUGE_COUNTERS: &[(&str, i64)] = &[
    ("streams_started", 1),
    ("stream_msgs_sent", 5),
    ("stream_msgs_received", 5),
    ("read_data_sent", 3),
    ("read_data_injected", 3),
    ("write_data_sent", 2),
    ("write_data_injected", 2),
    ("streams_closed", 1),
];

const HUGE: usize = 64 << 20;

/// A raw processor that echoes (identity) everything except a chunk starting with `fault`.
async fn processor(fault: Fault) -> RawProcessor {
    RawProcessor::start(move |req, r| {
        let (_, data, _) = l4_support::req_data(req);
        if !data.starts_with(b"fault") {
            return r.send(echo(req));
        }
        match fault {
            Fault::GrpcError => r.fail(tonic::Status::internal("boom")),
            Fault::OkClose => r.finish(),
            Fault::Huge => r.send(read_resp(&vec![b'x'; HUGE], false)),
            Fault::Killed | Fault::Silent => {}
            _ => r.send(echo(req)),
        }
    })
    .await
}

async fn run(case: &Case) {
    let fault = case.fault;
    let what = format!("{fault:?} failure_mode_allow={}", case.open);
    let up = Upstream::bind().await;
    let p = processor(fault).await;
    let proc_port = match fault {
        Fault::TrailersOnly => faults_support::trailers_only_processor(tonic::Code::Unavailable)
            .await
            .port(),
        _ => p.port(),
    };
    let timeout = if fault == Fault::Silent { "0.3s" } else { "2s" };
    let extra = format!(
        "message_timeout: {timeout}\nfailure_mode_allow: {}",
        case.open
    );
    let idle = if fault == Fault::UpstreamSlow {
        "          idle_timeout: 0.5s\n"
    } else {
        ""
    };
    let yaml = bootstrap(&[ext_proc("ep", &extra)], up.port(), proc_port, "", idle);
    let proxy = l4_support::Proxy::start(&yaml).await;

    let mut c = proxy.connect().await;
    let mut u = up.accept().await;
    let first: &[u8] = match fault {
        Fault::UpstreamReset | Fault::UpstreamSlow | Fault::ClientAbort => b"hello",
        _ => b"fault",
    };
    write(&mut c, first).await;
    if fault == Fault::Killed {
        p.wait_requests(1).await;
        p.kill();
    }
    let failed = matches!(
        fault,
        Fault::Killed | Fault::Silent | Fault::GrpcError | Fault::TrailersOnly
    ) && !case.open;
    let (client, upstream) = if failed {
        let client = read_to_end(&mut c).await;
        let upstream = read_to_end(&mut u).await;
        assert_eq!((client.0, upstream.0), (vec![], vec![]), "{what}: no bytes");
        (client.1, upstream.1)
    } else {
        match fault {
            Fault::Huge => {
                let got = read_exact(&mut u, HUGE).await;
                assert!(got.iter().all(|b| *b == b'x'), "{what}: 64 MiB injected");
            }
            // The held chunk goes on unprocessed (N3) or was answered by the echo.
            _ => assert_eq!(read_exact(&mut u, 5).await, first, "{what}"),
        }
        match fault {
            Fault::UpstreamReset => {
                write(&mut u, b"partial").await;
                assert_eq!(read_exact(&mut c, 7).await, b"partial", "{what}");
                l4_support::reset(u);
                let client = read_to_end(&mut c).await;
                assert_eq!(client.0, b"", "{what}");
                (client.1, Ending::Rst)
            }
            Fault::UpstreamSlow => {
                let client = read_to_end(&mut c).await;
                let upstream = read_to_end(&mut u).await;
                (client.1, upstream.1)
            }
            Fault::ClientAbort => {
                l4_support::reset(c);
                let upstream = read_to_end(&mut u).await;
                assert_eq!(upstream.0, b"", "{what}");
                (Ending::Rst, upstream.1)
            }
            _ => {
                // The connection keeps working both ways, then half-closes cleanly.
                write(&mut c, b"more").await;
                assert_eq!(read_exact(&mut u, 4).await, b"more", "{what}");
                write(&mut u, b"back").await;
                assert_eq!(read_exact(&mut c, 4).await, b"back", "{what}");
                fin(&mut c).await;
                let upstream = read_to_end(&mut u).await;
                fin(&mut u).await;
                let client = read_to_end(&mut c).await;
                assert_eq!((&client.0, &upstream.0), (&vec![], &vec![]), "{what}");
                (client.1, upstream.1)
            }
        }
    };
    proxy.wait_closed(1).await;
    faults_support::settled(&proxy.stats, &["upstream"]).await;
    let want: BTreeMap<String, i64> = case
        .counters
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(
        (client, upstream, proxy.ep_counters("ep")),
        (case.client, case.upstream, want),
        "{what}: (client ending, upstream ending, counters)"
    );

    // A new connection is served: through the processor, around it (fail-open), or refused
    // again when the processor is gone and the filter fails closed.
    let dead = matches!(fault, Fault::Killed | Fault::TrailersOnly);
    let mut c = proxy.connect().await;
    let mut u = up.accept().await;
    write(&mut c, b"again").await;
    if dead && !case.open {
        assert_eq!(read_to_end(&mut c).await.0, b"", "{what}: next connection");
    } else {
        assert_eq!(
            read_exact(&mut u, 5).await,
            b"again",
            "{what}: next connection"
        );
        write(&mut u, b"ok").await;
        assert_eq!(
            read_exact(&mut c, 2).await,
            b"ok",
            "{what}: next connection"
        );
    }
    drop(c);
    drop(u);
    proxy.wait_closed(2).await;
    faults_support::settled(&proxy.stats, &["upstream"]).await;
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
async fn processor_killed_mid_connection() {
    check(Fault::Killed).await;
}
#[tokio::test]
async fn processor_never_answers() {
    check(Fault::Silent).await;
}
#[tokio::test]
async fn processor_grpc_error() {
    check(Fault::GrpcError).await;
}
#[tokio::test]
async fn processor_trailers_only() {
    check(Fault::TrailersOnly).await;
}
#[tokio::test]
async fn processor_closes_ok() {
    check(Fault::OkClose).await;
}
#[tokio::test]
async fn processor_sends_64_mib() {
    check(Fault::Huge).await;
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
async fn client_aborts_mid_stream() {
    check(Fault::ClientAbort).await;
}
