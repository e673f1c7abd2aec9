//! The gRPC side stream of one connection: requests go out through an unbounded channel (the
//! state machine bounds what is in flight), responses and the stream's end come back as
//! [`Event`]s on the connection's event channel, tagged with the filter's index in the chain.

use super::state::StreamEnd;
use crate::config::core::GrpcService;
use crate::filter::common::side_stream;
use crate::pb::network_ext_proc::network_external_processor_client::NetworkExternalProcessorClient;
use crate::pb::network_ext_proc::{ProcessingRequest, ProcessingResponse};
use std::net::SocketAddr;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// What a side stream reports to its connection.
#[derive(Debug)]
pub enum Event {
    /// A response message.
    Message(ProcessingResponse),
    /// The stream ended (status OK or an error); nothing follows.
    End(StreamEnd),
}

/// `(filter index in the chain, event)`.
pub type Tagged = (usize, Event);

/// An open side stream. Dropping it ends the request stream and resets the HTTP/2 stream, as
/// Envoy's `close()` does (END_STREAM immediately followed by RST_STREAM).
#[derive(Debug)]
pub struct SideStream {
    tx: Option<mpsc::UnboundedSender<ProcessingRequest>>,
    task: tokio::task::JoinHandle<()>,
}

impl SideStream {
    /// Starts the `Process` call on `channel` (`None`: the cluster has no endpoint, which
    /// reports UNAVAILABLE at once, as Envoy's async client does).
    pub fn open(
        channel: Option<crate::cluster::grpc::SideChannel>,
        service: &GrpcService,
        local: SocketAddr,
        index: usize,
        events: mpsc::Sender<Tagged>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let request = side_stream::request(UnboundedReceiverStream::new(rx), service, Some(local));
        let max_message = service
            .envoy_grpc
            .as_ref()
            .and_then(|g| g.max_receive_message_length)
            .filter(|m| *m > 0)
            .map_or(usize::MAX, |m| m as usize);
        let task = tokio::spawn(async move {
            let end = match channel {
                None => StreamEnd::Error("UNAVAILABLE: no healthy upstream".into()),
                Some(channel) => {
                    let mut client = NetworkExternalProcessorClient::new(channel)
                        .max_decoding_message_size(max_message);
                    match client.process(request).await {
                        Err(status) => StreamEnd::Error(describe(&status)),
                        Ok(response) => {
                            let mut inbound = response.into_inner();
                            loop {
                                match inbound.message().await {
                                    Ok(Some(m)) => {
                                        if events.send((index, Event::Message(m))).await.is_err() {
                                            return;
                                        }
                                    }
                                    Ok(None) => break StreamEnd::Ok,
                                    Err(status) => break StreamEnd::Error(describe(&status)),
                                }
                            }
                        }
                    }
                }
            };
            let _ = events.send((index, Event::End(end))).await;
        });
        SideStream { tx: Some(tx), task }
    }

    /// Queues a request (never blocks; the caller bounds the bytes in flight).
    pub fn send(&self, req: ProcessingRequest) {
        if let Some(tx) = &self.tx {
            // An error means the call already ended; its End event is on its way.
            let _ = tx.send(req);
        }
    }
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

impl Drop for SideStream {
    fn drop(&mut self) {
        self.tx.take();
        self.task.abort();
    }
}
