//! `request_attributes` / `response_attributes`: the common CEL attribute names, evaluated from
//! what the filter sees (§4.16). Unknown or unavailable attributes are omitted, as Envoy does.

use crate::filter::http::StreamContext;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use http::header::{HOST, REFERER, USER_AGENT};

fn s(v: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}

fn n(v: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(v)),
    }
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Evaluates request-path attributes.
pub fn request(names: &[String], p: &http::request::Parts, cx: &StreamContext) -> Struct {
    let mut out = Struct::default();
    for name in names {
        let hv = |h: http::header::HeaderName| {
            p.headers
                .get(h)
                .map(|v| s(String::from_utf8_lossy(v.as_bytes())))
        };
        let v = match name.as_str() {
            "request.path" => Some(s(p.uri.path_and_query().map(|x| x.as_str()).unwrap_or("/"))),
            "request.url_path" => Some(s(p.uri.path())),
            "request.query" => Some(s(p.uri.query().unwrap_or(""))),
            "request.method" => Some(s(p.method.as_str())),
            "request.host" => super::mutation::authority(p).map(s),
            "request.scheme" => Some(s(p.uri.scheme_str().unwrap_or("http"))),
            "request.headers" => Some(s("CelMap value")),
            "request.referer" => hv(REFERER),
            "request.useragent" => hv(USER_AGENT),
            "request.id" => hv(http::header::HeaderName::from_static("x-request-id")),
            "request.protocol" => Some(s(version(p.version))),
            _ => common(name, cx),
        };
        if let Some(v) = v {
            out.fields.insert(name.clone(), v);
        }
    }
    let _ = HOST;
    out
}

/// Evaluates response-path attributes (request attributes are not available there).
pub fn response(names: &[String], p: &http::response::Parts, cx: &StreamContext) -> Struct {
    let mut out = Struct::default();
    for name in names {
        let v = match name.as_str() {
            "response.code" => Some(n(f64::from(p.status.as_u16()))),
            "response.headers" => Some(s("CelMap value")),
            "response.code_details" => cx.response_code_details.clone().map(s),
            _ => common(name, cx),
        };
        if let Some(v) = v {
            out.fields.insert(name.clone(), v);
        }
    }
    out
}

fn common(name: &str, cx: &StreamContext) -> Option<Value> {
    let c = &cx.connection;
    match name {
        "source.address" => Some(s(c.peer.to_string())),
        "source.port" => Some(n(f64::from(c.peer.port()))),
        "destination.address" => Some(s(c.local.to_string())),
        "destination.port" => Some(n(f64::from(c.local.port()))),
        "connection.id" => Some(n(c.id as f64)),
        "xds.cluster_name" => cx.route.as_ref().map(|r| s(r.cluster.clone())),
        "xds.route_name" => cx.route.as_ref().map(|r| s(r.name.clone())),
        _ => None,
    }
}
