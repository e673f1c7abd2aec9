//! `envoy.filters.http.ext_proc` (placeholder until implemented).

use super::{Body, BuildContext, LocalReply, StreamContext};
use crate::config::{ConfigError, RawAny};
use std::sync::Arc;

/// Extension name.
pub const NAME: &str = "envoy.filters.http.ext_proc";
/// `@type` of the filter config.
pub const TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor";
/// `@type` of the per-route config.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute";

/// The built filter config, shared by all streams.
#[derive(Debug)]
pub struct Filter {}

/// Decoded `ExtProcPerRoute`.
#[derive(Debug)]
pub struct PerRoute {}

/// Builds the filter.
pub fn build(_any: &RawAny, path: &str, _ctx: &BuildContext<'_>) -> Result<Arc<Filter>, ConfigError> {
    Err(ConfigError::new(path, format!("{NAME} is not implemented yet")))
}

/// Builds a per-route config.
pub fn build_per_route(_any: &RawAny, path: &str) -> Result<Arc<PerRoute>, ConfigError> {
    Err(ConfigError::new(path, format!("{PER_ROUTE_TYPE} is not implemented yet")))
}

/// The filter serving one request.
#[derive(Debug)]
pub struct StreamFilter {
    #[allow(dead_code)]
    config: Arc<Filter>,
}

impl StreamFilter {
    /// A new instance for one request.
    pub fn new(config: Arc<Filter>) -> Self {
        StreamFilter { config }
    }

    /// Request path.
    pub async fn decode(&mut self, req: http::Request<Body>, _cx: &mut StreamContext) -> Result<http::Request<Body>, LocalReply> {
        Ok(req)
    }

    /// Response path.
    pub async fn encode(&mut self, resp: http::Response<Body>, _cx: &mut StreamContext) -> Result<http::Response<Body>, LocalReply> {
        Ok(resp)
    }
}
