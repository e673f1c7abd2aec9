//! The proxy core seen from outside: the Envoy-compatible command line and the admin endpoint,
//! checked against real Envoy 1.40 with the same files.

use std::process::Command;
use std::time::Duration;
use testenv::{envoy_binary, ProxyProcess, TempDir};

const EXTPROXY: &str = env!("CARGO_BIN_EXE_extproxy");

/// A bootstrap with an admin endpoint and one STATIC cluster, valid for both proxies.
const ADMIN_AND_CLUSTER: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  clusters:
  - name: up
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: up
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}]
"#;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(bin: &str, args: &[&str]) -> Run {
    let out = Command::new(bin).args(args).output().expect("spawn");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p.display().to_string()
}

#[test]
fn validate_mode_prints_envoys_ok_line() {
    let dir = TempDir::new("cli").unwrap();
    let file = write(&dir, "ok.yaml", ADMIN_AND_CLUSTER);
    let envoy = envoy_binary();
    for bin in [envoy.to_str().unwrap(), EXTPROXY] {
        let r = run(bin, &["--mode", "validate", "-c", &file, "-l", "error"]);
        assert_eq!(r.code, Some(0), "{bin}: {}", r.stderr);
        assert!(
            r.stdout.contains(&format!("configuration '{file}' OK")),
            "{bin} stdout: {}",
            r.stdout
        );
    }
}

#[test]
fn unknown_field_is_an_error_naming_its_path_and_binds_nothing() {
    let dir = TempDir::new("cli").unwrap();
    // A listener on a port we hold free, and a bad field further down: nothing may be bound.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "{ADMIN_AND_CLUSTER}  listeners:\n  - name: l\n    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n    filter_chains: [{{filters: []}}]\n"
    )
    .replace("connect_timeout: 1s", "connect_timeout: 1s\n    bogus_knob: 3");
    let file = write(&dir, "bad.yaml", &yaml);
    let r = run(EXTPROXY, &["-c", &file]);
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("static_resources.clusters[0].bogus_knob"),
        "{}",
        r.stderr
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} must not be bound"
    );
    // Envoy rejects the same file too.
    let r = run(
        envoy_binary().to_str().unwrap(),
        &["--mode", "validate", "-c", &file, "-l", "error"],
    );
    assert_ne!(r.code, Some(0), "envoy accepted: {}", r.stdout);
}

#[test]
fn unsupported_filter_is_an_error_naming_its_path() {
    let dir = TempDir::new("cli").unwrap();
    let yaml = format!(
        "{ADMIN_AND_CLUSTER}  listeners:\n  - name: l\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.echo\n        typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}}\n"
    );
    let file = write(&dir, "echo.yaml", &yaml);
    let r = run(EXTPROXY, &["--mode", "validate", "-c", &file]);
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr
            .contains("static_resources.listeners[0].filter_chains[0].filters[0].name"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("envoy.filters.network.echo"),
        "{}",
        r.stderr
    );
}

#[test]
fn config_yaml_flag_works_alone_and_merges_over_the_file() {
    let dir = TempDir::new("cli").unwrap();
    let file = write(&dir, "ok.yaml", ADMIN_AND_CLUSTER);
    let r = run(
        EXTPROXY,
        &["--mode", "validate", "--config-yaml", ADMIN_AND_CLUSTER],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Merging adds a second cluster with the same name: protobuf MergeFrom appends lists.
    let r = run(
        EXTPROXY,
        &[
            "--mode",
            "validate",
            "-c",
            &file,
            "--config-yaml",
            ADMIN_AND_CLUSTER,
        ],
    );
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("duplicate cluster up"), "{}", r.stderr);
}

/// The admin endpoint answers like Envoy's for the paths tools rely on.
#[tokio::test]
async fn admin_endpoints_match_envoy() {
    let envoy = ProxyProcess::envoy(ADMIN_AND_CLUSTER).await.unwrap();
    let ours = ProxyProcess::start(EXTPROXY.as_ref(), ADMIN_AND_CLUSTER, &[])
        .await
        .unwrap();
    for p in [&envoy, &ours] {
        assert_eq!(
            p.admin_get("/ready").await.unwrap(),
            (200, "LIVE\n".to_string())
        );
        let stats = p.stats().await;
        assert_eq!(
            stats.get("cluster.up.upstream_cx_total"),
            Some(&0),
            "{stats:?}"
        );
        let (status, prom) = p.admin_get("/stats/prometheus").await.unwrap();
        assert_eq!(status, 200);
        assert!(
            prom.contains("# TYPE envoy_cluster_upstream_cx_total counter\nenvoy_cluster_upstream_cx_total{envoy_cluster_name=\"up\"} 0\n"),
            "{prom}"
        );
        let (status, _) = p.admin_get("/no-such-path").await.unwrap();
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn quitquitquit_stops_the_process() {
    let mut ours = ProxyProcess::start(EXTPROXY.as_ref(), ADMIN_AND_CLUSTER, &[])
        .await
        .unwrap();
    let admin = ours.admin_addr();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::post(format!("http://{admin}/quitquitquit"))
        .body(Default::default())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ours.admin_get("/ready").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still serving after /quitquitquit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ours.kill();
}

/// `ADMIN_AND_CLUSTER` with `up` speaking HTTP/2 (so it can be an ext_proc gRPC service) and an
/// HTTP listener whose route match and ext_proc filter config are the given YAML flow maps.
fn http_listener(route_match: &str, ext_proc: &str) -> String {
    let cluster = ADMIN_AND_CLUSTER.replace(
        "    type: STATIC\n",
        "    type: STATIC\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n",
    );
    format!(
        r#"{cluster}  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes: [{{match: {route_match}, route: {{cluster: up}}}}]
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {{envoy_grpc: {{cluster_name: up}}}}
              {ext_proc}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}

#[test]
fn empty_regex_is_rejected_like_envoy_wherever_a_regex_is_taken() {
    let dir = TempDir::new("cli").unwrap();
    let envoy = envoy_binary();
    let hcm = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";
    let route = format!("{hcm}.route_config.virtual_hosts[0].routes[0].match");
    let ext_proc = format!("{hcm}.http_filters[0].typed_config");
    let cases = [
        (
            "{safe_regex: {regex: R}}".to_string(),
            "",
            format!("{route}.safe_regex.regex"),
        ),
        (
            "{prefix: /, headers: [{name: x, string_match: {safe_regex: {regex: R}}}]}".into(),
            "",
            format!("{route}.headers[0].string_match.safe_regex.regex"),
        ),
        (
            "{prefix: /, headers: [{name: x, safe_regex_match: {regex: R}}]}".into(),
            "",
            format!("{route}.headers[0].safe_regex_match.regex"),
        ),
        (
            "{prefix: /}".into(),
            "mutation_rules: {allow_expression: {regex: R}}",
            format!("{ext_proc}.mutation_rules.allow_expression.regex"),
        ),
        (
            "{prefix: /}".into(),
            "mutation_rules: {disallow_expression: {regex: R}}",
            format!("{ext_proc}.mutation_rules.disallow_expression.regex"),
        ),
        (
            "{prefix: /}".into(),
            "forward_rules: {allowed_headers: {patterns: [{safe_regex: {regex: R}}]}}",
            format!("{ext_proc}.forward_rules.allowed_headers.patterns[0].safe_regex.regex"),
        ),
    ];
    for (i, (route_match, ext_proc, path)) in cases.iter().enumerate() {
        // With a one-character regex the same file is valid for both proxies.
        let ok = http_listener(&route_match.replace('R', "a"), &ext_proc.replace('R', "a"));
        let ok = write(&dir, &format!("ok{i}.yaml"), &ok);
        for bin in [envoy.to_str().unwrap(), EXTPROXY] {
            let r = run(bin, &["--mode", "validate", "-c", &ok, "-l", "error"]);
            assert_eq!(r.code, Some(0), "{bin} {path}: {}", r.stderr);
        }
        let bad = http_listener(
            &route_match.replace('R', "''"),
            &ext_proc.replace('R', "''"),
        );
        let bad = write(&dir, &format!("bad{i}.yaml"), &bad);
        let r = run(
            envoy.to_str().unwrap(),
            &["--mode", "validate", "-c", &bad, "-l", "error"],
        );
        assert_ne!(r.code, Some(0), "envoy accepted {path}: {}", r.stdout);
        assert!(
            r.stderr
                .contains("value length must be at least 1 characters"),
            "envoy {path}: {}",
            r.stderr
        );
        let r = run(EXTPROXY, &["--mode", "validate", "-c", &bad]);
        assert_ne!(r.code, Some(0), "extproxy accepted {path}: {}", r.stdout);
        assert!(
            r.stderr.contains(&format!(
                "{path}: value length must be at least 1 characters"
            )),
            "extproxy {path}: {}",
            r.stderr
        );
    }
}

#[test]
fn unix_socket_listener_is_rejected_by_validate_as_by_start() {
    let dir = TempDir::new("cli").unwrap();
    let sock = dir.join("l.sock");
    let yaml = format!(
        "{ADMIN_AND_CLUSTER}  listeners:\n  - name: l\n    address: {{pipe: {{path: {}}}}}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: up}}\n",
        sock.display()
    );
    let file = write(&dir, "pipe.yaml", &yaml);
    // Envoy supports Unix socket listeners; extproxy does not, and says so in both modes.
    let r = run(
        envoy_binary().to_str().unwrap(),
        &["--mode", "validate", "-c", &file, "-l", "error"],
    );
    assert_eq!(r.code, Some(0), "envoy: {}", r.stderr);
    let expected =
        "static_resources.listeners[0].address.pipe: Unix socket listeners are not supported";
    for mode in ["validate", "serve"] {
        let r = run(EXTPROXY, &["--mode", mode, "-c", &file]);
        assert_ne!(r.code, Some(0), "{mode}: {}", r.stdout);
        assert!(r.stderr.contains(expected), "{mode}: {}", r.stderr);
    }
    assert!(!sock.exists(), "nothing may be bound");
}

#[test]
fn unix_socket_admin_address_is_rejected_by_validate_as_by_start() {
    let dir = TempDir::new("cli").unwrap();
    let sock = dir.join("admin.sock");
    let yaml = ADMIN_AND_CLUSTER.replace(
        "socket_address: {address: 127.0.0.1, port_value: 0}",
        &format!("pipe: {{path: {}}}", sock.display()),
    );
    let file = write(&dir, "pipe.yaml", &yaml);
    // Envoy serves admin on a Unix socket; extproxy does not, and says so in both modes.
    let r = run(
        envoy_binary().to_str().unwrap(),
        &["--mode", "validate", "-c", &file, "-l", "error"],
    );
    assert_eq!(r.code, Some(0), "envoy: {}", r.stderr);
    let expected = "admin.address.pipe: a Unix socket admin address is not supported";
    for mode in ["validate", "serve"] {
        let r = run(EXTPROXY, &["--mode", mode, "-c", &file]);
        assert_ne!(r.code, Some(0), "{mode}: {}", r.stdout);
        assert!(r.stderr.contains(expected), "{mode}: {}", r.stderr);
    }
    assert!(!sock.exists(), "nothing may be bound");
}

#[test]
fn admin_address_must_be_an_ip_literal_in_validate_as_at_start() {
    let dir = TempDir::new("cli").unwrap();
    let yaml = ADMIN_AND_CLUSTER.replace(
        "socket_address: {address: 127.0.0.1, port_value: 0}",
        "socket_address: {address: localhost, port_value: 0}",
    );
    let file = write(&dir, "localhost.yaml", &yaml);
    let r = run(
        envoy_binary().to_str().unwrap(),
        &["--mode", "validate", "-c", &file, "-l", "error"],
    );
    assert_ne!(r.code, Some(0), "envoy accepted: {}", r.stdout);
    assert!(
        r.stderr.contains("malformed IP address: localhost"),
        "envoy: {}",
        r.stderr
    );
    let expected = "admin.address.socket_address.address: malformed IP address: localhost";
    for mode in ["validate", "serve"] {
        let r = run(EXTPROXY, &["--mode", mode, "-c", &file]);
        assert_ne!(r.code, Some(0), "{mode}: {}", r.stdout);
        assert!(r.stderr.contains(expected), "{mode}: {}", r.stderr);
    }
}
