//! `processor`: the ext_proc processors the benchmarks put behind both proxies, built with the
//! SDK so the processor side is identical for Envoy and extproxy.

use extproc::{Body, Chunk, Headers, HttpContext, HttpProcessor, NetworkContext, NetworkProcessor};
use extproc::{NetworkReply, Reply, Server};

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
}

/// Serves until SIGTERM / ctrl-c.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = crate::bind_and_announce(args.port).await?;
    let server = match args.kind {
        Kind::AddHeaders => Server::new().http(extproc::demo::AddHeaders::default),
        // The body mode comes from the proxy's config; echoing works the same in both.
        Kind::BufferedBody | Kind::StreamedBody => Server::new().http(|| EchoBody),
        Kind::NetPassthrough => Server::new().network(|| Passthrough),
        Kind::None => Server::new().http(|| Defaults),
    };
    server
        .serve_with_listener(listener, extproc::shutdown_signal())
        .await?;
    Ok(())
}

/// Sends every body message back unchanged, as a body mutation (so the proxy applies it), and
/// sets the same headers as `AddHeaders` (so a client can see that the processor ran).
struct EchoBody;

impl HttpProcessor for EchoBody {
    async fn request_headers(&mut self, h: &Headers, cx: &mut HttpContext) -> Reply {
        extproc::demo::AddHeaders.request_headers(h, cx).await
    }

    async fn response_headers(&mut self, h: &Headers, cx: &mut HttpContext) -> Reply {
        extproc::demo::AddHeaders.response_headers(h, cx).await
    }

    async fn request_body(&mut self, body: &Body, _cx: &mut HttpContext) -> Reply {
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
