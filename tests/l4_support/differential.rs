//! The differential harness: run one client script through real Envoy 1.40 and through
//! extproxy's binary with the same bootstrap and processor, and collect what each side saw.

use super::*;
use envoy_types::pb::envoy::service::network_ext_proc::v3::{
    ProcessingRequest, ProcessingResponse,
};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use testenv::ProxyProcess;
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    Envoy,
    Extproxy,
}

/// What a run showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obs {
    /// Bytes the client received and how its read side ended.
    pub client: (Vec<u8>, Ending),
    /// Bytes the upstream received and how its read side ended (`None`: no upstream connection).
    pub upstream: Option<(Vec<u8>, Ending)>,
    /// Non-zero `network_ext_proc.ep.*` counters (short names).
    pub counters: BTreeMap<String, i64>,
    /// Whatever else a script observed along the way.
    pub notes: Vec<&'static str>,
}

pub type Handler = Arc<dyn Fn(&ProcessingRequest, &Responder) + Send + Sync>;

/// The client/upstream sockets of one run, plus the processor, handed to a script.
pub struct Run {
    pub client: TcpStream,
    pub upstream: Option<TcpStream>,
    pub processor: Arc<RawProcessor>,
}

pub type Script = fn(Run) -> BoxFuture<'static, Obs>;

/// Runs `script` through `which`, with one ext_proc filter (`extra` config) in front of tcp_proxy.
pub async fn run(
    which: Impl,
    extra: &str,
    listener_extra: &str,
    tcp_extra: &str,
    handler: Handler,
    upstream_up: bool,
    script: Script,
) -> Obs {
    let up = Upstream::bind().await;
    let h = handler.clone();
    let processor = Arc::new(RawProcessor::start(move |r, s| h(r, s)).await);
    let up_port = if upstream_up {
        up.port()
    } else {
        closed_port()
    };
    let yaml = bootstrap(
        &[ext_proc("ep", extra)],
        up_port,
        processor.port(),
        listener_extra,
        tcp_extra,
    );
    let proxy = match which {
        Impl::Envoy => ProxyProcess::envoy(&yaml).await,
        Impl::Extproxy => {
            ProxyProcess::start(env!("CARGO_BIN_EXE_extproxy").as_ref(), &yaml, &[]).await
        }
    }
    .unwrap_or_else(|e| panic!("{which:?} did not start: {e:#}"));
    let addr = proxy.listener_addr("l4").await;
    let client = TcpStream::connect(addr).await.expect("connect");
    let upstream = if upstream_up {
        Some(up.accept().await)
    } else {
        None
    };
    // Keep the processor alive for the whole run, whatever the script captures.
    let _processor = processor.clone();
    let mut obs = script(Run {
        client,
        upstream,
        processor,
    })
    .await;
    // Envoy scopes listener stats by the configured address (`127.0.0.1_0`), so match by suffix.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stats = proxy.stats().await;
        let strings: Vec<(String, String)> = stats
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        if listener_destroyed(strings.iter().map(|(k, v)| (k.as_str(), v.as_str()))) >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{which:?}: the connection was not closed; stderr:\n{}",
            proxy.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Counters bumped by the close itself (streams_closed) land in the same event; give the
    // admin endpoint a moment anyway.
    tokio::time::sleep(Duration::from_millis(50)).await;
    obs.counters = proxy
        .stats()
        .await
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("network_ext_proc.ep.")?.to_string(), v)))
        .filter(|(k, v)| *v != 0 && EP_COUNTERS.contains(&k.as_str()))
        .collect();
    obs
}

/// Runs both and returns `(envoy, extproxy)`.
pub async fn both(extra: &str, handler: Handler, upstream_up: bool, script: Script) -> (Obs, Obs) {
    both_with("", extra, handler, upstream_up, script).await
}

/// [`both`] with extra listener fields (indented by 4).
pub async fn both_with(
    listener_extra: &str,
    extra: &str,
    handler: Handler,
    upstream_up: bool,
    script: Script,
) -> (Obs, Obs) {
    let envoy = run(
        Impl::Envoy,
        extra,
        listener_extra,
        "",
        handler.clone(),
        upstream_up,
        script,
    )
    .await;
    let ours = run(
        Impl::Extproxy,
        extra,
        listener_extra,
        "",
        handler,
        upstream_up,
        script,
    )
    .await;
    (envoy, ours)
}

/// Runs `script` through both with a tcp_proxy file access log in `format`; returns each
/// proxy's log text.
pub async fn logged(
    extra: &str,
    format: &str,
    handler: Handler,
    upstream_up: bool,
    script: Script,
) -> (String, String) {
    let dir = testenv::TempDir::new("l4-diff-log").expect("tempdir");
    let mut out = Vec::new();
    for which in [Impl::Envoy, Impl::Extproxy] {
        let path = dir.join(&format!("{which:?}.log"));
        let tcp = format!(
            "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{text_format_source: {{inline_string: \"{format}\\n\"}}}}\n",
            path.display()
        );
        run(which, extra, "", &tcp, handler.clone(), upstream_up, script).await;
        // Envoy writes its access log from a flush thread.
        let deadline = std::time::Instant::now() + WAIT;
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') || std::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        out.push(text);
    }
    let ours = out.pop().unwrap_or_default();
    let envoy = out.pop().unwrap_or_default();
    (envoy, ours)
}

pub fn handler(f: impl Fn(&ProcessingRequest, &Responder) + Send + Sync + 'static) -> Handler {
    Arc::new(f)
}

pub fn counters(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Envoy 1.40 drops the answer to the last FIN when the connection closes (quirk N4); extproxy
/// waits for it. In runs ending with the upstream's FIN that is one more `write_data` answer.
pub fn with_n4(envoy: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let mut c = envoy.clone();
    *c.entry("stream_msgs_received".into()).or_default() += 1;
    *c.entry("write_data_injected".into()).or_default() += 1;
    c
}

/// A response in the request's direction.
pub fn same_dir(req: &ProcessingRequest, data: &[u8], eos: bool) -> ProcessingResponse {
    if req.write_data.is_some() {
        write_resp(data, eos)
    } else {
        read_resp(data, eos)
    }
}

pub fn upper(req: &ProcessingRequest) -> ProcessingResponse {
    let mut r = echo(req);
    for d in [&mut r.read_data, &mut r.write_data].into_iter().flatten() {
        d.data.make_ascii_uppercase();
    }
    r
}

/// Ends a run where both sides are still open: both FIN, both drained.
pub async fn finish(mut r: Run) -> Obs {
    fin(&mut r.client).await;
    let u = r.upstream.as_mut().expect("upstream");
    let up = read_to_end(u).await;
    fin(u).await;
    let client = read_to_end(&mut r.client).await;
    Obs {
        client,
        upstream: Some(up),
        counters: BTreeMap::new(),
        notes: vec![],
    }
}

/// Client and upstream both read to the end (the proxy closes).
pub async fn drain(mut r: Run) -> Obs {
    let client = read_to_end(&mut r.client).await;
    let upstream = match r.upstream.as_mut() {
        Some(u) => Some(read_to_end(u).await),
        None => None,
    };
    Obs {
        client,
        upstream,
        counters: BTreeMap::new(),
        notes: vec![],
    }
}
