//! [`NetworkExchange`]: one TCP connection's network ext_proc stream.

use tonic::Status;

use super::Harness;
use crate::network::{ConnectionStatus, DataProcessedStatus, NetworkProcessor};
use crate::pb::envoy::service::network_ext_proc::v3::{
    Data, ProcessingRequest, ProcessingResponse,
};
use crate::stream::StatsSnapshot;

/// One connection's stream to a network processor, fed like Envoy 1.40 feeds it.
///
/// ```
/// use extproc::testkit::NetworkExchange;
/// use extproc::{Chunk, NetworkContext, NetworkProcessor, NetworkReply};
///
/// #[derive(Default)]
/// struct Pass;
/// impl NetworkProcessor for Pass {}
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut conn = NetworkExchange::new(Pass);
/// let r = conn.read("hello", false).await;
/// assert_eq!(r.data(), b"hello");
/// assert!(conn.read("", true).await.end_of_stream()); // a bare FIN is answered with eos
/// # }
/// ```
#[derive(Debug)]
pub struct NetworkExchange {
    /// The driver's channels.
    harness: Harness<ProcessingRequest, ProcessingResponse>,
}

impl NetworkExchange {
    /// A stream to `processor`.
    pub fn new<P: NetworkProcessor>(processor: P) -> NetworkExchange {
        NetworkExchange {
            harness: Harness::new(move |inbound, out| {
                crate::network::drive(processor, inbound, out)
            }),
        }
    }

    /// Client bytes (`read_data`).
    pub async fn read(&mut self, data: impl AsRef<[u8]>, end_of_stream: bool) -> NetworkReplies {
        let d = Data {
            data: data.as_ref().to_vec(),
            end_of_stream,
        };
        self.send_raw(ProcessingRequest {
            read_data: Some(d),
            ..Default::default()
        })
        .await
    }

    /// Upstream bytes (`write_data`).
    pub async fn write(&mut self, data: impl AsRef<[u8]>, end_of_stream: bool) -> NetworkReplies {
        let d = Data {
            data: data.as_ref().to_vec(),
            end_of_stream,
        };
        self.send_raw(ProcessingRequest {
            write_data: Some(d),
            ..Default::default()
        })
        .await
    }

    /// The client half-closes: a bare FIN, `read_data{data: "", end_of_stream: true}`.
    pub async fn read_fin(&mut self) -> NetworkReplies {
        self.read("", true).await
    }

    /// The upstream half-closes: `write_data{data: "", end_of_stream: true}`.
    pub async fn write_fin(&mut self) -> NetworkReplies {
        self.write("", true).await
    }

    /// Sends any request as is — for malformed-input tests.
    pub async fn send_raw(&mut self, req: ProcessingRequest) -> NetworkReplies {
        let (responses, status) = self.harness.exchange(Ok(req)).await;
        NetworkReplies { responses, status }
    }

    /// Makes the inbound stream fail with `status`.
    pub async fn send_error(&mut self, status: Status) -> NetworkReplies {
        let (responses, status) = self.harness.exchange(Err(status)).await;
        NetworkReplies { responses, status }
    }

    /// Ends the inbound stream and returns how the stream ended.
    pub async fn finish(mut self) -> Result<(), Status> {
        self.harness.finish().await.1
    }

    /// The counters of this stream's driver.
    pub fn stats(&self) -> StatsSnapshot {
        self.harness.stats()
    }
}

/// The responses to one network message (normally exactly one).
#[derive(Debug, Clone)]
pub struct NetworkReplies {
    /// Responses, in order.
    pub responses: Vec<ProcessingResponse>,
    /// The status the stream ended with, if it ended while handling this message.
    pub status: Option<Status>,
}

impl NetworkReplies {
    /// The only response (panics otherwise).
    pub fn single(&self) -> &ProcessingResponse {
        assert_eq!(
            self.responses.len(),
            1,
            "expected exactly one response, got {:#?}",
            self
        );
        &self.responses[0]
    }

    fn data_msg(&self) -> Option<&Data> {
        let r = self.single();
        r.read_data.as_ref().or(r.write_data.as_ref())
    }

    /// Whether the only response is on the read path (`read_data`).
    pub fn is_read(&self) -> bool {
        self.single().read_data.is_some()
    }

    /// The bytes the proxy will forward.
    pub fn data(&self) -> &[u8] {
        self.data_msg().map_or(&[], |d| d.data.as_slice())
    }

    /// The `end_of_stream` the proxy will forward.
    pub fn end_of_stream(&self) -> bool {
        self.data_msg().is_some_and(|d| d.end_of_stream)
    }

    /// `connection_status`.
    pub fn connection_status(&self) -> ConnectionStatus {
        ConnectionStatus::try_from(self.single().connection_status)
            .unwrap_or(ConnectionStatus::Continue)
    }

    /// `data_processing_status`.
    pub fn data_status(&self) -> DataProcessedStatus {
        DataProcessedStatus::try_from(self.single().data_processing_status)
            .unwrap_or(DataProcessedStatus::Unknown)
    }

    /// `dynamic_metadata[namespace][key]` as a string.
    pub fn metadata_str(&self, namespace: &str, key: &str) -> Option<String> {
        let md = self.single().dynamic_metadata.as_ref()?;
        crate::metadata::get_str(md, namespace, key).map(str::to_string)
    }

    /// The gRPC code the stream ended with while handling this message, if it did.
    pub fn error_code(&self) -> Option<tonic::Code> {
        self.status.as_ref().map(Status::code)
    }
}
