//! The tonic `NetworkExternalProcessor` service: one processor from the factory per connection.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::NetworkProcessor;
use crate::pb::envoy::service::network_ext_proc::v3::network_external_processor_server::NetworkExternalProcessor;
use crate::pb::envoy::service::network_ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use crate::stream::{spawn_driver, Stats};

/// Serves `envoy.service.network_ext_proc.v3.NetworkExternalProcessor`.
pub(crate) struct NetworkService<F> {
    /// Makes one processor per connection.
    factory: Arc<F>,
    /// Server counters.
    stats: Arc<Stats>,
}

impl<F> NetworkService<F> {
    pub(crate) fn new(factory: F, stats: Arc<Stats>) -> Self {
        NetworkService {
            factory: Arc::new(factory),
            stats,
        }
    }
}

#[tonic::async_trait]
impl<F, P> NetworkExternalProcessor for NetworkService<F>
where
    F: Fn() -> P + Send + Sync + 'static,
    P: NetworkProcessor,
{
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let processor = (self.factory)();
        let inbound = request.into_inner();
        let rx = spawn_driver(self.stats.clone(), None, move |out| {
            super::drive(processor, inbound, out)
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
