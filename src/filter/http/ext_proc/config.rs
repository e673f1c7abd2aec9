//! `ExternalProcessor` and `ExtProcPerRoute` as serde data, their validation (with Envoy 1.40's
//! messages) and the per-route merge.

use crate::config::core::{GrpcService, HeaderValue};
use crate::config::{ConfigError, Duration};
use crate::filter::common::string_matcher::{ListStringMatcherConfig, RegexMatcherConfig};
use crate::proto_enum;
use serde::Deserialize;

proto_enum!(
    /// `ProcessingMode.HeaderSendMode`.
    HeaderSendMode "ProcessingMode.HeaderSendMode" {
        Default = ("DEFAULT", 0),
        Send = ("SEND", 1),
        Skip = ("SKIP", 2),
    }
);

proto_enum!(
    /// `ProcessingMode.BodySendMode`.
    BodySendMode "ProcessingMode.BodySendMode" {
        None = ("NONE", 0),
        Streamed = ("STREAMED", 1),
        Buffered = ("BUFFERED", 2),
        BufferedPartial = ("BUFFERED_PARTIAL", 3),
        FullDuplexStreamed = ("FULL_DUPLEX_STREAMED", 4),
        Grpc = ("GRPC", 5),
    }
);

proto_enum!(
    /// `ExternalProcessor.RouteCacheAction`.
    RouteCacheAction "ExternalProcessor.RouteCacheAction" {
        Default = ("DEFAULT", 0),
        Clear = ("CLEAR", 1),
        Retain = ("RETAIN", 2),
    }
);

/// `extensions.filters.http.ext_proc.v3.ProcessingMode`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProcessingModeConfig {
    /// Request headers: SEND (default) or SKIP.
    pub request_header_mode: Option<HeaderSendMode>,
    /// Response headers: SEND (default) or SKIP.
    pub response_header_mode: Option<HeaderSendMode>,
    /// Request body mode (default NONE).
    pub request_body_mode: Option<BodySendMode>,
    /// Response body mode (default NONE).
    pub response_body_mode: Option<BodySendMode>,
    /// Request trailers: only SEND sends.
    pub request_trailer_mode: Option<HeaderSendMode>,
    /// Response trailers: only SEND sends.
    pub response_trailer_mode: Option<HeaderSendMode>,
}

/// `config.common.mutation_rules.v3.HeaderMutationRules`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MutationRulesConfig {
    /// Allow changing `host`, `:authority`, `:method`, `:scheme`.
    pub allow_all_routing: Option<bool>,
    /// Allow `x-envoy-*` headers.
    pub allow_envoy: Option<bool>,
    /// Forbid every `:`-header change.
    pub disallow_system: Option<bool>,
    /// Forbid every change not allowed by `allow_expression`.
    pub disallow_all: Option<bool>,
    /// Names matching this are always allowed (after `disallow_expression`).
    pub allow_expression: Option<RegexMatcherConfig>,
    /// Names matching this are never allowed.
    pub disallow_expression: Option<RegexMatcherConfig>,
    /// A disallowed mutation fails the whole response instead of being skipped.
    pub disallow_is_error: Option<bool>,
}

/// `ExternalProcessor.HeaderForwardingRules`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ForwardRulesConfig {
    /// Only these headers are sent (when set).
    pub allowed_headers: Option<ListStringMatcherConfig>,
    /// These headers are never sent (wins over `allowed_headers`).
    pub disallowed_headers: Option<ListStringMatcherConfig>,
}

/// `MetadataOptions.MetadataNamespaces`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MetadataNamespaces {
    /// `Struct` namespaces.
    #[serde(default)]
    pub untyped: Vec<String>,
    /// `Any` namespaces.
    #[serde(default)]
    pub typed: Vec<String>,
}

/// `ExternalProcessor.MetadataOptions`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MetadataOptions {
    /// Namespaces of the stream's dynamic metadata sent in `metadata_context`.
    pub forwarding_namespaces: Option<MetadataNamespaces>,
    /// Namespaces of the processor's `dynamic_metadata` written to the stream.
    pub receiving_namespaces: Option<MetadataNamespaces>,
    /// Cluster metadata namespaces (clusters carry no metadata in extproxy, so nothing is sent).
    pub cluster_metadata_forwarding_namespaces: Option<MetadataNamespaces>,
}

/// `type.v3.HttpStatus`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpStatusConfig {
    /// The status code (a number; enum names of `type.v3.StatusCode` are accepted too).
    #[serde(deserialize_with = "deserialize_status_code")]
    pub code: u16,
}

fn deserialize_status_code<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum C {
        Num(u16),
        Name(String),
    }
    const NAMES: &[(&str, u16)] = &[
        ("Empty", 0),
        ("Continue", 100),
        ("OK", 200),
        ("Created", 201),
        ("NoContent", 204),
        ("BadRequest", 400),
        ("Unauthorized", 401),
        ("Forbidden", 403),
        ("NotFound", 404),
        ("PayloadTooLarge", 413),
        ("UnprocessableEntity", 422),
        ("TooManyRequests", 429),
        ("InternalServerError", 500),
        ("BadGateway", 502),
        ("ServiceUnavailable", 503),
        ("GatewayTimeout", 504),
    ];
    match C::deserialize(d)? {
        C::Num(n) => Ok(n),
        C::Name(s) => NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, c)| *c)
            .or_else(|| s.parse().ok())
            .ok_or_else(|| {
                serde::de::Error::custom(format!("unknown StatusCode {s:?} (use the number)"))
            }),
    }
}

/// `envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExternalProcessorConfig {
    /// The side-stream service (Envoy gRPC).
    pub grpc_service: Option<GrpcService>,
    /// HTTP transport: not supported (an error naming the field).
    pub http_service: Option<serde_json::Value>,
    /// Fail open.
    #[serde(default)]
    pub failure_mode_allow: bool,
    /// What is sent.
    pub processing_mode: Option<ProcessingModeConfig>,
    /// Attributes sent with the first request-path message.
    #[serde(default)]
    pub request_attributes: Vec<String>,
    /// Attributes sent with the first response-path message.
    #[serde(default)]
    pub response_attributes: Vec<String>,
    /// Per-message deadline (default 200 ms).
    pub message_timeout: Option<Duration>,
    /// Extra stats scope.
    #[serde(default)]
    pub stat_prefix: String,
    /// Header mutation rules.
    pub mutation_rules: Option<MutationRulesConfig>,
    /// Upper bound of `override_message_timeout` (0 disables overrides).
    pub max_message_timeout: Option<Duration>,
    /// Legacy: true means `route_cache_action: RETAIN`.
    #[serde(default)]
    pub disable_clear_route_cache: bool,
    /// Which headers are sent to the processor.
    pub forward_rules: Option<ForwardRulesConfig>,
    /// Opaque metadata for the logging filter state (no effect on processing).
    pub filter_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Honour `mode_override`.
    #[serde(default)]
    pub allow_mode_override: bool,
    /// Treat immediate responses as spurious.
    #[serde(default)]
    pub disable_immediate_response: bool,
    /// Dynamic metadata forwarding / receiving.
    pub metadata_options: Option<MetadataOptions>,
    /// Send and go; responses are ignored.
    #[serde(default)]
    pub observability_mode: bool,
    /// Route cache policy after request header mutations.
    pub route_cache_action: Option<RouteCacheAction>,
    /// Observability mode: how long a side stream may outlive its HTTP stream.
    pub deferred_close_timeout: Option<Duration>,
    /// STREAMED: send body chunks before the headers reply.
    #[serde(default)]
    pub send_body_without_waiting_for_header_response: bool,
    /// Modes a `mode_override` may select (empty = any).
    #[serde(default)]
    pub allowed_override_modes: Vec<ProcessingModeConfig>,
    /// Not supported (alpha extension point).
    pub on_processing_response: Option<serde_json::Value>,
    /// Status of error local replies (default 500).
    pub status_on_error: Option<HttpStatusConfig>,
    /// Not supported (alpha extension point).
    pub processing_request_modifier: Option<serde_json::Value>,
    /// Keep `content-length` where it would be stripped.
    #[serde(default)]
    pub allow_content_length_header: bool,
    /// Tracing span export switch (extproxy exports no spans; accepted).
    pub emit_client_span: Option<bool>,
}

/// `ExtProcOverrides`.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverridesConfig {
    /// Replaces the processing mode.
    pub processing_mode: Option<ProcessingModeConfig>,
    /// Deprecated, not implemented in Envoy either (accepted, ignored).
    #[serde(default)]
    pub async_mode: bool,
    /// Not implemented in Envoy (accepted, ignored).
    #[serde(default)]
    pub request_attributes: Vec<String>,
    /// Not implemented in Envoy (accepted, ignored).
    #[serde(default)]
    pub response_attributes: Vec<String>,
    /// Replaces the side-stream service.
    pub grpc_service: Option<GrpcService>,
    /// Replaces the metadata options.
    pub metadata_options: Option<MetadataOptions>,
    /// Merged by key into `grpc_service.initial_metadata`.
    #[serde(default)]
    pub grpc_initial_metadata: Vec<HeaderValue>,
    /// Per-route fail-open.
    pub failure_mode_allow: Option<bool>,
    /// Not supported.
    pub processing_request_modifier: Option<serde_json::Value>,
    /// Accepted (no spans are exported).
    pub emit_client_span: Option<bool>,
}

/// `ExtProcPerRoute`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PerRouteConfig {
    /// Must be true when set.
    pub disabled: Option<bool>,
    /// Overrides of the filter's config.
    pub overrides: Option<OverridesConfig>,
}

/// Rejects an unsupported field that is set.
fn unsupported<T>(field: &Option<T>, path: &str, name: &str, why: &str) -> Result<(), ConfigError> {
    match field {
        Some(_) => Err(ConfigError::new(
            crate::config::join(path, name),
            format!("{name} is not supported by extproxy: {why}"),
        )),
        None => Ok(()),
    }
}

fn check_timeout(d: &Option<Duration>, path: &str, name: &str) -> Result<(), ConfigError> {
    if let Some(d) = d {
        if d.get() > std::time::Duration::from_secs(3600) {
            return Err(ConfigError::new(
                crate::config::join(path, name),
                format!("value must be inside range [0s, 1h]: {name}"),
            ));
        }
    }
    Ok(())
}

fn check_body_modes(mode: &Option<ProcessingModeConfig>, path: &str) -> Result<(), ConfigError> {
    if let Some(m) = mode {
        for (name, b) in [
            ("request_body_mode", m.request_body_mode),
            ("response_body_mode", m.response_body_mode),
        ] {
            if b == Some(BodySendMode::Grpc) {
                return Err(ConfigError::new(
                    crate::config::join(path, name),
                    "body mode GRPC is not implemented (Envoy hides it as not-implemented too)",
                ));
            }
        }
    }
    Ok(())
}

impl ExternalProcessorConfig {
    /// Envoy's load-time checks (§2.2) plus extproxy's refusals of unsupported fields.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.grpc_service.is_some() == self.http_service.is_some() {
            return Err(ConfigError::new(
                path,
                "One and only one of grpc_service or http_service must be configured",
            ));
        }
        unsupported(&self.http_service, path, "http_service", "use grpc_service")?;
        unsupported(
            &self.on_processing_response,
            path,
            "on_processing_response",
            "alpha extension point",
        )?;
        unsupported(
            &self.processing_request_modifier,
            path,
            "processing_request_modifier",
            "alpha extension point",
        )?;
        if let Some(g) = &self.grpc_service {
            g.envoy_grpc(&crate::config::join(path, "grpc_service"))?;
        }
        let action = self.route_cache_action.unwrap_or(RouteCacheAction::Default);
        if self.disable_clear_route_cache && action != RouteCacheAction::Default {
            return Err(ConfigError::new(
                path,
                "disable_clear_route_cache and route_cache_action can not be set to none-default at the same time.",
            ));
        }
        if let Some(m) = &self.processing_mode {
            let send = |t: Option<HeaderSendMode>| t == Some(HeaderSendMode::Send);
            if m.request_body_mode == Some(BodySendMode::FullDuplexStreamed)
                && !send(m.request_trailer_mode)
            {
                return Err(ConfigError::new(
                    path,
                    "If the ext_proc filter has the request_body_mode set to FULL_DUPLEX_STREAMED, then the request_trailer_mode has to be set to SEND",
                ));
            }
            if m.response_body_mode == Some(BodySendMode::FullDuplexStreamed)
                && !send(m.response_trailer_mode)
            {
                return Err(ConfigError::new(
                    path,
                    "If the ext_proc filter has the response_body_mode set to FULL_DUPLEX_STREAMED, then the response_trailer_mode has to be set to SEND",
                ));
            }
        }
        check_body_modes(
            &self.processing_mode,
            &crate::config::join(path, "processing_mode"),
        )?;
        check_timeout(&self.message_timeout, path, "message_timeout")?;
        check_timeout(&self.max_message_timeout, path, "max_message_timeout")?;
        if let Some(s) = &self.status_on_error {
            if s.code == 0 {
                return Err(ConfigError::new(
                    crate::config::join(path, "status_on_error.code"),
                    "value must not be in list [0]",
                ));
            }
        }
        Ok(())
    }
}

impl PerRouteConfig {
    /// Validation of `ExtProcPerRoute` (the `override` oneof is required; `disabled` must be true).
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        match (&self.disabled, &self.overrides) {
            (None, None) => Err(ConfigError::new(
                path,
                "ExtProcPerRouteValidationError.Override: value is required",
            )),
            (Some(_), Some(_)) => Err(ConfigError::new(
                path,
                "only one of disabled or overrides may be set",
            )),
            (Some(false), None) => Err(ConfigError::new(
                crate::config::join(path, "disabled"),
                "ExtProcPerRouteValidationError.Disabled: value must equal true",
            )),
            (Some(true), None) => Ok(()),
            (None, Some(o)) => {
                let p = crate::config::join(path, "overrides");
                unsupported(
                    &o.processing_request_modifier,
                    &p,
                    "processing_request_modifier",
                    "alpha extension point",
                )?;
                if let Some(g) = &o.grpc_service {
                    g.envoy_grpc(&crate::config::join(&p, "grpc_service"))?;
                }
                check_body_modes(
                    &o.processing_mode,
                    &crate::config::join(&p, "processing_mode"),
                )
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<(), ConfigError> {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let c: ExternalProcessorConfig = crate::config::decode(v, "f")?;
        c.validate("f")
    }

    const SVC: &str = "grpc_service: {envoy_grpc: {cluster_name: x}}\n";

    #[test]
    fn requires_exactly_one_service() {
        let e = parse("failure_mode_allow: true").unwrap_err();
        assert_eq!(
            e.message,
            "One and only one of grpc_service or http_service must be configured"
        );
        let e = parse(&format!("{SVC}http_service: {{}}")).unwrap_err();
        assert_eq!(
            e.message,
            "One and only one of grpc_service or http_service must be configured"
        );
        let e = parse("http_service: {}").unwrap_err();
        assert_eq!(e.path, "f.http_service");
    }

    #[test]
    fn full_duplex_needs_trailers() {
        let e = parse(&format!(
            "{SVC}processing_mode: {{request_body_mode: FULL_DUPLEX_STREAMED}}"
        ))
        .unwrap_err();
        assert!(
            e.message
                .contains("request_trailer_mode has to be set to SEND"),
            "{e}"
        );
        let e = parse(&format!(
            "{SVC}processing_mode: {{response_body_mode: FULL_DUPLEX_STREAMED}}"
        ))
        .unwrap_err();
        assert!(
            e.message
                .contains("response_trailer_mode has to be set to SEND"),
            "{e}"
        );
        parse(&format!(
            "{SVC}processing_mode: {{request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND}}\nfailure_mode_allow: true"
        ))
        .unwrap();
    }

    #[test]
    fn route_cache_conflict_and_ranges() {
        let e = parse(&format!(
            "{SVC}disable_clear_route_cache: true\nroute_cache_action: CLEAR"
        ))
        .unwrap_err();
        assert!(
            e.message
                .starts_with("disable_clear_route_cache and route_cache_action"),
            "{e}"
        );
        parse(&format!(
            "{SVC}disable_clear_route_cache: true\nroute_cache_action: DEFAULT"
        ))
        .unwrap();
        assert!(parse(&format!("{SVC}message_timeout: 3601s")).is_err());
        assert!(parse(&format!("{SVC}max_message_timeout: 3601s")).is_err());
        assert!(parse(&format!("{SVC}status_on_error: {{code: 0}}")).is_err());
        parse(&format!("{SVC}status_on_error: {{code: 200}}")).unwrap();
        parse(&format!(
            "{SVC}status_on_error: {{code: ServiceUnavailable}}"
        ))
        .unwrap();
    }

    #[test]
    fn unsupported_fields_are_named() {
        let e = parse(&format!("{SVC}processing_request_modifier: {{name: x}}")).unwrap_err();
        assert_eq!(e.path, "f.processing_request_modifier");
        let e = parse(&format!("{SVC}on_processing_response: {{name: x}}")).unwrap_err();
        assert_eq!(e.path, "f.on_processing_response");
        let e = parse("grpc_service: {google_grpc: {target_uri: x, stat_prefix: y}}").unwrap_err();
        assert!(e.path.contains("google_grpc"), "{e}");
        let e = parse(&format!("{SVC}bogus: 1")).unwrap_err();
        assert_eq!(e.path, "f.bogus");
        let e = parse(&format!(
            "{SVC}processing_mode: {{request_body_mode: GRPC}}"
        ))
        .unwrap_err();
        assert_eq!(e.path, "f.processing_mode.request_body_mode");
    }

    #[test]
    fn per_route_validation() {
        let pr = |y: &str| -> Result<(), ConfigError> {
            let v: serde_json::Value = serde_yaml_ng::from_str(y).unwrap();
            let c: PerRouteConfig = crate::config::decode(v, "r")?;
            c.validate("r")
        };
        assert!(pr("{}").is_err());
        assert!(pr("disabled: false").is_err());
        pr("disabled: true").unwrap();
        pr("overrides: {processing_mode: {request_body_mode: FULL_DUPLEX_STREAMED}}").unwrap();
        pr("overrides: {failure_mode_allow: true, grpc_initial_metadata: [{key: a, value: b}]}")
            .unwrap();
    }
}
