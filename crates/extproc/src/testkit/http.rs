//! [`HttpExchange`]: one HTTP request's ext_proc stream, driven message by message.

use std::collections::HashMap;

use tonic::Status;

use super::Harness;
use crate::http::{BodyMode, HttpProcessor};
use crate::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use crate::pb::envoy::service::ext_proc::v3::{
    body_mutation, common_response, processing_request, processing_response, CommonResponse,
    HeaderMutation, HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
    ProtocolConfiguration,
};
use crate::pb::google::protobuf::Struct;
use crate::stream::StatsSnapshot;

/// One HTTP request's stream to a processor, fed like Envoy 1.40 feeds it.
///
/// The first message carries `protocol_config` with the body modes given to
/// [`HttpExchange::with_modes`] (NONE/NONE by default), as Envoy does; in observability mode
/// ([`HttpExchange::observability`]) every message has `observability_mode: true` and no
/// `protocol_config`, and no replies come back.
#[derive(Debug)]
pub struct HttpExchange {
    /// The driver's channels.
    harness: Harness<ProcessingRequest, ProcessingResponse>,
    /// Body modes announced in the first message.
    modes: (BodyMode, BodyMode),
    /// Observability mode.
    observability: bool,
    /// Whether the first message has been sent.
    started: bool,
}

impl HttpExchange {
    /// A stream to `processor` with body modes NONE.
    pub fn new<P: HttpProcessor>(processor: P) -> HttpExchange {
        HttpExchange::with_modes(processor, BodyMode::None, BodyMode::None)
    }

    /// A stream whose first message announces these request/response body modes.
    pub fn with_modes<P: HttpProcessor>(
        processor: P,
        request: BodyMode,
        response: BodyMode,
    ) -> HttpExchange {
        HttpExchange {
            harness: Harness::new(move |inbound, out| crate::http::drive(processor, inbound, out)),
            modes: (request, response),
            observability: false,
            started: false,
        }
    }

    /// Switch to observability mode (call before the first message).
    pub fn observability(mut self) -> HttpExchange {
        self.observability = true;
        self
    }

    /// Request headers; finish with `.eos(..)` / `.send().await`.
    pub fn request_headers(&mut self, headers: &[(&str, &str)]) -> HeadersSend<'_> {
        HeadersSend::new(self, true, headers)
    }

    /// Response headers; finish with `.send().await`.
    pub fn response_headers(&mut self, headers: &[(&str, &str)]) -> HeadersSend<'_> {
        HeadersSend::new(self, false, headers)
    }

    /// One request body message.
    pub async fn request_body(&mut self, data: impl AsRef<[u8]>, end_of_stream: bool) -> Replies {
        let b = HttpBody {
            body: data.as_ref().to_vec(),
            end_of_stream,
            ..Default::default()
        };
        self.send_oneof(processing_request::Request::RequestBody(b))
            .await
    }

    /// One response body message.
    pub async fn response_body(&mut self, data: impl AsRef<[u8]>, end_of_stream: bool) -> Replies {
        let b = HttpBody {
            body: data.as_ref().to_vec(),
            end_of_stream,
            ..Default::default()
        };
        self.send_oneof(processing_request::Request::ResponseBody(b))
            .await
    }

    /// Request trailers.
    pub async fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Replies {
        let t = HttpTrailers {
            trailers: Some(header_map(trailers)),
        };
        self.send_oneof(processing_request::Request::RequestTrailers(t))
            .await
    }

    /// Response trailers.
    pub async fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Replies {
        let t = HttpTrailers {
            trailers: Some(header_map(trailers)),
        };
        self.send_oneof(processing_request::Request::ResponseTrailers(t))
            .await
    }

    /// BUFFERED (or BUFFERED_PARTIAL) request body as Envoy sends it: the whole body in one
    /// message, `end_of_stream: true` (use [`HttpExchange::request_body`] with `false` when
    /// trailers follow).
    pub async fn buffered_request_body(&mut self, body: impl AsRef<[u8]>) -> Replies {
        self.request_body(body, true).await
    }

    /// BUFFERED response body, as [`HttpExchange::buffered_request_body`].
    pub async fn buffered_response_body(&mut self, body: impl AsRef<[u8]>) -> Replies {
        self.response_body(body, true).await
    }

    /// STREAMED (and FULL_DUPLEX_STREAMED) request body as Envoy sends it: each chunk with `end_of_stream: false`, then an
    /// empty message with `end_of_stream: true`. One [`Replies`] per message.
    pub async fn streamed_request_body(&mut self, chunks: &[&str]) -> Vec<Replies> {
        let mut out = Vec::new();
        for c in chunks {
            out.push(self.request_body(c, false).await);
        }
        out.push(self.request_body("", true).await);
        out
    }

    /// STREAMED (and FULL_DUPLEX_STREAMED) response body, as
    /// [`HttpExchange::streamed_request_body`].
    pub async fn streamed_response_body(&mut self, chunks: &[&str]) -> Vec<Replies> {
        let mut out = Vec::new();
        for c in chunks {
            out.push(self.response_body(c, false).await);
        }
        out.push(self.response_body("", true).await);
        out
    }

    /// A whole `GET path` with default processing mode: request headers (`end_of_stream`),
    /// then response headers `:status: 200`. Returns both replies.
    pub async fn get(&mut self, path: &str) -> (Replies, Replies) {
        let req = self
            .request_headers(&[
                (":authority", "example.com"),
                (":path", path),
                (":method", "GET"),
                (":scheme", "http"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", "00000000-0000-4000-8000-000000000000"),
            ])
            .eos(true)
            .send()
            .await;
        let resp = self
            .response_headers(&[
                (":status", "200"),
                ("content-type", "text/plain"),
                ("content-length", "2"),
            ])
            .send()
            .await;
        (req, resp)
    }

    /// Sends any request as is (no `protocol_config` added) — for malformed-input tests.
    pub async fn send_raw(&mut self, req: ProcessingRequest) -> Replies {
        self.started = true;
        let (responses, status) = self.harness.exchange(Ok(req)).await;
        Replies { responses, status }
    }

    /// Makes the inbound stream fail with `status` (a transport error on Envoy's side).
    pub async fn send_error(&mut self, status: Status) -> Replies {
        let (responses, status) = self.harness.exchange(Err(status)).await;
        Replies { responses, status }
    }

    /// Ends the inbound stream (Envoy half-closes) and returns how the stream ended.
    pub async fn finish(mut self) -> Result<(), Status> {
        self.harness.finish().await.1
    }

    /// The counters of this stream's driver.
    pub fn stats(&self) -> StatsSnapshot {
        self.harness.stats()
    }

    async fn send_oneof(&mut self, request: processing_request::Request) -> Replies {
        self.send_full(request, None, HashMap::new()).await
    }

    async fn send_full(
        &mut self,
        request: processing_request::Request,
        metadata: Option<Metadata>,
        attributes: HashMap<String, Struct>,
    ) -> Replies {
        let protocol_config =
            (!self.started && !self.observability).then_some(ProtocolConfiguration {
                request_body_mode: self.modes.0 as i32,
                response_body_mode: self.modes.1 as i32,
                send_body_without_waiting_for_header_response: false,
            });
        let req = ProcessingRequest {
            metadata_context: Some(metadata.unwrap_or_default()),
            attributes,
            observability_mode: self.observability,
            protocol_config,
            request: Some(request),
            ..Default::default()
        };
        self.send_raw(req).await
    }
}

/// Builder for a headers message ([`HttpExchange::request_headers`]).
#[derive(Debug)]
pub struct HeadersSend<'a> {
    /// The exchange to send on.
    ex: &'a mut HttpExchange,
    /// Request (true) or response headers.
    request: bool,
    /// The headers.
    headers: HeaderMap,
    /// `end_of_stream`.
    eos: bool,
    /// `metadata_context`.
    metadata: Option<Metadata>,
    /// `attributes`.
    attributes: HashMap<String, Struct>,
}

impl<'a> HeadersSend<'a> {
    fn new(ex: &'a mut HttpExchange, request: bool, headers: &[(&str, &str)]) -> Self {
        HeadersSend {
            ex,
            request,
            headers: header_map(headers),
            eos: false,
            metadata: None,
            attributes: HashMap::new(),
        }
    }

    /// Sets `end_of_stream` (no body or trailers follow).
    pub fn eos(mut self, eos: bool) -> Self {
        self.eos = eos;
        self
    }

    /// Sets `metadata_context`.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets `attributes["envoy.filters.http.ext_proc"]`.
    pub fn attributes(mut self, attrs: Struct) -> Self {
        self.attributes
            .insert("envoy.filters.http.ext_proc".to_string(), attrs);
        self
    }

    /// Sends the message and returns the replies.
    pub async fn send(self) -> Replies {
        let h = HttpHeaders {
            headers: Some(self.headers),
            end_of_stream: self.eos,
            ..Default::default()
        };
        let r = if self.request {
            processing_request::Request::RequestHeaders(h)
        } else {
            processing_request::Request::ResponseHeaders(h)
        };
        self.ex.send_full(r, self.metadata, self.attributes).await
    }
}

/// Envoy-style header map: lower-case keys, values in `raw_value` only.
fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_ascii_lowercase(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    }
}

/// The responses to one message, and the stream's final status if it ended meanwhile.
///
/// The accessors without a plural look at the *only* response and panic (with the responses in
/// the message) if there is not exactly one; use [`Replies::responses`] otherwise.
#[derive(Debug, Clone)]
pub struct Replies {
    /// Responses, in order.
    pub responses: Vec<ProcessingResponse>,
    /// The status the stream ended with, if it ended while handling this message.
    pub status: Option<Status>,
}

impl Replies {
    /// Number of responses.
    pub fn len(&self) -> usize {
        self.responses.len()
    }

    /// True if nothing was sent (observability mode, a held chunk, or an error).
    pub fn is_empty(&self) -> bool {
        self.responses.is_empty()
    }

    /// The only response.
    pub fn single(&self) -> &ProcessingResponse {
        assert_eq!(
            self.responses.len(),
            1,
            "expected exactly one response, got {:#?}",
            self
        );
        &self.responses[0]
    }

    /// The oneof name of the only response, e.g. `"request_headers"`, `"immediate_response"`.
    pub fn kind(&self) -> &'static str {
        use processing_response::Response as R;
        match &self.single().response {
            Some(R::RequestHeaders(_)) => "request_headers",
            Some(R::ResponseHeaders(_)) => "response_headers",
            Some(R::RequestBody(_)) => "request_body",
            Some(R::ResponseBody(_)) => "response_body",
            Some(R::RequestTrailers(_)) => "request_trailers",
            Some(R::ResponseTrailers(_)) => "response_trailers",
            Some(R::ImmediateResponse(_)) => "immediate_response",
            Some(R::StreamedImmediateResponse(_)) => "streamed_immediate_response",
            None => "none",
        }
    }

    fn common(&self) -> Option<&CommonResponse> {
        use processing_response::Response as R;
        match &self.single().response {
            Some(R::RequestHeaders(h) | R::ResponseHeaders(h)) => h.response.as_ref(),
            Some(R::RequestBody(b) | R::ResponseBody(b)) => b.response.as_ref(),
            _ => None,
        }
    }

    fn mutation(&self) -> Option<&HeaderMutation> {
        use processing_response::Response as R;
        match &self.single().response {
            Some(R::RequestTrailers(t) | R::ResponseTrailers(t)) => t.header_mutation.as_ref(),
            Some(R::ImmediateResponse(i)) => i.headers.as_ref(),
            _ => self.common().and_then(|c| c.header_mutation.as_ref()),
        }
    }

    /// The value the only response sets for header `name` (UTF-8 lossy), overwrite or append.
    pub fn header(&self, name: &str) -> Option<String> {
        self.mutation()?
            .set_headers
            .iter()
            .filter_map(|o| o.header.as_ref())
            .find(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
    }

    /// Whether the only response sets `name` with `append: true`.
    #[allow(deprecated)]
    pub fn appends(&self, name: &str) -> bool {
        self.mutation().is_some_and(|m| {
            m.set_headers.iter().any(|o| {
                o.header
                    .as_ref()
                    .is_some_and(|h| h.key.eq_ignore_ascii_case(name))
                    && o.append.as_ref().is_some_and(|a| a.value)
            })
        })
    }

    /// Whether the only response removes header `name`.
    pub fn removes(&self, name: &str) -> bool {
        self.mutation().is_some_and(|m| {
            m.remove_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
        })
    }

    /// True if the only response has no header mutation and no body mutation.
    pub fn is_unchanged(&self) -> bool {
        self.mutation()
            .is_none_or(|m| m.set_headers.is_empty() && m.remove_headers.is_empty())
            && self.common().is_none_or(|c| c.body_mutation.is_none())
    }

    /// True if the only response has status `CONTINUE_AND_REPLACE`.
    pub fn is_continue_and_replace(&self) -> bool {
        self.common()
            .is_some_and(|c| c.status == common_response::ResponseStatus::ContinueAndReplace as i32)
    }

    /// The replacement body (`body_mutation.body`) of the only response.
    pub fn body(&self) -> Option<&[u8]> {
        match self.common()?.body_mutation.as_ref()?.mutation.as_ref()? {
            body_mutation::Mutation::Body(b) => Some(b),
            _ => None,
        }
    }

    /// Whether the only response clears the body.
    pub fn clears_body(&self) -> bool {
        matches!(
            self.common()
                .and_then(|c| c.body_mutation.as_ref())
                .and_then(|m| m.mutation.as_ref()),
            Some(body_mutation::Mutation::ClearBody(true))
        )
    }

    /// All `streamed_response` chunks across the responses, as `(data, end_of_stream)`.
    pub fn streamed_chunks(&self) -> Vec<(Vec<u8>, bool)> {
        use processing_response::Response as R;
        self.responses
            .iter()
            .filter_map(|r| match &r.response {
                Some(R::RequestBody(b) | R::ResponseBody(b)) => b.response.as_ref(),
                _ => None,
            })
            .filter_map(|c| match c.body_mutation.as_ref()?.mutation.as_ref()? {
                body_mutation::Mutation::StreamedResponse(s) => {
                    Some((s.body.clone(), s.end_of_stream))
                }
                _ => None,
            })
            .collect()
    }

    /// The concatenation of all `streamed_response` chunks.
    pub fn streamed_body(&self) -> Vec<u8> {
        self.streamed_chunks()
            .into_iter()
            .flat_map(|(d, _)| d)
            .collect()
    }

    /// The immediate response's HTTP status, if the only response is one.
    pub fn immediate_status(&self) -> Option<i32> {
        match &self.single().response {
            Some(processing_response::Response::ImmediateResponse(i)) => {
                i.status.as_ref().map(|s| s.code)
            }
            _ => None,
        }
    }

    /// The immediate response's body.
    pub fn immediate_body(&self) -> Option<&[u8]> {
        match &self.single().response {
            Some(processing_response::Response::ImmediateResponse(i)) => Some(&i.body),
            _ => None,
        }
    }

    /// `dynamic_metadata[namespace][key]` as a string, from the first response carrying it.
    pub fn metadata_str(&self, namespace: &str, key: &str) -> Option<String> {
        self.responses
            .iter()
            .filter_map(|r| r.dynamic_metadata.as_ref())
            .find_map(|m| crate::metadata::get_str(m, namespace, key).map(str::to_string))
    }

    /// The gRPC code the stream ended with while handling this message, if it did.
    pub fn error_code(&self) -> Option<tonic::Code> {
        self.status.as_ref().map(Status::code)
    }
}
