//! extproxy: a proxy that implements Envoy's external processing, driven by Envoy's bootstrap.
//!
//! # Layout
//!
//! Data enters at a [`listener`], runs through the listener's network [`filter`] chain and
//! leaves through a [`cluster`]:
//!
//! ```text
//! listener ──► filter::network::ext_proc* ──► filter::network::tcp_proxy ──────────────► cluster
//!          └─► filter::network::http_connection_manager
//!                 └─► filter::http::ext_proc* ──► filter::http::router ────────────────► cluster
//!                            │                                 (ext_proc side streams) ─► cluster::grpc
//! ```
//!
//! - [`config`]: Envoy's bootstrap YAML as plain serde data; unknown fields are errors with paths.
//! - [`server`]: builds everything from a bootstrap, binds, runs, drains.
//! - [`listener`]: accept loop; one task per connection.
//! - [`overload`]: the overload manager's global downstream connection limit.
//! - [`filter`]: network filters (ext_proc, tcp_proxy, http_connection_manager) and HTTP
//!   filters (ext_proc, router).
//! - [`cluster`]: endpoints, load balancing, connect; pooled HTTP/2 channels for processors.
//! - [`transport_socket`]: plain TCP or TLS (rustls) on both sides of the proxy.
//! - [`admin`]: `/ready`, `/stats`, `/stats/prometheus`, `/quitquitquit`.
//! - [`stats`]: counters and gauges with Envoy's names.
//! - [`pb`]: the ext_proc service messages, generated with `Bytes` body fields.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod filter;
pub mod listener;
pub mod overload;
pub mod pb;
pub mod server;
pub mod stats;
pub mod transport_socket;

pub use server::{Options, Server};
