//! `benchkit`: the moving parts of extproxy's benchmark suite (`bench/run`), one binary.
//!
//! # Layout
//! - [`upstream`]: `http-upstream`, a fast HTTP/1.1 + h2c origin (200, small fixed body).
//! - [`processor`]: `processor`, ext_proc processors built with the SDK (`crates/extproc`).
//! - [`tcp`]: `tcp-sink` (counts bytes delivered) and `tcp-load` (writes as fast as it can).
//! - [`latency`]: `latency`, an open-loop fixed-rate HTTP/1.1 client with percentiles.
//! - [`conns`]: `conns`, many concurrent HTTP/1.1 connections, or open/close churn.
//!
//! Servers bind 127.0.0.1 and print their port as the first stdout line (so callers can ask for
//! port 0); clients print one JSON object as their last stdout line.

mod conns;
mod h1;
mod latency;
mod processor;
mod tcp;
mod upstream;

use clap::{Parser, Subcommand};

/// Load generators, upstream and processors for extproxy's benchmarks.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// Tokio worker threads for this process.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// HTTP/1.1 + h2c origin answering 200 with a small fixed body; drains request bodies.
    HttpUpstream(upstream::Args),
    /// ext_proc processor server (HTTP or network) built with the SDK.
    Processor(processor::Args),
    /// Accepts TCP connections and counts the bytes delivered to it.
    TcpSink(tcp::SinkArgs),
    /// Opens N connections to a target and writes as fast as possible.
    TcpLoad(tcp::LoadArgs),
    /// Open-loop fixed-rate HTTP/1.1 client reporting latency percentiles.
    Latency(latency::Args),
    /// Many concurrent HTTP/1.1 connections, or open/close churn.
    Conns(conns::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("benchkit: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::HttpUpstream(a) => upstream::run(a).await,
            Command::Processor(a) => processor::run(a).await,
            Command::TcpSink(a) => tcp::sink(a).await,
            Command::TcpLoad(a) => tcp::load(a).await,
            Command::Latency(a) => latency::run(a).await,
            Command::Conns(a) => conns::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchkit: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Binds `127.0.0.1:port` and prints the bound port as the first stdout line.
async fn bind_and_announce(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    use std::io::Write as _;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", listener.local_addr()?.port())?;
    out.flush()?;
    Ok(listener)
}

/// Milliseconds since the Unix epoch (shared clock between benchkit processes and the script).
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
