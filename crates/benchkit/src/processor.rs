//! `processor`: the ext_proc processors the benchmarks put behind both proxies, built with the
//! SDK so the processor side is identical for Envoy and extproxy.

use extproc::{Body, Chunk, Headers, HttpContext, HttpProcessor, NetworkContext, NetworkProcessor};
use extproc::{NetworkReply, Reply, Server};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which processor to serve.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// Sets one header on the request and one on the response (`extproc::demo::AddHeaders`).
    AddHeaders,
    /// `add-headers`, plus each body echoed unchanged as a body mutation (config: BUFFERED).
    BufferedBody,
    /// `add-headers`, plus each body chunk echoed unchanged as a body mutation (config: STREAMED).
    StreamedBody,
    /// Network processor passing every chunk through (`NetworkReply::pass()`).
    NetPassthrough,
    /// HTTP processor with the SDK's defaults (continue unchanged in every phase).
    None,
}

/// `processor` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The processor.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// On shutdown, print to stderr one JSON line with the number and sizes of the request body
    /// messages received (how a proxy chunks a streamed body).
    #[arg(long)]
    body_stats: bool,
}

/// Size classes of [`BodyStats`]: up to 1 KiB, 2 KiB, ... 1 MiB, and more.
const SIZE_CLASSES: usize = 12;

/// Request body messages seen by the echo processor.
#[derive(Debug, Default)]
struct BodyStats {
    streams: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    largest: AtomicU64,
    /// Messages per size class (power of two from 1 KiB).
    classes: [AtomicU64; SIZE_CLASSES],
}

impl BodyStats {
    fn record(&self, len: usize) {
        let len = len as u64;
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len, Ordering::Relaxed);
        self.largest.fetch_max(len, Ordering::Relaxed);
        let class = (len
            .max(1)
            .div_ceil(1024)
            .next_power_of_two()
            .trailing_zeros() as usize)
            .min(SIZE_CLASSES - 1);
        self.classes[class].fetch_add(1, Ordering::Relaxed);
    }

    fn json(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (streams, messages, bytes) =
            (get(&self.streams), get(&self.messages), get(&self.bytes));
        let classes: serde_json::Map<_, _> = self
            .classes
            .iter()
            .enumerate()
            .filter(|(_, n)| get(n) > 0)
            .map(|(i, n)| {
                let label = if i == SIZE_CLASSES - 1 {
                    "more".to_string()
                } else {
                    format!("<={}KiB", 1u64 << i)
                };
                (label, get(n).into())
            })
            .collect();
        serde_json::json!({
            "streams": streams,
            "request_body_messages": messages,
            "request_body_bytes": bytes,
            "messages_per_stream": if streams > 0 { messages as f64 / streams as f64 } else { 0.0 },
            "mean_message_bytes": bytes.checked_div(messages).unwrap_or(0),
            "largest_message_bytes": get(&self.largest),
            "size_classes": classes,
        })
    }
}

/// Serves until SIGTERM / ctrl-c.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = crate::bind_and_announce(args.port).await?;
    let stats = args.body_stats.then(|| Arc::new(BodyStats::default()));
    let server = match args.kind {
        Kind::AddHeaders => Server::new().http(extproc::demo::AddHeaders::default),
        // The body mode comes from the proxy's config; echoing works the same in both.
        Kind::BufferedBody | Kind::StreamedBody => {
            let s = stats.clone();
            Server::new().http(move || EchoBody { stats: s.clone() })
        }
        Kind::NetPassthrough => Server::new().network(|| Passthrough),
        Kind::None => Server::new().http(|| Defaults),
    };
    server
        .serve_with_listener(listener, extproc::shutdown_signal())
        .await?;
    if let Some(s) = stats {
        eprintln!("{}", s.json());
    }
    Ok(())
}

/// Sends every body message back unchanged, as a body mutation (so the proxy applies it), and
/// sets the same headers as `AddHeaders` (so a client can see that the processor ran).
struct EchoBody {
    /// Set with `--body-stats`.
    stats: Option<Arc<BodyStats>>,
}

impl HttpProcessor for EchoBody {
    async fn request_headers(&mut self, h: &Headers, cx: &mut HttpContext) -> Reply {
        if let Some(s) = &self.stats {
            s.streams.fetch_add(1, Ordering::Relaxed);
        }
        extproc::demo::AddHeaders.request_headers(h, cx).await
    }

    async fn response_headers(&mut self, h: &Headers, cx: &mut HttpContext) -> Reply {
        extproc::demo::AddHeaders.response_headers(h, cx).await
    }

    async fn request_body(&mut self, body: &Body, _cx: &mut HttpContext) -> Reply {
        if let Some(s) = &self.stats {
            s.record(body.data().len());
        }
        Reply::new().body(body.data().clone())
    }

    async fn response_body(&mut self, body: &Body, _cx: &mut HttpContext) -> Reply {
        Reply::new().body(body.data().clone())
    }
}

/// Passes every chunk in both directions.
struct Passthrough;

impl NetworkProcessor for Passthrough {
    async fn on_read(&mut self, _chunk: &Chunk, _cx: &mut NetworkContext) -> NetworkReply {
        NetworkReply::pass()
    }

    async fn on_write(&mut self, _chunk: &Chunk, _cx: &mut NetworkContext) -> NetworkReply {
        NetworkReply::pass()
    }
}

/// Every phase at the SDK's default: continue unchanged.
struct Defaults;

impl HttpProcessor for Defaults {}
