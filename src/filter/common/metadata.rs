//! A connection's (or stream's) dynamic metadata, as Envoy's `StreamInfo::dynamicMetadata()`.
//!
//! Filters write namespaces into it (ext_proc `receiving_namespaces`) and later filters read them
//! (ext_proc `forwarding_namespaces`, access logs). The types are `envoy-types`' protobuf types so
//! a namespace can go into a `ProcessingRequest.metadata` without conversion.

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{Any, Struct};
use std::collections::BTreeMap;

/// Untyped (`Struct`) and typed (`Any`) metadata by namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DynamicMetadata {
    /// `filter_metadata`: namespace → Struct.
    pub filter_metadata: BTreeMap<String, Struct>,
    /// `typed_filter_metadata`: namespace → Any.
    pub typed_filter_metadata: BTreeMap<String, Any>,
}

impl DynamicMetadata {
    /// Merges `value` into namespace `ns` the way Envoy's `setDynamicMetadata` does (protobuf
    /// `MergeFrom` on the Struct: top-level keys of `value` replace existing ones).
    pub fn merge(&mut self, ns: &str, value: Struct) {
        let entry = self.filter_metadata.entry(ns.to_string()).or_default();
        entry.fields.extend(value.fields);
    }

    /// The configured namespaces that currently exist, as a request's `metadata`; `None` when
    /// none of them exists (Envoy then leaves the field unset).
    pub fn forward(&self, untyped: &[String], typed: &[String]) -> Option<Metadata> {
        let mut md = Metadata::default();
        for ns in untyped {
            if let Some(s) = self.filter_metadata.get(ns) {
                md.filter_metadata.insert(ns.clone(), s.clone());
            }
        }
        for ns in typed {
            if let Some(a) = self.typed_filter_metadata.get(ns) {
                md.typed_filter_metadata.insert(ns.clone(), a.clone());
            }
        }
        (!md.filter_metadata.is_empty() || !md.typed_filter_metadata.is_empty()).then_some(md)
    }
}

/// Small constructors for `google.protobuf.Value`s, used by filters and tests.
pub mod value {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

    /// A string value.
    pub fn string(s: impl Into<String>) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }
    /// A number value.
    pub fn number(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }
    /// A bool value.
    pub fn boolean(b: bool) -> Value {
        Value {
            kind: Some(Kind::BoolValue(b)),
        }
    }
    /// A struct value.
    pub fn structure(s: Struct) -> Value {
        Value {
            kind: Some(Kind::StructValue(s)),
        }
    }
    /// A Struct from `(key, value)` pairs.
    pub fn fields<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Struct {
        Struct {
            fields: pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::value::*;
    use super::*;

    #[test]
    fn merge_replaces_top_level_keys_and_keeps_others() {
        let mut md = DynamicMetadata::default();
        md.merge("ns", fields([("a", number(1.0)), ("b", string("x"))]));
        md.merge("ns", fields([("a", number(2.0))]));
        let ns = &md.filter_metadata["ns"];
        assert_eq!(ns.fields["a"], number(2.0));
        assert_eq!(ns.fields["b"], string("x"));
    }

    #[test]
    fn forward_only_existing_configured_namespaces() {
        let mut md = DynamicMetadata::default();
        assert_eq!(md.forward(&["ns".into()], &[]), None);
        md.merge("ns", fields([("k", boolean(true))]));
        md.merge("other", fields([("k", boolean(true))]));
        let out = md
            .forward(&["ns".into(), "absent".into()], &["ns".into()])
            .unwrap();
        assert_eq!(out.filter_metadata.keys().collect::<Vec<_>>(), ["ns"]);
        assert!(out.typed_filter_metadata.is_empty());
    }
}
