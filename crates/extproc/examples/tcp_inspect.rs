//! `cargo run -p extproc --example tcp_inspect -- --port 50051 --deny '(?i)^(DROP|SHUTDOWN)\b'`
//!
//! Network processor: resets a connection whose first line matches `--deny`, passes the rest.

mod common;

use clap::Parser;
use extproc::demo::TcpInspect;

/// First-line deny filter for TCP.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    listen: common::Listen,
    /// Regex matched against the first line (without its line ending).
    #[arg(long, default_value = r"(?i)^\s*(DROP|SHUTDOWN)\b")]
    deny: regex::bytes::Regex,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deny = args.deny;
    let inspect = TcpInspect::new(move |line: &[u8]| deny.is_match(line));
    args.listen
        .serve(extproc::Server::new().network(move || inspect.clone()))
        .await
}
