//! `envoy.filters.http.ext_proc`: sends each request's and response's headers, body and
//! trailers to an external gRPC processor and applies its answers (Envoy 1.40 semantics).
//!
//! # Layout
//! - [`config`]: the `ExternalProcessor` / `ExtProcPerRoute` config and its validation;
//! - [`mode`]: processing modes;
//! - [`state`]: the protocol state machine (no I/O): which message is sent and expected when,
//!   what each reply does, failures and timers;
//! - [`mutation`]: header maps sent to the processor and header mutations applied back;
//! - [`stream`]: the async driver, one task per HTTP stream owning the side stream;
//! - [`attributes`]: CEL attribute values;
//! - [`stats`]: the 17 counters.
//!
//! Data path: `decode` hands the request head and body to the driver and waits for the
//! processed head; the body then flows through the driver (or untouched when nothing processes
//! it). `encode` does the same for the response.

pub mod attributes;
pub mod config;
pub mod mode;
pub mod mutation;
pub mod state;
pub mod stats;
pub mod stream;

use super::{Body, BuildContext, LocalReply, PerFilterConfig, StreamContext};
use crate::cluster::grpc::GrpcChannel;
use crate::cluster::ClusterManager;
use crate::config::core::{GrpcService, HeaderValue};
use crate::config::{ConfigError, RawAny};
use crate::filter::common::side_stream;
use crate::filter::common::string_matcher::ListStringMatcher;
use config::{
    ExternalProcessorConfig, MetadataOptions, OverridesConfig, PerRouteConfig, RouteCacheAction,
};
use envoy_types::pb::envoy::config::core::v3 as core;
use mutation::{Checker, ForwardRules, Head};
use prost::Message as _;
use state::{Core, Dir, Mode, Policy};
use stats::Stats;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Extension name.
pub const NAME: &str = "envoy.filters.http.ext_proc";
/// `@type` of the filter config.
pub const TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor";
/// `@type` of the per-route config.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute";

/// The built filter config, shared by all streams.
#[derive(Debug)]
pub struct Filter {
    /// The filter's config name (key of `typed_per_filter_config`).
    name: String,
    /// Settings the state machine reads.
    policy: Arc<Policy>,
    /// Configured mode.
    mode: Mode,
    /// Fail open.
    failure_mode_allow: bool,
    /// The side-stream service.
    service: GrpcService,
    /// Its side-stream request headers, parsed once.
    headers: Arc<side_stream::Headers>,
    /// Its largest response message.
    max_receive: usize,
    /// Its channel pool (`None`: the cluster does not exist; streams fail at runtime as Envoy's).
    channel: Option<GrpcChannel>,
    /// Metadata options.
    metadata: MetadataOptions,
    /// Receiving namespaces (untyped), shared by streams.
    receiving: Arc<Vec<String>>,
    request_attributes: Vec<String>,
    response_attributes: Vec<String>,
    deferred_close_timeout: Duration,
    /// For per-route `grpc_service` overrides: channels built on first use.
    clusters: Arc<ClusterManager>,
    route_channels: Mutex<HashMap<(String, String), Option<GrpcChannel>>>,
}

/// Decoded `ExtProcPerRoute`.
#[derive(Debug)]
pub enum PerRoute {
    /// `disabled: true`.
    Disabled,
    /// `overrides`.
    Overrides(Box<OverridesConfig>),
}

fn channel_for(
    clusters: &ClusterManager,
    service: &GrpcService,
) -> Result<Option<GrpcChannel>, ConfigError> {
    let Some(g) = service.envoy_grpc.as_ref() else {
        return Ok(None);
    };
    let Some(cluster) = clusters.get(&g.cluster_name) else {
        return Ok(None);
    };
    let authority = if g.authority.is_empty() {
        g.cluster_name.as_str()
    } else {
        g.authority.as_str()
    };
    cluster.grpc_channel(authority).map(Some)
}

/// `max_receive_message_length` (unlimited when unset, as in Envoy).
fn max_receive(service: &GrpcService) -> usize {
    service
        .envoy_grpc
        .as_ref()
        .and_then(|g| g.max_receive_message_length)
        .filter(|n| *n > 0)
        .map_or(usize::MAX, |n| n as usize)
}

fn list(
    m: &Option<crate::filter::common::string_matcher::ListStringMatcherConfig>,
    path: &str,
) -> Result<Option<ListStringMatcher>, ConfigError> {
    m.as_ref()
        .map(|l| ListStringMatcher::build(l, path))
        .transpose()
}

/// Builds the filter.
pub fn build(any: &RawAny, path: &str, ctx: &BuildContext<'_>) -> Result<Arc<Filter>, ConfigError> {
    let cfg: ExternalProcessorConfig = crate::config::decode_any(any, path)?;
    cfg.validate(path)?;
    let ExternalProcessorConfig {
        grpc_service,
        http_service: _,
        failure_mode_allow,
        processing_mode,
        request_attributes,
        response_attributes,
        message_timeout,
        stat_prefix,
        mutation_rules,
        max_message_timeout,
        disable_clear_route_cache,
        forward_rules,
        filter_metadata: _,
        allow_mode_override,
        disable_immediate_response,
        metadata_options,
        observability_mode,
        route_cache_action,
        deferred_close_timeout,
        send_body_without_waiting_for_header_response,
        allowed_override_modes,
        on_processing_response: _,
        status_on_error,
        processing_request_modifier: _,
        allow_content_length_header,
        emit_client_span: _,
    } = cfg;
    let service = grpc_service.ok_or_else(|| ConfigError::new(path, "grpc_service is required"))?;
    let channel = channel_for(ctx.clusters, &service)
        .map_err(|e| ConfigError::new(format!("{path}.grpc_service"), e.to_string()))?;
    let forward = match &forward_rules {
        Some(f) => ForwardRules {
            allowed: list(
                &f.allowed_headers,
                &format!("{path}.forward_rules.allowed_headers"),
            )?,
            disallowed: list(
                &f.disallowed_headers,
                &format!("{path}.forward_rules.disallowed_headers"),
            )?,
        },
        None => ForwardRules::default(),
    };
    let status_on_error = match status_on_error {
        Some(s) => http::StatusCode::from_u16(s.code).map_err(|_| {
            ConfigError::new(
                format!("{path}.status_on_error.code"),
                format!("invalid HTTP status {}", s.code),
            )
        })?,
        None => http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    let stats = Stats::new(ctx.stats, &Stats::prefix(ctx.hcm_stat_prefix, &stat_prefix));
    let route_cache_action = if disable_clear_route_cache {
        RouteCacheAction::Retain
    } else {
        route_cache_action.unwrap_or(RouteCacheAction::Default)
    };
    let policy = Policy {
        message_timeout: message_timeout
            .map(|d| d.get())
            .unwrap_or(Duration::from_millis(200)),
        max_message_timeout: max_message_timeout.map(|d| d.get()).unwrap_or_default(),
        checker: Checker::build(mutation_rules.as_ref(), &format!("{path}.mutation_rules"))?,
        forward,
        route_cache_action,
        allow_mode_override,
        allowed_override_modes: allowed_override_modes
            .iter()
            .map(state::raw_mode_key_cfg)
            .collect(),
        disable_immediate_response,
        observability_mode,
        send_body_without_waiting: send_body_without_waiting_for_header_response,
        status_on_error,
        allow_content_length_header,
        buffer_limit: ctx.buffer_limit,
        stats,
    };
    let metadata = metadata_options.unwrap_or_default();
    Ok(Arc::new(Filter {
        name: ctx.filter_name.to_string(),
        policy: Arc::new(policy),
        mode: Mode::from_config(processing_mode.as_ref()),
        failure_mode_allow,
        headers: Arc::new(side_stream::Headers::new(&service)),
        max_receive: max_receive(&service),
        service,
        channel,
        receiving: Arc::new(receiving(&metadata)),
        metadata,
        request_attributes,
        response_attributes,
        deferred_close_timeout: deferred_close_timeout
            .map(|d| d.get())
            .unwrap_or(Duration::from_secs(5)),
        clusters: ctx.clusters.clone(),
        route_channels: Mutex::new(HashMap::new()),
    }))
}

fn receiving(m: &MetadataOptions) -> Vec<String> {
    m.receiving_namespaces
        .as_ref()
        .map(|n| n.untyped.clone())
        .unwrap_or_default()
}

/// Builds a per-route config.
pub fn build_per_route(any: &RawAny, path: &str) -> Result<Arc<PerRoute>, ConfigError> {
    let cfg: PerRouteConfig = crate::config::decode_any(any, path)?;
    cfg.validate(path)?;
    let PerRouteConfig {
        disabled,
        overrides,
    } = cfg;
    Ok(Arc::new(match (disabled, overrides) {
        (_, Some(o)) => PerRoute::Overrides(Box::new(o)),
        _ => PerRoute::Disabled,
    }))
}

/// The filter's settings for one stream after merging the per-route configs.
#[derive(Debug)]
struct Effective {
    disabled: bool,
    mode: Mode,
    fail_open: bool,
    service: Option<GrpcService>,
    metadata: Option<MetadataOptions>,
    initial_metadata: Vec<HeaderValue>,
}

impl Filter {
    fn effective(&self, cx: &StreamContext) -> Effective {
        let mut e = Effective {
            disabled: false,
            mode: self.mode,
            fail_open: self.failure_mode_allow,
            service: None,
            metadata: None,
            initial_metadata: Vec::new(),
        };
        let Some(route) = cx.route.as_ref() else {
            return e;
        };
        for pf in route.per_filter_config(&self.name) {
            let PerFilterConfig::ExtProc(pr) = pf;
            match pr.as_ref() {
                PerRoute::Disabled => e.disabled = true,
                PerRoute::Overrides(o) => {
                    let OverridesConfig {
                        processing_mode,
                        async_mode: _,
                        request_attributes: _,
                        response_attributes: _,
                        grpc_service,
                        metadata_options,
                        grpc_initial_metadata,
                        failure_mode_allow,
                        processing_request_modifier: _,
                        emit_client_span: _,
                    } = o.as_ref();
                    e.disabled = false;
                    if let Some(m) = processing_mode {
                        e.mode = Mode::from_config(Some(m));
                    }
                    if let Some(g) = grpc_service {
                        e.service = Some(g.clone());
                    }
                    if let Some(m) = metadata_options {
                        e.metadata = Some(m.clone());
                    }
                    for h in grpc_initial_metadata {
                        match e.initial_metadata.iter_mut().find(|x| x.key == h.key) {
                            Some(x) => *x = h.clone(),
                            None => e.initial_metadata.push(h.clone()),
                        }
                    }
                    if let Some(f) = failure_mode_allow {
                        e.fail_open = *f;
                    }
                }
            }
        }
        e
    }

    fn route_channel(&self, service: &GrpcService) -> Option<GrpcChannel> {
        let g = service.envoy_grpc.as_ref()?;
        let key = (g.cluster_name.clone(), g.authority.clone());
        let mut cache = self
            .route_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| channel_for(&self.clusters, service).ok().flatten())
            .clone()
    }

    /// The `metadata_context` for a message: the forwarded namespaces that exist.
    fn metadata_context(&self, opts: &MetadataOptions, cx: &StreamContext) -> core::Metadata {
        let mut md = core::Metadata::default();
        let Some(ns) = opts.forwarding_namespaces.as_ref() else {
            return md;
        };
        for name in &ns.untyped {
            if let Some(s) = cx.dynamic_metadata.get(name) {
                if let Ok(v) =
                    envoy_types::pb::google::protobuf::Struct::decode(s.encode_to_vec().as_slice())
                {
                    md.filter_metadata.insert(name.clone(), v);
                }
            }
        }
        md
    }
}

/// The filter serving one request.
#[derive(Debug)]
pub struct StreamFilter {
    config: Arc<Filter>,
    driver: Option<stream::Driver>,
    /// Per-stream merged settings, computed at the first head.
    effective: Option<Effective>,
}

fn apply_outcome_metadata(
    cx: &mut StreamContext,
    md: Vec<envoy_types::pb::google::protobuf::Struct>,
) {
    for s in md {
        for (ns, v) in s.fields {
            // Each top-level key is a namespace; its value must be a Struct.
            if let Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(st)) = v.kind {
                if let Ok(p) = prost_types::Struct::decode(st.encode_to_vec().as_slice()) {
                    let entry = cx.dynamic_metadata.entry(ns).or_default();
                    entry.fields.extend(p.fields);
                }
            }
        }
    }
}

impl StreamFilter {
    /// A new instance for one request.
    pub fn new(config: Arc<Filter>) -> Self {
        StreamFilter {
            config,
            driver: None,
            effective: None,
        }
    }

    fn ensure_driver(&mut self, cx: &StreamContext) -> Option<&stream::Driver> {
        if self.effective.is_none() {
            self.effective = Some(self.config.effective(cx));
        }
        let e = self.effective.as_ref()?;
        if e.disabled {
            return None;
        }
        if self.driver.is_none() {
            let cfg = &self.config;
            let channel = match &e.service {
                Some(s) => cfg.route_channel(s),
                None => cfg.channel.clone(),
            };
            // The filter's own service (the common case) has its headers parsed at build time.
            let (headers, max_receive) = if e.service.is_none() && e.initial_metadata.is_empty() {
                (cfg.headers.clone(), cfg.max_receive)
            } else {
                let mut service = e.service.clone().unwrap_or_else(|| cfg.service.clone());
                for h in &e.initial_metadata {
                    match service.initial_metadata.iter_mut().find(|x| x.key == h.key) {
                        Some(x) => *x = h.clone(),
                        None => service.initial_metadata.push(h.clone()),
                    }
                }
                (
                    Arc::new(side_stream::Headers::new(&service)),
                    max_receive(&service),
                )
            };
            let receiving = match &e.metadata {
                Some(m) => Arc::new(receiving(m)),
                None => cfg.receiving.clone(),
            };
            let mut core = Core::new(cfg.policy.clone(), e.mode, e.fail_open, receiving);
            let picked = channel.as_ref().and_then(GrpcChannel::pick);
            if picked.is_none() {
                core.set_channel_unavailable();
            }
            let target = stream::SideStreamTarget {
                channel: picked,
                headers,
                local: Some(cx.connection.local),
                max_receive,
            };
            let deferred = cfg
                .policy
                .observability_mode
                .then_some(cfg.deferred_close_timeout);
            self.driver = Some(stream::Driver::spawn(
                core,
                target,
                cx.abort.clone(),
                deferred,
            ));
        }
        self.driver.as_ref()
    }

    fn wants(&self, d: Dir) -> bool {
        let Some(e) = &self.effective else {
            return false;
        };
        let m = match d {
            Dir::Request => e.mode.request,
            Dir::Response => e.mode.response,
        };
        !e.disabled && (m.send_headers || m.body != state::BodyMode::None || m.send_trailers)
    }

    /// Request path.
    pub async fn decode(
        &mut self,
        req: http::Request<Body>,
        cx: &mut StreamContext,
    ) -> Result<http::Request<Body>, LocalReply> {
        self.effective = Some(self.config.effective(cx));
        if !self.wants(Dir::Request) {
            // Nothing to send on the request path: the side stream (if any) opens at encode.
            return Ok(req);
        }
        let (parts, body) = req.into_parts();
        let attrs = (!self.config.request_attributes.is_empty())
            .then(|| attributes::request(&self.config.request_attributes, &parts, cx));
        let opts = self
            .effective
            .as_ref()
            .and_then(|e| e.metadata.as_ref())
            .unwrap_or(&self.config.metadata);
        let md = self.config.metadata_context(opts, cx);
        let Some(driver) = self.ensure_driver(cx) else {
            return Ok(http::Request::from_parts(parts, body));
        };
        let eos = http_body::Body::is_end_stream(&body);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = stream::Message {
            head: Head::Request(parts),
            body,
            eos,
            metadata_context: md,
            attributes: attrs,
            reply: tx,
        };
        let outcome = match driver.process(Dir::Request, msg, rx).await {
            Ok(o) => o,
            Err(Some(stream::Message {
                head: Head::Request(p),
                body,
                ..
            })) => return Ok(http::Request::from_parts(p, body)),
            Err(_) => {
                return Err(LocalReply::new(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "",
                    "ext_proc_error_internal",
                ))
            }
        };
        apply_outcome_metadata(cx, outcome.metadata);
        if outcome.clear_route_cache {
            cx.clear_route_cache();
        }
        if let Err(r) = &outcome.result {
            cx.response_code_details = Some(r.details.clone());
        }
        let (head, body) = outcome.result?;
        match head {
            Head::Request(p) => Ok(http::Request::from_parts(p, body)),
            Head::Response(_) => Err(LocalReply::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "",
                "ext_proc_error_internal",
            )),
        }
    }

    /// Response path.
    pub async fn encode(
        &mut self,
        resp: http::Response<Body>,
        cx: &mut StreamContext,
    ) -> Result<http::Response<Body>, LocalReply> {
        if self.effective.is_none() {
            // A local reply that skipped decode: merge the per-route config now.
            self.effective = Some(self.config.effective(cx));
        }
        if !self.wants(Dir::Response) {
            return Ok(resp);
        }
        let (parts, body) = resp.into_parts();
        let attrs = (!self.config.response_attributes.is_empty())
            .then(|| attributes::response(&self.config.response_attributes, &parts, cx));
        let opts = self
            .effective
            .as_ref()
            .and_then(|e| e.metadata.as_ref())
            .unwrap_or(&self.config.metadata);
        let md = self.config.metadata_context(opts, cx);
        let Some(driver) = self.ensure_driver(cx) else {
            return Ok(http::Response::from_parts(parts, body));
        };
        let eos = http_body::Body::is_end_stream(&body);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = stream::Message {
            head: Head::Response(parts),
            body,
            eos,
            metadata_context: md,
            attributes: attrs,
            reply: tx,
        };
        let outcome = match driver.process(Dir::Response, msg, rx).await {
            Ok(o) => o,
            Err(Some(stream::Message {
                head: Head::Response(p),
                body,
                ..
            })) => return Ok(http::Response::from_parts(p, body)),
            Err(_) => {
                return Err(LocalReply::new(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "",
                    "ext_proc_error_internal",
                ))
            }
        };
        apply_outcome_metadata(cx, outcome.metadata);
        if let Err(r) = &outcome.result {
            cx.response_code_details = Some(r.details.clone());
        }
        let (head, body) = outcome.result?;
        match head {
            Head::Response(p) => Ok(http::Response::from_parts(p, body)),
            Head::Request(_) => Err(LocalReply::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "",
                "ext_proc_error_internal",
            )),
        }
    }
}
