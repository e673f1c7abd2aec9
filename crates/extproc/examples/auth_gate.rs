//! `cargo run -p extproc --example auth_gate -- --port 50051 --token s3cret`
//!
//! Answers 401 unless the request has `authorization: Bearer <one of the tokens>`.

mod common;

use clap::Parser;
use extproc::demo::AuthGate;

/// Bearer-token gate.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    listen: common::Listen,
    /// An accepted token (repeat for several).
    #[arg(long = "token", default_value = "let-me-in")]
    tokens: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let gate = AuthGate::new(args.tokens);
    args.listen
        .serve(extproc::Server::new().http(move || gate.clone()))
        .await
}
