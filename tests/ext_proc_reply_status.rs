//! The `:status` of ext_proc local replies, streamed (`streamed_immediate_response`) and whole
//! (`immediate_response`), when the processor sends one that is missing, informational,
//! unparsable or out of range: real Envoy 1.40 and extproxy run the same YAML and the same
//! processor, and what the client sees (HTTP/1.1 bytes, HTTP/2 response) must match.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ext_proc_support;
#[path = "http_support/mod.rs"]
mod http_support;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use ext_proc_support::{continue_for, immediate, kind, Processor, Step};
use http_support::{raw_http1, Pair};
use std::net::SocketAddr;
use std::time::Duration;
use testenv::{HttpVersion, ProxyProcess, TestRequest};

use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use pb::streamed_immediate_response::Response as Sir;

const YAML: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: upstream}}]
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {envoy_grpc: {cluster_name: proc}}
              message_timeout: 2s
              status_on_error: {code: 503}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    connect_timeout: 2s
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{UPSTREAM_PORT}}}}}}]}]
  - name: proc
    connect_timeout: 2s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: proc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{PROC_PORT}}}}}}]}]
"#;

/// The `:status` values tried: `None` leaves the header out.
const STATUSES: &[Option<&str>] = &[
    None,
    Some("100"),
    Some("101"),
    Some("199"),
    Some("200"),
    Some("204"),
    Some("299"),
    Some("599"),
    Some("600"),
    Some("999"),
    Some("1000"),
    Some("abc"),
    Some("20x"),
    Some(""),
];

fn hv(k: &str, v: &str) -> HeaderValue {
    HeaderValue {
        key: k.into(),
        value: String::new(),
        raw_value: v.as_bytes().to_vec(),
    }
}

fn sir(x: Sir) -> Step {
    Step::Send(pb::ProcessingResponse {
        response: Some(
            pb::processing_response::Response::StreamedImmediateResponse(
                pb::StreamedImmediateResponse { response: Some(x) },
            ),
        ),
        ..Default::default()
    })
}

/// A streamed local reply with `status`: headers, then (unless `headers_only`) a body chunk.
fn streamed_reply(status: Option<&str>, headers_only: bool) -> Vec<Step> {
    let mut headers = vec![hv("x-local", "yes")];
    if let Some(s) = status {
        headers.insert(0, hv(":status", s));
    }
    let mut steps = vec![sir(Sir::HeadersResponse(pb::HttpHeaders {
        headers: Some(HeaderMap { headers }),
        end_of_stream: headers_only,
        ..Default::default()
    }))];
    if !headers_only {
        steps.push(sir(Sir::BodyResponse(pb::StreamedBodyResponse {
            body: b"local-body".to_vec(),
            end_of_stream: true,
            ..Default::default()
        })));
    }
    steps
}

/// Scenario names: `s-<status>` (streamed, with a body), `h-<status>` (streamed, headers only),
/// `i-<code>` (a whole immediate response).
fn register(proc: &Processor) -> Vec<String> {
    let mut names = Vec::new();
    for (i, st) in STATUSES.iter().enumerate() {
        for (prefix, headers_only) in [("s", false), ("h", true)] {
            let name = format!("{prefix}-{i}");
            let st = st.map(str::to_string);
            proc.script(&name, move |_, r| {
                if kind(r) == "rh" {
                    streamed_reply(st.as_deref(), headers_only)
                } else {
                    vec![Step::Send(continue_for(r))]
                }
            });
            names.push(name);
        }
    }
    for code in [0u32, 100, 199, 200, 599, 600, 999, 1000] {
        let name = format!("i-{code}");
        proc.script(&name, move |_, r| {
            if kind(r) == "rh" {
                vec![Step::Send(immediate(
                    code,
                    "imm",
                    &[("x-local", "yes")],
                    "imm",
                ))]
            } else {
                vec![Step::Send(continue_for(r))]
            }
        });
        names.push(name);
    }
    names
}

/// What a client saw: the HTTP/1.1 bytes up to the body (volatile headers dropped) and whether
/// the connection closed, or the HTTP/2 status, body and error.
async fn observe(addr: SocketAddr, scenario: &str, version: HttpVersion) -> String {
    match version {
        HttpVersion::Http1 => {
            let req =
                format!("GET / HTTP/1.1\r\nhost: example.com\r\nx-scenario: {scenario}\r\n\r\n");
            let r = raw_http1(addr, req.as_bytes(), Duration::from_millis(700)).await;
            // The reason phrase of an unknown code and the case of chunk sizes are the
            // codecs' own (`Unknown` / `a` from Envoy, `<none>` / `A` from hyper).
            let text = r.text.to_ascii_lowercase();
            let kept: Vec<String> = text
                .split("\r\n")
                .enumerate()
                .map(|(i, l)| match i {
                    0 => l.split(' ').take(2).collect::<Vec<_>>().join(" "),
                    _ => l.to_string(),
                })
                .filter(|l| !l.starts_with("date:") && !l.starts_with("server:"))
                .collect();
            format!("{:?} closed={}", kept.join("|"), r.closed)
        }
        HttpVersion::Http2 => {
            let mut req = TestRequest::get("/").header("x-scenario", scenario);
            req.timeout = Duration::from_secs(3);
            match req.send(addr, version).await {
                Ok(r) => {
                    let mut h: Vec<String> = r
                        .headers
                        .iter()
                        .filter(|(k, _)| *k != "date" && *k != "server")
                        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes())))
                        .collect();
                    h.sort();
                    format!("{} {h:?} {:?}", r.status, String::from_utf8_lossy(&r.body))
                }
                Err(e) => format!("error: {}", root_cause(&e)),
            }
        }
    }
}

fn root_cause(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    if s.contains("timed out") {
        "timed out".into()
    } else if s.contains("reset") || s.contains("RST_STREAM") || s.contains("REFUSED") {
        "stream reset".into()
    } else {
        "connection error".into()
    }
}

/// The differences listed in docs/envoy-differences.md: Envoy's observation is checked, then
/// turned into what extproxy does.
fn documented(name: &str, v: HttpVersion, envoy: String) -> String {
    // `:status` 1000: Envoy writes it as is, an invalid status line (HTTP/2 clients fail the
    // connection); `http` has no such status, so extproxy answers 200.
    if ["s-10", "h-10", "i-1000"].contains(&name) {
        return match v {
            HttpVersion::Http1 => {
                assert!(envoy.starts_with("\"http/1.1 1000|"), "{name}: {envoy}");
                envoy.replacen("1000", "200", 1)
            }
            HttpVersion::Http2 => {
                assert_eq!(envoy, "error: connection error", "{name}");
                let body = if name.starts_with('i') {
                    "imm"
                } else if name.starts_with('s') {
                    "local-body"
                } else {
                    ""
                };
                let mut h = vec!["x-local=yes"];
                if name.starts_with('i') {
                    h = vec!["content-length=3", "content-type=text/plain", "x-local=yes"];
                }
                format!("200 {h:?} {body:?}")
            }
        };
    }
    // A 204 with a streamed body over HTTP/1.1: Envoy writes the body after the head, where
    // the client takes it for the start of the next response; extproxy sends no body.
    if name == "s-5" && v == HttpVersion::Http1 {
        assert!(envoy.contains("||local-body\""), "{envoy}");
        return envoy.replacen("||local-body\"", "||\"", 1);
    }
    envoy
}

async fn counters(p: &ProxyProcess) -> Vec<(String, i64)> {
    let prefix = "http.ingress.ext_proc.";
    p.stats()
        .await
        .into_iter()
        .filter(|(k, v)| k.starts_with(prefix) && *v != 0)
        .map(|(k, v)| (k[prefix.len()..].to_string(), v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_reply_status_matches_envoy() {
    let upstream = testenv::echo_http_upstream().await;
    let proc = Processor::start().await;
    let names = register(&proc);
    let yaml = testenv::render(
        YAML,
        &[
            ("UPSTREAM_PORT", &upstream.addr().port().to_string()),
            ("PROC_PORT", &proc.addr.port().to_string()),
        ],
    );
    let pair = Pair::start(&yaml, &yaml).await;
    let mut diffs = Vec::new();
    for name in &names {
        for v in [HttpVersion::Http1, HttpVersion::Http2] {
            let e = observe(pair.envoy_addr, name, v).await;
            let x = observe(pair.ours_addr, name, v).await;
            if std::env::var("XP_SHOW").is_ok() {
                eprintln!("{name} {v:?}\n  envoy:    {e}\n  extproxy: {x}");
            }
            let e = documented(name, v, e);
            if e != x {
                diffs.push(format!("{name} {v:?}\n  envoy:    {e}\n  extproxy: {x}"));
            }
        }
    }
    let (ce, cx) = (counters(&pair.envoy).await, counters(&pair.ours).await);
    if ce != cx {
        diffs.push(format!("counters\n  envoy:    {ce:?}\n  extproxy: {cx:?}"));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// Extra headers in a streamed local reply (after `:status: 200`), one per scenario `x-<n>`:
/// they pass the configured mutation rules (`host`, `:authority` and `x-envoy-*` are dropped and
/// counted by default), and hop-by-hop ones are removed, as by Envoy.
const EXTRA: &[(&str, &str)] = &[
    ("x-envoy-foo", "1"),
    ("host", "evil"),
    (":authority", "evil"),
    ("X-Upper", "v"),
    ("content-length", "3"),
    ("server", "mine"),
    ("connection", "close"),
    ("transfer-encoding", "chunked"),
    (":path", "/x"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_reply_headers_match_envoy() {
    let upstream = testenv::echo_http_upstream().await;
    let proc = Processor::start().await;
    let mut names = Vec::new();
    for (i, (k, v)) in EXTRA.iter().enumerate() {
        let name = format!("x-{i}");
        let (k, v) = (k.to_string(), v.to_string());
        proc.script(&name, move |_, r| {
            if kind(r) != "rh" {
                return vec![Step::Send(continue_for(r))];
            }
            vec![
                sir(Sir::HeadersResponse(pb::HttpHeaders {
                    headers: Some(HeaderMap {
                        headers: vec![hv(":status", "200"), hv(&k, &v)],
                    }),
                    end_of_stream: false,
                    ..Default::default()
                })),
                sir(Sir::BodyResponse(pb::StreamedBodyResponse {
                    body: b"local-body".to_vec(),
                    end_of_stream: true,
                    ..Default::default()
                })),
            ]
        });
        names.push(name);
    }
    let yaml = testenv::render(
        YAML,
        &[
            ("UPSTREAM_PORT", &upstream.addr().port().to_string()),
            ("PROC_PORT", &proc.addr.port().to_string()),
        ],
    );
    let pair = Pair::start(&yaml, &yaml).await;
    let mut diffs = Vec::new();
    for name in &names {
        for v in [HttpVersion::Http1, HttpVersion::Http2] {
            let e = observe(pair.envoy_addr, name, v).await;
            let x = observe(pair.ours_addr, name, v).await;
            if std::env::var("XP_SHOW").is_ok() {
                eprintln!("{name} {v:?}\n  envoy:    {e}\n  extproxy: {x}");
            }
            let e = if name == "x-4" && v == HttpVersion::Http1 {
                // `content-length: 3` on a 10-byte streamed body (docs/envoy-differences.md):
                // Envoy writes all 10 bytes, the last 7 where the client expects the next
                // response; extproxy sends the 3 the header announced.
                assert!(e.contains("content-length: 3||local-body\""), "{e}");
                e.replacen("||local-body\"", "||loc\"", 1)
            } else {
                e
            };
            if e != x {
                diffs.push(format!("{name} {v:?}\n  envoy:    {e}\n  extproxy: {x}"));
            }
        }
    }
    let (ce, cx) = (counters(&pair.envoy).await, counters(&pair.ours).await);
    if ce != cx {
        diffs.push(format!("counters\n  envoy:    {ce:?}\n  extproxy: {cx:?}"));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
