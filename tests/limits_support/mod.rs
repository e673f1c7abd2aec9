//! Test support for resource limits: an HTTP/1.1 upstream and an ext_proc processor that hold
//! each request until the test releases it (so limits can be reached deterministically), the
//! bootstraps, and small client helpers.
#![allow(dead_code, clippy::unwrap_used)]

use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use pb::external_processor_server::{ExternalProcessor, ExternalProcessorServer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

/// How long a helper waits for something the test expects to happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `f` until it holds, panicking with `what` after [`WAIT`].
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// === held HTTP/1.1 upstream ===

/// An HTTP/1.1 upstream (keep-alive, bodiless requests) that answers `200 ok` to each request
/// only once the test releases one response.
#[derive(Clone)]
pub struct HeldUpstream {
    /// Bound address.
    pub addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
}

impl HeldUpstream {
    /// Binds 127.0.0.1:0 and serves.
    pub async fn start() -> HeldUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = HeldUpstream {
            addr: listener.local_addr().unwrap(),
            arrived: Arc::default(),
            connections: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
        };
        let u = up.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                u.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(u.clone().serve(s));
            }
        });
        up
    }

    async fn serve(self, mut s: TcpStream) {
        let mut buf = Vec::new();
        loop {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            buf.drain(..end);
            self.arrived.fetch_add(1, Ordering::SeqCst);
            match self.release.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => return,
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Requests received so far.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests have arrived.
    pub async fn wait_arrived(&self, n: usize) {
        until(&format!("{n} upstream requests"), || self.arrived() >= n).await;
    }

    /// Lets `n` more responses go.
    pub fn release(&self, n: usize) {
        self.release.add_permits(n);
    }
}

// === held ext_proc processor ===

/// An HTTP ext_proc processor that answers "continue" to everything; while `hold` is on, the
/// first message of each stream waits for the test to release one stream.
#[derive(Clone)]
pub struct HeldProcessor {
    /// Bound address.
    pub addr: SocketAddr,
    hold: Arc<AtomicBool>,
    started: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
}

/// Decrements the open-stream count when a stream's task ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl ExternalProcessor for HeldProcessor {
    type ProcessStream = ReceiverStream<Result<pb::ProcessingResponse, tonic::Status>>;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<pb::ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(self.open.clone());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (hold, release) = (self.hold.load(Ordering::SeqCst), self.release.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let mut first = true;
            while let Ok(Some(msg)) = inbound.message().await {
                if first && hold {
                    match release.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                }
                first = false;
                if tx.send(Ok(continue_for(&msg))).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

impl HeldProcessor {
    /// Serves on 127.0.0.1:0; `hold` as described on the type.
    pub async fn start(hold: bool) -> HeldProcessor {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = HeldProcessor {
            addr: listener.local_addr().unwrap(),
            hold: Arc::new(AtomicBool::new(hold)),
            started: Arc::default(),
            open: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
        };
        let svc = p.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(ExternalProcessorServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        p
    }

    /// Streams opened so far.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Lets `n` held streams go on.
    pub fn release(&self, n: usize) {
        self.release.add_permits(n);
    }
}

/// The "continue, change nothing" response for a request message.
pub fn continue_for(req: &pb::ProcessingRequest) -> pb::ProcessingResponse {
    use pb::processing_request::Request as Req;
    use pb::processing_response::Response as Resp;
    let h = pb::HeadersResponse::default;
    let b = pb::BodyResponse::default;
    let t = pb::TrailersResponse::default;
    let response = match &req.request {
        Some(Req::RequestHeaders(_)) => Resp::RequestHeaders(h()),
        Some(Req::ResponseHeaders(_)) => Resp::ResponseHeaders(h()),
        Some(Req::RequestBody(_)) => Resp::RequestBody(b()),
        Some(Req::ResponseBody(_)) => Resp::ResponseBody(b()),
        Some(Req::RequestTrailers(_)) => Resp::RequestTrailers(t()),
        Some(Req::ResponseTrailers(_)) | None => Resp::ResponseTrailers(t()),
    };
    pb::ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

// === bootstraps ===

/// `circuit_breakers` for a cluster from one thresholds entry (`""`: none configured).
fn breakers(thresholds: &str) -> String {
    if thresholds.is_empty() {
        String::new()
    } else {
        format!("    circuit_breakers: {{thresholds: [{{{thresholds}}}]}}\n")
    }
}

fn cluster(name: &str, port: u16, thresholds: &str, http2: bool) -> String {
    let h2 = if http2 {
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n"
    } else {
        ""
    };
    format!(
        "  - name: {name}\n    connect_timeout: 2s\n{h2}{}    load_assignment:\n      cluster_name: {name}\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]\n",
        breakers(thresholds)
    )
}

/// An HTTP ext_proc filter for [`http_yaml`].
pub struct ExtProc {
    /// Processor port.
    pub port: u16,
    /// `failure_mode_allow`.
    pub fail_open: bool,
    /// Thresholds of the processor cluster.
    pub thresholds: &'static str,
}

/// Listener `http` (HCM, codec AUTO): optional ext_proc, then the router to cluster `upstream`
/// (HTTP/1.1, `thresholds`).
pub fn http_yaml(upstream: u16, thresholds: &str, ext_proc: Option<&ExtProc>) -> String {
    let mut filters = String::new();
    let mut clusters = cluster("upstream", upstream, thresholds, false);
    if let Some(e) = ext_proc {
        filters.push_str(&format!(
            r#"          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {{envoy_grpc: {{cluster_name: processor}}, timeout: 5s}}
              failure_mode_allow: {}
              message_timeout: 5s
"#,
            e.fail_open
        ));
        clusters.push_str(&cluster("processor", e.port, e.thresholds, true));
    }
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
{clusters}"#
    )
}

/// Listener `tcp`: an optional connection_limit (`limit` lines of its config) before tcp_proxy
/// to cluster `upstream` (`thresholds`).
pub fn tcp_yaml(upstream: u16, thresholds: &str, limit: Option<&str>) -> String {
    let limit = match limit {
        None => String::new(),
        Some(cfg) => format!(
            "      - name: envoy.filters.network.connection_limit\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit\n          stat_prefix: cl\n{}",
            cfg.lines().map(|l| format!("          {l}\n")).collect::<String>()
        ),
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
{limit}      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: upstream
  clusters:
{}"#,
        cluster("upstream", upstream, thresholds, false)
    )
}

// === clients ===

/// How a connection the proxy refused ended, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// FIN with no bytes.
    Fin,
    /// Connection reset.
    Reset,
}

/// Reads until the proxy closes the connection; panics if bytes arrive or nothing happens.
pub async fn expect_closed(s: &mut TcpStream) -> Closed {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Err(_) => panic!("the connection was not closed"),
        Ok(Ok(0)) => Closed::Fin,
        Ok(Ok(n)) => panic!("unexpected bytes {:?}", &buf[..n]),
        Ok(Err(_)) => Closed::Reset,
    }
}

/// Writes `msg` and reads the same number of bytes back (through a TCP echo upstream).
pub async fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("echo timed out")
        .unwrap();
    got
}

/// Adds the overload manager's global downstream connection limit to a bootstrap.
pub fn with_global_limit(yaml: &str, max: u64) -> String {
    format!(
        "overload_manager:\n  resource_monitors:\n  - name: envoy.resource_monitors.global_downstream_max_connections\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      max_active_downstream_connections: {max}\n{yaml}"
    )
}

/// Makes cluster `upstream` of a bootstrap HTTP/2 (h2c).
pub fn upstream_http2(yaml: &str) -> String {
    let from = "  - name: upstream\n    connect_timeout: 2s\n";
    assert!(yaml.contains(from));
    yaml.replace(
        from,
        &format!("{from}    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{http2_protocol_options: {{}}}}\n"),
    )
}
