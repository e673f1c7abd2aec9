//! `cargo run -p extproc --example redact_body -- --port 50051`
//!
//! Masks card numbers in BUFFERED request and response bodies and fixes content-length.

mod common;

use clap::Parser;
use extproc::demo::RedactBody;

/// Card-number redaction for BUFFERED bodies.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    listen: common::Listen,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.listen
        .serve(extproc::Server::new().http(RedactBody::default))
        .await
}
