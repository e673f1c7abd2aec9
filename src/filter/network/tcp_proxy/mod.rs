//! `envoy.filters.network.tcp_proxy` (placeholder until implemented).

use crate::config::{ConfigError, RawAny};
use std::sync::Arc;

/// Extension name.
pub const NAME: &str = "envoy.filters.network.tcp_proxy";
/// `@type` of the typed config.
pub const TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// The built filter, shared by all connections of a listener.
#[derive(Debug)]
pub struct Filter {}

/// Builds the filter from its typed config.
pub fn build(_any: &RawAny, path: &str, _ctx: &super::BuildContext<'_>) -> Result<Arc<Filter>, ConfigError> {
    Err(ConfigError::new(path, format!("{NAME} is not implemented yet")))
}

/// Proxies one downstream connection to the cluster, through the network ext_proc filters
/// that precede tcp_proxy in the chain (in config order).
pub async fn serve(
    _conn: crate::listener::Connection,
    _ext_proc: &[Arc<super::ext_proc::Filter>],
    _filter: &Arc<Filter>,
) {
}
