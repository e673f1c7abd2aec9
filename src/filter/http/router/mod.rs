//! `envoy.filters.http.router` (placeholder until implemented).

/// Extension name.
pub const NAME: &str = "envoy.filters.http.router";
/// `@type` of the config.
pub const TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";

/// The router: forwards the request to the route's cluster.
#[derive(Debug)]
pub struct Router {}
