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
