//! [`RedactBody`]: mask card numbers in buffered bodies and keep `content-length` right.

use crate::{Body, Headers, HttpContext, HttpProcessor, Reply};

/// Masks card-number-like digit runs in request and response bodies.
///
/// Meant for `request_body_mode: BUFFERED` and `response_body_mode: BUFFERED`: the whole body
/// arrives in one message while the headers are still held, so the body reply can also fix
/// `content-length` (Envoy rejects a BUFFERED body mutation whose length disagrees with it).
/// See [`mask_card_numbers`] for what is masked.
///
/// Per-request state: whether each path had a `content-length` to fix.
#[derive(Debug, Default, Clone, Copy)]
pub struct RedactBody {
    /// The request headers carried `content-length`.
    request_has_length: bool,
    /// The response headers carried `content-length`.
    response_has_length: bool,
}

fn redact(body: &Body, has_length: bool) -> Reply {
    let (masked, count) = mask_card_numbers(body.data());
    if count == 0 {
        return Reply::new();
    }
    let len = masked.len();
    let reply = Reply::new()
        .body(masked)
        .metadata("extproc.redact_body", "masked", count as f64);
    if has_length {
        reply.set_header("content-length", len.to_string())
    } else {
        reply
    }
}

impl HttpProcessor for RedactBody {
    async fn request_headers(&mut self, headers: &Headers, _cx: &mut HttpContext) -> Reply {
        self.request_has_length = headers.contains("content-length");
        Reply::new()
    }

    async fn request_body(&mut self, body: &Body, _cx: &mut HttpContext) -> Reply {
        redact(body, self.request_has_length)
    }

    async fn response_headers(&mut self, headers: &Headers, _cx: &mut HttpContext) -> Reply {
        self.response_has_length = headers.contains("content-length");
        Reply::new()
    }

    async fn response_body(&mut self, body: &Body, _cx: &mut HttpContext) -> Reply {
        redact(body, self.response_has_length)
    }
}

/// Replaces each card-number-like run with `****` and its last four digits; returns the new
/// text and the number of runs masked.
///
/// A run is 13 to 19 digits, where single spaces or dashes may separate digits
/// (`4111 1111 1111 1111`, `4111-1111-1111-1111`). Shorter or longer digit runs are left alone,
/// as are runs glued to letters or other digits' neighbours like `_` (no Luhn check: "card-like").
///
/// ```
/// let (out, n) = extproc::demo::mask_card_numbers(b"pay 4111 1111 1111 1111 now, call 555-1234");
/// assert_eq!(out, b"pay ****1111 now, call 555-1234");
/// assert_eq!(n, 1);
/// ```
pub fn mask_card_numbers(input: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(input.len());
    let mut count = 0;
    let mut i = 0;
    while i < input.len() {
        let glued = i > 0 && (input[i - 1].is_ascii_alphanumeric() || input[i - 1] == b'_');
        if !input[i].is_ascii_digit() || glued {
            out.push(input[i]);
            i += 1;
            continue;
        }
        // Extend the run over digits and single separators followed by a digit.
        let start = i;
        let mut end = i;
        let mut digits = Vec::new();
        let mut j = i;
        while j < input.len() {
            if input[j].is_ascii_digit() {
                digits.push(input[j]);
                j += 1;
                end = j;
            } else if matches!(input[j], b' ' | b'-')
                && input.get(j + 1).is_some_and(u8::is_ascii_digit)
            {
                j += 1;
            } else {
                break;
            }
        }
        let glued_after = input
            .get(end)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if (13..=19).contains(&digits.len()) && !glued_after {
            out.extend_from_slice(b"****");
            out.extend_from_slice(&digits[digits.len() - 4..]);
            count += 1;
        } else {
            out.extend_from_slice(&input[start..end]);
        }
        i = end;
    }
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::HttpExchange;
    use crate::BodyMode;

    #[test]
    fn masking_rules() {
        let cases: &[(&str, &str, usize)] = &[
            ("4111111111111111", "****1111", 1),
            ("card: 4111-1111-1111-1111.", "card: ****1111.", 1),
            ("a 3782 822463 10005 b", "a ****0005 b", 1),
            ("13 digits 4222222222222 ok", "13 digits ****2222 ok", 1),
            ("12 digits 422222222222", "12 digits 422222222222", 0),
            (
                "20 digits 42222222222222222222",
                "20 digits 42222222222222222222",
                0,
            ),
            ("id_4111111111111111", "id_4111111111111111", 0),
            (
                "two 4111111111111111 and 5500 0000 0000 0004",
                "two ****1111 and ****0004",
                2,
            ),
            (
                "double  space 4111  1111 1111 1111",
                "double  space 4111  1111 1111 1111",
                0,
            ),
            ("", "", 0),
        ];
        for (input, want, n) in cases {
            let (out, count) = mask_card_numbers(input.as_bytes());
            assert_eq!(
                (String::from_utf8_lossy(&out).as_ref(), count),
                (*want, *n),
                "input {input:?}"
            );
        }
    }

    #[tokio::test]
    async fn buffered_request_and_response_fix_content_length() {
        let mut ex = HttpExchange::with_modes(
            RedactBody::default(),
            BodyMode::Buffered,
            BodyMode::Buffered,
        );
        let body = "card=4111 1111 1111 1111";
        let len = body.len().to_string();
        ex.request_headers(&[(":method", "POST"), ("content-length", &len)])
            .send()
            .await;
        let r = ex.buffered_request_body(body).await;
        assert_eq!(r.body(), Some(&b"card=****1111"[..]));
        assert_eq!(r.header("content-length").as_deref(), Some("13"));
        assert_eq!(
            r.metadata_str("extproc.redact_body", "masked"),
            None,
            "a number, not a string"
        );

        // Chunked response (no content-length): the body is masked, no length is invented.
        ex.response_headers(&[(":status", "200")]).send().await;
        let r = ex.buffered_response_body("x 5500000000000004").await;
        assert_eq!(r.body(), Some(&b"x ****0004"[..]));
        assert_eq!(r.header("content-length"), None);
    }

    #[tokio::test]
    async fn clean_body_is_untouched() {
        let mut ex =
            HttpExchange::with_modes(RedactBody::default(), BodyMode::Buffered, BodyMode::None);
        ex.request_headers(&[(":method", "POST"), ("content-length", "5")])
            .send()
            .await;
        assert!(ex.request_body("hello", true).await.is_unchanged());
    }
}
