//! `envoy.filters.network.http_connection_manager` (placeholder until implemented).

use crate::config::{ConfigError, RawAny};
use std::sync::Arc;

/// Extension name.
pub const NAME: &str = "envoy.filters.network.http_connection_manager";
/// `@type` of the typed config.
pub const TYPE: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The built filter, shared by all connections of a listener.
#[derive(Debug)]
pub struct Filter {}

/// Builds the filter from its typed config.
pub fn build(_any: &RawAny, path: &str, _ctx: &super::BuildContext<'_>) -> Result<Arc<Filter>, ConfigError> {
    Err(ConfigError::new(path, format!("{NAME} is not implemented yet")))
}

/// Serves HTTP on one downstream connection.
pub async fn serve(_conn: crate::listener::Connection, _filter: &Arc<Filter>) {}
