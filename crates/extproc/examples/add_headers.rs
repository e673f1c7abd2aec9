//! `cargo run -p extproc --example add_headers -- --port 50051`
//!
//! Request gets `x-ext-proc-header: hello-to-asm`, response gets `hello-from-asm`.

mod common;

use clap::Parser;
use extproc::demo::AddHeaders;

/// Adds x-ext-proc-header to requests and responses.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    listen: common::Listen,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.listen
        .serve(extproc::Server::new().http(AddHeaders::default))
        .await
}
