//! Integrity under load: nothing lost, duplicated, reordered or corrupted.
//!
//! - L4: 64 concurrent connections each send 16 MiB of random bytes through
//!   `envoy.filters.network.ext_proc` with an identity processor that answers every chunk with a
//!   new buffer (`MODIFIED`), to an upstream that echoes; SHA-256 compared at the upstream
//!   (the client's bytes) and back at the client (the echoed bytes).
//! - HTTP: 10,000 requests with random bodies (empty, small, and larger than the codec and
//!   side-stream chunk sizes), half through STREAMED and half through BUFFERED ext_proc, 32 at a
//!   time; the SDK processor XORs every body byte on the way up and again on the way down, so the
//!   upstream checks it received the processor's rewrite and the client checks it got its own
//!   bytes back.
//!
//! `bench/soak` runs the same workloads for minutes against a release build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults_support;
mod l4_support;

use bytes::Bytes;
use faults_support::Proxy;
use http_body_util::{BodyExt, Full};
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// === L4 ===

const L4_CONNECTIONS: usize = 64;
const L4_BYTES: usize = 16 << 20;
const L4_CHUNK: usize = 64 << 10;

/// Answers every chunk with a copy of itself: `MODIFIED`, a new buffer.
#[derive(Default)]
struct IdentityModified;

impl extproc::NetworkProcessor for IdentityModified {
    async fn on_read(
        &mut self,
        c: &extproc::Chunk,
        _: &mut extproc::NetworkContext,
    ) -> extproc::NetworkReply {
        extproc::NetworkReply::replace(Bytes::copy_from_slice(c.data()))
    }
    async fn on_write(
        &mut self,
        c: &extproc::Chunk,
        _: &mut extproc::NetworkContext,
    ) -> extproc::NetworkReply {
        extproc::NetworkReply::replace(Bytes::copy_from_slice(c.data()))
    }
}

/// An upstream that echoes every byte and reports the SHA-256 of what each connection sent.
async fn hashing_echo_upstream() -> (u16, tokio::sync::mpsc::UnboundedReceiver<[u8; 32]>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let mut hash = Sha256::new();
                let mut buf = vec![0u8; L4_CHUNK];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            hash.update(&buf[..n]);
                            if w.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = w.shutdown().await;
                let _ = tx.send(hash.finalize().into());
            });
        }
    });
    (port, rx)
}

/// Sends `L4_BYTES` random bytes (seeded by `seed`) and reads the echo; returns the hashes of
/// what was sent and what came back, and the byte count received.
async fn l4_client(addr: std::net::SocketAddr, seed: u64) -> ([u8; 32], [u8; 32], usize) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; L4_CHUNK];
        let mut left = L4_BYTES;
        while left > 0 {
            let n = left.min(L4_CHUNK);
            rng.fill_bytes(&mut buf[..n]);
            hash.update(&buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
        <[u8; 32]>::from(hash.finalize())
    });
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; L4_CHUNK];
    let mut got = 0;
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                got += n;
            }
            Err(e) => panic!("connection {seed}: read after {got} bytes: {e}"),
        }
    }
    (writer.await.unwrap(), hash.finalize().into(), got)
}

/// One round: `L4_CONNECTIONS` clients at once; returns (bytes each way, mismatches).
async fn l4_round(
    addr: std::net::SocketAddr,
    up_hashes: &mut tokio::sync::mpsc::UnboundedReceiver<[u8; 32]>,
    round: u64,
) -> (u64, u64) {
    let clients: Vec<_> = (0..L4_CONNECTIONS as u64)
        .map(|i| tokio::spawn(l4_client(addr, round * 1000 + i)))
        .collect();
    let mut mismatches = 0;
    let mut sent = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (out, back, n) = c.await.unwrap();
        if n != L4_BYTES || out != back {
            eprintln!(
                "connection {i}: {n} bytes echoed back, hashes equal: {}",
                out == back
            );
            mismatches += 1;
        }
        sent.push(out);
    }
    let mut at_upstream = Vec::new();
    for _ in 0..L4_CONNECTIONS {
        at_upstream.push(up_hashes.recv().await.unwrap());
    }
    sent.sort();
    at_upstream.sort();
    mismatches += sent
        .iter()
        .zip(&at_upstream)
        .filter(|(a, b)| a != b)
        .count() as u64;
    ((L4_CONNECTIONS * L4_BYTES) as u64, mismatches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_64_connections_of_16_mib_through_a_modifying_processor() {
    let started = Instant::now();
    let (up_port, mut up_hashes) = hashing_echo_upstream().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = extproc::Server::new()
        .network(IdentityModified::default)
        .spawn(listener)
        .unwrap();
    let yaml = l4_support::bootstrap(
        &[l4_support::ext_proc("ep", "message_timeout: 60s")],
        up_port,
        p.addr().port(),
        "",
        "",
    );
    let proxy = Proxy::start(&yaml, "l4").await;
    let mut soak = Soak::new("l4");
    let mut round = 0;
    loop {
        let (bytes, mismatches) = l4_round(proxy.addr, &mut up_hashes, round).await;
        round += 1;
        if !soak.row(L4_CONNECTIONS as u64, bytes, mismatches) {
            break;
        }
    }
    assert_eq!(
        soak.mismatches, 0,
        "connections whose bytes differ at either end"
    );
    let ep = |n: &str| proxy.get(&format!("network_ext_proc.ep.{n}"));
    assert_eq!(
        ep("streams_started"),
        (round as usize * L4_CONNECTIONS) as i64
    );
    assert_eq!(ep("read_data_sent"), ep("read_data_injected"));
    assert_eq!(ep("write_data_sent"), ep("write_data_injected"));
    assert_eq!(ep("connections_closed") + ep("connections_reset"), 0);
    faults_support::settled(&proxy.stats, &["upstream"]).await;
    eprintln!(
        "l4 integrity: {round} x {L4_CONNECTIONS} x {} MiB each way in {:?}",
        L4_BYTES >> 20,
        started.elapsed()
    );
}

// === soak mode (bench/soak) ===

/// `EXTPROXY_SOAK_SECS=N` repeats each workload until N seconds have passed, printing a row
/// per round; unset, each workload runs once (CI).
struct Soak {
    name: &'static str,
    started: Instant,
    until: Option<Instant>,
    units: u64,
    bytes: u64,
    mismatches: u64,
}

impl Soak {
    fn new(name: &'static str) -> Soak {
        let secs = std::env::var("EXTPROXY_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        let started = Instant::now();
        Soak {
            name,
            started,
            until: secs.map(|s| started + std::time::Duration::from_secs(s)),
            units: 0,
            bytes: 0,
            mismatches: 0,
        }
    }

    /// Records a round; true if another round should run.
    fn row(&mut self, units: u64, bytes: u64, mismatches: u64) -> bool {
        self.units += units;
        self.bytes += bytes;
        self.mismatches += mismatches;
        let Some(until) = self.until else {
            return false;
        };
        println!(
            "soak {:<4} {:>6.0}s {:>10} {:>10} MiB {:>10} {:>8} MiB",
            self.name,
            self.started.elapsed().as_secs_f64(),
            self.units,
            self.bytes >> 20,
            self.mismatches,
            rss_mib()
        );
        Instant::now() < until
    }
}

/// Resident memory of this process (proxy, processor and clients all run in it).
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 10)
}

// === HTTP ===

const HTTP_REQUESTS: usize = 10_000;
const HTTP_CONCURRENCY: usize = 32;
const XOR: u8 = 0x5a;

/// XORs every body byte with `XOR` in both directions (STREAMED chunks or BUFFERED bodies).
#[derive(Default)]
struct Xor;

/// `b` with every byte XORed with `XOR`, sixteen at a time: the tests run unoptimised, where a
/// byte-by-byte loop took a third of this test's CPU time.
fn xor(b: &[u8]) -> Bytes {
    const MASK: u128 = u128::from_ne_bytes([XOR; 16]);
    let mut out = b.to_vec();
    let (words, rest) = out.as_chunks_mut::<16>();
    for w in words {
        *w = (u128::from_ne_bytes(*w) ^ MASK).to_ne_bytes();
    }
    for x in rest {
        *x ^= XOR;
    }
    out.into()
}

impl extproc::HttpProcessor for Xor {
    async fn request_body(
        &mut self,
        body: &extproc::Body,
        _: &mut extproc::HttpContext,
    ) -> extproc::Reply {
        extproc::Reply::new().body(xor(body.data()))
    }
    async fn response_body(
        &mut self,
        body: &extproc::Body,
        _: &mut extproc::HttpContext,
    ) -> extproc::Reply {
        extproc::Reply::new().body(xor(body.data()))
    }
}

/// An HTTP/1.1 upstream that checks the body against `x-want-sha256` (the hash of the XORed
/// body) and echoes it; a mismatch is counted and answered 500.
async fn checking_echo_upstream(mismatches: Arc<AtomicU64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let mismatches = mismatches.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let mismatches = mismatches.clone();
                        async move {
                            let want = req
                                .headers()
                                .get("x-want-sha256")
                                .map(|v| v.as_bytes().to_vec())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await?.to_bytes();
                            let got = hex(&Sha256::digest(&body));
                            let status = if got.as_bytes() == want {
                                200
                            } else {
                                mismatches.fetch_add(1, Ordering::Relaxed);
                                500
                            };
                            let mut resp = hyper::Response::new(Full::new(body));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, hyper::Error>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A random body size: a quarter empty, a quarter small, the rest up to 256 KiB (larger than
/// hyper's read buffer, HTTP/2 frames and the side stream's chunks).
fn body_size(rng: &mut impl Rng) -> usize {
    match rng.random_range(0..100) {
        0..25 => 0,
        25..50 => rng.random_range(1..=1024),
        50..90 => rng.random_range(1025..=32 * 1024),
        _ => rng.random_range(32 * 1024..=256 * 1024),
    }
}

fn http_yaml(mode: &str, upstream: u16, proc_port: u16) -> String {
    let filter = faults_support::http_ext_proc(serde_json::json!({
        "message_timeout": "30s",
        "processing_mode": {"request_body_mode": mode, "response_body_mode": mode},
    }));
    faults_support::http_bootstrap(vec![filter], upstream, upstream, proc_port, "60s")
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// One round of `HTTP_REQUESTS`, alternating between the two proxies, `HTTP_CONCURRENCY` at a
/// time; returns (body bytes each way, requests whose response differs from what was sent).
async fn http_round(client: &Client, addrs: [std::net::SocketAddr; 2], round: u64) -> (u64, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..HTTP_CONCURRENCY)
        .map(|w| {
            let (client, next, bytes, bad) =
                (client.clone(), next.clone(), bytes.clone(), bad.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(round * 1000 + w as u64);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= HTTP_REQUESTS {
                        return;
                    }
                    let mut body = vec![0u8; body_size(&mut rng)];
                    rng.fill_bytes(&mut body);
                    let want = hex(&Sha256::digest(xor(&body)));
                    let addr = addrs[i % 2];
                    let req = hyper::Request::post(format!("http://{addr}/r{i}"))
                        .header("x-want-sha256", want)
                        .body(Full::new(Bytes::from(body.clone())))
                        .unwrap();
                    let resp = client
                        .request(req)
                        .await
                        .unwrap_or_else(|e| panic!("request {i} ({} bytes): {e:?}", body.len()));
                    let status = resp.status();
                    let got = resp.into_body().collect().await.unwrap().to_bytes();
                    if status != 200 || got != body {
                        eprintln!(
                            "request {i}: status {status}, {} bytes sent, {} back",
                            body.len(),
                            got.len()
                        );
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    (bytes.load(Ordering::Relaxed), bad.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_10000_random_bodies_streamed_and_buffered() {
    let started = Instant::now();
    // The word-wise `xor` is the byte-wise one (the checks below use it on both sides).
    let sample: Vec<u8> = (0..=255).chain(0..45).collect();
    let bytewise: Vec<u8> = sample.iter().map(|x| x ^ XOR).collect();
    assert_eq!(xor(&sample), bytewise);
    let at_upstream = Arc::new(AtomicU64::new(0));
    let up = checking_echo_upstream(at_upstream.clone()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = extproc::Server::new()
        .http(Xor::default)
        .spawn(listener)
        .unwrap();
    let streamed = Proxy::start(&http_yaml("STREAMED", up, p.addr().port()), "ingress").await;
    let buffered = Proxy::start(&http_yaml("BUFFERED", up, p.addr().port()), "ingress").await;
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut soak = Soak::new("http");
    let mut rounds = 0;
    loop {
        let before = at_upstream.load(Ordering::Relaxed);
        let (bytes, bad) = http_round(&client, [streamed.addr, buffered.addr], rounds).await;
        rounds += 1;
        let upstream_bad = at_upstream.load(Ordering::Relaxed) - before;
        if !soak.row(HTTP_REQUESTS as u64, bytes, bad + upstream_bad) {
            break;
        }
    }
    assert_eq!(
        at_upstream.load(Ordering::Relaxed),
        0,
        "bodies that reached the upstream differing from the processor's rewrite"
    );
    assert_eq!(
        soak.mismatches, 0,
        "responses differing from the request body"
    );
    let per_proxy = (rounds as usize * HTTP_REQUESTS / 2) as i64;
    for (proxy, mode) in [(&streamed, "STREAMED"), (&buffered, "BUFFERED")] {
        let c = |n: &str| proxy.get(&format!("http.ingress.ext_proc.{n}"));
        assert_eq!(
            c("streams_started"),
            per_proxy,
            "{mode}: one side stream per request"
        );
        assert_eq!(
            c("streams_failed") + c("spurious_msgs_received"),
            0,
            "{mode}"
        );
        assert_eq!(
            proxy.get("http.ingress.downstream_rq_2xx"),
            per_proxy,
            "{mode}"
        );
    }
    drop(client);
    faults_support::settled(&streamed.stats, &[]).await;
    faults_support::settled(&buffered.stats, &[]).await;
    eprintln!(
        "http integrity: {rounds} x {HTTP_REQUESTS} requests, {} MiB of bodies each way, in {:?}",
        soak.bytes >> 20,
        started.elapsed()
    );
}
