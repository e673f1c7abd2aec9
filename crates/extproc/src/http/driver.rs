//! The async loop of one HTTP ext_proc stream: receive, check ([`HttpState`]), call the
//! processor, encode, send.

use futures_util::{Stream, StreamExt};
use tonic::Status;

use super::state::{Inbound, Message, Phase};
use super::{HttpContext, HttpProcessor, HttpState};
use crate::error::Error;
use crate::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use crate::stream::Outbound;

/// Drives one stream to its end. Never panics on peer data; a processor panic is caught by
/// [`crate::stream::spawn_driver`].
pub(crate) async fn drive<P, S>(mut processor: P, mut inbound: S, out: Outbound<ProcessingResponse>)
where
    P: HttpProcessor,
    S: Stream<Item = Result<ProcessingRequest, Status>> + Unpin + Send,
{
    let mut state = HttpState::default();
    loop {
        let req = match inbound.next().await {
            Some(Ok(req)) => req,
            None => {
                if let Some(side) = state.incomplete_side() {
                    fail(&mut processor, &out, Error::IncompleteBody { side }).await;
                }
                return;
            }
            Some(Err(status)) => {
                // Envoy ends side streams with a reset: normal unless a body was cut short.
                if Error::is_cancel(&status) {
                    if let Some(side) = state.incomplete_side() {
                        fail(&mut processor, &out, Error::IncompleteBody { side }).await;
                    }
                } else {
                    fail(&mut processor, &out, Error::Transport(status)).await;
                }
                return;
            }
        };
        out.stats.received();
        let Inbound {
            phase,
            message,
            metadata,
            attributes,
        } = match state.on_request(req) {
            Ok(Some(inbound)) => inbound,
            Ok(None) => {
                out.ack();
                continue;
            }
            Err(e) => {
                fail(&mut processor, &out, e).await;
                return;
            }
        };
        let mut cx = HttpContext::new(phase, metadata, attributes, &state, out.clone());
        let reply = match (phase, &message) {
            (Phase::RequestHeaders, Message::Headers(h)) => {
                processor.request_headers(h, &mut cx).await
            }
            (Phase::ResponseHeaders, Message::Headers(h)) => {
                processor.response_headers(h, &mut cx).await
            }
            (Phase::RequestBody, Message::Body(b)) => processor.request_body(b, &mut cx).await,
            (Phase::ResponseBody, Message::Body(b)) => processor.response_body(b, &mut cx).await,
            (Phase::RequestTrailers, Message::Trailers(t)) => {
                processor.request_trailers(t, &mut cx).await
            }
            (_, Message::Trailers(t)) => processor.response_trailers(t, &mut cx).await,
            // `HttpState` pairs phases and messages; nothing else can occur.
            (_, _) => crate::http::Reply::new(),
        };
        for raw in std::mem::take(&mut cx.raw_sent) {
            state.observe_raw(&raw);
        }
        match state.encode(phase, &message, reply) {
            Ok(responses) => {
                if !state.observability {
                    for r in responses {
                        if out.send(r).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                fail(&mut processor, &out, e).await;
                return;
            }
        }
        out.ack();
    }
}

async fn fail<P: HttpProcessor>(processor: &mut P, out: &Outbound<ProcessingResponse>, err: Error) {
    processor.on_error(&err);
    out.fail(&err).await;
}
