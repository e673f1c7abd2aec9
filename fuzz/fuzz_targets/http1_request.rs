//! The HTTP/1 request path end to end: arbitrary bytes written to an HTTP connection manager
//! (`codec_type: HTTP1`, a direct-response route and a router to a stub upstream) over
//! loopback, then the client half-closes.
//!
//! Checks: no panic; the proxy ends the connection (within 5 s); everything it wrote is a
//! sequence of well-formed HTTP/1.1 responses with correct framing; the upstream never
//! receives a request it cannot parse.
#![no_main]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const YAML: &str = r#"
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: fuzz
          codec_type: HTTP1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/direct"}
                direct_response: {status: 200, body: {inline_string: "direct"}}
              - match: {prefix: "/"}
                route: {cluster: upstream}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UPSTREAM_PORT}}}}]}]
"#;

/// Requests the stub upstream could not parse (the proxy sent something invalid).
static UPSTREAM_PARSE_ERRORS: AtomicUsize = AtomicUsize::new(0);

struct Env {
    rt: tokio::runtime::Runtime,
    proxy: SocketAddr,
}

static ENV: LazyLock<Env> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let proxy = rt.block_on(async {
        let up = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let port = up.local_addr().expect("addr").port();
        tokio::spawn(upstream(up));
        let yaml = YAML.replace("UPSTREAM_PORT", &port.to_string());
        let bootstrap = extproxy::config::parse(&yaml).expect("fuzz bootstrap");
        let server = extproxy::Server::bind(&bootstrap, extproxy::Options::default()).await.expect("bind proxy");
        let addr = server.listener_addr("ingress").expect("ingress");
        tokio::spawn(server.run(tokio_util::sync::CancellationToken::new()));
        addr
    });
    Env { rt, proxy }
});

/// Reads each request whole, answers 200 with a small body.
async fn upstream(l: TcpListener) {
    while let Ok((s, _)) = l.accept().await {
        tokio::spawn(async move {
            let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(format!("up {body}")))))
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await {
                if e.is_parse() {
                    UPSTREAM_PARSE_ERRORS.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
}

fuzz_target!(|data: &[u8]| {
    let env = &*ENV;
    let (out, reset) = env.rt.block_on(async {
        let mut s = TcpStream::connect(env.proxy).await.expect("connect to the proxy");
        // The proxy may close early; a failed write is fine.
        let _ = s.write_all(data).await;
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let reset = match read {
            Err(_) => panic!("the proxy did not end the connection within 5 s; wrote {:?}", String::from_utf8_lossy(&out)),
            Ok(r) => r.is_err(),
        };
        // Let the upstream's connection tasks see what the proxy sent them.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        (out, reset)
    });
    assert_eq!(UPSTREAM_PARSE_ERRORS.load(Ordering::SeqCst), 0, "the upstream got an unparsable request");
    extproxy_fuzz::check_http1_responses(&out, reset, data);
});
