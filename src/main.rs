//! The `extproxy` binary: Envoy-compatible command line around [`extproxy::Server`].

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// extproxy: Envoy's external processing, in Rust. Takes Envoy's own bootstrap YAML.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Bootstrap file (YAML or JSON), as Envoy's `-c`.
    #[arg(short = 'c', long = "config-path")]
    config_path: Option<PathBuf>,
    /// Bootstrap as a YAML string; merged over `--config-path` when both are given.
    #[arg(long = "config-yaml")]
    config_yaml: Option<String>,
    /// `serve` runs; `validate` checks the config and exits.
    #[arg(long, value_enum, default_value = "serve")]
    mode: Mode,
    /// Log level: trace, debug, info, warning (warn), error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// Worker threads (default: number of CPUs).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Write the admin address (ip:port) to this file once bound.
    #[arg(long = "admin-address-path")]
    admin_address_path: Option<PathBuf>,
    /// Seconds to wait for open connections on shutdown.
    #[arg(long = "drain-time-s", default_value_t = 5)]
    drain_time_s: u64,
    /// Accepted for Envoy compatibility (no hot restart here).
    #[arg(long = "disable-hot-restart", hide = true)]
    disable_hot_restart: bool,
    /// Accepted for Envoy compatibility (no hot restart here).
    #[arg(long = "use-dynamic-base-id", hide = true)]
    use_dynamic_base_id: bool,
    /// Accepted for Envoy compatibility (no hot restart here).
    #[arg(long = "base-id", hide = true)]
    base_id: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Serve,
    Validate,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the demo: echo upstream, the add_headers processor and the proxy, in one process.
    Demo(extproxy::demo::DemoArgs),
}

/// jemalloc: per request, glibc's malloc/free were 15% of the proxy's instructions on the ext_proc
/// path, and its large buffers come and go through mmap/munmap (measured in docs/performance.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let level = match level {
        "warning" => "warn",
        "critical" => "error",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(level).context("invalid --log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(&cli.log_level)?;
    let concurrency = cli.concurrency.filter(|c| *c > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if let Some(Command::Demo(args)) = cli.command {
        return runtime(concurrency)?.block_on(extproxy::demo::run(args, concurrency));
    }
    let (bootstrap, source) = load_bootstrap(&cli)?;
    let options = extproxy::Options {
        concurrency,
        drain_time: Duration::from_secs(cli.drain_time_s),
    };
    if let Mode::Validate = cli.mode {
        // Inside a runtime: building filters creates the (lazily connecting) gRPC channels.
        runtime(1)?.block_on(async { extproxy::server::validate(&bootstrap, &options) })?;
        println!("configuration '{source}' OK");
        return Ok(());
    }
    runtime(concurrency)?.block_on(async move {
        let server = extproxy::Server::bind(&bootstrap, options).await?;
        if let (Some(path), Some(addr)) = (&cli.admin_address_path, server.admin_addr()) {
            std::fs::write(path, addr.to_string())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        tracing::info!("all listeners started");
        server.run(shutdown).await;
        tracing::info!("exiting");
        Ok(())
    })
}

/// Reads `-c` and/or `--config-yaml`; returns the bootstrap and how to name it in messages.
fn load_bootstrap(cli: &Cli) -> anyhow::Result<(extproxy::config::Bootstrap, String)> {
    let mut doc: serde_json::Value = serde_json::Value::Null;
    let mut source = String::new();
    if let Some(path) = &cli.config_path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("unable to read file: {}", path.display()))?;
        doc = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("unable to parse {}", path.display()))?;
        source = path.display().to_string();
    }
    if let Some(yaml) = &cli.config_yaml {
        let overlay: serde_json::Value =
            serde_yaml_ng::from_str(yaml).context("unable to parse --config-yaml")?;
        merge(&mut doc, overlay);
        if source.is_empty() {
            source = "--config-yaml".to_string();
        }
    }
    if doc.is_null() {
        anyhow::bail!("At least one of --config-path or --config-yaml or Options::configProto() should be non-empty");
    }
    let bootstrap: extproxy::config::Bootstrap = extproxy::config::decode(doc, "")?;
    bootstrap.validate()?;
    Ok((bootstrap, source))
}

/// Protobuf MergeFrom on JSON: objects merge recursively, lists append, scalars replace.
fn merge(base: &mut serde_json::Value, overlay: serde_json::Value) {
    use serde_json::Value;
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (Value::Array(b), Value::Array(o)) => b.extend(o),
        (b, o) => *b = o,
    }
}

async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("caught signal; draining");
    shutdown.cancel();
}
