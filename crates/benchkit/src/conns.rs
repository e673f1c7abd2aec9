//! `conns`: connection-scale scenarios.
//! - `hold`: K HTTP/1.1 connections open at once, each doing requests back to back for S
//!   seconds (the 1,000-connection scenario; any failed or non-200 request is an error).
//! - `churn`: N connections opened, used for one request and closed, P at a time (for the RSS a
//!   proxy keeps after they are gone).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio::time::Instant;

use crate::h1::Conn;

/// Which scenario.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Mode {
    /// Hold `connections` open concurrently, each doing requests for `duration`.
    Hold,
    /// Open, use once and close `connections` connections, `parallel` at a time.
    Churn,
}

/// `conns` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target address.
    #[arg(long)]
    target: std::net::SocketAddr,
    /// The scenario.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Connections (held at once, or opened in total).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Seconds of requests (`hold`).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Connections in flight at once (`churn`).
    #[arg(long, default_value_t = 50)]
    parallel: usize,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

/// Runs the scenario and prints one JSON line.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = match args.mode {
        Mode::Hold => hold(&args).await,
        Mode::Churn => churn(&args).await,
    };
    println!("{report}");
    Ok(())
}

async fn hold(args: &Args) -> serde_json::Value {
    let n = args.connections.max(1);
    // Everyone connects first; requests start once all connections are open (or failed).
    let barrier = Arc::new(Barrier::new(n + 1));
    let duration = Duration::from_secs_f64(args.duration);
    let timeout = Duration::from_secs_f64(args.timeout);
    let target = args.target;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let conn = tokio::time::timeout(timeout, Conn::open(target)).await;
                barrier.wait().await;
                let Ok(Ok(mut conn)) = conn else {
                    return (0u64, 0u64, true);
                };
                let deadline = Instant::now() + duration;
                let (mut ok, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match tokio::time::timeout(timeout, conn.get("/")).await {
                        Ok(Ok(200)) => ok += 1,
                        Ok(Ok(_)) => errors += 1,
                        Ok(Err(_)) | Err(_) => {
                            errors += 1;
                            // The connection is gone; carry on with a new one.
                            match tokio::time::timeout(timeout, Conn::open(target)).await {
                                Ok(Ok(c)) => conn = c,
                                _ => break,
                            }
                        }
                    }
                }
                (ok, errors, false)
            })
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let (mut ok, mut errors, mut connect_errors) = (0u64, 0u64, 0u64);
    for t in tasks {
        match t.await {
            Ok((o, e, failed)) => {
                ok += o;
                errors += e;
                connect_errors += u64::from(failed);
            }
            Err(_) => connect_errors += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    serde_json::json!({
        "mode": "hold",
        "connections": n,
        "requests": ok + errors,
        "ok": ok,
        "errors": errors + connect_errors,
        "connect_errors": connect_errors,
        "rps": ok as f64 / secs.max(1e-9),
    })
}

async fn churn(args: &Args) -> serde_json::Value {
    let n = args.connections;
    let parallel = args.parallel.clamp(1, n.max(1));
    let timeout = Duration::from_secs_f64(args.timeout);
    let target = args.target;
    let started = Instant::now();
    let tasks: Vec<_> = (0..parallel)
        .map(|w| {
            // Worker w takes connections w, w + parallel, ...
            let count = (n + parallel - 1 - w) / parallel;
            tokio::spawn(async move {
                let mut errors = 0u64;
                for _ in 0..count {
                    let one = async {
                        let mut conn = Conn::open(target).await?;
                        conn.get("/").await
                    };
                    match tokio::time::timeout(timeout, one).await {
                        Ok(Ok(200)) => {}
                        _ => errors += 1,
                    }
                    // `conn` is dropped here: the client closes first, as browsers do.
                }
                errors
            })
        })
        .collect();
    let mut errors = 0u64;
    for t in tasks {
        errors += t.await.unwrap_or(1);
    }
    serde_json::json!({
        "mode": "churn",
        "connections": n,
        "errors": errors,
        "seconds": started.elapsed().as_secs_f64(),
    })
}
