//! `cargo run -p extproc --example streaming_upper -- --port 50051`
//!
//! Upper-cases bodies chunk by chunk (STREAMED or FULL_DUPLEX_STREAMED).

mod common;

use clap::Parser;
use extproc::demo::StreamingUpper;

/// Per-chunk upper-casing.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    listen: common::Listen,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.listen
        .serve(extproc::Server::new().http(StreamingUpper::default))
        .await
}
