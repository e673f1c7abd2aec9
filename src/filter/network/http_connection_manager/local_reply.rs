//! Rendering of [`LocalReply`]: the one place where a locally generated answer becomes a
//! response, as Envoy's `sendLocalReply` does it (route response headers first, then the reply's
//! own headers, `content-length`, `content-type: text/plain`), or, for gRPC requests, an HTTP 200
//! trailers-only response with `grpc-status` and `grpc-message`. A reply with a streamed body
//! (`LocalReply::stream`) gets only the route's and its own headers, and its body as it comes.

use super::route::RouteEntry;
use crate::filter::http::{empty_body, full_body, Body, LocalReply};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
pub fn http_to_grpc_status(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// Percent-encodes a `grpc-message` value (gRPC's rules: bytes outside 0x20..=0x7e and `%`).
pub fn grpc_percent_encode(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Builds the response for a local reply. `route` is the route selected for the request, whose
/// `response_headers_to_add` apply to local replies too.
pub fn render(reply: LocalReply, route: Option<&RouteEntry>, is_grpc: bool) -> Response<Body> {
    let LocalReply {
        status,
        headers: extra,
        body,
        details: _,
        grpc_status,
        stream,
    } = reply;
    let mut resp = Response::new(empty_body());
    let headers = resp.headers_mut();
    if let Some(r) = route {
        r.apply_response_headers(headers);
    }
    for (name, value) in &extra {
        headers.append(name.clone(), value.clone());
    }
    if let Some(stream) = stream.and_then(|s| s.take()) {
        *resp.status_mut() = status;
        *resp.body_mut() = stream;
        return resp;
    }
    if is_grpc {
        *resp.status_mut() = StatusCode::OK;
        let headers = resp.headers_mut();
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        }
        let code = grpc_status.unwrap_or_else(|| http_to_grpc_status(status));
        headers.insert("grpc-status", HeaderValue::from(code));
        if !body.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&body)) {
                headers.insert("grpc-message", v);
            }
        }
        return resp;
    }
    *resp.status_mut() = status;
    if !body.is_empty() {
        let headers = resp.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        *resp.body_mut() = full_body(body);
    }
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn plain_reply_gets_text_plain_and_length() {
        let resp = render(
            LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", "x"),
            None,
            false,
        );
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert_eq!(resp.headers()["content-length"], "19");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "no healthy upstream");
    }

    #[test]
    fn grpc_reply_is_trailers_only() {
        let resp = render(
            LocalReply::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout", "x"),
            None,
            true,
        );
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "upstream request timeout");
        let resp = render(
            LocalReply::new(StatusCode::NOT_FOUND, "", "route_not_found"),
            None,
            true,
        );
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert!(resp.headers().get("grpc-message").is_none());
    }

    #[tokio::test]
    async fn streamed_reply_keeps_headers_and_relays_trailers() {
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<http_body::Frame<bytes::Bytes>, crate::filter::http::BoxError>,
        >(4);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut reply = LocalReply::new(StatusCode::NON_AUTHORITATIVE_INFORMATION, "ignored", "x");
        reply
            .headers
            .insert("x-local", HeaderValue::from_static("yes"));
        reply.stream = Some(crate::filter::http::LocalBody::new(body.boxed_unsync()));
        let resp = render(reply, None, true);
        assert_eq!(resp.status(), 203);
        assert_eq!(resp.headers()["x-local"], "yes");
        assert!(resp.headers().get("content-type").is_none());
        assert!(resp.headers().get("content-length").is_none());
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-t", HeaderValue::from_static("1"));
        tx.send(Ok(http_body::Frame::data(bytes::Bytes::from("ab"))))
            .await
            .unwrap();
        tx.send(Ok(http_body::Frame::trailers(trailers.clone())))
            .await
            .unwrap();
        drop(tx);
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "ab");
    }

    #[test]
    fn percent_encoding_of_grpc_message() {
        assert_eq!(grpc_percent_encode(b"a%b\n\xc3\xa9"), "a%25b%0A%C3%A9");
    }
}
