//! [`AuthGate`]: bearer-token check with a 401 immediate response.

use std::sync::Arc;

use crate::{Headers, HttpContext, HttpProcessor, ImmediateResponse, Reply};

/// Lets a request through only if it carries `authorization: Bearer <token>` with one of the
/// configured tokens; otherwise Envoy answers `401` (with `www-authenticate: Bearer`, and
/// `grpc-status: 16` for gRPC clients) and the upstream never sees the request.
///
/// The token check: the scheme `Bearer` is matched case-insensitively, the token exactly, in
/// constant time against every configured token. On success the `authorization` header is
/// removed so the credential does not travel upstream, and `x-auth-token-index` tells the
/// upstream which token matched.
///
/// ```
/// use extproc::demo::AuthGate;
/// let gate = AuthGate::new(["s3cret"]);
/// let server = extproc::Server::new().http(move || gate.clone());
/// ```
#[derive(Debug, Clone)]
pub struct AuthGate {
    /// Accepted tokens (shared by all streams).
    tokens: Arc<Vec<Vec<u8>>>,
}

impl AuthGate {
    /// A gate accepting these tokens.
    pub fn new<I, T>(tokens: I) -> AuthGate
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        AuthGate {
            tokens: Arc::new(tokens.into_iter().map(|t| t.into().into_bytes()).collect()),
        }
    }

    /// The index of the matching token, if `authorization` is a valid bearer credential.
    pub fn check(&self, authorization: Option<&[u8]>) -> Option<usize> {
        let value = authorization?;
        let (scheme, token) = split_once(value, b' ')?;
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return None;
        }
        let token = trim(token);
        let mut found = None;
        for (i, t) in self.tokens.iter().enumerate() {
            // Check every token, and every byte, so timing does not reveal a prefix.
            if constant_time_eq(t, token) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }
}

impl HttpProcessor for AuthGate {
    async fn request_headers(&mut self, headers: &Headers, _cx: &mut HttpContext) -> Reply {
        match self.check(headers.get("authorization")) {
            Some(i) => Reply::new()
                .remove_header("authorization")
                .set_header("x-auth-token-index", i.to_string()),
            None => {
                let grpc = headers
                    .get("content-type")
                    .is_some_and(|c| c.starts_with(b"application/grpc"));
                let mut resp = ImmediateResponse::new(401)
                    .header("www-authenticate", "Bearer realm=\"extproc\"")
                    .body("missing or invalid bearer token\n")
                    .details("auth_gate_denied");
                if grpc {
                    resp = resp.grpc_status(tonic::Code::Unauthenticated);
                }
                Reply::immediate(resp)
            }
        }
    }
}

fn split_once(v: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = v.iter().position(|b| *b == sep)?;
    Some((&v[..i], &v[i + 1..]))
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::HttpExchange;

    #[test]
    fn token_check() {
        let g = AuthGate::new(["abc", "xyz"]);
        assert_eq!(g.check(Some(b"Bearer abc")), Some(0));
        assert_eq!(g.check(Some(b"bearer  xyz ")), Some(1));
        assert_eq!(g.check(Some(b"Bearer abcd")), None);
        assert_eq!(g.check(Some(b"Basic abc")), None);
        assert_eq!(g.check(Some(b"Bearer")), None);
        assert_eq!(g.check(None), None);
    }

    #[tokio::test]
    async fn rejects_without_token() {
        let mut ex = HttpExchange::new(AuthGate::new(["t"]));
        let r = ex.request_headers(&[(":path", "/")]).eos(true).send().await;
        assert_eq!(r.immediate_status(), Some(401));
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Bearer realm=\"extproc\"")
        );
        assert_eq!(
            r.immediate_body(),
            Some(&b"missing or invalid bearer token\n"[..])
        );
        assert_eq!(ex.finish().await.map_err(|s| s.code()), Ok(()));
    }

    #[tokio::test]
    async fn grpc_clients_get_unauthenticated() {
        let mut ex = HttpExchange::new(AuthGate::new(["t"]));
        let r = ex
            .request_headers(&[(":path", "/svc/M"), ("content-type", "application/grpc")])
            .send()
            .await;
        let crate::pb::envoy::service::ext_proc::v3::processing_response::Response::ImmediateResponse(i) =
            r.single().response.clone().expect("response")
        else {
            panic!("not immediate: {r:?}")
        };
        assert_eq!(i.grpc_status.map(|g| g.status), Some(16));
    }

    #[tokio::test]
    async fn accepts_valid_token_and_strips_it() {
        let mut ex = HttpExchange::new(AuthGate::new(["t1", "t2"]));
        let r = ex
            .request_headers(&[(":path", "/"), ("authorization", "Bearer t2")])
            .eos(true)
            .send()
            .await;
        assert_eq!(r.kind(), "request_headers");
        assert!(r.removes("authorization"));
        assert_eq!(r.header("x-auth-token-index").as_deref(), Some("1"));
    }
}
