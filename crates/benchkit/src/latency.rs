//! `latency`: an open-loop, fixed-rate HTTP/1.1 client (wrk2-style). Each connection has its own
//! schedule (`rate / connections` requests per second). When a request's turn comes while the
//! previous response on its connection is still outstanding, its latency runs from its
//! *scheduled* send time, so a stalled proxy is charged for the requests it delayed (no
//! coordinated omission); otherwise it runs from the actual send, so the client's own timer
//! lateness (tokio's timer has 1 ms granularity) is not charged.

use std::time::Duration;

use tokio::time::Instant;

use crate::h1::Conn;

/// A request slower than this counts as an error.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `latency` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target address.
    #[arg(long)]
    target: std::net::SocketAddr,
    /// Offered load, requests per second (all connections together).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Connections.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Seconds of load before measuring (same rate, samples dropped).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
}

/// Runs the schedule, then prints `{"requests","errors","p50_us","p99_us","p999_us","max_us",..}`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let connections = args.connections.max(1);
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(args.target).await?);
    }
    let interval = Duration::from_secs_f64(connections as f64 / args.rate.max(0.001));
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let path = args.path.clone();
            let target = args.target;
            // Stagger the connections evenly over one interval.
            let mut next = start + interval.mul_f64(i as f64 / connections as f64);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut errors = 0u64;
                let mut conn = Some(conn);
                // When the previous response on this connection came back.
                let mut prev_done = start;
                while next < end {
                    tokio::time::sleep_until(next).await;
                    let scheduled = next;
                    next += interval;
                    // Charge the wait to the proxy only when the proxy caused it (the previous
                    // response was late); tokio's timer wakes up to ~1 ms late, and that lateness
                    // is the client's, not the proxy's.
                    let from = if prev_done > scheduled {
                        scheduled
                    } else {
                        Instant::now()
                    };
                    // A broken connection is replaced (its failed request counts as an error).
                    if conn.is_none() {
                        conn = Conn::open(target).await.ok();
                    }
                    let ok = match conn.as_mut() {
                        None => false,
                        Some(c) => match tokio::time::timeout(TIMEOUT, c.get(&path)).await {
                            Ok(Ok(200)) => true,
                            Ok(Ok(_)) => false,
                            Ok(Err(_)) | Err(_) => {
                                conn = None;
                                false
                            }
                        },
                    };
                    prev_done = Instant::now();
                    if scheduled < measure_from {
                        continue;
                    }
                    if ok {
                        samples.push(prev_done.duration_since(from).as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (samples, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (s, e) = t.await?;
        all.extend(s);
        errors += e;
    }
    all.sort_unstable();
    let report = serde_json::json!({
        "requests": all.len() as u64 + errors,
        "errors": errors,
        "rate": args.rate,
        "connections": connections,
        "p50_us": percentile(&all, 50.0),
        "p99_us": percentile(&all, 99.0),
        "p999_us": percentile(&all, 99.9),
        "max_us": all.last().copied().unwrap_or(0),
    });
    println!("{report}");
    Ok(())
}

/// Nearest-rank percentile of sorted samples (0 when empty).
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps 99.9% of 1000 at rank 999 despite floating-point rounding.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 99.0), 990);
        assert_eq!(percentile(&v, 99.9), 999);
        assert_eq!(percentile(&[7], 99.9), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
