//! [`ProxyProcess`]: a real Envoy (or extproxy's binary, which accepts the same flags) started
//! from a YAML string, with helpers over its admin endpoint.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TempDir;

/// How long [`ProxyProcess::start`] waits for admin `/ready` to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running proxy process. Killed (SIGKILL) and reaped on drop.
///
/// The YAML must configure an admin listener (`admin: {address: {socket_address: {address:
/// 127.0.0.1, port_value: 0}}}`): the admin address is read back through
/// `--admin-address-path`, and listener ports through `/listeners`, so configs can use
/// `port_value: 0` everywhere.
#[derive(Debug)]
pub struct ProxyProcess {
    /// The child process; `None` once killed.
    child: Option<Child>,
    /// Admin address written by the proxy to `--admin-address-path`.
    admin: SocketAddr,
    /// Holds the config, admin-address and stderr files; removed on drop.
    dir: TempDir,
    /// The binary that was started (for error messages).
    bin: PathBuf,
}

impl ProxyProcess {
    /// Starts real Envoy 1.40 ([`crate::envoy_binary`]) with [`crate::ENVOY_EXTRA_ARGS`].
    pub async fn envoy(yaml: &str) -> anyhow::Result<ProxyProcess> {
        let bin = crate::envoy_binary();
        Self::start(&bin, yaml, crate::ENVOY_EXTRA_ARGS).await
    }

    /// Starts `bin -c <file> --concurrency 1 -l warning --admin-address-path <file> <extra_args>`
    /// and waits (up to [`READY_TIMEOUT`]) until admin `/ready` answers 200.
    ///
    /// On failure the error includes the child's stderr.
    pub async fn start(
        bin: &Path,
        yaml: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<ProxyProcess> {
        let dir = TempDir::new("testenv-proxy")?;
        let config = dir.join("config.yaml");
        let admin_path = dir.join("admin-address");
        let stderr_path = dir.join("stderr.log");
        std::fs::write(&config, yaml)?;
        let stderr = File::create(&stderr_path)?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "1",
                "-l",
                "warning",
                "--admin-address-path",
            ])
            .arg(&admin_path)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut proc = ProxyProcess {
            child: Some(child),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            bin: bin.to_path_buf(),
        };
        match proc.wait_ready(&admin_path).await {
            Ok(()) => Ok(proc),
            Err(e) => {
                proc.kill();
                Err(e.context(format!(
                    "{} did not become ready; its stderr:\n{}",
                    proc.bin.display(),
                    proc.stderr_text()
                )))
            }
        }
    }

    async fn wait_ready(&mut self, admin_path: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("the process exited early with {status}");
                }
            }
            if self.admin.port() == 0 {
                if let Ok(text) = std::fs::read_to_string(admin_path) {
                    if let Ok(addr) = text.trim().parse() {
                        self.admin = addr;
                    }
                }
            }
            if self.admin.port() != 0 {
                if let Ok((200, _)) = admin_get(self.admin, "/ready").await {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("admin /ready did not answer 200 within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `GET path` on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        admin_get(self.admin, path).await
    }

    /// The bound address of the listener called `name` (from `GET /listeners?format=json`).
    ///
    /// # Panics
    /// If there is no such listener, with the admin's answer in the message.
    pub async fn listener_addr(&self, name: &str) -> SocketAddr {
        let (status, body) = self
            .admin_get("/listeners?format=json")
            .await
            .unwrap_or_else(|e| panic!("GET /listeners failed: {e:#}"));
        assert_eq!(status, 200, "GET /listeners: {body}");
        parse_listener_addr(&body, name)
            .unwrap_or_else(|e| panic!("listener {name:?}: {e:#}; /listeners said: {body}"))
    }

    /// All counters and gauges from `GET /stats` (`name: value` lines; histograms skipped).
    pub async fn stats(&self) -> BTreeMap<String, i64> {
        let (status, body) = self
            .admin_get("/stats")
            .await
            .unwrap_or_else(|e| panic!("GET /stats failed: {e:#}"));
        assert_eq!(status, 200, "GET /stats: {body}");
        parse_stats(&body)
    }

    /// One stat's value, 0 if absent.
    pub async fn counter(&self, name: &str) -> i64 {
        self.stats().await.get(name).copied().unwrap_or(0)
    }

    /// Polls until stat `name` is at least `at_least`; panics with the current value after
    /// `timeout`.
    pub async fn wait_counter(&self, name: &str, at_least: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.counter(name).await;
            if v >= at_least {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "stat {name} is {v}, wanted >= {at_least} within {timeout:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read(self.dir.join("stderr.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Kills the process now (also done on drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 GET (`Connection: close`), enough for the admin endpoint.
async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        parse_http_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow!("GET {path} on {addr} timed out"))?
}

fn parse_http_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no header terminator in admin response"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no status line"))?
        .parse()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn parse_listener_addr(json: &str, name: &str) -> anyhow::Result<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let listeners = v["listener_statuses"]
        .as_array()
        .ok_or_else(|| anyhow!("no listener_statuses"))?;
    let l = listeners
        .iter()
        .find(|l| l["name"] == name)
        .ok_or_else(|| anyhow!("no listener named {name}"))?;
    let sa = &l["local_address"]["socket_address"];
    let ip = sa["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no address"))?;
    let port = sa["port_value"]
        .as_u64()
        .ok_or_else(|| anyhow!("no port_value"))?;
    Ok(SocketAddr::new(ip.parse()?, u16::try_from(port)?))
}

fn parse_stats(text: &str) -> BTreeMap<String, i64> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            Some((name.trim().to_string(), value.trim().parse::<i64>().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_parsing_skips_histograms() {
        let s = parse_stats(
            "http.ingress.ext_proc.streams_started: 1\n\
             cluster.x.upstream_rq_time: P0(nan,1) P25(nan,1)\n\
             network_ext_proc.ep.read_data_sent: 2\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s["network_ext_proc.ep.read_data_sent"], 2);
    }

    #[test]
    fn listener_json_parsing() {
        let j = r#"{"listener_statuses":[{"name":"a","local_address":{"socket_address":{"address":"127.0.0.1","port_value":1}}},
                   {"name":"ingress","local_address":{"socket_address":{"address":"127.0.0.1","port_value":4242}}}]}"#;
        assert_eq!(
            parse_listener_addr(j, "ingress").expect("addr").port(),
            4242
        );
        assert!(parse_listener_addr(j, "nope").is_err());
    }

    #[test]
    fn chunked_admin_body() {
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\n!!!\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(raw).expect("parse"),
            (200, "hello!!!".into())
        );
    }

    const ADMIN_ONLY: &str = "admin:\n  address:\n    socket_address: {address: 127.0.0.1, port_value: 0}\n\
        static_resources:\n  listeners:\n  - name: tcp\n    address:\n      socket_address: {address: 127.0.0.1, port_value: 0}\n    \
        filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \
        \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: tcp\n          cluster: up\n  \
        clusters:\n  - name: up\n    type: STATIC\n    load_assignment:\n      cluster_name: up\n      endpoints:\n      - lb_endpoints:\n        \
        - endpoint:\n            address:\n              socket_address: {address: 127.0.0.1, port_value: {{PORT}}}\n";

    #[tokio::test]
    async fn real_envoy_starts_and_reports_stats() {
        let up = crate::tcp_echo_upstream().await;
        let yaml = crate::render(ADMIN_ONLY, &[("PORT", &up.addr().port().to_string())]);
        let envoy = ProxyProcess::envoy(&yaml).await.expect("envoy starts");
        let (status, body) = envoy.admin_get("/ready").await.expect("ready");
        assert_eq!((status, body.trim()), (200, "LIVE"));
        let addr = envoy.listener_addr("tcp").await;
        assert_ne!(addr.port(), 0);
        // One echo round trip through the proxy moves the tcp_proxy counters.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        envoy
            .wait_counter("tcp.tcp.downstream_cx_total", 1, Duration::from_secs(5))
            .await;
        assert_eq!(envoy.counter("no.such.stat").await, 0);
    }

    #[tokio::test]
    async fn bad_config_error_includes_stderr() {
        let err = ProxyProcess::envoy("static_resources: {bogus_field: 1}\n")
            .await
            .expect_err("bad config must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("bogus_field"), "{msg}");
    }
}
