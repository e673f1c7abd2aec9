//! The same TLS bootstrap through real Envoy 1.40 and extproxy's binary: mTLS downstream with
//! ALPN, upstream TLS with SNI and CA validation, a wrong CA; the client's view and the `ssl.*`
//! counters must be equal.
#![allow(clippy::unwrap_used)]

mod tls_support;

use std::collections::BTreeMap;
use std::time::Duration;
use testenv::ProxyProcess;
use tls_support::yaml::{
    bootstrap, cluster, downstream_tls, listener, upstream_tls, with_admin, HCM,
};
use tls_support::{client_config, https_request, server_config, Pki, TlsUpstream};

#[derive(Debug, Clone, Copy)]
enum Impl {
    Envoy,
    Extproxy,
}

/// One request's `(status, HTTP version, x-seen-proto)`, or `Err` if it failed.
type Outcome = Result<(u16, String, Option<String>), ()>;

/// What one implementation showed: per request its [`Outcome`], the SNI/ALPN/client-cert the
/// upstream saw, and the TLS counters.
#[derive(Debug, PartialEq, Eq)]
struct Obs {
    responses: Vec<Outcome>,
    upstream_sni: Vec<Option<String>>,
    upstream_alpn: Vec<Option<Vec<u8>>>,
    counters: BTreeMap<&'static str, i64>,
}

const COUNTERS: [&str; 9] = [
    "listener.ingress.ssl.handshake",
    "listener.ingress.ssl.fail_verify_no_cert",
    "listener.ingress.ssl.fail_verify_error",
    "listener.ingress.ssl.no_certificate",
    "listener.ingress.ssl.versions.TLSv1.3",
    "cluster.tls.ssl.handshake",
    "cluster.tls.upstream_cx_connect_fail",
    "cluster.bad_ca.ssl.fail_verify_error",
    "cluster.bad_ca.upstream_cx_connect_fail",
];

async fn observe(which: Impl, pki: &Pki) -> Obs {
    let up = TlsUpstream::https_echo(server_config(&pki.server, None, &["http/1.1"])).await;
    let port = up.addr.port();
    let hcm = format!(
        "[{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": {HCM}, stat_prefix: in, route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{match: {{prefix: /bad}}, route: {{cluster: bad_ca}}}}, {{match: {{prefix: /}}, route: {{cluster: tls}}}}]}}]}}, http_filters: [{{name: envoy.filters.http.router, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}]"
    );
    let yaml = with_admin(&bootstrap(
        &[listener(
            "ingress",
            &downstream_tls(pki, "require_client_certificate: true,"),
            &hcm,
        )],
        &[
            cluster(
                "tls",
                port,
                &upstream_tls(pki, "upstream.test", "ca.pem", false),
                "",
            ),
            cluster(
                "bad_ca",
                port,
                &upstream_tls(pki, "upstream.test", "other_ca.pem", false),
                "",
            ),
        ],
    ));
    let proxy = match which {
        Impl::Envoy => ProxyProcess::envoy(&yaml).await,
        Impl::Extproxy => {
            ProxyProcess::start(env!("CARGO_BIN_EXE_extproxy").as_ref(), &yaml, &[]).await
        }
    }
    .unwrap_or_else(|e| panic!("{which:?} did not start: {e:#}"));
    let addr = proxy.listener_addr("ingress").await;
    let mut responses = Vec::new();
    let requests = [
        (
            client_config(&pki.ca.pem, Some(&pki.client), &["h2", "http/1.1"]),
            "/a",
        ),
        (
            client_config(&pki.ca.pem, Some(&pki.client), &["http/1.1"]),
            "/b",
        ),
        (client_config(&pki.ca.pem, None, &["h2"]), "/c"),
        (
            client_config(&pki.ca.pem, Some(&pki.other_client), &["h2"]),
            "/d",
        ),
        (
            client_config(&pki.ca.pem, Some(&pki.client), &["h2"]),
            "/bad",
        ),
    ];
    for (cfg, path) in requests {
        let r = https_request(addr, cfg, "GET", path, "").await;
        responses.push(
            r.map(|r| {
                (
                    r.status,
                    format!("{:?}", r.version),
                    r.header("x-seen-proto").map(str::to_string),
                )
            })
            .map_err(|_| ()),
        );
    }
    proxy
        .wait_counter(
            "listener.ingress.ssl.fail_verify_error",
            1,
            Duration::from_secs(5),
        )
        .await;
    let stats = proxy.stats().await;
    let counters = COUNTERS
        .iter()
        .map(|c| (*c, stats.get(*c).copied().unwrap_or(-1)))
        .collect();
    let seen = up.seen();
    Obs {
        responses,
        upstream_sni: seen.sni,
        upstream_alpn: seen.alpn,
        counters,
    }
}

#[tokio::test]
async fn tls_both_ways_matches_envoy() {
    let pki = Pki::new();
    let envoy = observe(Impl::Envoy, &pki).await;
    let ours = observe(Impl::Extproxy, &pki).await;
    // Sanity: the scenario shows what it is meant to.
    assert_eq!(
        envoy.responses[0],
        Ok((200, "HTTP/2.0".into(), Some("https".into()))),
        "{envoy:?}"
    );
    assert_eq!(envoy.responses[2], Err(()), "{envoy:?}");
    assert_eq!(ours, envoy);
}
