//! A minimal HTTP/1.1 client connection over hyper, shared by `latency` and `conns`.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    /// hyper's request sender; the connection task runs in the background.
    sender: SendRequest<Empty<Bytes>>,
    /// `Host` header value.
    authority: http::HeaderValue,
}

impl Conn {
    /// Connects and completes the HTTP/1.1 handshake.
    pub async fn open(target: std::net::SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            authority: http::HeaderValue::from_str(&target.to_string())?,
        })
    }

    /// `GET path`; Ok(status) once the whole response body has been read.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<u16> {
        self.sender.ready().await?;
        let req = http::Request::get(path)
            .header(http::header::HOST, self.authority.clone())
            .body(Empty::new())?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame?;
        }
        Ok(status)
    }
}
