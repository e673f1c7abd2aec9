//! The malformed HTTP/1.1 corpus (`tests/bad_input_support`) through real Envoy 1.40 and the
//! extproxy binary: the same status, body, `connection: close`, close, the same "did the
//! upstream see anything", and the same `downstream_rq_4xx` / `5xx` /
//! `downstream_cx_protocol_error` totals. The deliberate differences (extproxy stricter) are
//! asserted explicitly.
#![allow(clippy::unwrap_used)]

mod bad_input_support;
mod http_support;

use bad_input_support::{corpus, stricter_than_envoy, yaml, Case, RecordingUpstream};
use http_support::{raw_http1, Pair, RawResponse};
use std::net::SocketAddr;
use std::time::Duration;

/// What one probe looked like through one proxy.
#[derive(Debug, PartialEq)]
struct Seen {
    statuses: Vec<String>,
    body: String,
    connection: Option<String>,
    content_type: Option<String>,
    closed: bool,
    forwarded: bool,
}

async fn probe(addr: SocketAddr, up: &RecordingUpstream, c: &Case) -> Seen {
    let before = up.received().len();
    let r: RawResponse = raw_http1(addr, &c.bytes, Duration::from_secs(1)).await;
    // A forwarded request reaches the upstream before its response reaches the client.
    Seen {
        statuses: r
            .text
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| r.text[i + 9..i + 12].to_string())
            .collect(),
        body: r.body().split("HTTP/1.1 ").next().unwrap_or("").to_string(),
        connection: r.header("connection"),
        content_type: r.header("content-type"),
        closed: r.closed,
        forwarded: up.received().len() > before,
    }
}

#[tokio::test]
async fn the_malformed_request_corpus_behaves_like_envoy() {
    let (e_up, x_up) = (
        RecordingUpstream::start().await,
        RecordingUpstream::start().await,
    );
    // A short delayed close keeps Envoy's refusals from waiting a second each.
    let e_yaml = yaml(e_up.addr, &["delayed_close_timeout: 0.1s"]);
    let x_yaml = yaml(x_up.addr, &["delayed_close_timeout: 0.1s"]);
    let Pair {
        envoy,
        ours,
        envoy_addr: e_addr,
        ours_addr: x_addr,
    } = Pair::start(&e_yaml, &x_yaml).await;
    let mut failures = Vec::new();
    for c in corpus() {
        let (mut e, x) = tokio::join!(probe(e_addr, &e_up, &c), probe(x_addr, &x_up, &c));
        if c.envoy_may_forward {
            e.forwarded = false;
        }
        if e.statuses.first().map(String::as_str) != Some(&c.status.to_string())
            || e.forwarded != c.forwarded
        {
            failures.push(format!(
                "{}: the corpus says {} / forwarded {}, Envoy did {e:?}",
                c.name, c.status, c.forwarded
            ));
        }
        if e != x {
            failures.push(format!("{}:\n  envoy    {e:?}\n  extproxy {x:?}", c.name));
        }
    }
    for c in stricter_than_envoy() {
        let (e, x) = tokio::join!(probe(e_addr, &e_up, &c), probe(x_addr, &x_up, &c));
        if e.statuses.first().map(String::as_str) != Some(&c.status.to_string())
            || e.forwarded != c.forwarded
        {
            failures.push(format!("{}: Envoy no longer accepts it: {e:?}", c.name));
        }
        if x.statuses != ["400"] || x.forwarded || !x.closed {
            failures.push(format!("{}: extproxy should refuse it: {x:?}", c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing smuggled reached either upstream.
    for up in [&e_up, &x_up] {
        assert!(
            !up.request_lines()
                .iter()
                .any(|l| l.contains("/smuggled") || l.contains("/y ")),
            "{:?}",
            up.request_lines()
        );
    }
    // The same counters, less the stricter cases (Envoy answered those 200).
    let strict = stricter_than_envoy().len() as i64;
    for (name, extra) in [
        ("downstream_rq_4xx", strict),
        ("downstream_rq_5xx", 0),
        ("downstream_cx_protocol_error", strict),
        ("downstream_rq_2xx", -strict),
    ] {
        let name = format!("http.bad.{name}");
        let (e, x) = (envoy.counter(&name).await, ours.counter(&name).await);
        assert_eq!(e + extra, x, "{name}: envoy {e}, extproxy {x}");
    }
}
