//! `connection_attributes`: the attribute paths of Envoy's CEL vocabulary that describe a
//! connection (`source.address`, `connection.id`, ...), evaluated without a CEL engine.
//!
//! Envoy compiles each entry as a CEL expression. extproxy accepts the expressions that are plain
//! attribute paths (`a.b.c`, optionally indexed `filter_state['key']`) and rejects anything else
//! (operators, function calls) with a config error naming the entry. A path that is well-formed
//! but unknown evaluates to nothing and is omitted, as Envoy omits attributes it cannot resolve
//! (`bogus.attr`, `filter_state["nope"]`).

use crate::filter::common::metadata::value;
use envoy_types::pb::google::protobuf::{Struct, Value};
use std::net::SocketAddr;

/// Why a `connection_attributes` entry was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttributeError {
    /// Not valid CEL syntax (Envoy's message starts the same way).
    #[error("Unable to parse descriptor expression: INVALID_ARGUMENT: {0}")]
    Parse(String),
    /// Valid CEL that extproxy cannot evaluate (it only evaluates attribute paths).
    #[error("failed to create an expression: unsupported expression {0:?}: extproxy evaluates attribute paths only (e.g. source.address, connection.id)")]
    Unsupported(String),
}

/// The attributes extproxy knows how to resolve on a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attribute {
    SourceAddress,
    SourcePort,
    DestinationAddress,
    DestinationPort,
    ConnectionId,
    ConnectionMtls,
    RequestedServerName,
    UpstreamAddress,
    UpstreamPort,
    XdsNodeId,
    /// A well-formed path with no value on a plain TCP connection (TLS fields, filter state,
    /// unknown names): always omitted.
    Absent,
}

/// One compiled `connection_attributes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    /// The expression text: the key in the attributes Struct.
    text: String,
    attribute: Attribute,
}

/// What the attributes are evaluated against.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// Envoy-style connection id.
    pub id: u64,
    /// Downstream peer (`source.*`).
    pub source: Option<SocketAddr>,
    /// Downstream local address (`destination.*`).
    pub destination: Option<SocketAddr>,
    /// The upstream host once connected (`upstream.*`).
    pub upstream: Option<SocketAddr>,
    /// SNI (`connection.requested_server_name`); empty on plain TCP.
    pub requested_server_name: String,
    /// Whether the downstream presented a client certificate (`connection.mtls`).
    pub mtls: bool,
    /// `xds.node.id`.
    pub node_id: String,
}

/// Compiles a list of expressions: duplicates are removed (first one kept), the first invalid
/// entry is returned with its index.
pub fn compile_all(texts: &[String]) -> Result<Vec<Expression>, (usize, AttributeError)> {
    let mut out: Vec<Expression> = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let e = compile(t).map_err(|e| (i, e))?;
        if !out.iter().any(|o| o.text == e.text) {
            out.push(e);
        }
    }
    Ok(out)
}

/// Compiles one expression.
pub fn compile(text: &str) -> Result<Expression, AttributeError> {
    let path = parse_path(text.trim())?;
    let attribute = match path.as_str() {
        "source.address" => Attribute::SourceAddress,
        "source.port" => Attribute::SourcePort,
        "destination.address" => Attribute::DestinationAddress,
        "destination.port" => Attribute::DestinationPort,
        "connection.id" => Attribute::ConnectionId,
        "connection.mtls" => Attribute::ConnectionMtls,
        "connection.requested_server_name" => Attribute::RequestedServerName,
        "upstream.address" => Attribute::UpstreamAddress,
        "upstream.port" => Attribute::UpstreamPort,
        "xds.node.id" => Attribute::XdsNodeId,
        _ => Attribute::Absent,
    };
    Ok(Expression {
        text: text.to_string(),
        attribute,
    })
}

/// Checks that `text` is an attribute path and returns it normalised (`a.b`, index dropped).
fn parse_path(text: &str) -> Result<String, AttributeError> {
    if text.is_empty() {
        return Err(AttributeError::Parse(
            "ERROR: <input>:1:1: Syntax error: mismatched input '<EOF>'".into(),
        ));
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut segments: Vec<&str> = Vec::new();
    let ident = |i: &mut usize| -> Option<(usize, usize)> {
        let start = *i;
        if *i < bytes.len() && (bytes[*i].is_ascii_alphabetic() || bytes[*i] == b'_') {
            *i += 1;
            while *i < bytes.len() && (bytes[*i].is_ascii_alphanumeric() || bytes[*i] == b'_') {
                *i += 1;
            }
            Some((start, *i))
        } else {
            None
        }
    };
    loop {
        let Some((s, e)) = ident(&mut i) else {
            return Err(classify(text));
        };
        segments.push(&text[s..e]);
        if i == bytes.len() {
            break;
        }
        match bytes[i] {
            b'.' => i += 1,
            b'[' => {
                // One string index, then the end: `filter_state['key']`.
                let quote = *bytes.get(i + 1).ok_or_else(|| classify(text))?;
                if quote != b'\'' && quote != b'"' {
                    return Err(classify(text));
                }
                let rest = &text[i + 2..];
                let close = rest.find(quote as char).ok_or_else(|| classify(text))?;
                if &rest[close + 1..] != "]" {
                    return Err(classify(text));
                }
                break;
            }
            _ => return Err(classify(text)),
        }
    }
    Ok(segments.join("."))
}

/// Tells "not CEL at all" from "CEL, but more than a path".
fn classify(text: &str) -> AttributeError {
    let mut depth: i32 = 0;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            break;
        }
    }
    let trailing_op = text
        .trim_end()
        .ends_with(['.', '+', '-', '*', '/', '&', '|', '=', '!', '<', '>', ',']);
    if depth != 0 || quote.is_some() || trailing_op || text.contains("..") {
        AttributeError::Parse(format!("ERROR: <input>: Syntax error in {text:?}"))
    } else {
        AttributeError::Unsupported(text.to_string())
    }
}

/// Evaluates the expressions: `{ "<expression text>": value }`, skipping those without a value.
/// Integers become `number_value`, booleans `bool_value`, everything else `string_value`.
pub fn evaluate(exprs: &[Expression], info: &ConnectionInfo) -> Struct {
    let mut out = Struct::default();
    for e in exprs {
        if let Some(v) = resolve(e.attribute, info) {
            out.fields.insert(e.text.clone(), v);
        }
    }
    out
}

fn resolve(a: Attribute, info: &ConnectionInfo) -> Option<Value> {
    Some(match a {
        Attribute::SourceAddress => value::string(info.source?.to_string()),
        Attribute::SourcePort => value::number(f64::from(info.source?.port())),
        Attribute::DestinationAddress => value::string(info.destination?.to_string()),
        Attribute::DestinationPort => value::number(f64::from(info.destination?.port())),
        Attribute::ConnectionId => value::number(info.id as f64),
        Attribute::ConnectionMtls => value::boolean(info.mtls),
        Attribute::RequestedServerName => value::string(info.requested_server_name.clone()),
        Attribute::UpstreamAddress => value::string(info.upstream?.to_string()),
        Attribute::UpstreamPort => value::number(f64::from(info.upstream?.port())),
        Attribute::XdsNodeId => value::string(info.node_id.clone()),
        Attribute::Absent => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            id: 7,
            source: Some("127.0.0.1:39746".parse().unwrap()),
            destination: Some("127.0.0.1:45183".parse().unwrap()),
            upstream: Some("127.0.0.1:46523".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn evaluates_the_connection_vocabulary_like_envoy() {
        let texts: Vec<String> = [
            "connection.id",
            "connection.mtls",
            "source.address",
            "source.port",
            "destination.address",
            "destination.port",
            "upstream.address",
            "connection.requested_server_name",
            "xds.node.id",
            "bogus.attr",
            "filter_state[\"nope\"]",
            "connection.id",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let exprs = compile_all(&texts).unwrap();
        assert_eq!(exprs.len(), 11, "duplicates are removed");
        let s = evaluate(&exprs, &info());
        assert_eq!(s.fields["connection.id"], value::number(7.0));
        assert_eq!(s.fields["connection.mtls"], value::boolean(false));
        assert_eq!(s.fields["source.address"], value::string("127.0.0.1:39746"));
        assert_eq!(s.fields["source.port"], value::number(39746.0));
        assert_eq!(s.fields["destination.port"], value::number(45183.0));
        assert_eq!(
            s.fields["upstream.address"],
            value::string("127.0.0.1:46523")
        );
        assert_eq!(
            s.fields["connection.requested_server_name"],
            value::string("")
        );
        assert!(!s.fields.contains_key("bogus.attr"));
        assert!(!s.fields.contains_key("filter_state[\"nope\"]"));
        assert_eq!(s.fields.len(), 9);
    }

    #[test]
    fn rejects_what_it_cannot_evaluate() {
        assert!(matches!(
            compile("undefined_func()"),
            Err(AttributeError::Unsupported(_))
        ));
        assert!(matches!(
            compile("source.port + 1"),
            Err(AttributeError::Unsupported(_))
        ));
        let e = compile("source.").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Unable to parse descriptor expression: INVALID_ARGUMENT"),
            "{e}"
        );
        assert!(matches!(
            compile("filter_state['x"),
            Err(AttributeError::Parse(_))
        ));
        assert_eq!(compile_all(&["a.b".into(), "f(".into()]).unwrap_err().0, 1);
    }
}
