//! `extproxy demo`: in one process, an echo upstream, the SDK's `add_headers` processor
//! ([`extproc::demo::AddHeaders`]) and the proxy, configured by an embedded Envoy bootstrap.
//!
//! ```text
//! curl ─► proxy :10000 ─► envoy.filters.http.ext_proc ─► router ─► echo upstream
//!                              │ gRPC (h2c)
//!                              └──► add_headers processor
//! ```
//!
//! The upstream sees `x-ext-proc-header: hello-to-asm`; the client gets
//! `x-ext-proc-header: hello-from-asm` (the ASM ext_proc guide's example).

use crate::filter::http::{full_body, Body};
use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Flags of `extproxy demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Proxy listener address.
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub listen: std::net::SocketAddr,
    /// Admin address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: std::net::SocketAddr,
}

/// The embedded bootstrap; the `{{…}}` placeholders are filled by [`Demo::start`].
pub const DEMO_YAML: &str = r#"
admin:
  address: {socket_address: {address: "{{ADMIN_IP}}", port_value: {{ADMIN_PORT}}}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: "{{LISTEN_IP}}", port_value: {{LISTEN_PORT}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local
            virtual_hosts:
            - name: echo
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: echo}
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {cluster_name: add_headers}
              message_timeout: 2s
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: echo
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{ECHO_PORT}}}}}}]}]
  - name: add_headers
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: add_headers
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{PROCESSOR_PORT}}}}}}]}]
"#;

/// A running demo. Dropping it does not stop it; call [`Demo::stop`].
#[derive(Debug)]
pub struct Demo {
    /// The proxy's listener (real port when started with port 0).
    pub listener: SocketAddr,
    /// The admin endpoint.
    pub admin: SocketAddr,
    /// The echo upstream.
    pub upstream: SocketAddr,
    /// The add_headers processor.
    pub processor: SocketAddr,
    shutdown: CancellationToken,
    proxy: tokio::task::JoinHandle<()>,
    echo: tokio::task::JoinHandle<()>,
    processor_handle: extproc::server::ServerHandle,
}

impl Demo {
    /// Starts the three parts; `listen` and `admin` may use port 0.
    pub async fn start(
        listen: SocketAddr,
        admin: SocketAddr,
        concurrency: usize,
    ) -> anyhow::Result<Demo> {
        let echo_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the echo upstream")?;
        let upstream = echo_listener.local_addr()?;
        let echo = tokio::spawn(serve_echo(echo_listener));
        let proc_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the processor")?;
        let processor = proc_listener.local_addr()?;
        let processor_handle = extproc::Server::new()
            .http(extproc::demo::AddHeaders::default)
            .spawn(proc_listener)
            .context("start the add_headers processor")?;
        let yaml = DEMO_YAML
            .replace("{{ADMIN_IP}}", &admin.ip().to_string())
            .replace("{{ADMIN_PORT}}", &admin.port().to_string())
            .replace("{{LISTEN_IP}}", &listen.ip().to_string())
            .replace("{{LISTEN_PORT}}", &listen.port().to_string())
            .replace("{{ECHO_PORT}}", &upstream.port().to_string())
            .replace("{{PROCESSOR_PORT}}", &processor.port().to_string());
        let bootstrap = crate::config::parse(&yaml).context("the embedded demo config")?;
        let options = crate::Options {
            concurrency,
            ..Default::default()
        };
        let server = crate::Server::bind(&bootstrap, options).await?;
        let listener = server
            .listener_addr("ingress")
            .context("the ingress listener")?;
        let admin = server.admin_addr().context("the admin listener")?;
        let shutdown = CancellationToken::new();
        let proxy = tokio::spawn(server.run(shutdown.clone()));
        Ok(Demo {
            listener,
            admin,
            upstream,
            processor,
            shutdown,
            proxy,
            echo,
            processor_handle,
        })
    }

    /// Sends `GET /hello` through the proxy: (response `x-ext-proc-header`, the upstream's view
    /// of `x-ext-proc-header`).
    pub async fn probe(&self) -> anyhow::Result<(Option<String>, Option<String>)> {
        let stream = tokio::net::TcpStream::connect(self.listener).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::get("/hello")
            .header("host", "demo")
            .body(http_body_util::Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        let response_header = resp
            .headers()
            .get("x-ext-proc-header")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.into_body().collect().await?.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).context("the echo's JSON")?;
        let upstream_header = json["headers"]["x-ext-proc-header"][0]
            .as_str()
            .map(str::to_string);
        Ok((response_header, upstream_header))
    }

    /// Stops the proxy, the processor and the upstream.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.proxy.await;
        let _ = self.processor_handle.shutdown().await;
        self.echo.abort();
    }

    /// Waits until the proxy stops (admin `/quitquitquit`) or `stop` is cancelled.
    async fn wait(&mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = &mut self.proxy => {}
            _ = stop => {}
        }
    }
}

/// Runs the demo until ctrl-c (or admin `/quitquitquit`).
pub async fn run(args: DemoArgs, concurrency: usize) -> anyhow::Result<()> {
    let mut demo = Demo::start(args.listen, args.admin, concurrency).await?;
    println!("extproxy demo: an echo upstream, the add_headers ext_proc processor and the proxy, in one process\n");
    println!(
        "  proxy      http://{}    (envoy.filters.http.ext_proc → router → echo)",
        demo.listener
    );
    println!(
        "  admin      http://{}     (/stats, /stats/prometheus, /ready, /quitquitquit)",
        demo.admin
    );
    println!(
        "  upstream   {}     (answers with the request it received, as JSON)",
        demo.upstream
    );
    println!(
        "  processor  {}     (extproc::demo::AddHeaders, gRPC)\n",
        demo.processor
    );
    println!("Try:\n  curl -i http://{}/hello\n", demo.listener);
    match demo.probe().await {
        Ok((resp, up)) => {
            println!("A request just sent through the proxy shows the processor at work:");
            println!(
                "  the upstream saw   x-ext-proc-header: {}",
                up.as_deref().unwrap_or("(missing)")
            );
            println!(
                "  the response has   x-ext-proc-header: {}",
                resp.as_deref().unwrap_or("(missing)")
            );
        }
        Err(e) => println!("The self-check request failed: {e:#}"),
    }
    println!("\nPress ctrl-c to stop.");
    demo.wait(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    demo.stop().await;
    Ok(())
}

// === The echo upstream ===

async fn serve_echo(listener: TcpListener) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        conns.spawn(async move {
            let svc = hyper::service::service_fn(echo);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Answers 200 with `{"method","path","headers":{name:[values]},"body"}`.
async fn echo(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut text = serde_json::to_string_pretty(&json).unwrap_or_default();
    text.push('\n');
    let mut resp = http::Response::new(full_body(text));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
