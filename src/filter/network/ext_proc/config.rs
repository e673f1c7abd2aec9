//! `envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor` as serde data, and its
//! load-time validation with Envoy 1.40's exact messages.

use crate::config::core::GrpcService;
use crate::config::{ConfigError, Duration};
use crate::filter::common::attributes::{self, Expression};
use crate::proto_enum;
use serde::Deserialize;

/// Envoy's `DefaultMessageTimeoutMs`.
pub const DEFAULT_MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);
const MAX_MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The typed config, field for field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkExternalProcessor {
    /// The processor (required).
    pub grpc_service: Option<GrpcService>,
    /// Pass traffic through (instead of closing) when the processor fails.
    #[serde(default)]
    pub failure_mode_allow: bool,
    /// STREAMED / SKIP per direction.
    pub processing_mode: Option<ProcessingMode>,
    /// Kept raw so that a negative value gets Envoy's range message, not a parse error.
    pub message_timeout: Option<serde_json::Value>,
    /// Stats prefix (required, non-empty).
    #[serde(default)]
    pub stat_prefix: String,
    /// Metadata namespaces to forward and to accept.
    pub metadata_options: Option<MetadataOptions>,
    /// Attribute expressions sent with the first message.
    #[serde(default)]
    pub connection_attributes: Vec<String>,
}

proto_enum!(
    /// `ProcessingMode.DataSendMode`.
    DataSendMode "envoy.extensions.filters.network.ext_proc.v3.ProcessingMode.DataSendMode" {
        Streamed = ("STREAMED", 0),
        Skip = ("SKIP", 1),
    }
);

/// `ProcessingMode`.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProcessingMode {
    /// downstream → upstream bytes.
    pub process_read: Option<DataSendMode>,
    /// upstream → downstream bytes.
    pub process_write: Option<DataSendMode>,
}

/// `MetadataOptions`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetadataOptions {
    /// Namespaces copied from the connection into every request.
    pub forwarding_namespaces: Option<Namespaces>,
    /// Namespaces of `ProcessingResponse.dynamic_metadata` written into the connection.
    pub receiving_namespaces: Option<Namespaces>,
}

/// `MetadataOptions.MetadataNamespaces`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Namespaces {
    /// Struct (`filter_metadata`) namespaces.
    #[serde(default)]
    pub untyped: Vec<String>,
    /// Any (`typed_filter_metadata`) namespaces.
    #[serde(default)]
    pub typed: Vec<String>,
}

/// The validated settings every connection's state machine reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `failure_mode_allow`.
    pub failure_mode_allow: bool,
    /// Whether read (downstream → upstream) bytes go to the processor.
    pub process_read: bool,
    /// Whether write (upstream → downstream) bytes go to the processor.
    pub process_write: bool,
    /// `None` when `0s` (timers disabled).
    pub message_timeout: Option<std::time::Duration>,
    /// `forwarding_namespaces.untyped`.
    pub forward_untyped: Vec<String>,
    /// `forwarding_namespaces.typed`.
    pub forward_typed: Vec<String>,
    /// `receiving_namespaces.untyped` (typed receiving is accepted and ignored, as in Envoy).
    pub receive_untyped: Vec<String>,
    /// Compiled, de-duplicated `connection_attributes`.
    pub attributes: Vec<Expression>,
}

/// Validates the config in Envoy's order (proto constraints, then the factory's checks) and
/// returns the settings and the gRPC service.
pub fn validate(
    cfg: NetworkExternalProcessor,
    path: &str,
) -> Result<(Settings, GrpcService), ConfigError> {
    let NetworkExternalProcessor {
        grpc_service,
        failure_mode_allow,
        processing_mode,
        message_timeout,
        stat_prefix,
        metadata_options,
        connection_attributes,
    } = cfg;
    if stat_prefix.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.stat_prefix"),
            "Proto constraint validation failed (NetworkExternalProcessorValidationError.StatPrefix: value length must be at least 1 characters)",
        ));
    }
    let message_timeout = parse_timeout(message_timeout, &format!("{path}.message_timeout"))?;
    let grpc_service = grpc_service.ok_or_else(|| {
        ConfigError::new(
            format!("{path}.grpc_service"),
            "A grpc_service must be configured",
        )
    })?;
    let ProcessingMode {
        process_read,
        process_write,
    } = processing_mode.unwrap_or_default();
    let process_read = process_read.unwrap_or(DataSendMode::Streamed) == DataSendMode::Streamed;
    let process_write = process_write.unwrap_or(DataSendMode::Streamed) == DataSendMode::Streamed;
    if !process_read && !process_write {
        return Err(ConfigError::new(
            format!("{path}.processing_mode"),
            "both read and write paths are skipped, at least one must be enabled.",
        ));
    }
    let MetadataOptions {
        forwarding_namespaces,
        receiving_namespaces,
    } = metadata_options.unwrap_or_default();
    let Namespaces {
        untyped: forward_untyped,
        typed: forward_typed,
    } = forwarding_namespaces.unwrap_or_default();
    let Namespaces {
        untyped: receive_untyped,
        typed: receive_typed,
    } = receiving_namespaces.unwrap_or_default();
    if !receive_typed.is_empty() {
        tracing::warn!(path, "receiving_namespaces.typed is ignored: receiving typed metadata is not supported (as in Envoy)");
    }
    let attributes = attributes::compile_all(&connection_attributes).map_err(|(i, e)| {
        ConfigError::new(format!("{path}.connection_attributes[{i}]"), e.to_string())
    })?;
    Ok((
        Settings {
            failure_mode_allow,
            process_read,
            process_write,
            message_timeout,
            forward_untyped,
            forward_typed,
            receive_untyped,
            attributes,
        },
        grpc_service,
    ))
}

fn parse_timeout(
    raw: Option<serde_json::Value>,
    path: &str,
) -> Result<Option<std::time::Duration>, ConfigError> {
    let range = || {
        ConfigError::new(
            path,
            "Proto constraint validation failed (NetworkExternalProcessorValidationError.MessageTimeout: value must be inside range [0s, 1h0m0s])",
        )
    };
    let Some(raw) = raw else {
        return Ok(Some(DEFAULT_MESSAGE_TIMEOUT));
    };
    let negative = match &raw {
        serde_json::Value::String(s) => s.trim_start().starts_with('-'),
        serde_json::Value::Object(o) => {
            o.get("seconds")
                .and_then(|v| v.as_i64())
                .is_some_and(|s| s < 0)
                || o.get("nanos")
                    .and_then(|v| v.as_i64())
                    .is_some_and(|n| n < 0)
        }
        _ => false,
    };
    if negative {
        return Err(range());
    }
    let d: Duration = crate::config::decode(raw, path)?;
    let d = d.get();
    if d > MAX_MESSAGE_TIMEOUT {
        return Err(range());
    }
    Ok((!d.is_zero()).then_some(d))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Settings, ConfigError> {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let cfg: NetworkExternalProcessor = crate::config::decode(v, "tc")?;
        validate(cfg, "tc").map(|(s, _)| s)
    }

    const GRPC: &str = "grpc_service: {envoy_grpc: {cluster_name: p}}\n";

    #[test]
    fn defaults() {
        let s = check(&format!("{GRPC}stat_prefix: ep\n")).unwrap();
        assert!(s.process_read && s.process_write && !s.failure_mode_allow);
        assert_eq!(s.message_timeout, Some(DEFAULT_MESSAGE_TIMEOUT));
        let s = check(&format!("{GRPC}stat_prefix: ep\nmessage_timeout: 0s\n")).unwrap();
        assert_eq!(s.message_timeout, None);
        let s = check(&format!("{GRPC}stat_prefix: ep\nmessage_timeout: 2s\n")).unwrap();
        assert_eq!(s.message_timeout, Some(std::time::Duration::from_secs(2)));
    }

    #[test]
    fn envoy_messages() {
        let msg = |y: &str| check(y).unwrap_err().message;
        assert!(msg(GRPC).contains("NetworkExternalProcessorValidationError.StatPrefix: value length must be at least 1 characters"));
        assert!(msg(&format!("{GRPC}stat_prefix: ep\nmessage_timeout: 3601s\n"))
            .contains("NetworkExternalProcessorValidationError.MessageTimeout: value must be inside range [0s, 1h0m0s]"));
        assert!(
            msg(&format!("{GRPC}stat_prefix: ep\nmessage_timeout: -1s\n"))
                .contains("value must be inside range")
        );
        assert_eq!(
            msg("stat_prefix: ep\n"),
            "A grpc_service must be configured"
        );
        assert_eq!(
            msg(&format!("{GRPC}stat_prefix: ep\nprocessing_mode: {{process_read: SKIP, process_write: SKIP}}\n")),
            "both read and write paths are skipped, at least one must be enabled."
        );
        let e = check(&format!(
            "{GRPC}stat_prefix: ep\nconnection_attributes: [source.address, 'f(']\n"
        ))
        .unwrap_err();
        assert_eq!(e.path, "tc.connection_attributes[1]");
        let e = check(&format!("{GRPC}stat_prefix: ep\nbogus: 1\n")).unwrap_err();
        assert_eq!(e.path, "tc.bogus");
    }
}
