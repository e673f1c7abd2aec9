//! Test support for the HTTP path: an in-process proxy, loopback helper servers, a raw
//! HTTP/1.1 client for malformed input, and the differential-test kit ([`observe`],
//! [`Observation`], [`assert_same`]) that runs the same request through Envoy and extproxy.
//!
//! Reusable from other test files with `#[path = "http_support/mod.rs"] mod http_support;`.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use testenv::{EchoHttpUpstream, HttpVersion, ProxyProcess, TestRequest, TestResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The YAML shared by the HCM tests (see the file for its routes).
pub const BASIC_YAML: &str = include_str!("../http/basic.yaml");

// === Envoy and extproxy side by side ===

/// Envoy 1.40 and extproxy started as processes, each from its own YAML, and the address of
/// each one's `ingress` listener: how every HTTP differential test begins.
pub struct Pair {
    pub envoy: ProxyProcess,
    pub ours: ProxyProcess,
    pub envoy_addr: SocketAddr,
    pub ours_addr: SocketAddr,
}

impl Pair {
    pub async fn start(envoy_yaml: &str, ours_yaml: &str) -> Pair {
        let envoy = ProxyProcess::envoy(envoy_yaml).await.expect("envoy");
        let ours = ProxyProcess::start(
            std::path::Path::new(env!("CARGO_BIN_EXE_extproxy")),
            ours_yaml,
            &[],
        )
        .await
        .expect("extproxy");
        let envoy_addr = envoy.listener_addr("ingress").await;
        let ours_addr = ours.listener_addr("ingress").await;
        Pair {
            envoy,
            ours,
            envoy_addr,
            ours_addr,
        }
    }
}

// === In-process proxy ===

/// extproxy running in this process; stops on drop.
pub struct TestProxy {
    listeners: BTreeMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
    stats: extproxy::stats::Store,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    /// Binds and runs the bootstrap `yaml` (port-0 listeners).
    pub async fn start(yaml: &str) -> TestProxy {
        let bootstrap = extproxy::config::parse(yaml).unwrap_or_else(|e| panic!("config: {e}"));
        let server = extproxy::Server::bind(&bootstrap, extproxy::Options::default())
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let mut listeners = BTreeMap::new();
        for l in &bootstrap.static_resources.listeners {
            if let Some(a) = server.listener_addr(&l.name) {
                listeners.insert(l.name.clone(), a);
            }
        }
        let admin = server.admin_addr();
        let stats = server.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestProxy {
            listeners,
            admin,
            stats,
            shutdown,
            task: Some(task),
        }
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners[name]
    }

    /// The `ingress` listener.
    pub fn ingress(&self) -> SocketAddr {
        self.addr("ingress")
    }

    /// The admin address.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// A counter or gauge value (0 if unregistered).
    pub fn stat(&self, name: &str) -> i64 {
        self.stats.get(name).unwrap_or(0)
    }

    /// Whether a stat is registered.
    pub fn has_stat(&self, name: &str) -> bool {
        self.stats.get(name).is_some()
    }

    /// Waits until `name` reaches `at_least` (counters are bumped when streams end, which can
    /// trail the client's view of the response).
    pub async fn wait_stat(&self, name: &str, at_least: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.stat(name) < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} = {} (< {at_least})",
                self.stat(name)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// === Helper servers ===

/// The ports `basic.yaml` needs, with the servers behind them (kept alive by this struct).
pub struct Upstreams {
    /// Echo upstream (HTTP/1.1 + h2c).
    pub echo: EchoHttpUpstream,
    /// A port where nothing listens.
    pub dead_port: u16,
    /// Accepts connections and never answers.
    pub blackhole: Blackhole,
}

impl Upstreams {
    /// Starts them all.
    pub async fn start() -> Upstreams {
        Upstreams {
            echo: testenv::echo_http_upstream().await,
            dead_port: dead_port(),
            blackhole: Blackhole::start().await,
        }
    }

    /// `basic.yaml` rendered for these upstreams and `codec`.
    pub fn basic_yaml(&self, codec: &str) -> String {
        self.render(BASIC_YAML, codec)
    }

    /// Renders a template with UPSTREAM_PORT, DEAD_PORT, BLACKHOLE_PORT and CODEC.
    pub fn render(&self, template: &str, codec: &str) -> String {
        testenv::render(
            template,
            &[
                ("UPSTREAM_PORT", &self.echo.addr().port().to_string()),
                ("DEAD_PORT", &self.dead_port.to_string()),
                ("BLACKHOLE_PORT", &self.blackhole.addr.port().to_string()),
                ("CODEC", codec),
            ],
        )
    }
}

/// A port that refuses connections.
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A server that accepts, reads everything and never writes; counts accepted connections.
pub struct Blackhole {
    /// Bound address.
    pub addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    /// Starts one on 127.0.0.1:0.
    pub async fn start() -> Blackhole {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                conns.spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
        });
        Blackhole {
            addr,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === Raw HTTP/1.1 ===

/// What a raw exchange produced.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Everything received, as text.
    pub text: String,
    /// Whether the proxy closed the connection (read returned 0 or reset).
    pub closed: bool,
}

impl RawResponse {
    /// The status code of the first response.
    pub fn status(&self) -> u16 {
        self.text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The body of the first response (after the blank line).
    pub fn body(&self) -> &str {
        self.text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("")
    }

    /// The value of a header of the first response.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Writes `bytes` on a new connection and reads until the peer closes or `wait` passes
/// without data.
pub async fn raw_http1(addr: SocketAddr, bytes: &[u8], wait: Duration) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let closed = loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    RawResponse {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

// === Differential observations ===

/// What one request looked like from both ends, normalised so that two proxies can be
/// compared: values that are random or timing-dependent are replaced with placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Response status.
    pub status: u16,
    /// Response headers (lower-case names, sorted by name; per-name value order kept).
    pub headers: Vec<(String, String)>,
    /// Response body (UUIDs replaced by `<uuid>`).
    pub body: String,
    /// Response trailers, sorted.
    pub trailers: Vec<(String, String)>,
    /// The request the upstream received, if this request reached it.
    pub upstream: Option<UpstreamView>,
}

/// The upstream's view of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamView {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, sorted by name, values normalised.
    pub headers: Vec<(String, String)>,
    /// Body length.
    pub body_len: usize,
    /// Trailers, sorted.
    pub trailers: Vec<(String, String)>,
}

/// Replaces UUIDs with `<uuid>`.
pub fn mask_uuids(s: &str) -> String {
    let re = regex::Regex::new("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
        .expect("regex");
    re.replace_all(s, "<uuid>").into_owned()
}

fn normalise_header(name: &str, value: &str) -> String {
    match name {
        "date" => "<date>".into(),
        "x-envoy-upstream-service-time" => "<ms>".into(),
        _ => mask_uuids(value),
    }
}

fn sorted(headers: &http::HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            let name = k.as_str().to_string();
            let value = normalise_header(&name, &String::from_utf8_lossy(v.as_bytes()));
            (name, value)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Builds an [`Observation`] from a response and what the upstream recorded since
/// `seen_before` requests.
pub fn observation(
    resp: &TestResponse,
    upstream: &EchoHttpUpstream,
    seen_before: usize,
) -> Observation {
    let reqs = upstream.requests();
    let up = reqs.get(seen_before).map(|r| {
        let mut headers: Vec<(String, String)> = r
            .headers
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), normalise_header(k, v))))
            .collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        let mut trailers: Vec<(String, String)> = r
            .trailers
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())))
            .collect();
        trailers.sort();
        UpstreamView {
            method: r.method.clone(),
            path: r.path.clone(),
            headers,
            body_len: r.body.len(),
            trailers,
        }
    });
    Observation {
        status: resp.status,
        headers: sorted(&resp.headers),
        body: mask_uuids(&String::from_utf8_lossy(&resp.body)),
        trailers: sorted(&resp.trailers),
        upstream: up,
    }
}

/// Sends `req` to `proxy` and observes the result at both ends.
pub async fn observe(
    proxy: SocketAddr,
    upstream: &EchoHttpUpstream,
    req: &TestRequest,
    version: HttpVersion,
) -> Observation {
    let before = upstream.requests().len();
    let resp = req
        .send(proxy, version)
        .await
        .unwrap_or_else(|e| panic!("{} {}: {e:#}", req.method, req.path));
    // The echo records a request when its body ended, which precedes its response.
    observation(&resp, upstream, before)
}

/// Asserts two observations are equal, with a readable diff of what differs.
pub fn assert_same(scenario: &str, envoy: &Observation, extproxy: &Observation) {
    if envoy == extproxy {
        return;
    }
    let mut diff = String::new();
    if envoy.status != extproxy.status {
        diff += &format!(
            "  status: envoy {} extproxy {}\n",
            envoy.status, extproxy.status
        );
    }
    list_diff(
        &mut diff,
        "response header",
        &envoy.headers,
        &extproxy.headers,
    );
    if envoy.body != extproxy.body {
        diff += &format!(
            "  body:\n    envoy    {:?}\n    extproxy {:?}\n",
            envoy.body, extproxy.body
        );
    }
    list_diff(
        &mut diff,
        "response trailer",
        &envoy.trailers,
        &extproxy.trailers,
    );
    match (&envoy.upstream, &extproxy.upstream) {
        (Some(a), Some(b)) => {
            if a.method != b.method || a.path != b.path || a.body_len != b.body_len {
                diff += &format!(
                    "  upstream request: envoy {} {} ({} B) extproxy {} {} ({} B)\n",
                    a.method, a.path, a.body_len, b.method, b.path, b.body_len
                );
            }
            list_diff(&mut diff, "upstream header", &a.headers, &b.headers);
            list_diff(&mut diff, "upstream trailer", &a.trailers, &b.trailers);
        }
        (a, b) => {
            if a.is_some() != b.is_some() {
                diff += &format!(
                    "  reached upstream: envoy {} extproxy {}\n",
                    a.is_some(),
                    b.is_some()
                );
            }
        }
    }
    panic!("{scenario}: Envoy and extproxy differ:\n{diff}");
}

fn list_diff(out: &mut String, what: &str, a: &[(String, String)], b: &[(String, String)]) {
    for x in a.iter().filter(|x| !b.contains(x)) {
        *out += &format!("  {what} only from envoy:    {}: {}\n", x.0, x.1);
    }
    for x in b.iter().filter(|x| !a.contains(x)) {
        *out += &format!("  {what} only from extproxy: {}: {}\n", x.0, x.1);
    }
}

/// Adds lines to the HCM config of a `basic.yaml`-shaped bootstrap (after `stat_prefix`).
pub fn with_hcm_options(yaml: &str, lines: &[&str]) -> String {
    let indent = "\n          ";
    let extra: String = lines.iter().map(|l| format!("{indent}{l}")).collect();
    yaml.replacen(
        "stat_prefix: ingress_http",
        &format!("stat_prefix: ingress_http{extra}"),
        1,
    )
}
