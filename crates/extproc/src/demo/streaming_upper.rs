//! [`StreamingUpper`]: a per-chunk body transform.

use crate::{Body, HttpContext, HttpProcessor, Reply};

/// Upper-cases ASCII letters of request and response bodies chunk by chunk, without buffering.
///
/// Works in every streaming body mode: in STREAMED each chunk's reply replaces that chunk; in
/// FULL_DUPLEX_STREAMED [`Reply::body`] emits the transformed chunk as a `streamed_response`
/// with the chunk's `end_of_stream`. (BUFFERED works too, with one chunk.)
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use extproc::{demo::StreamingUpper, testkit::HttpExchange, BodyMode};
/// let mut ex = HttpExchange::with_modes(StreamingUpper, BodyMode::Streamed, BodyMode::None);
/// ex.request_headers(&[(":method", "POST")]).send().await;
/// let replies = ex.streamed_request_body(&["abc", "def"]).await;
/// assert_eq!(replies[0].body(), Some(&b"ABC"[..]));
/// # }
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamingUpper;

fn upper(body: &Body) -> Reply {
    if body.data().is_empty() {
        return Reply::new();
    }
    Reply::new().body(body.data().to_ascii_uppercase())
}

impl HttpProcessor for StreamingUpper {
    async fn request_body(&mut self, body: &Body, _cx: &mut HttpContext) -> Reply {
        upper(body)
    }

    async fn response_body(&mut self, body: &Body, _cx: &mut HttpContext) -> Reply {
        upper(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::HttpExchange;
    use crate::BodyMode;

    #[tokio::test]
    async fn streamed_one_reply_per_chunk_in_order() {
        let mut ex =
            HttpExchange::with_modes(StreamingUpper, BodyMode::Streamed, BodyMode::Streamed);
        assert!(ex
            .request_headers(&[(":method", "POST")])
            .send()
            .await
            .is_unchanged());
        let replies = ex.streamed_request_body(&["aaa", "bbb", "ccc"]).await;
        let bodies: Vec<_> = replies
            .iter()
            .map(|r| r.body().map(<[u8]>::to_vec))
            .collect();
        assert_eq!(
            bodies,
            vec![
                Some(b"AAA".to_vec()),
                Some(b"BBB".to_vec()),
                Some(b"CCC".to_vec()),
                None
            ]
        );
        assert!(replies.iter().all(|r| r.kind() == "request_body"));
        ex.response_headers(&[(":status", "200")]).send().await;
        let r = ex.streamed_response_body(&["x"]).await;
        assert_eq!(r[0].kind(), "response_body");
        assert_eq!(r[0].body(), Some(&b"X"[..]));
    }

    #[tokio::test]
    async fn full_duplex_streams_chunks_with_eos() {
        let mut ex =
            HttpExchange::with_modes(StreamingUpper, BodyMode::FullDuplexStreamed, BodyMode::None);
        ex.request_headers(&[(":method", "POST")]).send().await;
        let a = ex.request_body("abc", false).await;
        assert_eq!(a.streamed_chunks(), vec![(b"ABC".to_vec(), false)]);
        let end = ex.request_body("", true).await;
        assert_eq!(
            end.streamed_chunks(),
            vec![(Vec::new(), true)],
            "the echo carries end_of_stream"
        );
    }
}
