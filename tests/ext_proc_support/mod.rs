//! A scriptable ext_proc processor for the HTTP ext_proc tests: one gRPC server per test
//! binary serves many scenarios; each side stream picks its script by the `x-scenario` gRPC
//! metadata (set in the YAML's `initial_metadata`) or, failing that, by the `x-scenario`
//! request header of its first message. Every stream's messages are recorded.
#![allow(dead_code)]

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use pb::processing_request::Request as Req;
use pb::processing_response::Response as Resp;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// What the processor does after a message.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// Send this response.
    Send(pb::ProcessingResponse),
    /// Wait.
    Sleep(Duration),
    /// End the stream with this error status.
    Fail(Status),
    /// End the stream with grpc-status OK.
    CloseOk,
}

/// Per-stream context given to scripts.
#[derive(Debug, Default)]
pub struct Ctx {
    /// Index of the current message on the stream (0-based).
    pub index: usize,
    /// Free-form per-stream state.
    pub counter: usize,
    /// Bodies seen so far (FULL_DUPLEX scripts buffer).
    pub buffered: Vec<u8>,
}

/// A processor behaviour.
pub type Script = Arc<dyn Fn(&mut Ctx, &pb::ProcessingRequest) -> Vec<Step> + Send + Sync>;

/// One recorded side stream.
#[derive(Debug, Clone, Default)]
pub struct StreamLog {
    /// The scenario the stream ran.
    pub scenario: String,
    /// gRPC request metadata (lower-case names).
    pub metadata: Vec<(String, String)>,
    /// Messages received, in order.
    pub messages: Vec<pb::ProcessingRequest>,
    /// True once the stream ended (by Envoy / extproxy closing or resetting it).
    pub ended: bool,
}

/// The processor server.
#[derive(Clone)]
pub struct Processor {
    /// Bound address.
    pub addr: SocketAddr,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    /// Every stream seen.
    pub log: Arc<Mutex<Vec<StreamLog>>>,
    /// Connections accepted (TCP or Unix).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Clone)]
struct Svc {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    log: Arc<Mutex<Vec<StreamLog>>>,
}

fn header_of(req: &pb::ProcessingRequest, name: &str) -> Option<String> {
    let h = match &req.request {
        Some(Req::RequestHeaders(h)) | Some(Req::ResponseHeaders(h)) => h,
        _ => return None,
    };
    h.headers
        .as_ref()?
        .headers
        .iter()
        .find(|x| x.key == name)
        .map(|x| {
            String::from_utf8_lossy(if x.raw_value.is_empty() {
                x.value.as_bytes()
            } else {
                &x.raw_value
            })
            .into_owned()
        })
}

#[tonic::async_trait]
impl ExternalProcessor for Svc {
    type ProcessStream = ReceiverStream<Result<pb::ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<pb::ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let metadata: Vec<(String, String)> = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut scenario = metadata
            .iter()
            .find(|(k, _)| k == "x-scenario")
            .map(|(_, v)| v.clone());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let scripts = self.scripts.clone();
        let log = self.log.clone();
        let idx = {
            let mut l = log.lock().unwrap();
            l.push(StreamLog {
                metadata,
                ..Default::default()
            });
            l.len() - 1
        };
        tokio::spawn(async move {
            let mut ctx = Ctx::default();
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    _ => break,
                };
                if scenario.is_none() {
                    scenario = header_of(&msg, "x-scenario");
                }
                let name = scenario.clone().unwrap_or_else(|| "passthrough".into());
                {
                    let mut l = log.lock().unwrap();
                    l[idx].scenario = name.clone();
                    l[idx].messages.push(msg.clone());
                }
                let script = scripts.lock().unwrap().get(&name).cloned();
                let steps = match script {
                    Some(s) => s(&mut ctx, &msg),
                    None => vec![Step::Send(continue_for(&msg))],
                };
                ctx.index += 1;
                for step in steps {
                    match step {
                        Step::Send(r) => {
                            if tx.send(Ok(r)).await.is_err() {
                                break;
                            }
                        }
                        Step::Sleep(d) => tokio::time::sleep(d).await,
                        Step::Fail(s) => {
                            let _ = tx.send(Err(s)).await;
                            log.lock().unwrap()[idx].ended = true;
                            return;
                        }
                        Step::CloseOk => {
                            log.lock().unwrap()[idx].ended = true;
                            return;
                        }
                    }
                }
            }
            log.lock().unwrap()[idx].ended = true;
            // Keep the response stream open until the client goes away.
            tx.closed().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Processor {
    /// Starts a processor on 127.0.0.1:0.
    pub async fn start() -> Processor {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self::serve(
            addr,
            tokio_stream::wrappers::TcpListenerStream::new(listener),
        )
    }

    /// Starts a processor on a Unix socket.
    pub async fn start_unix(path: &std::path::Path) -> Processor {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        Self::serve(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            tokio_stream::wrappers::UnixListenerStream::new(listener),
        )
    }

    fn serve<S, IO>(addr: SocketAddr, incoming: S) -> Processor
    where
        S: tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        use tokio_stream::StreamExt;
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let incoming = incoming.map(move |c| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            c
        });
        let scripts = Arc::new(Mutex::new(HashMap::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let svc = Svc {
            scripts: scripts.clone(),
            log: log.clone(),
        };
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(ExternalProcessorServer::new(svc))
                .serve_with_incoming(incoming)
                .await;
        });
        Processor {
            addr,
            scripts,
            log,
            connections,
        }
    }

    /// Registers a scenario.
    pub fn script(
        &self,
        name: &str,
        f: impl Fn(&mut Ctx, &pb::ProcessingRequest) -> Vec<Step> + Send + Sync + 'static,
    ) {
        self.scripts
            .lock()
            .unwrap()
            .insert(name.to_string(), Arc::new(f));
    }

    /// The streams that ran `scenario`, in order.
    pub fn streams(&self, scenario: &str) -> Vec<StreamLog> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.scenario == scenario)
            .cloned()
            .collect()
    }

    /// Number of streams so far.
    pub fn stream_count(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

// === building responses ===

/// The kind of a request message: `rh`, `sh`, `rb`, `sb`, `rt`, `st`.
pub fn kind(req: &pb::ProcessingRequest) -> &'static str {
    match &req.request {
        Some(Req::RequestHeaders(_)) => "rh",
        Some(Req::ResponseHeaders(_)) => "sh",
        Some(Req::RequestBody(_)) => "rb",
        Some(Req::ResponseBody(_)) => "sb",
        Some(Req::RequestTrailers(_)) => "rt",
        Some(Req::ResponseTrailers(_)) => "st",
        None => "?",
    }
}

/// A compact description of a message: `rh!` (end of stream), `rb:abc!`, `st`, …
pub fn describe(req: &pb::ProcessingRequest) -> String {
    match &req.request {
        Some(Req::RequestHeaders(h)) | Some(Req::ResponseHeaders(h)) => {
            format!("{}{}", kind(req), if h.end_of_stream { "!" } else { "" })
        }
        Some(Req::RequestBody(b)) | Some(Req::ResponseBody(b)) => {
            format!(
                "{}:{}{}",
                kind(req),
                String::from_utf8_lossy(&b.body),
                if b.end_of_stream { "!" } else { "" }
            )
        }
        _ => kind(req).to_string(),
    }
}

/// The "continue, change nothing" response for a request message.
pub fn continue_for(req: &pb::ProcessingRequest) -> pb::ProcessingResponse {
    with_common(req, pb::CommonResponse::default(), None)
}

/// A response of the right kind carrying `common` (headers / body) or a trailer mutation.
pub fn with_common(
    req: &pb::ProcessingRequest,
    common: pb::CommonResponse,
    trailers: Option<pb::HeaderMutation>,
) -> pb::ProcessingResponse {
    let h = || pb::HeadersResponse {
        response: Some(common.clone()),
    };
    let b = || pb::BodyResponse {
        response: Some(common.clone()),
    };
    let t = || pb::TrailersResponse {
        header_mutation: trailers.clone(),
    };
    let r = match &req.request {
        Some(Req::RequestHeaders(_)) => Resp::RequestHeaders(h()),
        Some(Req::ResponseHeaders(_)) => Resp::ResponseHeaders(h()),
        Some(Req::RequestBody(_)) => Resp::RequestBody(b()),
        Some(Req::ResponseBody(_)) => Resp::ResponseBody(b()),
        Some(Req::RequestTrailers(_)) => Resp::RequestTrailers(t()),
        Some(Req::ResponseTrailers(_)) => Resp::ResponseTrailers(t()),
        None => return pb::ProcessingResponse::default(),
    };
    pb::ProcessingResponse {
        response: Some(r),
        ..Default::default()
    }
}

/// A `HeaderValueOption` with a `raw_value`.
#[allow(deprecated)]
pub fn set(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        ..Default::default()
    }
}

/// A header mutation setting and removing headers.
pub fn mutation(sets: &[(&str, &str)], removes: &[&str]) -> pb::HeaderMutation {
    pb::HeaderMutation {
        set_headers: sets.iter().map(|(k, v)| set(k, v)).collect(),
        remove_headers: removes.iter().map(|s| s.to_string()).collect(),
    }
}

/// A body replacement.
pub fn body(b: &str) -> pb::BodyMutation {
    pb::BodyMutation {
        mutation: Some(pb::body_mutation::Mutation::Body(b.as_bytes().to_vec())),
    }
}

/// A FULL_DUPLEX_STREAMED chunk.
pub fn streamed(req: &pb::ProcessingRequest, b: &[u8], eos: bool) -> pb::ProcessingResponse {
    let common = pb::CommonResponse {
        body_mutation: Some(pb::BodyMutation {
            mutation: Some(pb::body_mutation::Mutation::StreamedResponse(
                pb::StreamedBodyResponse {
                    body: b.to_vec(),
                    end_of_stream: eos,
                    ..Default::default()
                },
            )),
        }),
        ..Default::default()
    };
    with_common(req, common, None)
}

/// An immediate response.
pub fn immediate(
    status: u32,
    body: &str,
    headers: &[(&str, &str)],
    details: &str,
) -> pb::ProcessingResponse {
    pb::ProcessingResponse {
        response: Some(Resp::ImmediateResponse(pb::ImmediateResponse {
            status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus {
                code: status as i32,
            }),
            headers: (!headers.is_empty()).then(|| mutation(headers, &[])),
            body: body.as_bytes().to_vec(),
            details: details.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The body bytes of a body message.
pub fn body_of(req: &pb::ProcessingRequest) -> Option<(&[u8], bool)> {
    match &req.request {
        Some(Req::RequestBody(b)) | Some(Req::ResponseBody(b)) => Some((&b.body, b.end_of_stream)),
        _ => None,
    }
}

/// The header names of a headers message, in order.
pub fn header_names(req: &pb::ProcessingRequest) -> Vec<String> {
    match &req.request {
        Some(Req::RequestHeaders(h)) | Some(Req::ResponseHeaders(h)) => h
            .headers
            .as_ref()
            .map(|m| m.headers.iter().map(|x| x.key.clone()).collect())
            .unwrap_or_default(),
        Some(Req::RequestTrailers(t)) | Some(Req::ResponseTrailers(t)) => t
            .trailers
            .as_ref()
            .map(|m| m.headers.iter().map(|x| x.key.clone()).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A header value of a headers message.
pub fn header(req: &pb::ProcessingRequest, name: &str) -> Option<String> {
    header_of(req, name)
}

/// Uppercases ASCII.
pub fn upper(b: &[u8]) -> Vec<u8> {
    b.to_ascii_uppercase()
}

/// A TCP relay in front of a processor; [`Relay::kill`] drops every relayed connection at once,
/// as a processor crash (or a network failure) would.
pub struct Relay {
    /// Where proxies connect.
    pub addr: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    /// Relays 127.0.0.1:0 to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Relay { addr, tasks }
    }

    /// Drops every connection (and stops accepting).
    pub fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}
