//! tcp_proxy access logs: `envoy.access_loggers.stdout` and `envoy.access_loggers.file` with a
//! text format (`log_format.text_format_source.inline_string` or `text_format`), written once
//! per connection when it ends, as Envoy does.
//!
//! Supported command operators: `%RESPONSE_FLAGS%`, `%BYTES_RECEIVED%`, `%BYTES_SENT%`,
//! `%DURATION%`, `%UPSTREAM_HOST%`, `%UPSTREAM_CLUSTER%`, `%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%DOWNSTREAM_LOCAL_ADDRESS%`, `%CONNECTION_ID%`, `%DOWNSTREAM_LOCAL_CLOSE_REASON%`,
//! `%UPSTREAM_LOCAL_CLOSE_REASON%`, `%DOWNSTREAM_DETECTED_CLOSE_TYPE%`,
//! `%UPSTREAM_DETECTED_CLOSE_TYPE%`, `%UPSTREAM_TRANSPORT_FAILURE_REASON%`,
//! `%CONNECTION_TERMINATION_DETAILS%`, `%DYNAMIC_METADATA(ns[:key])%`. Anything else is a config
//! error naming the field.

use crate::config::{self as cfg, ConfigError, RawAny};
use crate::filter::common::metadata::DynamicMetadata;
use envoy_types::pb::google::protobuf::{value::Kind, Value};
use serde::Deserialize;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;

/// One `access_log` entry of the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Informational (the logger is chosen by `@type`), used in messages.
    name: String,
    typed_config: Option<RawAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StdoutAccessLog {
    log_format: Option<FormatString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccessLog {
    path: String,
    log_format: Option<FormatString>,
    /// Deprecated plain format string.
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatString {
    text_format_source: Option<DataSource>,
    text_format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSource {
    inline_string: String,
}

/// What a connection's log line is made of.
#[derive(Debug, Clone, Default)]
pub struct ConnectionRecord {
    /// When the connection was accepted.
    pub start: Option<std::time::Instant>,
    /// Downstream connection id.
    pub id: u64,
    /// Client address.
    pub remote: Option<SocketAddr>,
    /// Listener-side address.
    pub local: Option<SocketAddr>,
    /// Bytes read from the client (before processing).
    pub bytes_received: u64,
    /// Bytes written to the client (after processing).
    pub bytes_sent: u64,
    /// The upstream host, once picked.
    pub upstream_host: Option<String>,
    /// Cluster name.
    pub cluster: String,
    /// Envoy response flags (`UF`, `URX`, `NR`).
    pub response_flags: Vec<&'static str>,
    /// Why the proxy closed the downstream (`ext_proc_message_timeout`, ...).
    pub downstream_close_reason: Option<String>,
    /// Why the proxy closed the upstream.
    pub upstream_close_reason: Option<String>,
    /// How the downstream ended: `Normal`, `LocalReset`, `RemoteReset`.
    pub downstream_close_type: &'static str,
    /// How the upstream ended.
    pub upstream_close_type: &'static str,
    /// Why the upstream connect failed.
    pub upstream_failure_reason: Option<String>,
    /// The connection's dynamic metadata at the end.
    pub metadata: DynamicMetadata,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Text(String),
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemoteAddress,
    DownstreamLocalAddress,
    ConnectionId,
    DownstreamLocalCloseReason,
    UpstreamLocalCloseReason,
    DownstreamDetectedCloseType,
    UpstreamDetectedCloseType,
    UpstreamTransportFailureReason,
    ConnectionTerminationDetails,
    DynamicMetadata(String, Option<String>),
}

/// A parsed text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Format(Vec<Token>);

/// Envoy's default text format ends with a newline; so must every line we write.
impl Format {
    /// Parses `%OPERATOR%` / `%OPERATOR(arg)%` tokens; anything unknown is an error.
    pub fn parse(text: &str) -> Result<Format, String> {
        let mut tokens = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                tokens.push(Token::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 1..];
            let end = after
                .find('%')
                .ok_or_else(|| format!("unterminated command operator in {text:?}"))?;
            let raw = &after[..end];
            // `:N` truncation is accepted and ignored for these short values.
            let op = raw.split_once(')').map_or(raw, |(head, _)| head);
            let (name, arg) = match op.split_once('(') {
                Some((n, a)) => (n, Some(a.trim_end_matches(')'))),
                None => (op.split(':').next().unwrap_or(op), None),
            };
            tokens.push(match (name, arg) {
                ("RESPONSE_FLAGS", None) => Token::ResponseFlags,
                ("BYTES_RECEIVED", None) => Token::BytesReceived,
                ("BYTES_SENT", None) => Token::BytesSent,
                ("DURATION", None) => Token::Duration,
                ("UPSTREAM_HOST", None) => Token::UpstreamHost,
                ("UPSTREAM_CLUSTER", None) => Token::UpstreamCluster,
                ("DOWNSTREAM_REMOTE_ADDRESS", None) => Token::DownstreamRemoteAddress,
                ("DOWNSTREAM_LOCAL_ADDRESS", None) => Token::DownstreamLocalAddress,
                ("CONNECTION_ID", None) => Token::ConnectionId,
                ("DOWNSTREAM_LOCAL_CLOSE_REASON", None) => Token::DownstreamLocalCloseReason,
                ("UPSTREAM_LOCAL_CLOSE_REASON", None) => Token::UpstreamLocalCloseReason,
                ("DOWNSTREAM_DETECTED_CLOSE_TYPE", None) => Token::DownstreamDetectedCloseType,
                ("UPSTREAM_DETECTED_CLOSE_TYPE", None) => Token::UpstreamDetectedCloseType,
                ("UPSTREAM_TRANSPORT_FAILURE_REASON", None) => Token::UpstreamTransportFailureReason,
                ("CONNECTION_TERMINATION_DETAILS", None) => Token::ConnectionTerminationDetails,
                ("DYNAMIC_METADATA", Some(a)) if !a.is_empty() => {
                    let (ns, key) = match a.split_once(':') {
                        Some((ns, key)) => (ns.to_string(), Some(key.to_string())),
                        None => (a.to_string(), None),
                    };
                    Token::DynamicMetadata(ns, key)
                }
                _ => return Err(format!("unsupported command operator %{raw}% (supported by extproxy's tcp_proxy access log: see docs/envoy-differences.md)")),
            });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            tokens.push(Token::Text(rest.to_string()));
        }
        Ok(Format(tokens))
    }

    /// Renders one line.
    pub fn render(&self, r: &ConnectionRecord) -> String {
        let dash = || "-".to_string();
        let mut out = String::new();
        for t in &self.0 {
            let s = match t {
                Token::Text(s) => s.clone(),
                Token::ResponseFlags => {
                    if r.response_flags.is_empty() {
                        dash()
                    } else {
                        r.response_flags.join(",")
                    }
                }
                Token::BytesReceived => r.bytes_received.to_string(),
                Token::BytesSent => r.bytes_sent.to_string(),
                Token::Duration => r
                    .start
                    .map_or_else(dash, |s| s.elapsed().as_millis().to_string()),
                Token::UpstreamHost => r.upstream_host.clone().unwrap_or_else(dash),
                Token::UpstreamCluster => {
                    if r.cluster.is_empty() {
                        dash()
                    } else {
                        r.cluster.clone()
                    }
                }
                Token::DownstreamRemoteAddress => r.remote.map_or_else(dash, |a| a.to_string()),
                Token::DownstreamLocalAddress => r.local.map_or_else(dash, |a| a.to_string()),
                Token::ConnectionId => r.id.to_string(),
                Token::DownstreamLocalCloseReason => {
                    r.downstream_close_reason.clone().unwrap_or_else(dash)
                }
                Token::UpstreamLocalCloseReason => {
                    r.upstream_close_reason.clone().unwrap_or_else(dash)
                }
                Token::DownstreamDetectedCloseType => r.downstream_close_type.to_string(),
                Token::UpstreamDetectedCloseType => r.upstream_close_type.to_string(),
                // Envoy writes spaces as `_` in this field.
                Token::UpstreamTransportFailureReason => r
                    .upstream_failure_reason
                    .as_ref()
                    .map_or_else(dash, |s| s.replace(' ', "_")),
                Token::ConnectionTerminationDetails => dash(),
                Token::DynamicMetadata(ns, key) => match r.metadata.filter_metadata.get(ns) {
                    None => dash(),
                    Some(s) => match key {
                        None => struct_json(s),
                        Some(k) => s.fields.get(k).map_or_else(dash, value_json),
                    },
                },
            };
            out.push_str(&s);
        }
        out
    }
}

fn struct_json(s: &envoy_types::pb::google::protobuf::Struct) -> String {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    let body: Vec<String> = keys
        .into_iter()
        .map(|k| {
            format!(
                "{}:{}",
                serde_json::Value::String(k.clone()),
                value_json(&s.fields[k])
            )
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

fn value_json(v: &Value) -> String {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => "null".into(),
        // Protobuf JSON prints integral numbers without a fraction (`3`, not `3.0`).
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 1e15 => {
            format!("{}", *n as i64)
        }
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or_else(|| "null".into(), |n| n.to_string())
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()).to_string(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => format!(
            "[{}]",
            l.values
                .iter()
                .map(value_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

#[derive(Debug)]
enum Sink {
    Stdout,
    /// Writes happen once per connection, at its end, never on the data path.
    File(Mutex<std::fs::File>),
}

/// One configured logger.
#[derive(Debug)]
pub struct AccessLog {
    sink: Sink,
    format: Format,
}

const STDOUT: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const FILE: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";

impl AccessLog {
    /// Builds the loggers of `access_log`.
    pub fn build_all(
        configs: &[AccessLogConfig],
        path: &str,
    ) -> Result<Vec<AccessLog>, ConfigError> {
        configs
            .iter()
            .enumerate()
            .map(|(i, c)| AccessLog::build(c, &format!("{path}[{i}]")))
            .collect()
    }

    fn build(c: &AccessLogConfig, path: &str) -> Result<AccessLog, ConfigError> {
        let AccessLogConfig { name, typed_config } = c;
        let tpath = format!("{path}.typed_config");
        let any = typed_config
            .as_ref()
            .ok_or_else(|| ConfigError::new(&tpath, "typed_config is required"))?;
        let ty = cfg::any_type(any, &tpath)?;
        let (sink, log_format, legacy) = match ty.as_str() {
            STDOUT => {
                let StdoutAccessLog { log_format } = cfg::decode_any(any, &tpath)?;
                (Sink::Stdout, log_format, None)
            }
            FILE => {
                let FileAccessLog {
                    path: file,
                    log_format,
                    format,
                } = cfg::decode_any(any, &tpath)?;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&file)
                    .map_err(|e| {
                        ConfigError::new(
                            format!("{tpath}.path"),
                            format!("cannot open {file}: {e}"),
                        )
                    })?;
                (Sink::File(Mutex::new(f)), log_format, format)
            }
            other => {
                return Err(ConfigError::new(
                    format!("{tpath}.@type"),
                    format!(
                        "unsupported access logger {name} ({other}); supported: {STDOUT}, {FILE}"
                    ),
                ))
            }
        };
        let fpath = format!("{tpath}.log_format");
        let text = match (log_format, legacy) {
            (Some(FormatString { text_format_source: Some(DataSource { inline_string }), text_format: None }), None) => inline_string,
            (Some(FormatString { text_format_source: None, text_format: Some(t) }), None) => t,
            (None, Some(t)) => t,
            _ => {
                return Err(ConfigError::new(
                    fpath,
                    "exactly one text format is required (log_format.text_format_source.inline_string or log_format.text_format); Envoy's default format is not supported",
                ))
            }
        };
        let format = Format::parse(&text).map_err(|e| ConfigError::new(&fpath, e))?;
        Ok(AccessLog { sink, format })
    }

    /// Writes the connection's line.
    pub fn log(&self, r: &ConnectionRecord) {
        let line = self.format.render(r);
        let result = match &self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            Sink::File(f) => f
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(line.as_bytes()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "access log write failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::filter::common::metadata::value;

    #[test]
    fn renders_the_l4_operators() {
        let f = Format::parse(
            "flags=%RESPONSE_FLAGS% rx=%BYTES_RECEIVED% tx=%BYTES_SENT% up=%UPSTREAM_HOST% dr=%DOWNSTREAM_LOCAL_CLOSE_REASON% ur=%UPSTREAM_LOCAL_CLOSE_REASON% dt=%DOWNSTREAM_DETECTED_CLOSE_TYPE% md=%DYNAMIC_METADATA(epns)% k=%DYNAMIC_METADATA(epns:k)% none=%DYNAMIC_METADATA(x)%\n",
        )
        .unwrap();
        let mut r = ConnectionRecord {
            bytes_received: 5,
            bytes_sent: 0,
            upstream_host: Some("127.0.0.1:1".into()),
            response_flags: vec!["UF", "URX"],
            downstream_close_reason: Some("ext_proc_message_timeout".into()),
            downstream_close_type: "LocalReset",
            ..Default::default()
        };
        r.metadata.merge(
            "epns",
            value::fields([("k", value::string("v1")), ("n", value::number(3.0))]),
        );
        assert_eq!(
            f.render(&r),
            "flags=UF,URX rx=5 tx=0 up=127.0.0.1:1 dr=ext_proc_message_timeout ur=- dt=LocalReset md={\"k\":\"v1\",\"n\":3} k=\"v1\" none=-\n"
        );
    }

    #[test]
    fn unknown_operators_are_errors() {
        assert!(Format::parse("%REQ(:PATH)%").is_err());
        assert!(Format::parse("%BYTES_SENT").is_err());
        assert_eq!(
            Format::parse("plain").unwrap(),
            Format(vec![Token::Text("plain".into())])
        );
    }
}
