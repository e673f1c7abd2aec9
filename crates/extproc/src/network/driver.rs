//! The async loop of one network ext_proc stream.

use futures_util::{Stream, StreamExt};
use tonic::Status;

use super::{NetworkProcessor, NetworkState};
use crate::error::{Error, Side};
use crate::pb::envoy::service::network_ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use crate::stream::Outbound;

/// Drives one connection's stream to its end.
pub(crate) async fn drive<P, S>(mut processor: P, mut inbound: S, out: Outbound<ProcessingResponse>)
where
    P: NetworkProcessor,
    S: Stream<Item = Result<ProcessingRequest, Status>> + Unpin + Send,
{
    let mut state = NetworkState::default();
    loop {
        let req = match inbound.next().await {
            Some(Ok(req)) => req,
            // End of stream, or Envoy's usual reset when the connection closes.
            None => return,
            Some(Err(status)) if Error::is_cancel(&status) => return,
            Some(Err(status)) => {
                fail(&mut processor, &out, Error::Transport(status)).await;
                return;
            }
        };
        out.stats.received();
        let (side, chunk, mut cx) = match state.on_request(req) {
            Ok(Some(x)) => x,
            Ok(None) => {
                out.ack();
                continue;
            }
            Err(e) => {
                fail(&mut processor, &out, e).await;
                return;
            }
        };
        let reply = if side == Side::Read {
            processor.on_read(&chunk, &mut cx).await
        } else {
            processor.on_write(&chunk, &mut cx).await
        };
        if out.send(state.encode(side, &chunk, reply)).await.is_err() {
            return;
        }
        out.ack();
    }
}

async fn fail<P: NetworkProcessor>(
    processor: &mut P,
    out: &Outbound<ProcessingResponse>,
    err: Error,
) {
    processor.on_error(&err);
    out.fail(&err).await;
}
