//! The processor cluster's connection and request stats of ext_proc side streams, compared with
//! Envoy 1.40 (whose async client counts them through the cluster's HTTP/2 pool): while the
//! processor serves, once it has closed its connection, and while it is unreachable; HTTP and
//! network ext_proc.
#![allow(clippy::unwrap_used)]

#[path = "l4_support/mod.rs"]
mod l4_support;
#[path = "limits_support/mod.rs"]
mod limits_support;

use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use limits_support::{continue_for, http_yaml, ExtProc, WAIT};
use pb::external_processor_server::{ExternalProcessor, ExternalProcessorServer};
use std::collections::BTreeMap;
use std::time::Duration;
use testenv::{HttpVersion, ProxyProcess, TestRequest};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

/// The stats compared (`/stats` names; -1 when a proxy does not have one).
const STATS: &[&str] = &[
    "cluster.processor.upstream_cx_total",
    "cluster.processor.upstream_cx_active",
    "cluster.processor.upstream_cx_connect_fail",
    "cluster.processor.upstream_cx_connect_timeout",
    "cluster.processor.upstream_cx_overflow",
    "cluster.processor.upstream_rq_total",
    "cluster.processor.circuit_breakers.default.cx_open",
    "cluster.processor.circuit_breakers.default.remaining_cx",
    "cluster.processor.circuit_breakers.default.rq_open",
    "cluster.processor.circuit_breakers.default.remaining_rq",
];

/// A processor answering "continue" to every message, until it is stopped.
#[derive(Clone)]
struct Continue;

#[tonic::async_trait]
impl ExternalProcessor for Continue {
    type ProcessStream = ReceiverStream<Result<pb::ProcessingResponse, tonic::Status>>;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<pb::ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if tx.send(Ok(continue_for(&msg))).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// A running [`Continue`] processor; `stop` closes its connections (GOAWAY) and its listener.
struct Processor {
    port: u16,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

impl Processor {
    async fn start() -> Processor {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(ExternalProcessorServer::new(Continue))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        Processor { port, stop, served }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("the processor did not stop")
            .unwrap();
    }
}

async fn start(envoy: bool, yaml: &str) -> ProxyProcess {
    let p = if envoy {
        ProxyProcess::envoy(yaml).await
    } else {
        ProxyProcess::start(env!("CARGO_BIN_EXE_extproxy").as_ref(), yaml, &[]).await
    };
    p.unwrap_or_else(|e| panic!("start (envoy: {envoy}): {e:#}"))
}

async fn stats(p: &ProxyProcess) -> BTreeMap<String, i64> {
    let all = p.stats().await;
    STATS
        .iter()
        .map(|n| (n.to_string(), all.get(*n).copied().unwrap_or(-1)))
        .collect()
}

/// Waits until stat `name` is `want`.
async fn settle(p: &ProxyProcess, name: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while p.counter(name).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} = {}, not {want}",
            p.counter(name).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends GET `path` through the HTTP listener and returns the status.
async fn get(p: &ProxyProcess, path: &str) -> u16 {
    let addr = p.listener_addr("http").await;
    TestRequest::get(path)
        .send(addr, HttpVersion::Http1)
        .await
        .unwrap()
        .status
}

/// HTTP ext_proc (fail-closed): three requests while the processor serves, its connection
/// closed by the processor, two requests while it is unreachable. The stats after each phase.
/// `thresholds` are the processor cluster's (`remaining_*` need `track_remaining`).
async fn http_run(
    envoy: bool,
    thresholds: &'static str,
) -> Vec<(&'static str, Vec<u16>, BTreeMap<String, i64>)> {
    let echo = testenv::echo_http_upstream().await;
    let processor = Processor::start().await;
    let ep = ExtProc {
        port: processor.port,
        fail_open: false,
        thresholds,
    };
    let p = start(envoy, &http_yaml(echo.addr().port(), "", Some(&ep))).await;
    let mut phases = Vec::new();

    let mut statuses = Vec::new();
    for path in ["/a", "/b", "/c"] {
        statuses.push(get(&p, path).await);
    }
    // Each side stream ends just after its request; wait for the last one's request unit.
    settle(
        &p,
        "cluster.processor.circuit_breakers.default.remaining_rq",
        1024,
    )
    .await;
    phases.push(("served", statuses, stats(&p).await));

    processor.stop().await;
    settle(&p, "cluster.processor.upstream_cx_active", 0).await;
    phases.push(("processor gone", Vec::new(), stats(&p).await));

    let mut statuses = Vec::new();
    for path in ["/d", "/e"] {
        statuses.push(get(&p, path).await);
    }
    phases.push(("unreachable", statuses, stats(&p).await));
    phases
}

#[tokio::test]
async fn differential_http_side_stream_cluster_stats() {
    let envoy = http_run(true, "track_remaining: true").await;
    let ours = http_run(false, "track_remaining: true").await;
    for (e, o) in envoy.iter().zip(&ours) {
        assert_eq!(e, o, "phase {:?}: Envoy (left) vs extproxy (right)", e.0);
    }
    // What Envoy showed, so a change on either side is visible here.
    let served = &envoy[0].2;
    assert_eq!(envoy[0].1, [200, 200, 200]);
    assert_eq!(served["cluster.processor.upstream_cx_total"], 1);
    assert_eq!(served["cluster.processor.upstream_cx_active"], 1);
    assert_eq!(served["cluster.processor.upstream_rq_total"], 3);
    assert_eq!(
        served["cluster.processor.circuit_breakers.default.remaining_cx"],
        1023
    );
    let unreachable = &envoy[2].2;
    assert_eq!(envoy[2].1, [500, 500]);
    assert_eq!(unreachable["cluster.processor.upstream_cx_total"], 3);
    assert_eq!(unreachable["cluster.processor.upstream_cx_connect_fail"], 2);
    assert_eq!(unreachable["cluster.processor.upstream_rq_total"], 3);
}

/// At `max_connections: 0` a side stream still gets its connection (the pool has none), counting
/// `upstream_cx_overflow` for each connection made.
#[tokio::test]
async fn differential_http_side_stream_at_max_connections() {
    let thresholds = "max_connections: 0, track_remaining: true";
    let envoy = http_run(true, thresholds).await;
    let ours = http_run(false, thresholds).await;
    for (e, o) in envoy.iter().zip(&ours) {
        assert_eq!(e, o, "phase {:?}: Envoy (left) vs extproxy (right)", e.0);
    }
    assert_eq!(envoy[0].1, [200, 200, 200]);
    assert_eq!(envoy[0].2["cluster.processor.upstream_cx_overflow"], 1);
    assert_eq!(envoy[2].2["cluster.processor.upstream_cx_overflow"], 3);
}

/// Network ext_proc (fail-closed) over tcp_proxy to an echo upstream: two connections that each
/// echo a byte while the processor serves, then two with the processor's port closed. The stats
/// after each phase.
async fn network_run(envoy: bool) -> Vec<(&'static str, BTreeMap<String, i64>)> {
    let echo = testenv::tcp_echo_upstream().await;
    let processor = l4_support::sdk_processor(|| l4_support::Pass).await;
    let mut phases = Vec::new();
    for (phase, port) in [
        ("served", processor.addr().port()),
        ("unreachable", l4_support::closed_port()),
    ] {
        let yaml = l4_support::bootstrap(
            &[l4_support::ext_proc("ep", "")],
            echo.addr().port(),
            port,
            "",
            "",
        )
        .replace(
            "  - name: processor\n    connect_timeout: 2s\n",
            "  - name: processor\n    connect_timeout: 2s\n    circuit_breakers: {thresholds: [{track_remaining: true}]}\n",
        );
        let p = start(envoy, &yaml).await;
        let addr = p.listener_addr("l4").await;
        for _ in 0..2 {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            l4_support::write(&mut c, b"a").await;
            if phase == "served" {
                assert_eq!(l4_support::read_exact(&mut c, 1).await, b"a");
            } else {
                assert_eq!(l4_support::read_to_end(&mut c).await.0, b"");
            }
        }
        // The last connection's side stream ends after its close: wait for its request unit.
        settle(
            &p,
            "cluster.processor.circuit_breakers.default.remaining_rq",
            1024,
        )
        .await;
        phases.push((phase, stats(&p).await));
    }
    phases
}

#[tokio::test]
async fn differential_network_side_stream_cluster_stats() {
    let envoy = network_run(true).await;
    let ours = network_run(false).await;
    for (e, o) in envoy.iter().zip(&ours) {
        assert_eq!(e, o, "phase {:?}: Envoy (left) vs extproxy (right)", e.0);
    }
    let served = &envoy[0].1;
    assert_eq!(served["cluster.processor.upstream_cx_total"], 1);
    assert_eq!(served["cluster.processor.upstream_rq_total"], 2);
    let unreachable = &envoy[1].1;
    assert_eq!(unreachable["cluster.processor.upstream_cx_connect_fail"], 2);
    assert_eq!(unreachable["cluster.processor.upstream_rq_total"], 0);
}
