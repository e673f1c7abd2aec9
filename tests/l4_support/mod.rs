//! Test DSL for the L4 path: an in-process extproxy, an upstream the test drives by hand,
//! scripted raw network processors (for what an SDK processor cannot do: stay silent, answer
//! unsolicited, fail, die), and client helpers that tell FIN from RST.

#![allow(dead_code, missing_docs)]

pub mod differential;

use bytes::Bytes;
use envoy_types::pb::envoy::service::network_ext_proc::v3::network_external_processor_server::{
    NetworkExternalProcessor, NetworkExternalProcessorServer,
};
use envoy_types::pb::envoy::service::network_ext_proc::v3::{
    Data, ProcessingRequest, ProcessingResponse,
};
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
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
    /// Binds and runs `yaml`; the listener must be called `l4`.
    pub async fn start(yaml: &str) -> Proxy {
        let bootstrap =
            extproxy::config::parse(yaml).unwrap_or_else(|e| panic!("config: {e}\n{yaml}"));
        let options = extproxy::Options {
            concurrency: 1,
            drain_time: Duration::from_millis(100),
        };
        let server = extproxy::Server::bind(&bootstrap, options)
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = server.listener_addr("l4").expect("listener l4");
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

    /// A counter's value (0 if absent).
    pub fn counter(&self, name: &str) -> i64 {
        self.stats.get(name).unwrap_or(0)
    }

    /// `network_ext_proc.<prefix>.<name>`.
    pub fn ep(&self, prefix: &str, name: &str) -> i64 {
        self.counter(&format!("network_ext_proc.{prefix}.{name}"))
    }

    /// Every non-zero `network_ext_proc.<prefix>.*` counter, for comparisons and messages.
    pub fn ep_counters(&self, prefix: &str) -> std::collections::BTreeMap<String, i64> {
        EP_COUNTERS
            .iter()
            .map(|n| (n.to_string(), self.ep(prefix, n)))
            .filter(|(_, v)| *v != 0)
            .collect()
    }

    /// Waits until a counter reaches `at_least`.
    pub async fn wait_counter(&self, name: &str, at_least: i64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.counter(name) < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} = {}, wanted >= {at_least}",
                self.counter(name)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` downstream connections have been destroyed (fully closed by the proxy).
    /// (Matched by suffix: the listener's stat scope is named after its address.)
    pub async fn wait_closed(&self, n: i64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.stats.render_text(None, false);
            let destroyed = listener_destroyed(text.lines().filter_map(|l| l.split_once(": ")));
            if destroyed >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{destroyed} connections closed, wanted {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr)
            .await
            .expect("connect to proxy")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// Sum of `listener.<scope>.downstream_cx_destroy` over the non-admin listeners.
pub fn listener_destroyed<'a>(stats: impl Iterator<Item = (&'a str, &'a str)>) -> i64 {
    stats
        .filter(|(k, _)| {
            k.starts_with("listener.")
                && !k.starts_with("listener.admin.")
                && k.ends_with(".downstream_cx_destroy")
        })
        .filter_map(|(_, v)| v.trim().parse::<i64>().ok())
        .sum()
}

/// The 17 Envoy counters.
pub const EP_COUNTERS: &[&str] = &[
    "streams_started",
    "stream_msgs_sent",
    "stream_msgs_received",
    "read_data_sent",
    "write_data_sent",
    "read_data_injected",
    "write_data_injected",
    "empty_response_received",
    "spurious_msgs_received",
    "streams_closed",
    "streams_grpc_error",
    "streams_grpc_close",
    "connections_closed",
    "connections_reset",
    "failure_mode_allowed",
    "stream_open_failures",
    "message_timeouts",
];

// === configuration ===

/// Bootstrap: listener `l4` with `filters` (YAML list items, already indented by 6) before a
/// tcp_proxy to cluster `upstream`; cluster `processor` is HTTP/2.
pub fn bootstrap(
    filters: &[String],
    upstream: u16,
    processor: u16,
    extra_listener: &str,
    tcp_proxy_extra: &str,
) -> String {
    let mut chain = String::new();
    for f in filters {
        chain.push_str(f);
    }
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: l4
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
{extra_listener}    filter_chains:
    - filters:
{chain}      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: upstream
{tcp_proxy_extra}  clusters:
  - name: upstream
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
  - name: processor
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: processor
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {processor}}}}}}}}}]}}]
"#
    )
}

/// One `envoy.filters.network.ext_proc` list item; `extra` lines are indented to the config level.
pub fn ext_proc(stat_prefix: &str, extra: &str) -> String {
    let mut s = format!(
        "      - name: envoy.filters.network.ext_proc\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor\n          stat_prefix: {stat_prefix}\n          grpc_service: {{envoy_grpc: {{cluster_name: processor}}}}\n"
    );
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("          ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

// === upstream and client ===

/// An upstream the test accepts from by hand.
pub struct Upstream {
    listener: TcpListener,
}

impl Upstream {
    pub async fn bind() -> Upstream {
        Upstream {
            listener: TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind upstream"),
        }
    }
    pub fn port(&self) -> u16 {
        self.listener.local_addr().expect("addr").port()
    }
    pub async fn accept(&self) -> TcpStream {
        let (s, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("upstream accept timed out")
            .expect("accept");
        s
    }
}

/// A port nothing listens on: bound without `listen()` (so connects are refused) and kept bound
/// for the life of the test process, so a parallel test cannot be handed the same port.
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

/// How a read side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Fin,
    Rst,
}

/// Reads until EOF or error; returns the bytes and how it ended.
pub async fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, Ending) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let fut = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ending::Fin,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return Ending::Rst,
            }
        }
    };
    let end = tokio::time::timeout(WAIT, fut)
        .await
        .expect("read_to_end timed out");
    (out, end)
}

/// Reads exactly `n` bytes.
pub async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("read_exact timed out")
        .expect("read_exact");
    buf
}

pub async fn write(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).await.expect("write");
}

pub async fn fin(s: &mut TcpStream) {
    s.shutdown().await.expect("shutdown");
}

/// Closes with RST.
pub fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

// === SDK processors ===

/// Serves an SDK network processor on 127.0.0.1:0.
pub async fn sdk_processor<F, P>(factory: F) -> extproc::ServerHandle
where
    F: Fn() -> P + Send + Sync + 'static,
    P: extproc::NetworkProcessor,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind processor");
    extproc::Server::new()
        .network(factory)
        .spawn(listener)
        .expect("spawn processor")
}

/// Upper-cases both directions.
#[derive(Default)]
pub struct Upper;

impl extproc::NetworkProcessor for Upper {
    async fn on_read(
        &mut self,
        c: &extproc::Chunk,
        _: &mut extproc::NetworkContext,
    ) -> extproc::NetworkReply {
        extproc::NetworkReply::replace(Bytes::from(c.data().to_ascii_uppercase()))
    }
    async fn on_write(
        &mut self,
        c: &extproc::Chunk,
        _: &mut extproc::NetworkContext,
    ) -> extproc::NetworkReply {
        extproc::NetworkReply::replace(Bytes::from(c.data().to_ascii_uppercase()))
    }
}

/// Passes everything (UNMODIFIED with the original bytes).
#[derive(Default)]
pub struct Pass;

impl extproc::NetworkProcessor for Pass {}

// === raw scripted processor ===

/// What a raw processor's handler can do on its stream.
#[derive(Clone)]
pub struct Responder {
    tx: mpsc::UnboundedSender<Out>,
}

enum Out {
    Msg(ProcessingResponse),
    Fail(tonic::Status),
    Finish,
}

impl Responder {
    pub fn send(&self, r: ProcessingResponse) {
        let _ = self.tx.send(Out::Msg(r));
    }
    /// Ends the stream with a non-OK status.
    pub fn fail(&self, s: tonic::Status) {
        let _ = self.tx.send(Out::Fail(s));
    }
    /// Ends the stream with OK.
    pub fn finish(&self) {
        let _ = self.tx.send(Out::Finish);
    }
    /// Sends after `delay` without blocking the stream.
    pub fn send_later(&self, delay: Duration, r: ProcessingResponse) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.send(r);
        });
    }
}

pub fn read_resp(data: &[u8], eos: bool) -> ProcessingResponse {
    ProcessingResponse {
        read_data: Some(Data {
            data: data.to_vec(),
            end_of_stream: eos,
        }),
        ..Default::default()
    }
}

pub fn write_resp(data: &[u8], eos: bool) -> ProcessingResponse {
    ProcessingResponse {
        write_data: Some(Data {
            data: data.to_vec(),
            end_of_stream: eos,
        }),
        ..Default::default()
    }
}

/// Echoes each request's data and eos back as the response (the "identity" processor).
pub fn echo(req: &ProcessingRequest) -> ProcessingResponse {
    match (&req.read_data, &req.write_data) {
        (Some(d), _) => read_resp(&d.data, d.end_of_stream),
        (_, Some(d)) => write_resp(&d.data, d.end_of_stream),
        _ => ProcessingResponse::default(),
    }
}

type Handler = dyn Fn(&ProcessingRequest, &Responder) + Send + Sync;

/// What the raw processor saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Requests of every stream, in arrival order.
    pub requests: Vec<ProcessingRequest>,
    /// Streams opened.
    pub streams: usize,
    /// Request headers of the last stream.
    pub headers: Vec<(String, String)>,
}

/// A hand-written `NetworkExternalProcessor` driven by a closure; it can be killed (all its
/// connections dropped) to simulate a crash.
pub struct RawProcessor {
    pub addr: SocketAddr,
    seen: watch::Receiver<Seen>,
    conns: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Svc {
    handler: Arc<Handler>,
    seen: Arc<watch::Sender<Seen>>,
}

type RespStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<ProcessingResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl NetworkExternalProcessor for Svc {
    type ProcessStream = RespStream;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let headers: Vec<(String, String)> = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or("").to_string()))
                }
                _ => None,
            })
            .collect();
        self.seen.send_modify(|s| {
            s.streams += 1;
            s.headers = headers;
        });
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let responder = Responder { tx };
        let handler = self.handler.clone();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                seen.send_modify(|s| s.requests.push(req.clone()));
                handler(&req, &responder);
            }
        });
        let out = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await? {
                Out::Msg(m) => Some((Ok(m), rx)),
                Out::Fail(s) => Some((Err(s), rx)),
                Out::Finish => None,
            }
        });
        // A stream that ends after an error item: tonic turns the Err into trailers and stops.
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

impl RawProcessor {
    pub async fn start(
        handler: impl Fn(&ProcessingRequest, &Responder) + Send + Sync + 'static,
    ) -> RawProcessor {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw processor");
        let addr = listener.local_addr().expect("addr");
        let (seen_tx, seen) = watch::channel(Seen::default());
        let svc = Svc {
            handler: Arc::new(handler),
            seen: Arc::new(seen_tx),
        };
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let conns2 = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let server = NetworkExternalProcessorServer::new(svc.clone())
                    .max_decoding_message_size(usize::MAX);
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let mut server = server.clone();
                        async move { tower::Service::call(&mut server, req).await }
                    });
                conns2.lock().expect("lock").spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .http2_only()
                        .serve_connection(TokioIo::new(s), service)
                        .await;
                });
            }
        });
        RawProcessor {
            addr,
            seen,
            conns,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// Waits until `pred(seen)` holds.
    pub async fn wait(&self, mut pred: impl FnMut(&Seen) -> bool) -> Seen {
        let mut rx = self.seen.clone();
        let ok = tokio::time::timeout(WAIT, async {
            loop {
                if pred(&rx.borrow_and_update()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let now = self.seen();
        assert!(
            ok.is_ok() && pred(&now),
            "processor condition not met; seen {} requests: {:?}",
            now.requests.len(),
            now.requests
        );
        now
    }

    /// Waits for `n` requests.
    pub async fn wait_requests(&self, n: usize) -> Vec<ProcessingRequest> {
        self.wait(|s| s.requests.len() >= n).await.requests
    }

    /// Kills it: stops accepting and drops every connection at once.
    pub fn kill(&self) {
        self.accept.abort();
        self.conns.lock().expect("lock").abort_all();
    }
}

impl Drop for RawProcessor {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The data of a request, whichever direction.
pub fn req_data(r: &ProcessingRequest) -> (&'static str, Vec<u8>, bool) {
    match (&r.read_data, &r.write_data) {
        (Some(d), _) => ("read", d.data.clone(), d.end_of_stream),
        (_, Some(d)) => ("write", d.data.clone(), d.end_of_stream),
        _ => ("none", vec![], false),
    }
}
