//! Differential tests: the same bootstrap (one listener per scenario), the same processor and
//! the same requests through real Envoy 1.40 and through extproxy; normalised observations
//! (status, headers, body, what the upstream saw, what the processor saw, ext_proc counters)
//! must match, except for the differences documented in docs/envoy-differences.md,
//! which are asserted explicitly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ext_proc_support;
#[path = "http_ext_proc/scenarios.rs"]
mod scenarios;

use ext_proc_support::*;
use scenarios::{Expect, Scenario};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use testenv::{echo_http_upstream, EchoHttpUpstream, HttpVersion, ProxyProcess, TestResponse};

const TEMPLATE: &str = include_str!("http_ext_proc/bootstrap.yaml");

fn listener(s: &Scenario) -> Value {
    let mut filter: Value = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {
            "envoy_grpc": {"cluster_name": "proc"},
            "initial_metadata": [{"key": "x-scenario", "value": s.name}],
        },
        "message_timeout": "2s",
    });
    let extra: Value = serde_yaml_ng::from_str(s.filter).unwrap_or(Value::Null);
    if let (Some(f), Value::Object(extra)) = (filter.as_object_mut(), extra) {
        for (k, v) in extra {
            f.insert(k, v);
        }
    }
    let routes: Value = if s.routes.is_empty() {
        json!([{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}])
    } else {
        serde_yaml_ng::from_str(s.routes).expect("routes yaml")
    };
    let mut l = json!({
        "name": s.name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": s.name,
                "codec_type": "AUTO",
                "route_config": {"virtual_hosts": [vhost(s, routes)]},
                "http_filters": [
                    {"name": "envoy.filters.http.ext_proc", "typed_config": filter},
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                ],
            },
        }]}],
    });
    if let Some(limit) = s.buffer_limit {
        l["per_connection_buffer_limit_bytes"] = json!(limit);
    }
    l
}

fn vhost(s: &Scenario, routes: Value) -> Value {
    let mut v = json!({"name": "all", "domains": ["*"], "routes": routes});
    if !s.vhost_per_filter.is_empty() {
        v["typed_per_filter_config"] =
            serde_yaml_ng::from_str(s.vhost_per_filter).expect("vhost yaml");
    }
    v
}

fn bootstrap(scenarios: &[Scenario], upstream: &EchoHttpUpstream, proc: &Processor) -> String {
    let listeners: Vec<Value> = scenarios.iter().map(listener).collect();
    testenv::render(
        TEMPLATE,
        &[
            ("LISTENERS", &serde_json::to_string(&listeners).unwrap()),
            ("UPSTREAM_PORT", &upstream.addr().port().to_string()),
            ("PROC_PORT", &proc.addr.port().to_string()),
        ],
    )
}

/// What one request through one proxy looked like.
#[derive(Debug, Clone, PartialEq)]
struct Obs {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
    trailers: BTreeMap<String, String>,
    upstream: Option<Upstream>,
    processor: Vec<String>,
    counters: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Upstream {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
    trailers: BTreeMap<String, String>,
}

const VOLATILE: &[&str] = &[
    "date",
    "server",
    "x-envoy-upstream-service-time",
    "x-request-id",
    "x-forwarded-for",
    "x-envoy-expected-rq-timeout-ms",
];

fn norm_headers(h: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in h {
        if VOLATILE.contains(&k.as_str()) {
            continue;
        }
        let e: &mut String = out.entry(k.as_str().to_string()).or_default();
        if !e.is_empty() {
            e.push(',');
        }
        e.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    out
}

fn describe_full(m: &envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest) -> String {
    let mut d = describe(m);
    // Names of volatile headers are compared too (their values are not).
    let names: Vec<String> = header_names(m)
        .into_iter()
        .filter(|n| !["date", "server", "x-envoy-upstream-service-time"].contains(&n.as_str()))
        .collect();
    if !names.is_empty() {
        d.push_str(&format!("[{}]", names.join(",")));
    }
    if let Some(pc) = &m.protocol_config {
        d.push_str(&format!(
            " pc({},{},{})",
            pc.request_body_mode,
            pc.response_body_mode,
            pc.send_body_without_waiting_for_header_response
        ));
    }
    if let Some(a) = m.attributes.get("envoy.filters.http.ext_proc") {
        let mut keys: Vec<String> = a
            .fields
            .iter()
            .map(|(k, v)| match &v.kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s))
                    if k != "source.address" && k != "destination.address" && k != "request.id" =>
                {
                    format!("{k}={s}")
                }
                Some(envoy_types::pb::google::protobuf::value::Kind::NumberValue(n))
                    if k == "response.code" =>
                {
                    format!("{k}={n}")
                }
                _ => k.clone(),
            })
            .collect();
        keys.sort();
        d.push_str(&format!(" attrs{{{}}}", keys.join(";")));
    }
    if m.observability_mode {
        d.push_str("~obs");
    }
    d
}

async fn observe(
    proxy: &ProxyProcess,
    s: &Scenario,
    version: HttpVersion,
    upstream: &EchoHttpUpstream,
    proc: &Processor,
) -> Obs {
    let before = upstream.requests().len();
    let streams_before = proc.streams(s.name).len();
    let addr = proxy.listener_addr(s.name).await;
    let resp: TestResponse = match (s.request)().send(addr, version).await {
        Ok(r) => r,
        Err(e) => TestResponse {
            status: 0,
            headers: Default::default(),
            body: format!("{e:#}").into(),
            trailers: Default::default(),
        },
    };
    // Let the proxies finish their side streams (close optimisation, deferred close).
    tokio::time::sleep(std::time::Duration::from_millis(s.settle_ms)).await;
    let reqs = upstream.requests();
    let up = reqs.get(before).map(|r| Upstream {
        method: r.method.clone(),
        path: r.path.clone(),
        headers: r
            .headers
            .iter()
            .filter(|(k, _)| {
                !VOLATILE.contains(&k.as_str())
                    && !k.starts_with("x-forwarded")
                    && k.as_str() != "host"
            })
            .map(|(k, v)| (k.clone(), v.join(",")))
            .collect(),
        body: String::from_utf8_lossy(&r.body).into_owned(),
        trailers: r
            .trailers
            .iter()
            .map(|(k, v)| (k.clone(), v.join(",")))
            .collect(),
    });
    let processor: Vec<String> = proc.streams(s.name)[streams_before..]
        .iter()
        .map(|st| {
            st.messages
                .iter()
                .map(describe_full)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let stats = proxy.stats().await;
    let prefix = format!("http.{}.ext_proc.", s.name);
    let counters = stats
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (k[prefix.len()..].to_string(), v))
        .collect();
    Obs {
        status: resp.status,
        headers: norm_headers(&resp.headers),
        body: String::from_utf8_lossy(&resp.body).into_owned(),
        trailers: norm_headers(&resp.trailers),
        upstream: up,
        processor,
        counters,
    }
}

fn check(s: &Scenario, version: HttpVersion, envoy: &Obs, xp: &Obs) -> Vec<String> {
    let mut problems = Vec::new();
    let mut e = envoy.clone();
    let x = xp.clone();
    (s.expect)(&mut e, version);
    let Expect {
        chunk_sensitive,
        skip_upstream,
        skip_counters,
        skip_processor,
        skip_headers,
    } = s.skip;
    let (e, x) = if chunk_sensitive {
        (merge_chunks(e), merge_chunks(x))
    } else {
        (e, x)
    };
    let mut cmp = |what: &str, a: String, b: String| {
        if a != b {
            problems.push(format!(
                "{} [{version:?}] {what}:\n  envoy:    {a}\n  extproxy: {b}",
                s.name
            ));
        }
    };
    cmp("status", format!("{}", e.status), format!("{}", x.status));
    if !skip_headers {
        cmp(
            "headers",
            format!("{:?}", e.headers),
            format!("{:?}", x.headers),
        );
    }
    cmp("body", format!("{:?}", e.body), format!("{:?}", x.body));
    cmp(
        "trailers",
        format!("{:?}", e.trailers),
        format!("{:?}", x.trailers),
    );
    if !skip_upstream {
        cmp(
            "upstream",
            format!("{:?}", e.upstream),
            format!("{:?}", x.upstream),
        );
    }
    if !skip_processor {
        cmp(
            "processor",
            format!("{:?}", e.processor),
            format!("{:?}", x.processor),
        );
    }
    if !skip_counters {
        cmp(
            "counters",
            format!("{:?}", e.counters),
            format!("{:?}", x.counters),
        );
    }
    problems
}

/// Merges runs of body messages of one direction (`rb:aa rb:bb rb:!` → `rb:aabb!`) and drops the
/// message counters, for scenarios where read coalescing decides the chunking.
fn merge_chunks(mut o: Obs) -> Obs {
    for stream in &mut o.processor {
        let mut out: Vec<String> = Vec::new();
        for tok in stream.split(' ') {
            if let (Some(last), Some((k, b))) = (out.last_mut(), tok.split_once(':')) {
                let prefix = format!("{k}:");
                if (k == "rb" || k == "sb")
                    && last.starts_with(&prefix)
                    && !last.trim_end_matches("~obs").ends_with('!')
                {
                    let obs = last.ends_with("~obs");
                    let mut merged = last.trim_end_matches("~obs").to_string();
                    merged.push_str(b);
                    if obs && !merged.ends_with("~obs") {
                        merged = merged.trim_end_matches("~obs").to_string() + "~obs";
                    }
                    *last = merged;
                    continue;
                }
            }
            out.push(tok.to_string());
        }
        *stream = out.join(" ");
    }
    o.counters.remove("stream_msgs_sent");
    o.counters.remove("stream_msgs_received");
    o
}

async fn run(versions: &[HttpVersion]) {
    let upstream = echo_http_upstream().await;
    let proc = Processor::start().await;
    let all = scenarios::all();
    for s in &all {
        proc.script(s.name, s.script);
    }
    let yaml = bootstrap(&all, &upstream, &proc);
    let only: Option<String> = std::env::var("XP_SCENARIO").ok();
    let envoy = ProxyProcess::envoy(&yaml).await.expect("envoy starts");
    if std::env::var("XP_ENVOY_ONLY").is_ok() {
        // Exploration aid: print what Envoy does.
        for s in all
            .iter()
            .filter(|s| only.as_deref().is_none_or(|o| o == s.name))
        {
            for &v in versions {
                eprintln!(
                    "== {} {v:?}\n{:#?}",
                    s.name,
                    observe(&envoy, s, v, &upstream, &proc).await
                );
            }
        }
        return;
    }
    let xp = ProxyProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_extproxy")),
        &yaml,
        &[],
    )
    .await
    .expect("extproxy starts");
    let mut problems = Vec::new();
    for s in &all {
        if only.as_deref().is_some_and(|o| o != s.name) {
            continue;
        }
        for &v in versions {
            if s.http1_only && v == HttpVersion::Http2 || s.http2_only && v == HttpVersion::Http1 {
                continue;
            }
            let e = observe(&envoy, s, v, &upstream, &proc).await;
            let x = observe(&xp, s, v, &upstream, &proc).await;
            if std::env::var("XP_SHOW").is_ok() {
                eprintln!("== {} {v:?}\n envoy: {e:?}\n xp:    {x:?}", s.name);
            }
            problems.extend(check(s, v, &e, &x));
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(all.len() >= 40, "at least 40 scenarios");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_extproxy_agree() {
    run(&[HttpVersion::Http1, HttpVersion::Http2]).await;
}

/// `--mode validate` of both binaries on the §2.2 cases: Envoy's message appears in extproxy's
/// (which adds the field path); GRPC body mode is refused by extproxy only (documented).
#[test]
fn validation_messages_match_envoy() {
    let dir = testenv::TempDir::new("xp-ext-proc-validate").unwrap();
    let base = |filter: &str| {
        let f = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        });
        let mut f = f.as_object().unwrap().clone();
        if let Value::Object(extra) = serde_yaml_ng::from_str::<Value>(filter).unwrap() {
            f.extend(extra);
        }
        json!({"static_resources": {
            "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "x",
                    "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "proc"}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.ext_proc", "typed_config": f},
                        {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
            "clusters": [{"name": "proc",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": "proc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}]}})
        .to_string()
    };
    let svc = "grpc_service: {envoy_grpc: {cluster_name: proc}}\n";
    let cases: Vec<(String, Option<&str>)> = vec![
        ("failure_mode_allow: true".into(), Some("One and only one of grpc_service or http_service must be configured")),
        (format!("{svc}http_service: {{http_service: {{http_uri: {{uri: 'http://x', cluster: proc, timeout: 1s}}}}}}"), Some("One and only one of grpc_service or http_service must be configured")),
        (format!("{svc}processing_mode: {{request_body_mode: FULL_DUPLEX_STREAMED}}"), Some("If the ext_proc filter has the request_body_mode set to FULL_DUPLEX_STREAMED, then the request_trailer_mode has to be set to SEND")),
        (format!("{svc}processing_mode: {{response_body_mode: FULL_DUPLEX_STREAMED}}"), Some("If the ext_proc filter has the response_body_mode set to FULL_DUPLEX_STREAMED, then the response_trailer_mode has to be set to SEND")),
        (format!("{svc}disable_clear_route_cache: true\nroute_cache_action: CLEAR"), Some("disable_clear_route_cache and route_cache_action can not be set to none-default at the same time.")),
        (format!("{svc}message_timeout: 3601s"), Some("")),
        (format!("{svc}status_on_error: {{code: 0}}"), Some("")),
        (format!("{svc}processing_mode: {{request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND}}\nfailure_mode_allow: true\nstatus_on_error: {{code: 200}}"), None),
    ];
    let run = |bin: &std::path::Path, cfg: &std::path::Path| {
        let out = std::process::Command::new(bin)
            .args(["--mode", "validate", "-c"])
            .arg(cfg)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    for (i, (filter, err)) in cases.iter().enumerate() {
        let cfg = dir.join(&format!("c{i}.yaml"));
        std::fs::write(&cfg, base(filter)).unwrap();
        let (e_ok, e_out) = run(&testenv::envoy_binary(), &cfg);
        let (x_ok, x_out) = run(std::path::Path::new(env!("CARGO_BIN_EXE_extproxy")), &cfg);
        assert_eq!(e_ok, err.is_none(), "envoy on {filter}: {e_out}");
        assert_eq!(x_ok, err.is_none(), "extproxy on {filter}: {x_out}");
        if let Some(msg) = err {
            assert!(
                e_out.contains(msg) && x_out.contains(msg),
                "{filter}:\n envoy: {e_out}\n extproxy: {x_out}"
            );
        }
    }
}
