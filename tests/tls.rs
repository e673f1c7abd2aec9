//! TLS everywhere, end to end through real listeners: HTTPS downstream (h1/h2 by ALPN), mTLS
//! downstream, upstream TLS with SNI and CA validation, mTLS to ext_proc processors (HTTP and
//! network), TLS tcp_proxy with a large transfer and half-close, and config errors.
#![allow(clippy::unwrap_used)]

mod tls_support;

use sha2::{Digest, Sha256};
use std::time::Duration;
use tls_support::yaml::{
    bootstrap, cluster, downstream_tls, hcm, listener, tcp_proxy, upstream_tls, DOWNSTREAM,
    H2_OPTIONS, HCM, UPSTREAM,
};
use tls_support::{
    client_config, https_request, server_config, tls_connect, Pki, TestProxy, TlsUpstream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn https_downstream_speaks_h2_or_http11_by_alpn() {
    let pki = Pki::new();
    let echo = testenv::echo_http_upstream().await;
    let yaml = bootstrap(
        &[listener(
            "ingress",
            &downstream_tls(&pki, ""),
            &hcm("echo", ""),
        )],
        &[cluster("echo", echo.addr().port(), "", "")],
    );
    let proxy = TestProxy::start(&yaml).await;
    let addr = proxy.addr("ingress");
    for (alpn, version) in [
        (&["h2"][..], http::Version::HTTP_2),
        (&["http/1.1"][..], http::Version::HTTP_11),
        // No ALPN: AUTO sniffs the bytes, as on plain TCP.
        (&[][..], http::Version::HTTP_11),
    ] {
        let cfg = client_config(&pki.ca.pem, None, alpn);
        let resp = https_request(addr, cfg, "POST", "/x", "hello")
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{alpn:?}");
        assert_eq!(resp.version, version, "{alpn:?}");
        let seen = echo.last_request();
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{alpn:?}");
        assert_eq!(&seen.body[..], b"hello");
    }
    assert_eq!(proxy.counter("listener.ingress.ssl.handshake"), 3);
    assert_eq!(proxy.counter("listener.ingress.ssl.no_certificate"), 3);
    assert_eq!(proxy.counter("listener.ingress.ssl.versions.TLSv1.3"), 3);
    assert_eq!(proxy.counter("listener.ingress.ssl.connection_error"), 0);
}

#[tokio::test]
async fn mtls_downstream_accepts_trusted_clients_and_refuses_others() {
    let pki = Pki::new();
    let echo = testenv::echo_http_upstream().await;
    let yaml = bootstrap(
        &[listener(
            "ingress",
            &downstream_tls(&pki, "require_client_certificate: true,"),
            &hcm("echo", ""),
        )],
        &[cluster("echo", echo.addr().port(), "", "")],
    );
    let proxy = TestProxy::start(&yaml).await;
    let addr = proxy.addr("ingress");

    let ok = client_config(&pki.ca.pem, Some(&pki.client), &["h2"]);
    assert_eq!(
        https_request(addr, ok, "GET", "/", "")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(proxy.counter("listener.ingress.ssl.handshake"), 1);

    let anonymous = client_config(&pki.ca.pem, None, &["h2"]);
    assert!(https_request(addr, anonymous, "GET", "/", "")
        .await
        .is_err());
    proxy
        .wait_counter("listener.ingress.ssl.fail_verify_no_cert", 1)
        .await;

    let foreign = client_config(&pki.ca.pem, Some(&pki.other_client), &["http/1.1"]);
    assert!(https_request(addr, foreign, "GET", "/", "").await.is_err());
    proxy
        .wait_counter("listener.ingress.ssl.fail_verify_error", 1)
        .await;

    // Plain text on a TLS listener: that connection is closed, counted, nothing else changes.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!buf.starts_with(b"HTTP/"), "{buf:?}");
    proxy
        .wait_counter("listener.ingress.ssl.connection_error", 1)
        .await;

    let ok = client_config(&pki.ca.pem, Some(&pki.client), &["http/1.1"]);
    assert_eq!(
        https_request(addr, ok, "GET", "/", "")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(proxy.counter("listener.ingress.ssl.handshake"), 2);
    assert_eq!(
        echo.requests().len(),
        2,
        "refused clients never reached the upstream"
    );
}

#[tokio::test]
async fn upstream_tls_sends_sni_validates_the_ca_and_fails_with_503() {
    let pki = Pki::new();
    let up = TlsUpstream::https_echo(server_config(&pki.server, None, &["h2", "http/1.1"])).await;
    let port = up.addr.port();
    let route = |prefix: &str, cluster: &str| {
        format!("{{match: {{prefix: {prefix}}}, route: {{cluster: {cluster}}}}}")
    };
    let hcm = format!(
        "[{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": {HCM}, stat_prefix: in, route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{}, {}, {}]}}]}}, http_filters: [{{name: envoy.filters.http.router, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}]",
        route("/h2", "tls_h2"),
        route("/bad", "bad_ca"),
        route("/", "tls_h1"),
    );
    let yaml = bootstrap(
        &[listener("ingress", "", &hcm)],
        &[
            cluster(
                "tls_h1",
                port,
                &upstream_tls(&pki, "upstream.test", "ca.pem", false),
                "",
            ),
            cluster(
                "tls_h2",
                port,
                &upstream_tls(&pki, "localhost", "ca.pem", false),
                H2_OPTIONS,
            ),
            cluster(
                "bad_ca",
                port,
                &upstream_tls(&pki, "upstream.test", "other_ca.pem", false),
                "",
            ),
        ],
    );
    let proxy = TestProxy::start(&yaml).await;
    let client = testenv::TestRequest::get("/one");
    let resp = client
        .send(proxy.addr("ingress"), testenv::HttpVersion::Http1)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-seen-version"), Some("HTTP/1.1"));
    // A second request reuses the pooled TLS connection.
    let resp = testenv::TestRequest::get("/two")
        .send(proxy.addr("ingress"), testenv::HttpVersion::Http2)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(proxy.counter("cluster.tls_h1.upstream_cx_total"), 1);
    let resp = testenv::TestRequest::get("/h2")
        .send(proxy.addr("ingress"), testenv::HttpVersion::Http1)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-seen-version"), Some("HTTP/2.0"));
    let seen = up.seen();
    assert_eq!(
        seen.sni,
        [
            Some("upstream.test".to_string()),
            Some("localhost".to_string())
        ]
    );
    assert_eq!(
        seen.alpn,
        [Some(b"http/1.1".to_vec()), Some(b"h2".to_vec())],
        "the cluster's protocol is offered"
    );
    assert_eq!(proxy.counter("cluster.tls_h1.ssl.handshake"), 1);
    assert_eq!(proxy.counter("cluster.tls_h2.ssl.handshake"), 1);

    let resp = testenv::TestRequest::get("/bad")
        .send(proxy.addr("ingress"), testenv::HttpVersion::Http1)
        .await
        .unwrap();
    assert_eq!(resp.status, 503);
    assert!(
        resp.text()
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{}",
        resp.text()
    );
    assert_eq!(proxy.counter("cluster.bad_ca.ssl.fail_verify_error"), 1);
    assert_eq!(proxy.counter("cluster.bad_ca.ssl.handshake"), 0);
    assert_eq!(proxy.counter("cluster.bad_ca.upstream_cx_connect_fail"), 1);
    assert_eq!(
        up.seen().sni.len(),
        2,
        "the refused handshake never served a request"
    );
}

#[tokio::test]
async fn mtls_to_http_and_network_processors() {
    let pki = Pki::new();
    let tls = extproc::TlsConfig::new(pki.server.cert_pem.clone(), pki.server.key_pem.clone())
        .client_ca(pki.ca.pem.clone());
    let processor = extproc::Server::new()
        .http(extproc::demo::AddHeaders::default)
        .network(|| extproc::demo::TcpInspect::new(|line: &[u8]| line.starts_with(b"DROP")))
        .tls(tls)
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let echo = testenv::echo_http_upstream().await;
    let tcp_echo = testenv::tcp_echo_upstream().await;
    let grpc = |cluster: &str| format!("{{envoy_grpc: {{cluster_name: {cluster}}}, timeout: 5s}}");
    let http_ext_proc = format!(
        "{{name: envoy.filters.http.ext_proc, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor, grpc_service: {}, message_timeout: 2s}}}}, ",
        grpc("processor")
    );
    let network_ext_proc = format!(
        "{{name: envoy.filters.network.ext_proc, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor, stat_prefix: ep, grpc_service: {}, message_timeout: 2s}}}}, ",
        grpc("processor")
    );
    let no_cert_filter = format!(
        "{{name: envoy.filters.http.ext_proc, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor, grpc_service: {}, message_timeout: 2s}}}}, ",
        grpc("processor_no_cert")
    );
    let port = processor.addr().port();
    let yaml = bootstrap(
        &[
            listener("http", "", &hcm("echo", &http_ext_proc)),
            listener("tcp", "", &tcp_proxy("tcp_echo", &network_ext_proc)),
            listener("nocert", "", &hcm("echo", &no_cert_filter)),
        ],
        &[
            cluster("echo", echo.addr().port(), "", ""),
            cluster("tcp_echo", tcp_echo.addr().port(), "", ""),
            cluster(
                "processor",
                port,
                &upstream_tls(&pki, "processor.test", "ca.pem", true),
                H2_OPTIONS,
            ),
            cluster(
                "processor_no_cert",
                port,
                &upstream_tls(&pki, "processor.test", "ca.pem", false),
                H2_OPTIONS,
            ),
        ],
    );
    let proxy = TestProxy::start(&yaml).await;

    let resp = testenv::TestRequest::get("/")
        .send(proxy.addr("http"), testenv::HttpVersion::Http1)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-ext-proc-header"), Some("hello-from-asm"));
    assert_eq!(
        echo.last_request().header("x-ext-proc-header"),
        Some("hello-to-asm")
    );

    let mut c = tokio::net::TcpStream::connect(proxy.addr("tcp"))
        .await
        .unwrap();
    c.write_all(b"hello over mtls\n").await.unwrap();
    let mut buf = [0u8; 16];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello over mtls\n");
    drop(c);

    // The processor refuses a client without a certificate: the side stream fails (fail closed).
    let resp = testenv::TestRequest::get("/")
        .send(proxy.addr("nocert"), testenv::HttpVersion::Http1)
        .await
        .unwrap();
    assert_eq!(resp.status, 500);
    assert_eq!(echo.requests().len(), 1);
    assert!(proxy.counter("cluster.processor.ssl.handshake") >= 1);
    assert_eq!(
        processor.stats().streams_started,
        2,
        "one HTTP and one network stream; none without a client certificate"
    );
}

/// Forwards each connection to `to` after holding it `delay`: a processor whose TLS handshake
/// (which needs its answer) takes at least that long.
async fn slow_relay(to: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    addr
}

/// `message_timeout: 0s` fires in the turn the first message is sent, long before the
/// processor's connection is up: the client gets the 504 at once, and the message still
/// reaches the processor afterwards, as from Envoy (which writes it before its reset). The
/// call was dropped with it before.
#[tokio::test]
async fn zero_message_timeout_still_delivers_the_message_over_a_slow_connection() {
    let pki = Pki::new();
    let tls = extproc::TlsConfig::new(pki.server.cert_pem.clone(), pki.server.key_pem.clone());
    let processor = extproc::Server::new()
        .http(extproc::demo::AddHeaders::default)
        .tls(tls)
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let relay = slow_relay(processor.addr(), Duration::from_millis(300)).await;
    let echo = testenv::echo_http_upstream().await;
    let filter = "{name: envoy.filters.http.ext_proc, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor, grpc_service: {envoy_grpc: {cluster_name: processor}}, message_timeout: 0s}}, ";
    let yaml = bootstrap(
        &[listener("http", "", &hcm("echo", filter))],
        &[
            cluster("echo", echo.addr().port(), "", ""),
            cluster(
                "processor",
                relay.port(),
                &upstream_tls(&pki, "processor.test", "ca.pem", false),
                H2_OPTIONS,
            ),
        ],
    );
    let proxy = TestProxy::start(&yaml).await;
    let started = std::time::Instant::now();
    let resp = testenv::TestRequest::get("/")
        .send(proxy.addr("http"), testenv::HttpVersion::Http1)
        .await
        .unwrap();
    assert_eq!(resp.status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the 504 does not wait for the processor"
    );
    assert_eq!(echo.requests().len(), 0);
    assert_eq!(proxy.counter("http.in.ext_proc.message_timeouts"), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while processor.stats().messages_received == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request headers never reached the processor"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(processor.stats().streams_started, 1);
    assert_eq!(
        processor.stats().messages_received,
        1,
        "only the request headers were sent"
    );
}

#[tokio::test]
async fn tls_tcp_proxy_moves_a_large_transfer_and_half_closes() {
    let pki = Pki::new();
    let up = TlsUpstream::tcp_echo(server_config(&pki.server, Some(&pki.ca.pem), &[])).await;
    let yaml = bootstrap(
        &[listener(
            "ingress",
            &downstream_tls(&pki, ""),
            &tcp_proxy("up", ""),
        )],
        &[cluster(
            "up",
            up.addr.port(),
            &upstream_tls(&pki, "upstream.test", "ca.pem", true),
            "",
        )],
    );
    let proxy = TestProxy::start(&yaml).await;
    let tls = tls_connect(
        proxy.addr("ingress"),
        client_config(&pki.ca.pem, None, &[]),
        "localhost",
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sent = Sha256::digest(&data);
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(100_000) {
            wr.write_all(chunk).await.unwrap();
        }
        // close_notify + FIN: the upstream sees the end, echoes the rest and half-closes back.
        wr.shutdown().await.unwrap();
        wr
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let _wr = writer.await.unwrap();
    assert_eq!(got.len(), 8 * 1024 * 1024);
    assert_eq!(Sha256::digest(&got), sent);
    assert_eq!(up.seen().sni, [Some("upstream.test".to_string())]);
    assert_eq!(up.seen().client_cert, [true]);
    assert_eq!(proxy.counter("listener.ingress.ssl.handshake"), 1);
    assert_eq!(proxy.counter("cluster.up.ssl.handshake"), 1);
}

#[tokio::test]
async fn unsupported_tls_fields_are_config_errors_naming_their_path() {
    let pki = Pki::new();
    let ts = "static_resources.listeners[0].filter_chains[0].transport_socket";
    let cases = [
        (
            downstream_tls(&pki, "session_ticket_keys: {keys: []},"),
            format!("{ts}.typed_config.session_ticket_keys"),
        ),
        (
            downstream_tls(&pki, "").replace(
                "alpn_protocols",
                "tls_params: {cipher_suites: [ECDHE-RSA-AES128-GCM-SHA256]}, alpn_protocols",
            ),
            format!("{ts}.typed_config.common_tls_context.tls_params.cipher_suites"),
        ),
        (
            downstream_tls(&pki, "").replace(
                "alpn_protocols",
                "tls_params: {tls_minimum_protocol_version: TLSv1_0}, alpn_protocols",
            ),
            format!("{ts}.typed_config.common_tls_context.tls_params.tls_minimum_protocol_version"),
        ),
        (
            format!(
                "{{name: envoy.transport_sockets.alts, typed_config: {{\"@type\": {DOWNSTREAM}}}}}"
            ),
            format!("{ts}.name"),
        ),
        (
            format!(
                "{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": {UPSTREAM}}}}}"
            ),
            format!("{ts}.typed_config.@type"),
        ),
        (
            format!(
                "{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": {DOWNSTREAM}}}}}"
            ),
            format!("{ts}.typed_config.common_tls_context.tls_certificates"),
        ),
    ];
    for (transport, path) in cases {
        let yaml = bootstrap(
            &[listener("ingress", &transport, &tcp_proxy("up", ""))],
            &[cluster("up", 1, "", "")],
        );
        let err = match extproxy::config::parse(&yaml) {
            Err(e) => e,
            Ok(b) => match extproxy::Server::bind(&b, extproxy::Options::default()).await {
                Err(extproxy::server::Error::Config(e)) => e,
                Err(e) => panic!("{path}: not a config error: {e}"),
                Ok(_) => panic!("{path}: accepted"),
            },
        };
        assert_eq!(err.path, path, "{err}");
    }
    // Upstream: an unknown field of UpstreamTlsContext.
    let bad = upstream_tls(&pki, "a", "ca.pem", false).replace("sni:", "max_session_keys: 2, sni:");
    let yaml = bootstrap(
        &[listener("ingress", "", &tcp_proxy("up", ""))],
        &[cluster("up", 1, &bad, "")],
    );
    let b = extproxy::config::parse(&yaml).unwrap();
    let Err(extproxy::server::Error::Config(err)) =
        extproxy::Server::bind(&b, extproxy::Options::default()).await
    else {
        panic!("accepted")
    };
    assert_eq!(
        err.path, "static_resources.clusters[0].transport_socket.typed_config.max_session_keys",
        "{err}"
    );
}
