//! End-to-end tests of `envoy.filters.http.ext_proc` through the extproxy binary: listener →
//! HCM → ext_proc filter(s) → router → echo upstream, over HTTP/1.1 and HTTP/2, for what the
//! differential tests cannot show (extproxy-only behaviour, several filters, side-stream
//! connection sharing, Unix sockets, large bodies, bad processors).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ext_proc_support;

use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use ext_proc_support::*;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;
use testenv::{echo_http_upstream, EchoHttpUpstream, HttpVersion, ProxyProcess, TestRequest};

const VERSIONS: [HttpVersion; 2] = [HttpVersion::Http1, HttpVersion::Http2];

fn ext_proc(scenario: &str, extra: Value) -> Value {
    let mut f = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "proc"}, "initial_metadata": [{"key": "x-scenario", "value": scenario}]},
        "message_timeout": "2s",
    });
    if let (Some(f), Value::Object(extra)) = (f.as_object_mut(), extra) {
        f.extend(extra);
    }
    json!({"name": "envoy.filters.http.ext_proc", "typed_config": f})
}

fn proc_address(p: &Processor, unix: Option<&std::path::Path>) -> Value {
    match unix {
        Some(path) => json!({"pipe": {"path": path.display().to_string()}}),
        None => json!({"socket_address": {"address": "127.0.0.1", "port_value": p.addr.port()}}),
    }
}

fn bootstrap(
    filters: Vec<Value>,
    routes: Value,
    up: &EchoHttpUpstream,
    proc_addr: Value,
) -> String {
    let mut http_filters = filters;
    // Several ext_proc filters need distinct names.
    for (i, f) in http_filters.iter_mut().enumerate() {
        if i > 0 {
            f["name"] = json!(format!("ext_proc_{i}"));
        }
    }
    http_filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let v = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": [
                {"name": "upstream", "type": "STATIC", "connect_timeout": "2s", "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": up.addr().port()}}}}]}]}},
                {"name": "proc", "type": "STATIC", "connect_timeout": "2s",
                 "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "explicit_http_config": {"http2_protocol_options": {}}}},
                 "load_assignment": {"cluster_name": "proc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": proc_addr}}]}]}},
            ],
        },
    });
    serde_json::to_string_pretty(&v).unwrap()
}

fn default_routes() -> Value {
    json!([{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}])
}

async fn extproxy(yaml: &str) -> ProxyProcess {
    ProxyProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_extproxy")),
        yaml,
        &[],
    )
    .await
    .expect("extproxy starts")
}

fn tag(
    name: &'static str,
    value: &'static str,
) -> impl Fn(&mut Ctx, &pb::ProcessingRequest) -> Vec<Step> {
    move |_, r| {
        let common = pb::CommonResponse {
            header_mutation: Some(mutation(&[(name, value)], &[])),
            ..Default::default()
        };
        vec![Step::Send(with_common(r, common, None))]
    }
}

#[tokio::test]
async fn two_filters_each_with_its_side_stream_and_stats() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    p.script("first", tag("x-first", "1"));
    p.script("second", tag("x-second", "2"));
    let yaml = bootstrap(
        vec![
            ext_proc("first", json!({"stat_prefix": "a"})),
            ext_proc("second", json!({"stat_prefix": "b"})),
        ],
        default_routes(),
        &up,
        proc_address(&p, None),
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    for v in VERSIONS {
        let resp = TestRequest::post("/x", "body")
            .header("x-echo-mode", "raw")
            .send(addr, v)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "body");
        assert_eq!(resp.header("x-first"), Some("1"));
        assert_eq!(resp.header("x-second"), Some("2"));
        let seen = up.last_request();
        assert_eq!(seen.header("x-first"), Some("1"));
        assert_eq!(seen.header("x-second"), Some("2"));
    }
    // The second filter saw the first one's mutation on the request path; on the response path
    // the order is reversed.
    let second = &p.streams("second")[0];
    assert!(header(&second.messages[0], "x-first").is_some());
    let first = &p.streams("first")[0];
    assert!(header(&first.messages[1], "x-second").is_some());
    for prefix in ["a", "b"] {
        proxy
            .wait_counter(
                &format!("http.ingress.ext_proc.{prefix}.streams_closed"),
                2,
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(
            proxy
                .counter(&format!("http.ingress.ext_proc.{prefix}.stream_msgs_sent"))
                .await,
            4
        );
        assert_eq!(
            proxy
                .counter(&format!("http.ingress.ext_proc.{prefix}.streams_started"))
                .await,
            2
        );
    }
}

#[tokio::test]
async fn side_streams_share_pooled_connections() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    p.script("shared", |_, r| {
        vec![
            Step::Sleep(Duration::from_millis(50)),
            Step::Send(continue_for(r)),
        ]
    });
    let yaml = bootstrap(
        vec![ext_proc("shared", json!({}))],
        default_routes(),
        &up,
        proc_address(&p, None),
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let v = VERSIONS[i % 2];
        tasks.push(tokio::spawn(async move {
            TestRequest::get("/s")
                .header("x-echo-mode", "raw")
                .send(addr, v)
                .await
                .map(|r| r.status)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert_eq!(p.streams("shared").len(), 40);
    let conns = p.connections.load(Ordering::SeqCst);
    assert!(
        conns <= 4,
        "40 concurrent side streams used {conns} connections"
    );
}

#[tokio::test]
async fn processor_on_a_unix_socket() {
    let up = echo_http_upstream().await;
    let dir = testenv::TempDir::new("xp-http-ext-proc").unwrap();
    let path = dir.join("proc.sock");
    let p = Processor::start_unix(&path).await;
    p.script("unix", tag("x-via", "unix"));
    let yaml = bootstrap(
        vec![ext_proc("unix", json!({}))],
        default_routes(),
        &up,
        proc_address(&p, Some(&path)),
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    for v in VERSIONS {
        let resp = TestRequest::get("/u")
            .header("x-echo-mode", "raw")
            .send(addr, v)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-via"), Some("unix"));
        assert_eq!(up.last_request().header("x-via"), Some("unix"));
    }
}

#[tokio::test]
async fn large_streamed_bodies_both_ways_are_intact() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    p.script("big", |_, r| match body_of(r) {
        Some((b, _)) => {
            let common = pb::CommonResponse {
                body_mutation: Some(pb::BodyMutation {
                    mutation: Some(pb::body_mutation::Mutation::Body(upper(b))),
                }),
                ..Default::default()
            };
            vec![Step::Send(with_common(r, common, None))]
        }
        None => vec![Step::Send(continue_for(r))],
    });
    let yaml = bootstrap(
        vec![ext_proc(
            "big",
            json!({"processing_mode": {"request_body_mode": "STREAMED", "response_body_mode": "STREAMED"}}),
        )],
        default_routes(),
        &up,
        proc_address(&p, None),
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    let body: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    for v in VERSIONS {
        let resp = TestRequest::post("/big", body.clone())
            .header("x-echo-mode", "raw")
            .send(addr, v)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        // Upper-cased on the way in, upper-cased (no-op) on the way out.
        assert_eq!(resp.body.len(), body.len());
        assert_eq!(resp.text(), body.to_ascii_uppercase());
        let seen = up.last_request();
        assert_eq!(seen.body.len(), body.len());
        assert!(
            seen.header("content-length").is_none(),
            "STREAMED strips content-length"
        );
    }
}

#[tokio::test]
async fn streamed_body_read_ahead_goes_out_in_large_chunks() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    // The headers answer waits, so the client's body piles up in the sockets; the proxy stops
    // reading at the 32 KiB buffer limit and then catches up.
    p.script("chunks", |_, r| match kind(r) {
        "rh" => vec![
            Step::Sleep(Duration::from_millis(300)),
            Step::Send(continue_for(r)),
        ],
        _ => vec![Step::Send(continue_for(r))],
    });
    let mut yaml: Value = serde_json::from_str(&bootstrap(
        vec![ext_proc(
            "chunks",
            json!({"processing_mode": {"request_body_mode": "STREAMED"}}),
        )],
        default_routes(),
        &up,
        proc_address(&p, None),
    ))
    .unwrap();
    yaml["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = json!(32768);
    let proxy = extproxy(&yaml.to_string()).await;
    let addr = proxy.listener_addr("ingress").await;
    let body: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let resp = TestRequest::post("/chunks", body.clone())
        .header("x-echo-mode", "raw")
        .send(addr, HttpVersion::Http1)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(up.last_request().body, body.as_bytes());
    let sizes: Vec<usize> = p.streams("chunks")[0]
        .messages
        .iter()
        .filter_map(|m| body_of(m).map(|(b, _)| b.len()))
        .collect();
    // After the queued first chunk, each read of what the client sent ahead is one message:
    // reads grow past 16 KiB while they fill their buffer (Envoy reads until the socket is
    // empty), rather than 64 messages per MiB.
    let largest = sizes.iter().skip(1).max().copied().unwrap_or(0);
    assert!(largest > 32 * 1024, "body messages: {sizes:?}");
}

#[tokio::test]
async fn side_stream_offers_large_http2_frames() {
    use tokio::io::AsyncReadExt;
    let up = echo_http_upstream().await;
    // A "processor" that only records the client's HTTP/2 preface and first SETTINGS frame.
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = json!({"socket_address": {"address": "127.0.0.1", "port_value": raw.local_addr().unwrap().port()}});
    let settings = tokio::spawn(async move {
        let (mut s, _) = raw.accept().await.unwrap();
        let mut head = [0u8; 24 + 9];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head[24 + 3], 0x4, "the first frame is SETTINGS");
        let len = u32::from_be_bytes([0, head[24], head[25], head[26]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        payload
            .chunks(6)
            .map(|e| {
                (
                    u16::from_be_bytes([e[0], e[1]]),
                    u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
                )
            })
            .collect::<Vec<_>>()
    });
    let yaml = bootstrap(
        vec![ext_proc("frames", json!({"failure_mode_allow": true}))],
        default_routes(),
        &up,
        raw_addr,
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    let req = tokio::spawn(async move {
        TestRequest::get("/frames")
            .send(addr, HttpVersion::Http1)
            .await
    });
    let settings = tokio::time::timeout(Duration::from_secs(10), settings)
        .await
        .unwrap()
        .unwrap();
    // SETTINGS_MAX_FRAME_SIZE (0x5): a processor's large body replies come in few frames (few
    // reads here, few writes there) rather than 16 KiB ones, h2's default.
    let max_frame = settings.iter().find(|(id, _)| *id == 0x5).map(|(_, v)| *v);
    assert_eq!(max_frame, Some(256 * 1024), "{settings:?}");
    req.abort();
}

#[tokio::test]
async fn crlf_in_a_mutation_is_rejected_counted_and_never_forwarded() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    p.script("crlf", |_, r| {
        let m = mutation(&[("x-evil", "a\r\nx-smuggled: 1")], &[]);
        vec![Step::Send(with_common(
            r,
            pb::CommonResponse {
                header_mutation: Some(m),
                ..Default::default()
            },
            None,
        ))]
    });
    p.script("nul", |_, r| {
        let m = mutation(&[("x-nul\0", "v")], &[]);
        vec![Step::Send(with_common(
            r,
            pb::CommonResponse {
                header_mutation: Some(m),
                ..Default::default()
            },
            None,
        ))]
    });
    for scenario in ["crlf", "nul"] {
        let yaml = bootstrap(
            vec![ext_proc(scenario, json!({}))],
            default_routes(),
            &up,
            proc_address(&p, None),
        );
        let proxy = extproxy(&yaml).await;
        let addr = proxy.listener_addr("ingress").await;
        let before = up.requests().len();
        for v in VERSIONS {
            let resp = TestRequest::get("/c").send(addr, v).await.unwrap();
            assert_eq!(resp.status, 500);
            assert!(resp.header("x-smuggled").is_none());
        }
        assert_eq!(up.requests().len(), before, "nothing reached the upstream");
        assert_eq!(
            proxy
                .counter("http.ingress.ext_proc.rejected_header_mutations")
                .await,
            2
        );
    }
}

#[tokio::test]
async fn processor_down_fails_closed_or_open() {
    let up = echo_http_upstream().await;
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let addr_v = json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    for (open, status) in [(false, 500), (true, 200)] {
        let yaml = bootstrap(
            vec![ext_proc("down", json!({"failure_mode_allow": open}))],
            default_routes(),
            &up,
            addr_v.clone(),
        );
        let proxy = extproxy(&yaml).await;
        let addr = proxy.listener_addr("ingress").await;
        for v in VERSIONS {
            let resp = TestRequest::get("/d")
                .header("x-echo-mode", "raw")
                .send(addr, v)
                .await
                .unwrap();
            assert_eq!(resp.status, status, "failure_mode_allow: {open}");
        }
        assert_eq!(
            proxy.counter("http.ingress.ext_proc.streams_failed").await,
            2
        );
    }
}

#[tokio::test]
async fn dynamic_metadata_flows_from_one_filter_to_the_next() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    p.script("writer", |_, r| {
        let mut resp = continue_for(r);
        let inner = envoy_types::pb::google::protobuf::Struct {
            fields: [(
                "user".to_string(),
                envoy_types::pb::google::protobuf::Value {
                    kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                        "alice".into(),
                    )),
                },
            )]
            .into_iter()
            .collect(),
        };
        let ns = |s: envoy_types::pb::google::protobuf::Struct| {
            envoy_types::pb::google::protobuf::Value {
                kind: Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(
                    s,
                )),
            }
        };
        resp.dynamic_metadata = Some(envoy_types::pb::google::protobuf::Struct {
            fields: [
                ("auth".to_string(), ns(inner.clone())),
                ("ignored".to_string(), ns(inner)),
            ]
            .into_iter()
            .collect(),
        });
        vec![Step::Send(resp)]
    });
    p.script("reader", |_, r| vec![Step::Send(continue_for(r))]);
    let yaml = bootstrap(
        vec![
            ext_proc(
                "writer",
                json!({"metadata_options": {"receiving_namespaces": {"untyped": ["auth"]}}, "processing_mode": {"response_header_mode": "SKIP"}}),
            ),
            ext_proc(
                "reader",
                json!({"metadata_options": {"forwarding_namespaces": {"untyped": ["auth", "ignored", "absent"]}}, "processing_mode": {"response_header_mode": "SKIP"}}),
            ),
        ],
        default_routes(),
        &up,
        proc_address(&p, None),
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    let resp = TestRequest::get("/m")
        .header("x-echo-mode", "raw")
        .send(addr, HttpVersion::Http1)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let md = p.streams("reader")[0].messages[0]
        .metadata_context
        .clone()
        .unwrap();
    let keys: Vec<_> = md.filter_metadata.keys().cloned().collect();
    assert_eq!(
        keys,
        ["auth"],
        "only received namespaces are written; absent ones are omitted"
    );
}

#[tokio::test]
async fn per_route_grpc_initial_metadata_selects_the_processor_behaviour() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    p.script("base", tag("x-which", "base"));
    p.script("routed", tag("x-which", "routed"));
    let per_route = json!({"envoy.filters.http.ext_proc": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
        "overrides": {"grpc_initial_metadata": [{"key": "x-scenario", "value": "routed"}, {"key": "x-extra", "value": "1"}]}
    }});
    let routes = json!([
        {"match": {"prefix": "/routed"}, "route": {"cluster": "upstream"}, "typed_per_filter_config": per_route},
        {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}},
    ]);
    let yaml = bootstrap(
        vec![ext_proc("base", json!({}))],
        routes,
        &up,
        proc_address(&p, None),
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    for v in VERSIONS {
        let a = TestRequest::get("/routed/x").send(addr, v).await.unwrap();
        assert_eq!(a.header("x-which"), Some("routed"));
        let b = TestRequest::get("/other").send(addr, v).await.unwrap();
        assert_eq!(b.header("x-which"), Some("base"));
    }
    let routed = &p.streams("routed")[0];
    assert!(routed
        .metadata
        .iter()
        .any(|(k, v)| k == "x-extra" && v == "1"));
}

#[tokio::test]
async fn full_duplex_both_directions() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    p.script("fd", |_, r| match body_of(r) {
        Some((b, eos)) => vec![
            Step::Send(streamed(r, &upper(b), false)),
            Step::Send(streamed(r, b"|", eos)),
        ],
        None if kind(r) == "rt" || kind(r) == "st" => vec![Step::Send(continue_for(r))],
        None => vec![Step::Send(continue_for(r))],
    });
    let yaml = bootstrap(
        vec![ext_proc(
            "fd",
            json!({"processing_mode": {"request_body_mode": "FULL_DUPLEX_STREAMED", "request_trailer_mode": "SEND", "response_body_mode": "FULL_DUPLEX_STREAMED", "response_trailer_mode": "SEND"}}),
        )],
        default_routes(),
        &up,
        proc_address(&p, None),
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    for v in VERSIONS {
        let resp = TestRequest::post("/fd", "")
            .chunked(&["ab", "cd"], Duration::from_millis(20))
            .header("x-echo-mode", "raw")
            .send(addr, v)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        let seen = up.last_request();
        let up_body = String::from_utf8_lossy(&seen.body).into_owned();
        assert_eq!(up_body.replace('|', ""), "ABCD", "{up_body}");
        assert!(
            resp.text().replace('|', "").starts_with("ABCD"),
            "{}",
            resp.text()
        );
    }
}

#[tokio::test]
async fn slow_processor_times_out_with_504_and_late_replies_are_ignored() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    p.script("slow", |_, r| {
        vec![
            Step::Sleep(Duration::from_millis(400)),
            Step::Send(continue_for(r)),
            Step::Send(continue_for(r)),
        ]
    });
    let yaml = bootstrap(
        vec![ext_proc("slow", json!({"message_timeout": "0.1s"}))],
        default_routes(),
        &up,
        proc_address(&p, None),
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    for v in VERSIONS {
        let resp = TestRequest::get("/slow").send(addr, v).await.unwrap();
        assert_eq!(resp.status, 504);
        assert!(resp.body.is_empty());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        proxy
            .counter("http.ingress.ext_proc.message_timeouts")
            .await,
        2
    );
    assert_eq!(
        proxy
            .counter("http.ingress.ext_proc.spurious_msgs_received")
            .await,
        0
    );
}

#[tokio::test]
async fn observability_mode_does_not_wait_and_defers_the_close() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    // A slow processor: each message takes 300 ms; its answers are ignored anyway.
    p.script("obs", |_, r| {
        vec![
            Step::Sleep(Duration::from_millis(300)),
            Step::Send(continue_for(r)),
        ]
    });
    let yaml = bootstrap(
        vec![ext_proc(
            "obs",
            json!({"observability_mode": true, "deferred_close_timeout": "3s", "processing_mode": {"request_body_mode": "STREAMED"}}),
        )],
        default_routes(),
        &up,
        proc_address(&p, None),
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    for v in VERSIONS {
        let start = std::time::Instant::now();
        let resp = TestRequest::post("/o", "observed")
            .header("x-echo-mode", "raw")
            .send(addr, v)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "observed");
        assert!(
            start.elapsed() < Duration::from_millis(250),
            "the request did not wait: {:?}",
            start.elapsed()
        );
    }
    // The side streams outlive the requests and deliver everything (headers, body, response headers).
    let done = |s: &StreamLog| s.messages.last().is_some_and(|m| kind(m) == "sh");
    for _ in 0..100 {
        if p.streams("obs").len() == 2 && p.streams("obs").iter().all(done) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let streams = p.streams("obs");
    assert_eq!(streams.len(), 2);
    for s in &streams {
        let kinds: Vec<_> = s.messages.iter().map(kind).collect();
        assert_eq!(kinds.first(), Some(&"rh"));
        assert_eq!(kinds.last(), Some(&"sh"), "{kinds:?}");
        let body: Vec<u8> = s
            .messages
            .iter()
            .filter_map(body_of)
            .flat_map(|(b, _)| b.to_vec())
            .collect();
        assert_eq!(body, b"observed");
        assert!(s
            .messages
            .iter()
            .filter_map(body_of)
            .next_back()
            .is_some_and(|(_, eos)| eos));
        assert!(s.messages.iter().all(|m| m.observability_mode));
    }
    assert_eq!(
        proxy
            .counter("http.ingress.ext_proc.stream_msgs_received")
            .await,
        0
    );
}

#[tokio::test]
async fn processor_crash_mid_body_fails_the_request() {
    let up = echo_http_upstream().await;
    let p = Processor::start().await;
    let relay = Relay::start(p.addr).await;
    // Answers the headers, then holds the body: the connection dies meanwhile.
    p.script("crash", |_, r| match kind(r) {
        "rh" => vec![Step::Send(continue_for(r))],
        _ => vec![Step::Sleep(Duration::from_secs(30))],
    });
    let relay_addr =
        json!({"socket_address": {"address": "127.0.0.1", "port_value": relay.addr.port()}});
    let yaml = bootstrap(
        vec![ext_proc(
            "crash",
            json!({"message_timeout": "10s", "processing_mode": {"request_body_mode": "STREAMED"}}),
        )],
        default_routes(),
        &up,
        relay_addr,
    );
    let proxy = extproxy(&yaml).await;
    let addr = proxy.listener_addr("ingress").await;
    let req = tokio::spawn(async move {
        TestRequest::post("/crash", "")
            .chunked(&["one", "two"], Duration::from_millis(200))
            .header("x-echo-mode", "raw")
            .send(addr, HttpVersion::Http2)
            .await
    });
    for _ in 0..100 {
        if p.streams("crash")
            .first()
            .is_some_and(|s| s.messages.len() >= 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.kill();
    let resp = req.await.unwrap().unwrap();
    assert_eq!(resp.status, 500, "{}", resp.text());
    assert_eq!(
        proxy.counter("http.ingress.ext_proc.streams_failed").await,
        1
    );
    assert!(
        up.requests()
            .iter()
            .all(|r| r.path != "/crash" || r.body != "onetwo"),
        "the upstream never got a complete body"
    );
}
