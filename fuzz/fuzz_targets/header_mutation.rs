//! A processor's `HeaderMutation` applied to request headers, response headers or trailers
//! under arbitrary `mutation_rules`. Checks: no panic, and the result is still a message the
//! proxy can forward: no CR/LF/NUL in values, only valid lower-case names, no pseudo-header
//! among the regular headers, an origin-form (or `*`) path, a final (>= 200) status.
#![no_main]

use arbitrary::Arbitrary;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use extproxy::pb::ext_proc::HeaderMutation;
use envoy_types::pb::google::protobuf::BoolValue;
use extproxy::filter::http::ext_proc::mutation::{self, Checker, Context, ForwardRules, Head, Target};
use extproxy::filter::http::ext_proc::stats::Stats;
use extproxy_fuzz::{check_head, check_map, Name, Rules, Value};
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Arbitrary, Debug)]
enum Kind {
    /// HTTP/1 style: origin-form URI plus `host`.
    Request,
    /// HTTP/2 style: absolute URI (`:scheme`, `:authority`).
    AbsoluteRequest,
    Response,
    Trailers,
}

#[derive(Arbitrary, Debug)]
struct Set {
    name: Name,
    value: Value,
    /// Put the value in `raw_value` (what Envoy reads) rather than `value`.
    raw: bool,
    append: Option<bool>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Option<Rules>,
    kind: Kind,
    initial: Vec<(Name, Value)>,
    replace: bool,
    strip_content_length: bool,
    remove: Vec<Name>,
    set: Vec<Set>,
    /// When it decodes, this wire-format mutation is used instead of `remove` / `set`.
    proto: Option<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    let Ok(checker) = Checker::build(input.rules.map(Rules::config).as_ref(), "rules") else {
        return;
    };
    let m = match input.proto.as_deref().map(HeaderMutation::decode) {
        Some(Ok(m)) => m,
        _ => build(&input.remove, &input.set),
    };
    let mut head = match input.kind {
        Kind::Request => Head::Request(request("/x", true)),
        Kind::AbsoluteRequest => Head::Request(request("http://h.test/x", false)),
        Kind::Response | Kind::Trailers => Head::Response(response()),
    };
    for (n, v) in &input.initial {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.text().as_bytes()),
            http::HeaderValue::from_bytes(&v.bytes()),
        ) {
            head.headers_mut().append(n, v);
        }
    }
    let cx = Context {
        replace: input.replace,
        strip_content_length: input.strip_content_length,
    };
    let stats = Stats::detached();
    let rules = ForwardRules::default();
    if let Kind::Trailers = input.kind {
        let mut trailers = head.headers().clone();
        let _ = mutation::apply(Target::Trailers(&mut trailers), &m, &checker, cx, &stats);
        check_map(&trailers);
        let _ = mutation::trailers_to_proto(&trailers, &rules);
    } else {
        let _ = mutation::apply(Target::Head(&mut head), &m, &checker, cx, &stats);
        check_head(&head);
        let _ = mutation::to_proto(&head, &rules);
    }
});

fn build(remove: &[Name], set: &[Set]) -> HeaderMutation {
    #[allow(deprecated)]
    let set_headers = set
        .iter()
        .map(|s| {
            let bytes = s.value.bytes();
            let header = if s.raw {
                HeaderValue { key: s.name.text(), raw_value: bytes, ..Default::default() }
            } else {
                HeaderValue {
                    key: s.name.text(),
                    value: String::from_utf8_lossy(&bytes).into_owned(),
                    ..Default::default()
                }
            };
            HeaderValueOption {
                header: Some(header),
                append: s.append.map(|value| BoolValue { value }),
                ..Default::default()
            }
        })
        .collect();
    HeaderMutation {
        set_headers,
        remove_headers: remove.iter().map(Name::text).collect(),
    }
}

fn request(uri: &str, host: bool) -> http::request::Parts {
    let mut b = http::Request::builder().method("POST").uri(uri);
    if host {
        b = b.header("host", "h.test");
    }
    b.header("content-length", "3")
        .body(())
        .expect("static request")
        .into_parts()
        .0
}

fn response() -> http::response::Parts {
    http::Response::builder()
        .status(200)
        .header("content-length", "3")
        .body(())
        .expect("static response")
        .into_parts()
        .0
}
