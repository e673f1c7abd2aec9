//! Filters, named as in Envoy: network (L4) filters run per connection, HTTP filters per request.
//!
//! - [`network`]: `envoy.filters.network.ext_proc`, `envoy.filters.network.tcp_proxy`,
//!   `envoy.filters.network.http_connection_manager`.
//! - [`http`]: `envoy.filters.http.ext_proc`, `envoy.filters.http.router`, run by the HTTP
//!   connection manager.

pub mod common;
pub mod http;
pub mod network;
