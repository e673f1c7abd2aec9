//! `envoy.filters.network.ext_proc`: hands a TCP connection's bytes, in both directions, to an
//! external gRPC processor (`envoy.service.network_ext_proc.v3.NetworkExternalProcessor/Process`)
//! and forwards what it answers.
//!
//! - [`config`]: the typed config and Envoy's load-time validation messages.
//! - [`state`]: the per-connection protocol state machine (no I/O), where the behaviour lives.
//! - [`stream`]: the gRPC side stream.
//! - [`stats`]: the 17 Envoy counters (plus two extproxy additions).
//!
//! The bytes themselves are moved by `tcp_proxy::session`, which runs the chain of ext_proc
//! filters in front of the upstream (read path in config order, write path reversed).

pub mod config;
pub mod state;
pub mod stats;
pub mod stream;

use crate::cluster::grpc::GrpcChannel;
use crate::config::core::GrpcService;
use crate::config::{ConfigError, RawAny};
use crate::filter::common::attributes::ConnectionInfo;
use std::sync::Arc;

/// Extension name.
pub const NAME: &str = "envoy.filters.network.ext_proc";
/// `@type` of the typed config.
pub const TYPE: &str = "envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor";

/// Where side streams go.
#[derive(Debug, Clone)]
pub enum Target {
    /// The processor cluster's pooled HTTP/2 channels.
    Cluster(GrpcChannel),
    /// `envoy_grpc.cluster_name` names no cluster: accepted at load time, as in Envoy; every
    /// connection then fails to open its stream (spec §5, scenario J).
    Missing(String),
}

/// The built filter, shared by all connections of a listener.
#[derive(Debug)]
pub struct Filter {
    /// Validated settings.
    pub settings: Arc<config::Settings>,
    /// `network_ext_proc.<stat_prefix>.*`.
    pub stats: stats::Stats,
    /// The processor.
    pub target: Target,
    /// Headers and timeout of the side streams.
    pub grpc_service: GrpcService,
}

impl Filter {
    /// The per-connection state.
    pub fn new_connection(&self, info: ConnectionInfo) -> state::ExtProcState {
        state::ExtProcState::new(self.settings.clone(), self.stats.clone(), info)
    }
}

/// Builds the filter from its typed config.
pub fn build(
    any: &RawAny,
    path: &str,
    ctx: &super::BuildContext<'_>,
) -> Result<Arc<Filter>, ConfigError> {
    let cfg: config::NetworkExternalProcessor = crate::config::decode_any(any, path)?;
    let stat_prefix = cfg.stat_prefix.clone();
    let (settings, grpc_service) = config::validate(cfg, path)?;
    let gpath = format!("{path}.grpc_service");
    let envoy_grpc = grpc_service.envoy_grpc(&gpath)?;
    let target = match ctx.clusters.get(&envoy_grpc.cluster_name) {
        Some(cluster) => {
            Target::Cluster(cluster.grpc_channel(&envoy_grpc.authority).map_err(|e| {
                ConfigError::new(format!("{gpath}.envoy_grpc.cluster_name"), e.to_string())
            })?)
        }
        None => Target::Missing(envoy_grpc.cluster_name.clone()),
    };
    Ok(Arc::new(Filter {
        settings: Arc::new(settings),
        stats: stats::Stats::new(ctx.stats, &stat_prefix),
        target,
        grpc_service,
    }))
}
