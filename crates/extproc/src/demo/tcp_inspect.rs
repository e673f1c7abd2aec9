//! [`TcpInspect`]: reset connections by their first line.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::{Chunk, NetworkContext, NetworkProcessor, NetworkReply};

/// Bytes held at most while waiting for the first line; a longer first line is judged as is.
pub const MAX_FIRST_LINE: usize = 4096;

/// A deny rule over the first line.
type DenyRule = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Judges the first line of what a client sends: if `deny(line)` is true the connection is
/// reset (`CLOSE_RST`) and nothing reaches the upstream; otherwise all bytes pass unmodified.
///
/// Bytes are held (answered with empty data, which Envoy forwards as nothing) until a `\n`,
/// [`MAX_FIRST_LINE`] bytes or the client's FIN, then released in one piece. The line given
/// to `deny` excludes the line ending. Upstream → client bytes are never touched.
///
/// The value given to the server is a template: each connection gets a fresh clone.
///
/// ```
/// use extproc::demo::TcpInspect;
/// let inspect = TcpInspect::new(|line: &[u8]| line.starts_with(b"DROP"));
/// let server = extproc::Server::new().network(move || inspect.clone());
/// ```
#[derive(Clone)]
pub struct TcpInspect {
    /// The deny rule, shared by all connections.
    deny: DenyRule,
    /// Client bytes held until the first line is complete.
    held: BytesMut,
    /// The first line has been judged (and allowed).
    decided: bool,
}

impl std::fmt::Debug for TcpInspect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpInspect")
            .field("held", &self.held.len())
            .field("decided", &self.decided)
            .finish()
    }
}

impl TcpInspect {
    /// A template with this deny rule.
    pub fn new(deny: impl Fn(&[u8]) -> bool + Send + Sync + 'static) -> TcpInspect {
        TcpInspect {
            deny: Arc::new(deny),
            held: BytesMut::new(),
            decided: false,
        }
    }
}

impl NetworkProcessor for TcpInspect {
    async fn on_read(&mut self, chunk: &Chunk, _cx: &mut NetworkContext) -> NetworkReply {
        if self.decided {
            return NetworkReply::pass();
        }
        let nothing_held = self.held.is_empty();
        self.held.extend_from_slice(chunk.data());
        let newline = self.held.iter().position(|b| *b == b'\n');
        if newline.is_none() && self.held.len() < MAX_FIRST_LINE && !chunk.end_of_stream() {
            // Keep waiting; forward nothing yet.
            return NetworkReply::replace(Bytes::new());
        }
        let end = newline.unwrap_or(self.held.len()).min(MAX_FIRST_LINE);
        let line = self.held[..end]
            .strip_suffix(b"\r")
            .unwrap_or(&self.held[..end]);
        if (self.deny)(line) {
            self.held.clear();
            return NetworkReply::reset().metadata("extproc.tcp_inspect", "verdict", "denied");
        }
        self.decided = true;
        let held = self.held.split().freeze();
        if nothing_held {
            // The whole line came in this chunk: pass it on untouched.
            NetworkReply::pass()
        } else {
            NetworkReply::replace(held)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::ConnectionStatus;
    use crate::testkit::NetworkExchange;

    fn inspect() -> TcpInspect {
        TcpInspect::new(|line: &[u8]| line.starts_with(b"EVIL"))
    }

    #[tokio::test]
    async fn allowed_line_passes_then_everything_passes() {
        let mut c = NetworkExchange::new(inspect());
        let r = c.read("hello\nrest", false).await;
        assert_eq!(r.data(), b"hello\nrest");
        assert_eq!(
            r.data_status(),
            crate::network::DataProcessedStatus::Unmodified
        );
        assert_eq!(
            c.read("EVIL later is fine", false).await.data(),
            b"EVIL later is fine"
        );
        assert_eq!(c.write("server bytes", false).await.data(), b"server bytes");
        let fin = c.read_fin().await;
        assert!(fin.end_of_stream());
        assert_eq!(fin.data(), b"");
    }

    #[tokio::test]
    async fn denied_line_resets() {
        let mut c = NetworkExchange::new(inspect());
        let r = c.read("EVIL command\r\n", false).await;
        assert_eq!(r.connection_status(), ConnectionStatus::CloseRst);
        assert_eq!(r.data(), b"");
        assert_eq!(
            r.metadata_str("extproc.tcp_inspect", "verdict").as_deref(),
            Some("denied")
        );
    }

    #[tokio::test]
    async fn split_first_line_is_held_then_released() {
        let mut c = NetworkExchange::new(inspect());
        let r = c.read("hel", false).await;
        assert_eq!(
            (r.data(), r.connection_status()),
            (&b""[..], ConnectionStatus::Continue)
        );
        let r = c.read("lo\n", false).await;
        assert_eq!(r.data(), b"hello\n");

        let mut c = NetworkExchange::new(inspect());
        c.read("EV", false).await;
        assert_eq!(
            c.read("IL\n", false).await.connection_status(),
            ConnectionStatus::CloseRst
        );
    }

    #[tokio::test]
    async fn fin_without_newline_decides() {
        let mut c = NetworkExchange::new(inspect());
        c.read("no newline", false).await;
        let r = c.read("", true).await;
        assert_eq!((r.data(), r.end_of_stream()), (&b"no newline"[..], true));
    }
}
