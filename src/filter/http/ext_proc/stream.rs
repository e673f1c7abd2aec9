//! The async driver of one HTTP stream's external processing: a task that owns the side
//! stream, the state machine ([`Core`]), both directions' source bodies and output channels,
//! and the message timers. `decode` / `encode` hand it the message heads and wait for the
//! (possibly mutated) head, or a local reply.

use super::mutation::Head;
use super::state::{Action, Core, Dir};
use crate::filter::http::{Abort, Body, BoxError, LocalBody, LocalReply, StreamAbort};
use crate::pb::ext_proc::external_processor_client::ExternalProcessorClient;
use crate::pb::ext_proc::{ProcessingRequest, ProcessingResponse};
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf::Struct;
use http::HeaderMap;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// Side-stream messages in flight toward the processor before the driver waits (bounds memory,
/// also in observability mode where Envoy has no bound: quirk H6).
const SIDE_STREAM_QUEUE: usize = 16;
/// Output frames buffered toward the next hop.
const OUTPUT_QUEUE: usize = 8;
/// How long a side stream closed before its call was open may take to deliver what was queued
/// on it before it is reset (Envoy's `remote_close_timeout_milliseconds` default).
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// A body fed by the driver.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
}

/// What `decode` / `encode` get back.
#[derive(Debug)]
pub struct Outcome<P> {
    /// The head and body to pass on, or a local reply.
    pub result: Result<(P, Body), LocalReply>,
    /// Dynamic metadata to write into the stream (accumulated since the last outcome).
    pub metadata: Vec<Struct>,
    /// The route cache must be cleared.
    pub clear_route_cache: bool,
}

/// A head handed to the driver.
#[derive(Debug)]
pub struct Message {
    /// Request or response head.
    pub head: Head,
    /// The body (left untouched if nothing processes it).
    pub body: Body,
    /// The head ended the message.
    pub eos: bool,
    /// `metadata_context` for the messages from now on.
    pub metadata_context: core::Metadata,
    /// Attributes for this direction's first message.
    pub attributes: Option<Struct>,
    /// Where to answer.
    pub reply: oneshot::Sender<Outcome<Head>>,
}

/// How the driver reaches the processor.
#[derive(Debug, Clone)]
pub struct SideStreamTarget {
    /// A channel of the cluster's pool, or `None` if the cluster does not exist.
    pub channel: Option<crate::cluster::grpc::SideChannel>,
    /// The side stream's request headers (the service's, with merged initial metadata).
    pub headers: std::sync::Arc<crate::filter::common::side_stream::Headers>,
    /// Local address of the downstream connection (`x-forwarded-for`).
    pub local: Option<SocketAddr>,
    /// Largest response message accepted (`max_receive_message_length`; unlimited when unset,
    /// as in Envoy, rather than tonic's 4 MiB default).
    pub max_receive: usize,
}

/// Handle to a running driver.
#[derive(Debug)]
pub struct Driver {
    /// Boxed: the channel allocates its slots in blocks of 32, and a `Message` is large.
    tx: mpsc::UnboundedSender<Box<(Dir, Message)>>,
}

impl Driver {
    /// Starts the driver task.
    pub fn spawn(
        core: Core,
        target: SideStreamTarget,
        abort: StreamAbort,
        deferred_close: Option<Duration>,
    ) -> Driver {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task::new(core, target, abort, rx, deferred_close);
        // Boxed: the driver's future is large, and tokio moves a spawned future several times
        // (into the task cell, and through each stage change); a box moves as one pointer.
        tokio::spawn(Box::pin(task.run()));
        Driver { tx }
    }

    /// Hands a head to the driver and waits for its outcome. If the driver is gone before it
    /// took the message, the message comes back; `Err(None)` if it was lost.
    pub async fn process(
        &self,
        dir: Dir,
        msg: Message,
        reply: oneshot::Receiver<Outcome<Head>>,
    ) -> Result<Outcome<Head>, Option<Message>> {
        if let Err(e) = self.tx.send(Box::new((dir, msg))) {
            return Err(Some(e.0 .1));
        }
        reply.await.map_err(|_| None)
    }
}

type OpenFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    tonic::Response<tonic::Streaming<ProcessingResponse>>,
                    tonic::Status,
                >,
            > + Send,
    >,
>;

struct Side {
    tx: Option<mpsc::Sender<ProcessingRequest>>,
    open: Option<OpenFuture>,
    rx: Option<tonic::Streaming<ProcessingResponse>>,
}

#[derive(Default)]
struct DirIo {
    src: Option<Body>,
    out: Option<mpsc::Sender<Result<Frame<Bytes>, BoxError>>>,
    reply: Option<oneshot::Sender<Outcome<Head>>>,
    /// The message timer, re-armed in place: a new `Sleep` on every loop turn would register
    /// and cancel a timer-wheel entry each time.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer is running.
    armed: bool,
    active: bool,
}

struct Task {
    core: Core,
    target: SideStreamTarget,
    abort: StreamAbort,
    cmds: mpsc::UnboundedReceiver<Box<(Dir, Message)>>,
    cmds_open: bool,
    side: Option<Side>,
    io: [DirIo; 2],
    metadata: Vec<Struct>,
    clear_route_cache: bool,
    local_replied: bool,
    deferred_close: Option<Duration>,
}

fn idx(d: Dir) -> usize {
    match d {
        Dir::Request => 0,
        Dir::Response => 1,
    }
}

async fn next_frame(src: &mut Option<Body>) -> Option<Result<Frame<Bytes>, BoxError>> {
    match src {
        Some(b) => b.frame().await,
        None => std::future::pending().await,
    }
}

async fn wait_timer(t: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match t {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

enum SideEvent {
    Opened(Result<tonic::Response<tonic::Streaming<ProcessingResponse>>, tonic::Status>),
    Message(Result<Option<ProcessingResponse>, tonic::Status>),
}

/// The next event of the side stream: the call's response headers, then messages.
async fn side_event(side: &mut Option<Side>) -> SideEvent {
    match side {
        Some(Side { open: Some(f), .. }) => SideEvent::Opened(f.await),
        Some(Side { rx: Some(rx), .. }) => SideEvent::Message(rx.message().await),
        _ => std::future::pending().await,
    }
}

/// Ends a side stream. Once its call is open, dropping it half-closes and resets the stream, as
/// Envoy does.
/// Before that (a close in the same turn as the first send: `message_timeout: 0s`), dropping it
/// would drop the queued messages with the call, while Envoy has written them before its reset:
/// the call then finishes in the background, half-closed after them, and is reset when the
/// processor ends it or after [`CLOSE_FLUSH`].
fn close_side(side: Side) {
    let Side { tx, open, rx } = side;
    let Some(open) = open else {
        return;
    };
    drop((tx, rx));
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_FLUSH, async move {
            if let Ok(resp) = open.await {
                let mut rx = resp.into_inner();
                while let Ok(Some(_)) = rx.message().await {}
            }
        })
        .await;
    });
}

impl Task {
    fn new(
        core: Core,
        target: SideStreamTarget,
        abort: StreamAbort,
        cmds: mpsc::UnboundedReceiver<Box<(Dir, Message)>>,
        deferred_close: Option<Duration>,
    ) -> Self {
        Task {
            core,
            target,
            abort,
            cmds,
            cmds_open: true,
            side: None,
            io: Default::default(),
            metadata: Vec::new(),
            clear_route_cache: false,
            local_replied: false,
            deferred_close,
        }
    }

    fn finished(&self) -> bool {
        !self.cmds_open && !self.io.iter().any(|io| io.active)
    }

    async fn run(mut self) {
        while !self.finished() {
            let paused = [
                self.core.data_paused(Dir::Request),
                self.core.data_paused(Dir::Response),
            ];
            let [req, resp] = &mut self.io;
            let armed = [req.armed, resp.armed];
            tokio::select! {
                biased;
                cmd = self.cmds.recv(), if self.cmds_open => match cmd {
                    Some(cmd) => {
                        let (d, msg) = *cmd;
                        self.on_message(d, msg)
                    }
                    None => self.cmds_open = false,
                },
                // Body data first: a message that is already complete is taken whole before a
                // reply is acted on, as Envoy's codec delivers it (bounded by `data_paused`).
                f = next_frame(&mut req.src), if !paused[0] => self.on_frame(Dir::Request, f),
                f = next_frame(&mut resp.src), if !paused[1] => self.on_frame(Dir::Response, f),
                ev = side_event(&mut self.side) => self.on_side_event(ev),
                () = wait_timer(&mut req.timer), if armed[0] => {
                    self.io[0].armed = false;
                    self.core.on_timeout(Dir::Request);
                }
                () = wait_timer(&mut resp.timer), if armed[1] => {
                    self.io[1].armed = false;
                    self.core.on_timeout(Dir::Response);
                }
            }
            self.execute().await;
        }
        self.shutdown().await;
    }

    fn on_side_event(&mut self, ev: SideEvent) {
        match ev {
            SideEvent::Opened(Ok(resp)) => {
                if let Some(s) = self.side.as_mut() {
                    s.open = None;
                    s.rx = Some(resp.into_inner());
                }
            }
            SideEvent::Opened(Err(status)) | SideEvent::Message(Err(status)) => {
                self.side_failed(status)
            }
            SideEvent::Message(Ok(Some(m))) => self.core.on_response(m),
            SideEvent::Message(Ok(None)) => {
                if let Some(s) = self.side.as_mut() {
                    s.rx = None;
                }
                self.core.on_stream_ok();
            }
        }
    }

    fn side_failed(&mut self, status: tonic::Status) {
        self.side = None;
        self.core
            .on_stream_error(status.code() as i32, status.message());
    }

    fn on_message(&mut self, d: Dir, msg: Message) {
        let Message {
            head,
            body,
            eos,
            metadata_context,
            attributes,
            reply,
        } = msg;
        self.core.metadata_context = metadata_context;
        if let Some(a) = attributes {
            self.core.set_attributes(d, a);
        }
        let io = &mut self.io[idx(d)];
        io.reply = Some(reply);
        io.active = true;
        io.src = if eos { None } else { Some(body) };
        self.core.on_headers(d, head, eos);
    }

    fn on_frame(&mut self, d: Dir, f: Option<Result<Frame<Bytes>, BoxError>>) {
        let io = &mut self.io[idx(d)];
        match f {
            None => {
                io.src = None;
                self.core.on_data(d, Bytes::new(), true);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let eos = io.src.as_ref().is_none_or(|b| b.is_end_stream());
                    if eos {
                        io.src = None;
                    }
                    self.core.on_data(d, data, eos);
                }
                Err(frame) => {
                    io.src = None;
                    match frame.into_trailers() {
                        Ok(t) => self.core.on_trailers(d, t),
                        Err(_) => self.core.on_data(d, Bytes::new(), true),
                    }
                }
            },
            Some(Err(e)) => {
                // The source failed (client or upstream reset): propagate and stop this direction.
                io.src = None;
                if let Some(out) = io.out.take() {
                    let _ = out.try_send(Err(e));
                }
                io.active = false;
                io.reply = None;
                if d == Dir::Request && !self.io[1].active {
                    // Nothing more will come for this stream.
                    self.cmds_open = false;
                }
            }
        }
    }

    async fn execute(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Send(msg) => self.send(*msg).await,
                Action::Timer(d, t) => self.set_timer(d, t),
                Action::Headers(d, head, end) => self.forward_head(d, head, end),
                Action::Data(d, b) => self.output(d, Ok(Frame::data(b))).await,
                Action::Trailers(d, t) => self.output(d, Ok(Frame::trailers(t))).await,
                Action::End(d) => {
                    let io = &mut self.io[idx(d)];
                    io.out = None;
                    if io.reply.is_none() {
                        io.active = false;
                    }
                }
                Action::LocalReply(r) => self.local_reply(r),
                Action::LocalStream(r) => self.local_stream(r),
                Action::ClearRouteCache => self.clear_route_cache = true,
                Action::Metadata(m) => self.metadata.push(m),
                Action::Close => {
                    // Observability mode defers the close to the end of the HTTP stream
                    // (`deferred_close_timeout`, see `shutdown`).
                    if self.deferred_close.is_none() {
                        if let Some(side) = self.side.take() {
                            close_side(side);
                        }
                    }
                }
            }
        }
    }

    fn set_timer(&mut self, d: Dir, t: Option<Duration>) {
        let io = &mut self.io[idx(d)];
        io.armed = t.is_some();
        if let Some(t) = t {
            let at = Instant::now() + t;
            match io.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(at),
                None => io.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }

    async fn send(&mut self, msg: ProcessingRequest) {
        if self.side.is_none() {
            let Some(channel) = self.target.channel.clone() else {
                return;
            };
            let (tx, rx) = mpsc::channel(SIDE_STREAM_QUEUE);
            let req = self
                .target
                .headers
                .request(ReceiverStream::new(rx), self.target.local);
            let mut client = ExternalProcessorClient::new(channel)
                .max_decoding_message_size(self.target.max_receive);
            let open: OpenFuture = Box::pin(async move { client.process(req).await });
            self.side = Some(Side {
                tx: Some(tx),
                open: Some(open),
                rx: None,
            });
        }
        let Some(tx) = self.side.as_ref().and_then(|s| s.tx.clone()) else {
            return;
        };
        if tx.capacity() == 0 {
            // Back-pressure: wait for room, but keep the side stream's call progressing.
            let mut send = Box::pin(tx.send(msg));
            loop {
                tokio::select! {
                    r = &mut send => { let _ = r; return; }
                    ev = side_event(&mut self.side) => self.on_side_event(ev),
                }
            }
        }
        let _ = tx.try_send(msg);
    }

    fn forward_head(&mut self, d: Dir, head: Head, end: bool) {
        let io = &mut self.io[idx(d)];
        let body: Body = if end {
            crate::filter::http::empty_body()
        } else if io.src.is_some() && self.core.body_bypass(d) {
            // Nothing processes the body: hand it on untouched, no hop through this task.
            io.src
                .take()
                .unwrap_or_else(crate::filter::http::empty_body)
        } else {
            let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
            io.out = Some(tx);
            ChannelBody { rx }.boxed_unsync()
        };
        let outcome = Outcome {
            result: Ok((head, body)),
            metadata: std::mem::take(&mut self.metadata),
            clear_route_cache: std::mem::take(&mut self.clear_route_cache),
        };
        if let Some(r) = io.reply.take() {
            let _ = r.send(outcome);
        }
        if io.out.is_none() {
            io.active = false;
        }
    }

    async fn output(&mut self, d: Dir, frame: Result<Frame<Bytes>, BoxError>) {
        let io = &mut self.io[idx(d)];
        if let Some(out) = &io.out {
            if out.send(frame).await.is_err() {
                // The next hop is gone: stop reading this direction.
                io.out = None;
                io.src = None;
                io.active = false;
            }
        }
    }

    fn local_reply(&mut self, r: LocalReply) {
        self.local_replied = true;
        let outcome = |r| Outcome {
            result: Err(r),
            metadata: Vec::new(),
            clear_route_cache: false,
        };
        let [req, resp] = &mut self.io;
        if let Some(tx) = req.reply.take() {
            let _ = tx.send(Outcome {
                metadata: std::mem::take(&mut self.metadata),
                ..outcome(r)
            });
        } else if let Some(tx) = resp.reply.take() {
            let _ = tx.send(Outcome {
                metadata: std::mem::take(&mut self.metadata),
                ..outcome(r)
            });
        } else {
            self.abort.abort(Abort::LocalReply(r));
        }
        for io in &mut self.io {
            io.src = None;
            // End what was forwarded with an error, never a clean end: the next hop must not
            // take a cut body for a complete one.
            if let Some(out) = io.out.take() {
                let _ = out.try_send(Err("ext_proc: the stream ended with a local reply".into()));
            }
            io.active = false;
        }
    }

    /// Starts a streamed local reply: its body is the response direction's output channel, fed
    /// by the actions that follow. The request direction stops (its body is not read).
    fn local_stream(&mut self, mut r: LocalReply) {
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        r.stream = Some(LocalBody::new(ChannelBody { rx }.boxed_unsync()));
        self.local_reply(r);
        let resp = &mut self.io[idx(Dir::Response)];
        resp.out = Some(tx);
        resp.active = true;
    }

    async fn shutdown(mut self) {
        // Observability mode: the side stream may outlive the HTTP stream (deferred close).
        if let (Some(t), Some(side)) = (self.deferred_close, self.side.as_mut()) {
            side.tx = None;
            let deadline = Instant::now() + t;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    ev = side_event(&mut self.side) => match ev {
                        SideEvent::Opened(Ok(resp)) => if let Some(s) = self.side.as_mut() {
                            s.open = None;
                            s.rx = Some(resp.into_inner());
                        },
                        SideEvent::Message(Ok(Some(_))) => {}
                        _ => break,
                    },
                }
            }
        }
        self.core.shutdown();
        let _ = HeaderMap::new();
    }
}
