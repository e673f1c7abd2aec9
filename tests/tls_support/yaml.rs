//! Bootstrap YAML builders shared by the TLS tests (flow-style YAML, one line per resource).

use super::Pki;

pub const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const DOWNSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
pub const UPSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub const H2_OPTIONS: &str = "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}";

/// A listener `ingress` (stat prefix `tls_in`) with `transport` (a `transport_socket` YAML
/// flow mapping, or empty) in front of `filters` (YAML flow sequence).
pub fn listener(name: &str, transport: &str, filters: &str) -> String {
    let ts = if transport.is_empty() {
        String::new()
    } else {
        format!("\n      transport_socket: {transport}")
    };
    format!(
        "  - name: {name}\n    stat_prefix: {name}\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    filter_chains:\n    - filters: {filters}{ts}\n"
    )
}

/// A cluster to `port` with an optional `transport_socket` and extra lines.
pub fn cluster(name: &str, port: u16, transport: &str, extra: &str) -> String {
    let ts = if transport.is_empty() {
        String::new()
    } else {
        format!("\n    transport_socket: {transport}")
    };
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("\n    {extra}")
    };
    format!(
        "  - name: {name}\n    connect_timeout: 2s\n    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}{ts}{extra}\n"
    )
}

pub fn bootstrap(listeners: &[String], clusters: &[String]) -> String {
    format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        listeners.concat(),
        clusters.concat()
    )
}

/// An HCM routing everything to `cluster`, with `http_filters` before the router.
pub fn hcm(cluster: &str, http_filters: &str) -> String {
    format!(
        "[{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": {HCM}, stat_prefix: in, codec_type: AUTO, route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]}}]}}, http_filters: [{http_filters}{{name: envoy.filters.http.router, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}]"
    )
}

pub fn tcp_proxy(cluster: &str, network_filters: &str) -> String {
    format!(
        "[{network_filters}{{name: envoy.filters.network.tcp_proxy, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tp, cluster: {cluster}}}}}]"
    )
}

/// A downstream TLS transport socket with the PKI's server certificate.
pub fn downstream_tls(pki: &Pki, extra: &str) -> String {
    format!(
        "{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": {DOWNSTREAM}, {extra} common_tls_context: {{alpn_protocols: [h2, http/1.1], tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}], validation_context: {{trusted_ca: {{filename: {}}}}}}}}}}}",
        pki.file("server.pem"),
        pki.file("server.key"),
        pki.file("ca.pem"),
    )
}

/// An upstream TLS transport socket trusting `ca_file`, presenting the client certificate if `mtls`.
pub fn upstream_tls(pki: &Pki, sni: &str, ca_file: &str, mtls: bool) -> String {
    let cert = if mtls {
        format!(
            "tls_certificates: [{{certificate_chain: {{inline_string: {:?}}}, private_key: {{inline_string: {:?}}}}}], ",
            pki.client.cert_pem, pki.client.key_pem
        )
    } else {
        String::new()
    };
    format!(
        "{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": {UPSTREAM}, sni: {sni}, common_tls_context: {{{cert}validation_context: {{trusted_ca: {{filename: {}}}}}}}}}}}",
        pki.file(ca_file)
    )
}

/// Adds a port-0 admin endpoint (needed to run the bootstrap as a process).
pub fn with_admin(yaml: &str) -> String {
    format!("admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}\n{yaml}")
}
