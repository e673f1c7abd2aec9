//! [`AddHeaders`]: the classic ext_proc demo.

use crate::{Headers, HttpContext, HttpProcessor, Reply};

/// Header name set on both paths.
pub(crate) const HEADER: &str = "x-ext-proc-header";

/// Adds `x-ext-proc-header: hello-to-asm` to requests and `x-ext-proc-header: hello-from-asm`
/// to responses (the processor from Alibaba Cloud ASM's ext_proc guide).
///
/// ```no_run
/// # async fn f(listener: tokio::net::TcpListener) -> Result<(), extproc::ServeError> {
/// extproc::Server::new()
///     .http(extproc::demo::AddHeaders::default)
///     .serve_with_listener(listener, extproc::shutdown_signal())
///     .await
/// # }
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct AddHeaders;

impl HttpProcessor for AddHeaders {
    async fn request_headers(&mut self, _headers: &Headers, _cx: &mut HttpContext) -> Reply {
        Reply::new().set_header(HEADER, "hello-to-asm")
    }

    async fn response_headers(&mut self, _headers: &Headers, _cx: &mut HttpContext) -> Reply {
        Reply::new().set_header(HEADER, "hello-from-asm")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::HttpExchange;

    #[tokio::test]
    async fn sets_both_headers() {
        let mut ex = HttpExchange::new(AddHeaders);
        let (req, resp) = ex.get("/").await;
        assert_eq!(req.kind(), "request_headers");
        assert_eq!(req.header(HEADER).as_deref(), Some("hello-to-asm"));
        assert!(!req.appends(HEADER), "overwrite, not append");
        assert_eq!(resp.kind(), "response_headers");
        assert_eq!(resp.header(HEADER).as_deref(), Some("hello-from-asm"));
        assert_eq!(ex.finish().await.map_err(|s| s.code()), Ok(()));
    }
}
