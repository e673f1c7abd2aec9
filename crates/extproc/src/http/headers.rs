//! Typed views of the headers Envoy sends, and the mutations a processor sends back.

use bytes::Bytes;

use crate::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use crate::pb::envoy::service::ext_proc::v3::HeaderMutation as PbHeaderMutation;
use crate::pb::google::protobuf::BoolValue;

/// Request headers, response headers or trailers, as sent by the proxy.
///
/// Names are compared ASCII-case-insensitively (Envoy sends them lower case). Values are bytes:
/// Envoy 1.40 sends them only in `raw_value` (and leaves `value` empty); the SDK falls back to
/// `value` for proxies that use it.
///
/// ```
/// use extproc::http::Headers;
/// let h = Headers::from_pairs(&[(":method", "GET"), ("x-a", "1"), ("x-a", "2")]);
/// assert_eq!(h.method(), Some("GET"));
/// assert_eq!(h.get("X-A"), Some(&b"1"[..]));
/// assert_eq!(h.get_all("x-a").count(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Headers {
    /// `(name, value)` in the order the proxy sent them.
    entries: Vec<(String, Bytes)>,
    /// The `end_of_stream` flag of the headers message (no body or trailers follow).
    end_of_stream: bool,
}

impl Headers {
    /// Builds a view from the proto `HeaderMap` (`raw_value`, else `value`).
    pub fn from_proto(map: Option<HeaderMap>, end_of_stream: bool) -> Headers {
        let entries = map
            .map(|m| m.headers)
            .unwrap_or_default()
            .into_iter()
            .map(|h| {
                let v = if h.raw_value.is_empty() {
                    Bytes::from(h.value.into_bytes())
                } else {
                    Bytes::from(h.raw_value)
                };
                (h.key, v)
            })
            .collect();
        Headers {
            entries,
            end_of_stream,
        }
    }

    /// Builds a view from string pairs (handy in tests).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Headers {
        Headers {
            entries: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
            end_of_stream: false,
        }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// The first value of `name`, if it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All values of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// All `(name, value)` entries, pseudo-headers included, in the proxy's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if no body or trailers follow these headers.
    pub fn end_of_stream(&self) -> bool {
        self.end_of_stream
    }

    /// `:method`.
    pub fn method(&self) -> Option<&str> {
        self.get_str(":method")
    }

    /// `:path` (path and query).
    pub fn path(&self) -> Option<&str> {
        self.get_str(":path")
    }

    /// `:authority`.
    pub fn authority(&self) -> Option<&str> {
        self.get_str(":authority")
    }

    /// `:status` of response headers, parsed.
    pub fn status(&self) -> Option<u16> {
        self.get_str(":status").and_then(|s| s.parse().ok())
    }

    /// `content-length`, parsed.
    pub fn content_length(&self) -> Option<u64> {
        self.get_str("content-length")
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Header edits, applied by the proxy with Envoy's rules: removals first, then sets.
///
/// `set` overwrites (proto `append: false`), `append` adds another value (`append: true`).
/// Values always go in `raw_value` (Envoy 1.40 turns a `value`-only header into an empty string).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderMutation {
    /// `(name, value, append)` in call order.
    pub(crate) set: Vec<(String, Vec<u8>, bool)>,
    /// Names to remove.
    pub(crate) remove: Vec<String>,
}

impl HeaderMutation {
    /// Overwrites (or adds) `name`.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.set.push((name.into(), value.into(), false));
    }

    /// Adds another value for `name`, keeping existing ones.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.set.push((name.into(), value.into(), true));
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: impl Into<String>) {
        self.remove.push(name.into());
    }

    /// True if nothing is set or removed.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// The proto form, or `None` when empty.
    #[allow(deprecated)] // `append` is deprecated in the proto but is what Envoy 1.40 honours.
    pub fn to_proto(&self) -> Option<PbHeaderMutation> {
        if self.is_empty() {
            return None;
        }
        Some(PbHeaderMutation {
            set_headers: self
                .set
                .iter()
                .map(|(k, v, append)| HeaderValueOption {
                    header: Some(HeaderValue {
                        key: k.clone(),
                        value: String::new(),
                        raw_value: v.clone(),
                    }),
                    append: Some(BoolValue { value: *append }),
                    ..Default::default()
                })
                .collect(),
            remove_headers: self.remove.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_value_wins_and_value_is_fallback() {
        let map = HeaderMap {
            headers: vec![
                HeaderValue {
                    key: "a".into(),
                    value: String::new(),
                    raw_value: b"raw".to_vec(),
                },
                HeaderValue {
                    key: "b".into(),
                    value: "legacy".into(),
                    raw_value: vec![],
                },
                HeaderValue {
                    key: "c".into(),
                    value: String::new(),
                    raw_value: vec![0xff, 0x01],
                },
            ],
        };
        let h = Headers::from_proto(Some(map), true);
        assert_eq!(h.get("a"), Some(&b"raw"[..]));
        assert_eq!(h.get("b"), Some(&b"legacy"[..]));
        assert_eq!(h.get("c"), Some(&[0xff, 0x01][..]));
        assert_eq!(
            h.get_str("c"),
            None,
            "non-UTF-8 bytes are kept, not mangled"
        );
        assert!(h.end_of_stream());
    }

    #[test]
    #[allow(deprecated)]
    fn mutation_uses_raw_value_and_explicit_append() {
        let mut m = HeaderMutation::default();
        m.set("x-a", "1");
        m.append("x-b", b"2".to_vec());
        m.remove("x-c");
        let p = m.to_proto().expect("non-empty");
        assert_eq!(p.remove_headers, vec!["x-c"]);
        let a = &p.set_headers[0];
        let ha = a.header.as_ref().expect("header");
        assert_eq!(
            (ha.key.as_str(), ha.value.as_str(), ha.raw_value.as_slice()),
            ("x-a", "", &b"1"[..])
        );
        assert_eq!(a.append, Some(BoolValue { value: false }));
        assert_eq!(p.set_headers[1].append, Some(BoolValue { value: true }));
        assert!(HeaderMutation::default().to_proto().is_none());
    }
}
