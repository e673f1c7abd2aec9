//! Support for the fault-injection and integrity tests: an in-process extproxy for the HTTP
//! path, the "everything is closed again" check on the active gauges, a processor that answers
//! every stream trailers-only, misbehaving HTTP upstreams and a client that aborts mid-body.
//! (Scriptable processors come from `ext_proc_support` and `l4_support`.)
#![allow(dead_code, missing_docs)]

use envoy_types::pb::envoy::service::ext_proc::v3 as hpb;
use envoy_types::pb::envoy::service::network_ext_proc::v3 as npb;
use hpb::external_processor_server::{ExternalProcessor, ExternalProcessorServer};
use npb::network_external_processor_server::{
    NetworkExternalProcessor, NetworkExternalProcessorServer,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should happen "soon" on two loaded cores.
pub const WAIT: Duration = Duration::from_secs(10);

// === in-process proxy ===

/// extproxy running in this process.
pub struct Proxy {
    pub stats: extproxy::stats::Store,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Binds and runs `yaml`; serves listener `listener`.
    pub async fn start(yaml: &str, listener: &str) -> Proxy {
        let bootstrap =
            extproxy::config::parse(yaml).unwrap_or_else(|e| panic!("config: {e}\n{yaml}"));
        let options = extproxy::Options {
            concurrency: 1,
            drain_time: Duration::from_millis(100),
        };
        let server = extproxy::Server::bind(&bootstrap, options)
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = server.listener_addr(listener).expect("listener");
        let stats = server.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Proxy {
            stats,
            addr,
            shutdown,
            task,
        }
    }

    /// A stat's value (0 if absent).
    pub fn get(&self, name: &str) -> i64 {
        self.stats.get(name).unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// Gauges that count open connections, requests and buffered bytes; all must be back to zero
/// once every client and upstream is gone. Pooled upstream HTTP connections and the processor's
/// HTTP/2 connections legitimately stay open, so `cluster.*` is only checked for `clusters`.
pub fn open_gauges(store: &extproxy::stats::Store, clusters: &[&str]) -> Vec<(String, i64)> {
    let text = store.render_text(None, false);
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| {
            let downstream = !k.starts_with("listener.admin.")
                && !k.starts_with("http.admin.")
                && (k.ends_with(".downstream_cx_active")
                    || k.ends_with(".downstream_rq_active")
                    || k.ends_with("_active") && k.starts_with("http.")
                    || k.ends_with("_bytes_buffered")
                    || k.ends_with(".upstream_flush_active"));
            let upstream = clusters
                .iter()
                .any(|c| *k == format!("cluster.{c}.upstream_cx_active"));
            downstream || upstream
        })
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse::<i64>().ok()?)))
        .filter(|(_, v)| *v != 0)
        .collect()
}

/// Waits until [`open_gauges`] is empty.
pub async fn settled(store: &extproxy::stats::Store, clusters: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let open = open_gauges(store, clusters);
        if open.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still open after {WAIT:?}: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === bootstraps ===

/// HTTP bootstrap: listener `ingress` (HCM `ingress`) with `filters` then the router; `/ok`
/// routes to cluster `good`, everything else to cluster `upstream` with `route_timeout`;
/// cluster `proc` is HTTP/2 at `proc_port`.
pub fn http_bootstrap(
    filters: Vec<Value>,
    upstream: u16,
    good: u16,
    proc_port: u16,
    route_timeout: &str,
) -> String {
    let mut http_filters = filters;
    http_filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let cluster = |name: &str, port: u16| json!({"name": name, "type": "STATIC", "connect_timeout": "2s", "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}});
    let mut proc = cluster("proc", proc_port);
    proc["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "explicit_http_config": {"http2_protocol_options": {}}}});
    let v = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/ok"}, "route": {"cluster": "good"}},
                            {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": route_timeout}},
                        ]}]},
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": [cluster("upstream", upstream), cluster("good", good), proc],
        },
    });
    serde_json::to_string_pretty(&v).expect("json")
}

/// An `envoy.filters.http.ext_proc` filter on cluster `proc`; `extra` is merged into its config.
pub fn http_ext_proc(extra: Value) -> Value {
    let mut f = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "proc"}},
        "message_timeout": "2s",
    });
    if let (Some(f), Value::Object(extra)) = (f.as_object_mut(), extra) {
        f.extend(extra);
    }
    json!({"name": "envoy.filters.http.ext_proc", "typed_config": f})
}

// === a processor that refuses every stream trailers-only ===

#[derive(Clone)]
struct Refuse(tonic::Code);

type HttpOut = Pin<
    Box<dyn futures_util::Stream<Item = Result<hpb::ProcessingResponse, tonic::Status>> + Send>,
>;
type NetOut = Pin<
    Box<dyn futures_util::Stream<Item = Result<npb::ProcessingResponse, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl ExternalProcessor for Refuse {
    type ProcessStream = HttpOut;
    async fn process(
        &self,
        _: tonic::Request<tonic::Streaming<hpb::ProcessingRequest>>,
    ) -> Result<tonic::Response<HttpOut>, tonic::Status> {
        Err(tonic::Status::new(self.0, "refused"))
    }
}

#[tonic::async_trait]
impl NetworkExternalProcessor for Refuse {
    type ProcessStream = NetOut;
    async fn process(
        &self,
        _: tonic::Request<tonic::Streaming<npb::ProcessingRequest>>,
    ) -> Result<tonic::Response<NetOut>, tonic::Status> {
        Err(tonic::Status::new(self.0, "refused"))
    }
}

/// Serves both ext_proc services on 127.0.0.1:0; every stream is answered with a trailers-only
/// response carrying `code` (a gRPC error before any message).
pub async fn trailers_only_processor(code: tonic::Code) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(Refuse(code)))
            .add_service(NetworkExternalProcessorServer::new(Refuse(code)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

// === misbehaving HTTP/1.1 upstreams ===

/// What a [`BadUpstream`] does with each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFault {
    /// Sends the response head and part of a `content-length` body, then resets.
    ResetMidResponse,
    /// Reads the request and never answers.
    Silent,
}

/// An HTTP/1.1 upstream that misbehaves in one way.
pub struct BadUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl BadUpstream {
    pub async fn start(fault: UpstreamFault) -> BadUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    read_head(&mut s).await;
                    match fault {
                        UpstreamFault::ResetMidResponse => {
                            let _ = s
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial",
                                )
                                .await;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            reset(s);
                        }
                        UpstreamFault::Silent => {
                            let mut sink = [0u8; 1024];
                            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                        }
                    }
                });
            }
        });
        BadUpstream { addr, task }
    }
}

impl Drop for BadUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads up to the end of a request head (`\r\n\r\n`), or EOF.
pub async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    head
}

/// Closes with RST.
pub fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// A port nothing listens on (bound without `listen()`, kept for the life of the process).
pub fn closed_port() -> u16 {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let port = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("addr")
        .port();
    std::mem::forget(s);
    port
}

/// An HTTP/1.1 POST whose `content-length` promises more than is sent: writes the head and
/// `sent`, waits `linger`, then resets the connection.
pub async fn post_and_abort(addr: SocketAddr, path: &str, headers: &[(&str, &str)], sent: &[u8]) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 100000\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(sent).await.expect("write body");
    tokio::time::sleep(Duration::from_millis(200)).await;
    reset(s);
}

/// Sends a raw HTTP/1.1 request and reads until the connection ends; returns what arrived and
/// whether it ended with an error (RST) rather than EOF.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let reset = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return false,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return true,
            }
        }
    })
    .await
    .expect("raw exchange timed out");
    (out, reset)
}
