//! Drive processors in-process, with no proxy and no sockets.
//!
//! The test kit feeds the message sequences Envoy 1.40 sends into the very driver the server
//! runs (through a channel instead of a gRPC stream) and hands back the responses, so tests read
//! like the exchange:
//!
//! ```
//! use extproc::testkit::HttpExchange;
//! use extproc::demo::AddHeaders;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut ex = HttpExchange::new(AddHeaders::default());
//! let r = ex.request_headers(&[(":method", "GET"), (":path", "/")]).eos(true).send().await;
//! assert_eq!(r.header("x-ext-proc-header").as_deref(), Some("hello-to-asm"));
//! # }
//! ```
//!
//! - [`HttpExchange`]: one HTTP request's stream, with helpers for whole sequences
//!   ([`HttpExchange::get`], [`HttpExchange::streamed_request_body`], ...).
//! - [`NetworkExchange`]: one TCP connection's stream.
//! - [`Replies`] / [`NetworkReplies`]: what came back for one message, with accessors for
//!   one-line assertions.

mod http;
mod network;

pub use self::http::{HeadersSend, HttpExchange, Replies};
pub use self::network::{NetworkExchange, NetworkReplies};

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::Status;

use crate::stream::{Stats, StatsSnapshot};

/// The channels around one spawned driver, generic over the message types.
#[derive(Debug)]
pub(crate) struct Harness<Req, Resp> {
    /// Into the driver; `None` once closed.
    tx: Option<mpsc::Sender<Result<Req, Status>>>,
    /// Out of the driver.
    rx: mpsc::Receiver<Result<Resp, Status>>,
    /// One `()` per handled inbound message; closed when the driver ends.
    ack: mpsc::UnboundedReceiver<()>,
    /// The driver's counters.
    stats: Arc<Stats>,
    /// How the stream ended, once it has.
    ended: Option<Result<(), Status>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Harness<Req, Resp> {
    pub(crate) fn new<F, Fut>(drive: F) -> Self
    where
        F: FnOnce(
            tokio_stream::wrappers::ReceiverStream<Result<Req, Status>>,
            crate::stream::Outbound<Resp>,
        ) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, in_rx) = mpsc::channel(crate::stream::OUTBOUND_QUEUE);
        let (ack_tx, ack) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let inbound = tokio_stream::wrappers::ReceiverStream::new(in_rx);
        let rx = crate::stream::spawn_driver(stats.clone(), Some(ack_tx), move |out| {
            drive(inbound, out)
        });
        Harness {
            tx: Some(tx),
            rx,
            ack,
            stats,
            ended: None,
        }
    }

    /// Sends one inbound item and collects everything the driver emits while handling it.
    pub(crate) async fn exchange(
        &mut self,
        item: Result<Req, Status>,
    ) -> (Vec<Resp>, Option<Status>) {
        let sent = match &self.tx {
            Some(tx) => tx.send(item).await.is_ok(),
            None => false,
        };
        if !sent {
            return (Vec::new(), self.ended_status());
        }
        let mut out = Vec::new();
        let mut status = None;
        loop {
            tokio::select! {
                biased;
                r = self.rx.recv() => match r {
                    Some(Ok(m)) => out.push(m),
                    Some(Err(s)) => status = Some(s),
                    None => {
                        self.mark_ended(status.clone());
                        return (out, status);
                    }
                },
                a = self.ack.recv() => {
                    if a.is_some() {
                        while let Ok(r) = self.rx.try_recv() {
                            match r {
                                Ok(m) => out.push(m),
                                Err(s) => status = Some(s),
                            }
                        }
                        return (out, status);
                    }
                    // Driver ended: drain until the channel closes.
                    while let Some(r) = self.rx.recv().await {
                        match r {
                            Ok(m) => out.push(m),
                            Err(s) => status = Some(s),
                        }
                    }
                    self.mark_ended(status.clone());
                    return (out, status);
                }
            }
        }
    }

    fn mark_ended(&mut self, status: Option<Status>) {
        if self.ended.is_none() {
            self.ended = Some(match status {
                Some(s) => Err(s),
                None => Ok(()),
            });
        }
        self.tx = None;
    }

    fn ended_status(&self) -> Option<Status> {
        match &self.ended {
            Some(Err(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// Closes the inbound side (Envoy half-closes) and waits for the driver to end.
    pub(crate) async fn finish(&mut self) -> (Vec<Resp>, Result<(), Status>) {
        self.tx = None;
        let mut out = Vec::new();
        let mut status = self.ended_status();
        while let Some(r) = self.rx.recv().await {
            match r {
                Ok(m) => out.push(m),
                Err(s) => status = Some(s),
            }
        }
        self.mark_ended(status.clone());
        (out, self.ended.clone().unwrap_or(Ok(())))
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}
