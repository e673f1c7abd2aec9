//! Plumbing shared by the HTTP and network stream drivers: the outbound channel, counters, and
//! the spawn wrapper that turns a processor panic into an `INTERNAL` status.
//!
//! The server and the [`crate::testkit`] both go through [`spawn_driver`], so tests exercise
//! exactly the code that serves Envoy.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::Error;

/// How many responses may wait in a stream's outbound queue before the driver waits (gRPC flow
/// control then pushes back on the processor).
pub(crate) const OUTBOUND_QUEUE: usize = 32;

/// Server-wide counters. All atomics; read them with [`Stats::snapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    /// Streams accepted since start.
    streams_started: AtomicU64,
    /// Streams currently running.
    streams_active: AtomicI64,
    /// `ProcessingRequest`s received.
    messages_received: AtomicU64,
    /// `ProcessingResponse`s sent.
    messages_sent: AtomicU64,
    /// Streams that ended with an error (protocol error, abort, panic, transport error).
    errors: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Streams accepted since start.
    pub streams_started: u64,
    /// Streams currently running.
    pub streams_active: i64,
    /// `ProcessingRequest`s received.
    pub messages_received: u64,
    /// `ProcessingResponse`s sent.
    pub messages_sent: u64,
    /// Streams that ended with an error.
    pub errors: u64,
}

impl Stats {
    /// Reads all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            streams_started: self.streams_started.load(Ordering::Relaxed),
            streams_active: self.streams_active.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn received(&self) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The sending half of one stream, counting what it sends.
#[derive(Debug)]
pub(crate) struct Outbound<T> {
    /// Toward tonic (or the test kit).
    tx: mpsc::Sender<Result<T, Status>>,
    /// Shared counters.
    pub stats: Arc<Stats>,
    /// Test kit hook: signalled after each inbound message is fully handled.
    ack: Option<mpsc::UnboundedSender<()>>,
}

impl<T> Clone for Outbound<T> {
    fn clone(&self) -> Self {
        Outbound {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
            ack: self.ack.clone(),
        }
    }
}

/// The peer is gone; stop driving the stream.
#[derive(Debug)]
pub(crate) struct Closed;

impl<T> Outbound<T> {
    /// Sends one response.
    pub async fn send(&self, msg: T) -> Result<(), Closed> {
        self.tx.send(Ok(msg)).await.map_err(|_| Closed)?;
        self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Ends the stream with the error's status.
    pub async fn fail(&self, err: &Error) {
        self.stats.error();
        tracing::warn!(error = %err, "ext_proc stream failed");
        let _ = self.tx.send(Err(err.to_status())).await;
    }

    /// Tells the test kit that one inbound message has been handled.
    pub fn ack(&self) {
        if let Some(a) = &self.ack {
            let _ = a.send(());
        }
    }
}

/// Runs `drive(outbound)` on its own task. A panic in the processor ends this stream with
/// `INTERNAL` and is counted; other streams are unaffected.
pub(crate) fn spawn_driver<T, F, Fut>(
    stats: Arc<Stats>,
    ack: Option<mpsc::UnboundedSender<()>>,
    drive: F,
) -> mpsc::Receiver<Result<T, Status>>
where
    T: Send + 'static,
    F: FnOnce(Outbound<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let out = Outbound {
        tx,
        stats: stats.clone(),
        ack,
    };
    let guard_out = out.clone();
    stats.streams_started.fetch_add(1, Ordering::Relaxed);
    stats.streams_active.fetch_add(1, Ordering::Relaxed);
    let fut = drive(out);
    tokio::spawn(async move {
        let result = AssertUnwindSafe(fut).catch_unwind().await;
        if let Err(panic) = result {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_string());
            guard_out.fail(&Error::Panicked(msg)).await;
        }
        guard_out
            .stats
            .streams_active
            .fetch_sub(1, Ordering::Relaxed);
        // Dropping the last sender ends the response stream (gRPC status OK unless an error was
        // sent above).
    });
    rx
}
