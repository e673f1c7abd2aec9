//! Building dynamic metadata (`google.protobuf.Struct` keyed by namespace) without writing protos.

use crate::pb::google::protobuf::{value::Kind, Struct, Value};

/// Values that can go into dynamic metadata: strings, numbers, booleans, or a raw [`Value`].
pub trait IntoValue {
    /// The protobuf `Value`.
    fn into_value(self) -> Value;
}

fn kind(k: Kind) -> Value {
    Value { kind: Some(k) }
}

impl IntoValue for Value {
    fn into_value(self) -> Value {
        self
    }
}
impl IntoValue for &str {
    fn into_value(self) -> Value {
        kind(Kind::StringValue(self.to_string()))
    }
}
impl IntoValue for String {
    fn into_value(self) -> Value {
        kind(Kind::StringValue(self))
    }
}
impl IntoValue for bool {
    fn into_value(self) -> Value {
        kind(Kind::BoolValue(self))
    }
}
impl IntoValue for f64 {
    fn into_value(self) -> Value {
        kind(Kind::NumberValue(self))
    }
}
impl IntoValue for i64 {
    fn into_value(self) -> Value {
        // Protobuf numbers are doubles; this is how Envoy stores them too.
        #[allow(clippy::cast_precision_loss)]
        kind(Kind::NumberValue(self as f64))
    }
}
impl IntoValue for Struct {
    fn into_value(self) -> Value {
        kind(Kind::StructValue(self))
    }
}

/// Sets `root[namespace][key] = value`, creating the namespace struct when needed.
///
/// ```
/// use extproc::metadata::{put, IntoValue};
/// let mut md = Default::default();
/// put(&mut md, "my.ns", "user", "alice");
/// put(&mut md, "my.ns", "score", 3i64);
/// # let extproc::pb::google::protobuf::Struct { fields } = &md;
/// # assert_eq!(fields.len(), 1);
/// ```
pub fn put(root: &mut Struct, namespace: &str, key: &str, value: impl IntoValue) {
    let ns = root
        .fields
        .entry(namespace.to_string())
        .or_insert_with(|| kind(Kind::StructValue(Struct::default())));
    if !matches!(ns.kind, Some(Kind::StructValue(_))) {
        ns.kind = Some(Kind::StructValue(Struct::default()));
    }
    if let Some(Kind::StructValue(s)) = &mut ns.kind {
        s.fields.insert(key.to_string(), value.into_value());
    }
}

/// Reads `root[namespace][key]` as a string, if it is one (handy in tests).
pub fn get_str<'a>(root: &'a Struct, namespace: &str, key: &str) -> Option<&'a str> {
    match &root.fields.get(namespace)?.kind {
        Some(Kind::StructValue(s)) => match &s.fields.get(key)?.kind {
            Some(Kind::StringValue(v)) => Some(v),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_namespace() {
        let mut md = Struct::default();
        put(&mut md, "ns", "a", "x");
        put(&mut md, "ns", "b", true);
        assert_eq!(get_str(&md, "ns", "a"), Some("x"));
        assert_eq!(get_str(&md, "ns", "b"), None);
        assert_eq!(get_str(&md, "other", "a"), None);
    }
}
