//! Write Envoy external processors in Rust: HTTP (`envoy.filters.http.ext_proc`) and network
//! (`envoy.filters.network.ext_proc`), tested against real Envoy 1.40.
//!
//! # Write a processor in 20 lines
//!
//! ```no_run
//! use extproc::{Headers, HttpContext, HttpProcessor, Reply, Server};
//!
//! /// Adds a header to every request and every response.
//! #[derive(Default)]
//! struct Hello;
//!
//! impl HttpProcessor for Hello {
//!     async fn request_headers(&mut self, _h: &Headers, _cx: &mut HttpContext) -> Reply {
//!         Reply::new().set_header("x-ext-proc-header", "hello-to-asm")
//!     }
//!     async fn response_headers(&mut self, _h: &Headers, _cx: &mut HttpContext) -> Reply {
//!         Reply::new().set_header("x-ext-proc-header", "hello-from-asm")
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), extproc::ServeError> {
//!     let addr = "127.0.0.1:50051".parse().expect("valid address");
//!     Server::new().http(Hello::default).serve(addr).await // until SIGTERM / ctrl-c
//! }
//! ```
//!
//! Point Envoy's `envoy.filters.http.ext_proc` filter at it (`grpc_service.envoy_grpc` to an
//! HTTP/2 cluster on port 50051). Test it without Envoy using the [`testkit`]:
//!
//! ```
//! # use extproc::{Headers, HttpContext, HttpProcessor, Reply};
//! # #[derive(Default)] struct Hello;
//! # impl HttpProcessor for Hello {
//! #     async fn request_headers(&mut self, _h: &Headers, _cx: &mut HttpContext) -> Reply {
//! #         Reply::new().set_header("x-ext-proc-header", "hello-to-asm")
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut ex = extproc::testkit::HttpExchange::new(Hello);
//! let r = ex.request_headers(&[(":path", "/")]).eos(true).send().await;
//! assert_eq!(r.header("x-ext-proc-header").as_deref(), Some("hello-to-asm"));
//! # }
//! ```
//!
//! # Layout
//!
//! The data path of one gRPC stream: `server` (tonic service, one processor per stream from your
//! factory) → `stream` (task, counters, panic guard) → `http::driver` / `network::driver`
//! (receive, call your processor, send) around `http::state` / `network::state` (the protocol as
//! plain state machines: ordering checks, mapping a [`Reply`] to Envoy's response messages).
//!
//! - [`http`]: [`HttpProcessor`], [`Reply`], [`ImmediateResponse`], [`Headers`], [`Body`].
//! - [`network`]: [`NetworkProcessor`], [`NetworkReply`], [`Chunk`].
//! - [`server`]: [`Server`] (TCP, Unix socket, TLS, health, graceful shutdown), [`Stats`].
//! - [`testkit`]: [`testkit::HttpExchange`], [`testkit::NetworkExchange`].
//! - [`demo`]: the processors behind the examples (`AddHeaders`, `AuthGate`, `RedactBody`,
//!   `StreamingUpper`, `TcpInspect`), reusable as they are.
//! - [`pb`]: the raw Envoy protos (from `envoy-types`), for anything the typed API lacks.
//! - [`Error`]: what can go wrong on a stream, and the gRPC status it maps to.

pub mod batched_writes;
pub mod demo;
pub mod error;
pub mod http;
pub mod metadata;
pub mod network;
pub mod server;
mod stream;
pub mod testkit;

/// The generated Envoy protobuf types (re-exported from `envoy-types`).
pub use envoy_types::pb;

pub use error::{Error, Side};
pub use http::{
    Body, BodyMode, Headers, HttpContext, HttpProcessor, ImmediateResponse, Phase, Reply,
};
pub use network::{Chunk, NetworkContext, NetworkProcessor, NetworkReply};
pub use server::{shutdown_signal, ServeError, Server, ServerHandle, TlsConfig};
pub use stream::{Stats, StatsSnapshot};
