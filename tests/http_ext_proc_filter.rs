//! The HTTP ext_proc filter driven directly (no HCM): `decode` / `encode` with real side streams
//! to the scriptable processor on 127.0.0.1:0 (and on a Unix socket).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ext_proc_support;

use bytes::Bytes;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use ext_proc_support::*;
use extproxy::cluster::ClusterManager;
use extproxy::filter::http::ext_proc::{self, StreamFilter};
use extproxy::filter::http::{
    empty_body, full_body, Body, BuildContext, ConnectionInfo, StreamAbort, StreamContext,
};
use extproxy::stats::Store;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

struct Env {
    filter: Arc<ext_proc::Filter>,
    stats: Store,
}

fn env(processor_cluster: &str, filter_yaml: &str) -> Env {
    let cluster: extproxy::config::Cluster =
        extproxy::config::decode(serde_yaml_ng::from_str(processor_cluster).unwrap(), "c").unwrap();
    let stats = Store::new();
    let clusters = Arc::new(ClusterManager::build(&[cluster], &stats, 1).unwrap());
    let any: extproxy::config::RawAny = serde_yaml_ng::from_str(filter_yaml).unwrap();
    let ctx = BuildContext {
        filter_name: ext_proc::NAME,
        hcm_stat_prefix: "test",
        clusters: &clusters,
        stats: &stats,
        buffer_limit: 1024,
    };
    let filter = ext_proc::build(&any, "f", &ctx).unwrap();
    Env { filter, stats }
}

fn tcp_cluster(p: &Processor) -> String {
    format!(
        r#"
name: proc
type: STATIC
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {{http2_protocol_options: {{}}}}
load_assignment:
  cluster_name: proc
  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]
"#,
        p.addr.port()
    )
}

fn filter_yaml(scenario: &str, extra: &str) -> String {
    format!(
        r#"
"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
grpc_service:
  envoy_grpc: {{cluster_name: proc}}
  initial_metadata: [{{key: x-scenario, value: {scenario}}}]
message_timeout: 2s
{extra}
"#
    )
}

fn cx() -> StreamContext {
    StreamContext {
        connection: ConnectionInfo {
            id: 7,
            peer: "127.0.0.1:5555".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
        },
        stat_prefix: "test".into(),
        route: None,
        route_cache_cleared: false,
        dynamic_metadata: Default::default(),
        response_code_details: None,
        is_grpc: false,
        abort: StreamAbort::default(),
    }
}

fn request(body: Option<&'static str>) -> http::Request<Body> {
    let b = http::Request::builder()
        .method(if body.is_some() { "POST" } else { "GET" })
        .uri("http://example.com/p?q=1")
        .header("x-a", "1");
    match body {
        Some(s) => b
            .header("content-length", s.len().to_string())
            .body(full_body(s))
            .unwrap(),
        None => b.body(empty_body()).unwrap(),
    }
}

fn chunked_request(chunks: &[&'static str]) -> http::Request<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<http_body::Frame<Bytes>, extproxy::filter::http::BoxError>,
    >(8);
    let chunks: Vec<&'static str> = chunks.to_vec();
    tokio::spawn(async move {
        for c in chunks {
            let _ = tx
                .send(Ok(http_body::Frame::data(Bytes::from_static(c.as_bytes()))))
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .boxed_unsync();
    http::Request::builder()
        .method("POST")
        .uri("http://example.com/s")
        .body(body)
        .unwrap()
}

fn response(body: &'static str) -> http::Response<Body> {
    http::Response::builder()
        .status(200)
        .header("content-length", body.len().to_string())
        .body(full_body(body))
        .unwrap()
}

async fn collect(b: Body) -> Bytes {
    b.collect().await.unwrap().to_bytes()
}

fn counter(e: &Env, name: &str) -> i64 {
    e.stats
        .get(&format!("http.test.ext_proc.{name}"))
        .unwrap_or(-1)
}

async fn eventually(f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn headers_both_ways_with_mutations() {
    let p = Processor::start().await;
    p.script("hdrs", |_, req| {
        let common = pb::CommonResponse {
            header_mutation: Some(mutation(&[("x-added", "yes"), (":path", "/new")], &["x-a"])),
            ..Default::default()
        };
        vec![Step::Send(with_common(req, common, None))]
    });
    let e = env(&tcp_cluster(&p), &filter_yaml("hdrs", ""));
    let mut f = StreamFilter::new(e.filter.clone());
    let mut cx = cx();
    let req = f.decode(request(None), &mut cx).await.unwrap();
    assert_eq!(req.uri().path(), "/new");
    assert_eq!(req.headers()["x-added"], "yes");
    assert!(!req.headers().contains_key("x-a"));
    let resp = f.encode(response("abc"), &mut cx).await.unwrap();
    assert_eq!(resp.headers()["x-added"], "yes");
    assert_eq!(collect(resp.into_body()).await, "abc");
    let s = &p.streams("hdrs")[0];
    let kinds: Vec<_> = s.messages.iter().map(describe).collect();
    assert_eq!(kinds, ["rh!", "sh"]);
    assert_eq!(
        header_names(&s.messages[0])[..4],
        [":authority", ":path", ":method", ":scheme"]
    );
    assert!(s.messages[0].protocol_config.is_some());
    assert!(s.messages[1].protocol_config.is_none());
    assert!(s
        .metadata
        .iter()
        .any(|(k, v)| k == "x-envoy-internal" && v == "true"));
    assert_eq!(counter(&e, "stream_msgs_sent"), 2);
    assert_eq!(counter(&e, "stream_msgs_received"), 2);
    assert_eq!(counter(&e, "streams_started"), 1);
    drop(f);
    eventually(|| counter(&e, "streams_closed") == 1).await;
}

#[tokio::test]
async fn buffered_body_replaced_with_matching_content_length() {
    let p = Processor::start().await;
    p.script("buf", |_, req| {
        let common = match kind(req) {
            "rh" => pb::CommonResponse {
                header_mutation: Some(mutation(&[("content-length", "5")], &[])),
                ..Default::default()
            },
            "rb" => pb::CommonResponse {
                body_mutation: Some(body("HELLO")),
                ..Default::default()
            },
            _ => Default::default(),
        };
        vec![Step::Send(with_common(req, common, None))]
    });
    let e = env(
        &tcp_cluster(&p),
        &filter_yaml(
            "buf",
            "processing_mode: {request_body_mode: BUFFERED, response_header_mode: SKIP}",
        ),
    );
    let mut f = StreamFilter::new(e.filter.clone());
    let mut cx = cx();
    let req = f.decode(request(Some("hi")), &mut cx).await.unwrap();
    assert_eq!(req.headers()["content-length"], "5");
    assert_eq!(collect(req.into_body()).await, "HELLO");
    let kinds: Vec<_> = p.streams("buf")[0].messages.iter().map(describe).collect();
    assert_eq!(kinds, ["rh", "rb:hi!"]);
}

#[tokio::test]
async fn buffered_over_limit_is_413() {
    let p = Processor::start().await;
    let e = env(
        &tcp_cluster(&p),
        &filter_yaml("big", "processing_mode: {request_body_mode: BUFFERED}"),
    );
    let mut f = StreamFilter::new(e.filter.clone());
    let mut cx = cx();
    let big: &'static str = Box::leak("x".repeat(2000).into_boxed_str());
    let err = f.decode(request(Some(big)), &mut cx).await.unwrap_err();
    assert_eq!(err.status, 413);
}

#[tokio::test]
async fn streamed_chunks_are_transformed_in_order() {
    let p = Processor::start().await;
    p.script("up", |_, req| match body_of(req) {
        Some((b, _)) => {
            let common = pb::CommonResponse {
                body_mutation: Some(body(&String::from_utf8_lossy(&upper(b)))),
                ..Default::default()
            };
            vec![Step::Send(with_common(req, common, None))]
        }
        None => vec![Step::Send(continue_for(req))],
    });
    let e = env(
        &tcp_cluster(&p),
        &filter_yaml(
            "up",
            "processing_mode: {request_body_mode: STREAMED, response_header_mode: SKIP}",
        ),
    );
    let mut f = StreamFilter::new(e.filter.clone());
    let mut cx = cx();
    let req = f
        .decode(chunked_request(&["aaa", "bbb", "ccc"]), &mut cx)
        .await
        .unwrap();
    assert_eq!(collect(req.into_body()).await, "AAABBBCCC");
    let msgs = &p.streams("up")[0].messages;
    assert_eq!(describe(&msgs[0]), "rh");
    let sent: Vec<u8> = msgs[1..]
        .iter()
        .flat_map(|m| body_of(m).unwrap().0.to_vec())
        .collect();
    assert_eq!(sent, b"aaabbbccc");
    assert!(
        body_of(msgs.last().unwrap()).unwrap().1,
        "the last body message ends the stream"
    );
}

#[tokio::test]
async fn message_timeout_is_504() {
    let p = Processor::start().await;
    p.script("slow", |_, _| vec![Step::Sleep(Duration::from_secs(5))]);
    let e = env(
        &tcp_cluster(&p),
        &filter_yaml(
            "slow",
            "message_timeout: 0.1s\nstatus_on_error: {code: 503}",
        ),
    );
    let mut f = StreamFilter::new(e.filter.clone());
    let err = f.decode(request(None), &mut cx()).await.unwrap_err();
    assert_eq!(err.status, 504);
    assert_eq!(err.details, "ext_proc_error_per-message_timeout_exceeded");
    assert_eq!(counter(&e, "message_timeouts"), 1);
    assert_eq!(counter(&e, "immediate_responses_sent"), 1);
}

#[tokio::test]
async fn grpc_error_fails_closed_and_open() {
    let p = Processor::start().await;
    p.script("fail", |_, _| vec![Step::Fail(Status::internal("boom"))]);
    let e = env(
        &tcp_cluster(&p),
        &filter_yaml("fail", "status_on_error: {code: 503}"),
    );
    let err = StreamFilter::new(e.filter.clone())
        .decode(request(None), &mut cx())
        .await
        .unwrap_err();
    assert_eq!(err.status, 503);
    assert_eq!(err.details, "ext_proc_error_gRPC_error_13{boom}");
    let e = env(
        &tcp_cluster(&p),
        &filter_yaml("fail", "failure_mode_allow: true"),
    );
    let req = StreamFilter::new(e.filter.clone())
        .decode(request(None), &mut cx())
        .await
        .unwrap();
    assert_eq!(req.headers()["x-a"], "1");
    assert_eq!(counter(&e, "failure_mode_allowed"), 1);
    assert_eq!(counter(&e, "streams_failed"), 1);
}

#[tokio::test]
async fn immediate_response() {
    let p = Processor::start().await;
    p.script("deny", |_, _| {
        vec![Step::Send(immediate(
            401,
            "nope",
            &[("x-why", "auth")],
            "bad auth",
        ))]
    });
    let e = env(&tcp_cluster(&p), &filter_yaml("deny", ""));
    let err = StreamFilter::new(e.filter.clone())
        .decode(request(None), &mut cx())
        .await
        .unwrap_err();
    assert_eq!(err.status, 401);
    assert_eq!(err.body, "nope");
    assert_eq!(err.headers["x-why"], "auth");
    assert_eq!(err.details, "bad_auth");
}

#[tokio::test]
async fn missing_cluster_is_500_without_a_stream() {
    let p = Processor::start().await;
    let yaml = filter_yaml("x", "").replace("cluster_name: proc", "cluster_name: nowhere");
    let e = env(&tcp_cluster(&p), &yaml);
    let err = StreamFilter::new(e.filter.clone())
        .decode(request(None), &mut cx())
        .await
        .unwrap_err();
    assert_eq!(err.status, 500);
    assert_eq!(
        err.details,
        "ext_proc_error_gRPC_error_14{Cluster_not_available}"
    );
    assert_eq!(counter(&e, "streams_started"), 0);
}

#[tokio::test]
async fn unix_socket_processor_and_shared_connections() {
    let dir = std::env::temp_dir().join(format!("xp-ext-proc-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let p = Processor::start_unix(&dir).await;
    let cluster = format!(
        r#"
name: proc
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: {{http2_protocol_options: {{}}}}
load_assignment:
  cluster_name: proc
  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: "{}"}}}}}}}}]}}]
"#,
        dir.display()
    );
    let e = env(
        &cluster,
        &filter_yaml("unix", "processing_mode: {response_header_mode: SKIP}"),
    );
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let filter = e.filter.clone();
        tasks.push(tokio::spawn(async move {
            StreamFilter::new(filter)
                .decode(request(None), &mut cx())
                .await
                .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(p.streams("unix").len(), 20);
    assert_eq!(counter(&e, "streams_started"), 20);
    let _ = std::fs::remove_file(&dir);
}
