//! Input that used to panic or abort extproxy, sent end to end (docs/reliability.md, "Panics on
//! peer data"): the proxy must refuse it the way Envoy does and keep serving.
#![allow(clippy::unwrap_used)]

mod http_support;

use http_support::{raw_http1, with_hcm_options, TestProxy, Upstreams};
use std::process::Command;
use std::time::Duration;
use testenv::{envoy_binary, HttpVersion, TempDir, TestRequest};

const EXTPROXY: &str = env!("CARGO_BIN_EXE_extproxy");

/// A request head made of `\n\rX` triples. The HTTP/1.1 guard's head scan recursed once per
/// triple: a few thousand of them overflowed the stack, which kills the whole process. Envoy
/// answers 400 to both heads.
#[tokio::test]
async fn head_of_lf_cr_triples_is_refused_without_a_stack_overflow() {
    let ups = Upstreams::start().await;
    for (limit, triples) in [
        (None, 19_000),
        (Some("max_request_headers_kb: 8192"), 1_000_000),
    ] {
        let yaml = ups.basic_yaml("HTTP1");
        let proxy = TestProxy::start(&with_hcm_options(&yaml, limit.as_slice())).await;
        let mut head = b"GET /x HTTP/1.1\r\nHost: example.com\r\nx-a: b".to_vec();
        for _ in 0..triples {
            head.extend_from_slice(b"\n\rX");
        }
        head.extend_from_slice(b"\r\n\r\n");
        let r = raw_http1(proxy.ingress(), &head, Duration::from_secs(10)).await;
        let start = &r.text[..r.text.len().min(200)];
        assert_eq!(r.status(), 400, "{limit:?}: {start}");
        assert!(r.closed, "{limit:?}");
        // Still serving.
        let resp = TestRequest::get("/ok")
            .send(proxy.ingress(), HttpVersion::Http1)
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{limit:?}");
        assert!(
            ups.echo.requests().iter().all(|r| r.path == "/ok"),
            "the bad head went upstream"
        );
    }
}

/// Durations past Envoy's range passed the config check and then overflowed `Instant +
/// Duration` (a panic) at the first connection or request; one form panicked while parsing.
/// Envoy refuses them all; so does extproxy now, naming the field.
#[test]
fn out_of_range_durations_are_config_errors() {
    let dir = TempDir::new("durations").unwrap();
    let listener = |filter: &str| {
        format!(
            r#"
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
{filter}
  clusters:
  - name: up
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}}}]}}]
"#
        )
    };
    let tcp_proxy = |extra: &str| {
        listener(&format!(
            "      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: t\n          cluster: up\n          {extra}"
        ))
    };
    let hcm = |extra: &str| {
        listener(&format!(
            "      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: h\n          {extra}\n          route_config: {{virtual_hosts: [{{name: a, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: up}}}}]}}]}}\n          http_filters: [{{name: envoy.filters.http.router, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]"
        ))
    };
    let cases = [
        (
            "tcp_proxy idle_timeout",
            tcp_proxy("idle_timeout: 18446744073709551615s"),
            "typed_config.idle_timeout",
        ),
        (
            "HCM stream_idle_timeout",
            hcm("stream_idle_timeout: 9223372036s"),
            "typed_config.stream_idle_timeout",
        ),
        (
            "HCM request_timeout",
            hcm("request_timeout: 9223372036.5s"),
            "typed_config.request_timeout",
        ),
        (
            "cluster connect_timeout",
            tcp_proxy("").replace("connect_timeout: 1s", "connect_timeout: 99999999999s"),
            "clusters[0].connect_timeout",
        ),
    ];
    for (i, (what, yaml, field)) in cases.iter().enumerate() {
        let path = dir.join(&format!("c{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let run = |bin: &std::path::Path| {
            let o = Command::new(bin)
                .args(["--mode", "validate", "-c"])
                .arg(&path)
                .args(["-l", "error"])
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            (o.status.code(), text)
        };
        let (envoy_code, envoy_text) = run(&envoy_binary());
        assert_ne!(
            envoy_code,
            Some(0),
            "{what}: Envoy accepted it: {envoy_text}"
        );
        let (code, text) = run(EXTPROXY.as_ref());
        assert_eq!(code, Some(1), "{what}: {text}");
        assert!(text.contains(field), "{what}: {text}");
        assert!(text.contains("Duration out-of-range"), "{what}: {text}");
    }
}

/// The `{seconds, nanos}` form: `Duration::new` panicked on the carry from nanos.
#[test]
fn duration_object_form_out_of_range_is_an_error() {
    let yaml = "static_resources:\n  clusters:\n  - name: up\n    connect_timeout: {seconds: 18446744073709551615, nanos: 4294967295}\n    load_assignment: {cluster_name: up}\n";
    let err = extproxy::config::parse(yaml).unwrap_err().to_string();
    assert!(
        err.contains("static_resources.clusters[0].connect_timeout"),
        "{err}"
    );
    assert!(err.contains("Duration out-of-range"), "{err}");
}
