//! L4 throughput: `tcp-sink` counts the bytes that reach the upstream, `tcp-load` writes as fast
//! as it can. Throughput is what the sink receives: a proxy that reads from the client faster
//! than it delivers (buffering without bound) shows up as bytes written but not delivered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// `tcp-sink` options.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// How often to print `tick <unix_ms> <bytes received so far> <open connections>`.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
}

/// Accepts and drains connections until killed, printing cumulative counts every tick.
pub async fn sink(args: SinkArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let listener = crate::bind_and_announce(args.port).await?;
    let received = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    let (r, o) = (received.clone(), open.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms.max(1)));
        loop {
            tick.tick().await;
            let mut out = std::io::stdout().lock();
            let line = format!(
                "tick {} {} {}",
                crate::unix_ms(),
                r.load(Ordering::Relaxed),
                o.load(Ordering::Relaxed)
            );
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                // Nobody is listening any more.
                std::process::exit(0);
            }
        }
    });
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let (received, open) = (received.clone(), open.clone());
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// `tcp-load` options.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Target address (the proxy's listener).
    #[arg(long)]
    target: std::net::SocketAddr,
    /// Connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds to write for (with `--bytes`: the time limit).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Total bytes to write, split evenly over the connections; each connection then shuts
    /// down its write side (0: write until `duration` ends).
    #[arg(long, default_value_t = 0)]
    bytes: u64,
    /// Bytes per write.
    #[arg(long, default_value_t = 64 * 1024)]
    write_size: usize,
}

/// Writes for `duration` (or `bytes` in total), then prints `{"bytes_written", "start_ms",
/// "end_ms", "errors"}`.
pub async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let chunk = bytes::Bytes::from(vec![b'x'; args.write_size.max(1)]);
    let mut streams = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        streams.push(TcpStream::connect(args.target).await?);
    }
    let start_ms = crate::unix_ms();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.duration);
    let per_conn = args.bytes / args.connections.max(1) as u64;
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let mut written = 0u64;
                loop {
                    let left = per_conn.saturating_sub(written);
                    if per_conn > 0 && left == 0 {
                        let _ = stream.shutdown().await;
                        return (written, false);
                    }
                    let n = if per_conn > 0 {
                        left.min(chunk.len() as u64) as usize
                    } else {
                        chunk.len()
                    };
                    match tokio::time::timeout_at(deadline, stream.write_all(&chunk[..n])).await {
                        Ok(Ok(())) => written += n as u64,
                        Ok(Err(_)) => return (written, true),
                        // Deadline; a partial write is not counted (it may not have happened).
                        Err(_) => return (written, false),
                    }
                }
            })
        })
        .collect();
    let (mut total, mut errors) = (0u64, 0u64);
    for t in tasks {
        let (w, failed) = t.await?;
        total += w;
        errors += u64::from(failed);
    }
    let end_ms = crate::unix_ms();
    let report = serde_json::json!({
        "bytes_written": total,
        "start_ms": start_ms as u64,
        "end_ms": end_ms as u64,
        "connections": args.connections,
        "errors": errors,
    });
    println!("{report}");
    Ok(())
}
