//! Oversized buffered bodies: an ext_proc BUFFERED request body over the buffer limit gets 413
//! and nothing past the limit is read, buffered, sent to the processor or forwarded.
#![allow(clippy::unwrap_used)]

mod bad_input_support;
mod ext_proc_support;
mod http_support;

use bad_input_support::RecordingUpstream;
use ext_proc_support::{continue_for, kind, Processor, Step};
use http_support::TestProxy;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bootstrap(up: &RecordingUpstream, proc: &Processor, limit: u32) -> String {
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    per_connection_buffer_limit_bytes: {limit}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bad
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: upstream}}}}]
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {{envoy_grpc: {{cluster_name: proc}}, initial_metadata: [{{key: x-scenario, value: pass}}]}}
              message_timeout: 2s
              processing_mode: {{request_body_mode: BUFFERED, response_header_mode: SKIP}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}}}]}}]
  - name: proc
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: proc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {proc}}}}}}}}}]}}]
"#,
        up = up.addr.port(),
        proc = proc.addr.port(),
    )
}

#[tokio::test]
async fn a_buffered_body_over_the_limit_gets_413_and_is_not_read_further() {
    let up = RecordingUpstream::start().await;
    let proc = Processor::start().await;
    proc.script("pass", |_, r| vec![Step::Send(continue_for(r))]);
    let proxy = TestProxy::start(&bootstrap(&up, &proc, 64 * 1024)).await;
    // A 256 MiB body announced up front, sent as fast as the proxy takes it.
    let total: usize = 256 << 20;
    let mut s = TcpStream::connect(proxy.ingress()).await.unwrap();
    s.write_all(
        format!("POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            match tokio::time::timeout(Duration::from_secs(3), wr.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        sent
    });
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut resp)).await;
    let sent = writer.await.unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nPayload Too Large"), "{text}");
    // The proxy stopped reading at the limit: the client could not push the whole body (what it
    // did push sits in socket buffers).
    assert!(sent < total / 4, "the proxy read {sent} of {total} bytes");
    // The processor got at most the headers (the 413 may abort its stream before it opens), no
    // body; the upstream got nothing.
    let kinds: Vec<&str> = proc
        .streams("pass")
        .iter()
        .flat_map(|s| s.messages.iter().map(kind))
        .collect();
    assert!(kinds.iter().all(|k| *k == "rh"), "{kinds:?}");
    assert!(up.received().is_empty());
    proxy.wait_stat("http.bad.downstream_rq_4xx", 1).await;
    assert_eq!(proxy.stat("http.bad.downstream_rq_4xx"), 1);
}
