//! Envoy's `HeaderParser`: one level's `*_headers_to_add` / `*_headers_to_remove` (route
//! configuration, virtual host or route), checked at build time and applied per request.

use crate::config::core::{HeaderAppendAction, HeaderValueOption};
use crate::config::ConfigError;
use http::{HeaderMap, HeaderName, HeaderValue};

/// One level's header mutations: removals first, then additions (Envoy's order).
#[derive(Debug, Default)]
pub struct HeaderOps {
    remove: Vec<HeaderName>,
    add: Vec<HeaderAdd>,
}

#[derive(Debug)]
struct HeaderAdd {
    name: HeaderName,
    value: HeaderValue,
    action: HeaderAppendAction,
}

impl HeaderOps {
    /// Builds and validates one level (`request` forbids `host` and pseudo-headers).
    pub fn build(
        add: &[HeaderValueOption],
        remove: &[String],
        path: &str,
        add_field: &str,
        remove_field: &str,
    ) -> Result<Self, ConfigError> {
        let mut ops = HeaderOps::default();
        for (i, name) in remove.iter().enumerate() {
            let p = format!("{path}.{remove_field}[{i}]");
            let lower = name.to_ascii_lowercase();
            if lower.starts_with(':') || lower == "host" {
                return Err(ConfigError::new(p, format!("{name} cannot be removed")));
            }
            ops.remove.push(
                HeaderName::from_bytes(lower.as_bytes())
                    .map_err(|_| ConfigError::new(p, format!("invalid header name {name:?}")))?,
            );
        }
        for (i, opt) in add.iter().enumerate() {
            let p = format!("{path}.{add_field}[{i}]");
            let HeaderValueOption {
                header,
                append,
                append_action,
                keep_empty_value,
            } = opt;
            let action = match (append, append_action) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        p,
                        "append and append_action are mutually exclusive",
                    ));
                }
                (Some(true), None) | (None, None) => HeaderAppendAction::AppendIfExistsOrAdd,
                (Some(false), None) => HeaderAppendAction::OverwriteIfExistsOrAdd,
                (None, Some(a)) => *a,
            };
            let lower = header.key.to_ascii_lowercase();
            if lower.starts_with(':') || lower == "host" {
                return Err(ConfigError::new(
                    format!("{p}.header.key"),
                    format!(
                        ":-prefixed or host headers may not be modified: {}",
                        header.key
                    ),
                ));
            }
            let name = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
                ConfigError::new(
                    format!("{p}.header.key"),
                    format!("invalid header name {:?}", header.key),
                )
            })?;
            let raw = literal_value(header.bytes(), &format!("{p}.header.value"))?;
            if raw.is_empty() && !keep_empty_value {
                continue;
            }
            let value = HeaderValue::from_bytes(&raw).map_err(|_| {
                ConfigError::new(format!("{p}.header.value"), "invalid header value")
            })?;
            ops.add.push(HeaderAdd {
                name,
                value,
                action,
            });
        }
        Ok(ops)
    }

    /// Applies the removals, then the additions.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for a in &self.add {
            match a.action {
                HeaderAppendAction::AppendIfExistsOrAdd => {
                    headers.append(a.name.clone(), a.value.clone());
                }
                HeaderAppendAction::AddIfAbsent => {
                    if !headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), a.value.clone());
                    }
                }
                HeaderAppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(a.name.clone(), a.value.clone());
                }
                HeaderAppendAction::OverwriteIfExists => {
                    if headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), a.value.clone());
                    }
                }
            }
        }
    }
}

/// Header values are Envoy format strings: `%%` is a literal `%`; other `%COMMAND%` operators
/// are not supported and are rejected rather than sent verbatim.
fn literal_value(v: &[u8], path: &str) -> Result<Vec<u8>, ConfigError> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            if v.get(i + 1) == Some(&b'%') {
                out.push(b'%');
                i += 2;
                continue;
            }
            return Err(ConfigError::new(
                path,
                "header value formatters (%...%) are not supported; write %% for a literal %",
            ));
        }
        out.push(v[i]);
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::table;

    #[test]
    fn header_value_formatters_are_rejected_with_their_path() {
        let err = table("virtual_hosts: [{name: v, domains: ['*'], request_headers_to_add: [{header: {key: x, value: '%REQ(a)%'}}]}]").unwrap_err();
        assert_eq!(
            err.path,
            "rc.virtual_hosts[0].request_headers_to_add[0].header.value"
        );
    }
}
