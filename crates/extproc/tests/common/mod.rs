//! Shared setup for the Envoy tests: an in-process processor, an echo upstream, real Envoy.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::SocketAddr;

use extproc::{Server, ServerHandle};
use testenv::{echo_http_upstream, render, EchoHttpUpstream, HttpVersion, ProxyProcess};
use tokio::net::TcpListener;

/// Both client protocols.
pub const BOTH: [HttpVersion; 2] = [HttpVersion::Http1, HttpVersion::Http2];

/// A processor served in-process, an echo upstream and Envoy in front of both.
pub struct HttpSetup {
    /// Keeps the processor serving.
    pub proc: ServerHandle,
    /// What the upstream saw.
    pub upstream: EchoHttpUpstream,
    /// Envoy (killed on drop).
    pub envoy: ProxyProcess,
    /// Envoy's HTTP listener.
    pub addr: SocketAddr,
}

/// Serves `server` on 127.0.0.1:0 in the background.
pub async fn spawn_processor(server: Server) -> ServerHandle {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind processor");
    server.spawn(listener).expect("spawn processor")
}

/// Starts `server`, an echo upstream and Envoy from `template` (with `PROC_PORT`,
/// `UPSTREAM_PORT` and `vars` filled in).
pub async fn http_setup(server: Server, template: &str, vars: &[(&str, &str)]) -> HttpSetup {
    let proc = spawn_processor(server).await;
    let upstream = echo_http_upstream().await;
    let proc_port = proc.addr().port().to_string();
    let up_port = upstream.addr().port().to_string();
    let mut all = vec![
        ("PROC_PORT", proc_port.as_str()),
        ("UPSTREAM_PORT", up_port.as_str()),
    ];
    all.extend_from_slice(vars);
    let envoy = ProxyProcess::envoy(&render(template, &all))
        .await
        .expect("envoy starts");
    let addr = envoy.listener_addr("ingress").await;
    HttpSetup {
        proc,
        upstream,
        envoy,
        addr,
    }
}

/// `http_generic.yaml` with these lines as the rest of the ext_proc filter config.
pub async fn generic_setup(server: Server, ext_proc_lines: &[&str]) -> HttpSetup {
    let extra = ext_proc_lines.join("\n              ");
    http_setup(
        server,
        include_str!("../envoy/http_generic.yaml"),
        &[("EXT_PROC", &extra)],
    )
    .await
}
