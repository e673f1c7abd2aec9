//! Envoy bootstrap configuration: the subset extproxy supports, as plain serde data.
//!
//! The file is Envoy's own bootstrap YAML (or JSON). It is parsed in two steps:
//! 1. the text becomes a [`serde_json::Value`], then the bootstrap structs below are filled with
//!    `deny_unknown_fields`, so a field extproxy does not know is an error naming its path;
//! 2. each `typed_config` (a protobuf `Any`) is kept as raw JSON and decoded later, by the module
//!    that owns that extension (`filter::network`, `filter::http`, `cluster`), through
//!    [`decode_any`], which keeps the full path in its errors.
//!
//! Field names are the proto field names (snake_case), as in Envoy's documentation.

pub mod bootstrap;
pub mod core;
pub mod value;

pub use bootstrap::{Admin, Bootstrap, Cluster, Filter, FilterChain, Listener, StaticResources};
pub use value::{Duration, ProtoEnum};

use serde::de::DeserializeOwned;
use std::fmt;

/// A configuration error: what is wrong and where (`static_resources.listeners[0].name`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted path of the offending field, empty for whole-document errors.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Joins a parent path and a child segment (`a.b` + `c` = `a.b.c`; `a` + `[0]` = `a[0]`).
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

/// Parses a bootstrap document (YAML or JSON; JSON is valid YAML).
pub fn parse(text: &str) -> Result<Bootstrap, ConfigError> {
    let value: serde_json::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::new("", format!("unable to parse YAML: {e}")))?;
    let bootstrap: Bootstrap = decode(value, "")?;
    bootstrap.validate()?;
    Ok(bootstrap)
}

/// Reads and parses a bootstrap file.
pub fn load_file(path: &std::path::Path) -> Result<Bootstrap, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("", format!("unable to read file: {}: {e}", path.display()))
    })?;
    parse(&text)
}

/// Deserializes `value` into `T`, reporting errors with `path` as prefix of the field path.
pub fn decode<T: DeserializeOwned>(value: serde_json::Value, path: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let message = e.inner().to_string();
        let mut full = if inner == "." {
            path.to_string()
        } else {
            join(path, &inner)
        };
        // serde names the unknown field only in its message; put it in the path too.
        if let Some(rest) = message.strip_prefix("unknown field `") {
            if let Some(field) = rest.split('`').next() {
                if !full.ends_with(field) {
                    full = join(&full, field);
                }
            }
        }
        ConfigError::new(full, message)
    })
}

/// A protobuf `Any` as it appears in YAML: `{"@type": "type.googleapis.com/...", ...fields}`.
pub type RawAny = serde_json::Map<String, serde_json::Value>;

/// The `@type` of an `Any`, without the `type.googleapis.com/` prefix.
pub fn any_type(any: &RawAny, path: &str) -> Result<String, ConfigError> {
    match any.get("@type") {
        Some(serde_json::Value::String(t)) => Ok(t
            .rsplit_once('/')
            .map(|(_, name)| name)
            .unwrap_or(t)
            .to_string()),
        Some(_) => Err(ConfigError::new(join(path, "@type"), "must be a string")),
        None => Err(ConfigError::new(
            join(path, "@type"),
            "missing @type in typed_config",
        )),
    }
}

/// Decodes the fields of an `Any` (everything but `@type`) into `T`, with full paths in errors.
pub fn decode_any<T: DeserializeOwned>(any: &RawAny, path: &str) -> Result<T, ConfigError> {
    let mut fields = any.clone();
    fields.remove("@type");
    decode(serde_json::Value::Object(fields), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = parse(
            "static_resources:\n  listeners:\n  - name: a\n    bogus: 1\n    address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n",
        )
        .unwrap_err();
        assert_eq!(err.path, "static_resources.listeners[0].bogus");
        assert!(err.message.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn yaml_syntax_error_is_reported() {
        let err = parse("static_resources: [").unwrap_err();
        assert!(err.message.starts_with("unable to parse YAML"), "{err}");
    }

    #[test]
    fn any_type_strips_the_url_prefix() {
        let any: RawAny = serde_json::from_str(
            r#"{"@type":"type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy","x":1}"#,
        )
        .unwrap();
        assert_eq!(
            any_type(&any, "p").unwrap(),
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
        );
    }
}
