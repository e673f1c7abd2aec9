//! The tonic `ExternalProcessor` service: one processor from the factory per stream.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::HttpProcessor;
use crate::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use crate::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use crate::stream::{spawn_driver, Stats};

/// Serves `envoy.service.ext_proc.v3.ExternalProcessor` with processors from `factory`.
pub(crate) struct HttpService<F> {
    /// Makes one processor per stream.
    factory: Arc<F>,
    /// Server counters.
    stats: Arc<Stats>,
}

impl<F> HttpService<F> {
    pub(crate) fn new(factory: F, stats: Arc<Stats>) -> Self {
        HttpService {
            factory: Arc::new(factory),
            stats,
        }
    }
}

#[tonic::async_trait]
impl<F, P> ExternalProcessor for HttpService<F>
where
    F: Fn() -> P + Send + Sync + 'static,
    P: HttpProcessor,
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
