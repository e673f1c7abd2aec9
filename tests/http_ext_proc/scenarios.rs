//! The differential scenarios: YAML for the ext_proc filter, a processor behaviour, a request,
//! and (for documented differences) how extproxy's observation is expected to differ.

use super::ext_proc_support::*;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use std::time::Duration;
use testenv::{HttpVersion, TestRequest};

use super::Obs;

mod scripts;
use scripts::*;

type Req = pb::ProcessingRequest;

/// Observations not compared for a scenario (always with a reason at the scenario).
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect {
    /// Body chunking depends on timing (how reads coalesce): body messages are merged and the
    /// message counters are not compared.
    pub chunk_sensitive: bool,
    pub skip_upstream: bool,
    pub skip_counters: bool,
    pub skip_processor: bool,
    pub skip_headers: bool,
}

pub struct Scenario {
    pub name: &'static str,
    /// YAML mapping merged into the ext_proc filter config.
    pub filter: &'static str,
    /// YAML list of routes (default: everything to `upstream`).
    pub routes: &'static str,
    /// YAML map: the virtual host's `typed_per_filter_config`.
    pub vhost_per_filter: &'static str,
    pub buffer_limit: Option<u64>,
    pub script: fn(&mut Ctx, &Req) -> Vec<Step>,
    pub request: fn() -> TestRequest,
    /// Turns Envoy's observation into what extproxy must show (documented differences).
    pub expect: fn(&mut Obs, HttpVersion),
    pub skip: Expect,
    pub settle_ms: u64,
    pub http1_only: bool,
    pub http2_only: bool,
}

fn same(_: &mut Obs, _: HttpVersion) {}

fn sc(name: &'static str, script: fn(&mut Ctx, &Req) -> Vec<Step>) -> Scenario {
    Scenario {
        name,
        filter: "",
        routes: "",
        vhost_per_filter: "",
        buffer_limit: None,
        script,
        request: post_hello,
        expect: same,
        skip: Expect::default(),
        settle_ms: 30,
        http1_only: false,
        http2_only: false,
    }
}

// === requests ===

fn post_hello() -> TestRequest {
    TestRequest::post("/p?q=1", "hello")
        .header("x-echo-mode", "raw")
        .header("x-a", "1")
}

fn get() -> TestRequest {
    TestRequest::get("/g")
        .header("x-echo-mode", "raw")
        .header("x-a", "1")
}

fn chunked() -> TestRequest {
    TestRequest::post("/c", "")
        .chunked(&["aaa", "bbb", "ccc"], Duration::from_millis(30))
        .header("x-echo-mode", "raw")
}

fn post_big() -> TestRequest {
    TestRequest::post("/big", "x".repeat(3000)).header("x-echo-mode", "raw")
}

fn resp_trailers() -> TestRequest {
    TestRequest::post("/t", "hello")
        .header("x-echo-mode", "raw")
        .header("x-echo-trailers", "t1=v1")
}

fn resp_chunked() -> TestRequest {
    TestRequest::post("/rc", "hello")
        .header("x-echo-mode", "raw")
        .header("x-echo-chunks", "3")
}

fn route_b() -> TestRequest {
    TestRequest::get("/r").header("x-echo-mode", "raw")
}

fn grpc_req() -> TestRequest {
    TestRequest::post("/pkg.Svc/Method", "\0\0\0\0\0")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}

fn post_with_trailers() -> TestRequest {
    TestRequest::post("/tr", "hello")
        .header("x-echo-mode", "raw")
        .trailer("x-client-trailer", "1")
}

fn post_empty() -> TestRequest {
    TestRequest::post("/e", "").header("x-echo-mode", "raw")
}

// === the table ===

pub fn all() -> Vec<Scenario> {
    vec![
        sc("headers_default", pass),
        Scenario { request: get, ..sc("get_default", pass) },
        sc("set_remove_headers", set_remove),
        sc("path_rewrite", path_rewrite),
        sc("routing_headers_ignored", routing_headers),
        Scenario { filter: "mutation_rules: {allow_all_routing: true}", ..sc("routing_headers_allowed", routing_headers) },
        sc("status_201", status_201),
        sc("status_100_ignored", status_100),
        sc("append_true", append_true),
        // H1: extproxy honours ADD_IF_ABSENT / OVERWRITE_IF_EXISTS; Envoy overwrites.
        Scenario { expect: expect_append_action, ..sc("append_action", append_action) },
        // H10: extproxy uses `value` when `raw_value` is empty; Envoy sets an empty header.
        Scenario { expect: expect_value_only, ..sc("value_only", value_only) },
        sc("envoy_and_system_headers_rejected", envoy_header),
        Scenario { filter: "mutation_rules: {disallow_is_error: true}", ..sc("disallow_is_error", scheme_change) },
        Scenario { filter: "mutation_rules: {disallow_is_error: true}\nstatus_on_error: {code: 422}", ..sc("disallow_is_error_status", scheme_change) },
        sc("invalid_value_characters", bad_value),
        sc("nul_in_value", nul_value),
        sc("unknown_pseudo_header", unknown_pseudo),
        sc("response_protected_headers", response_protected),
        Scenario { filter: "mutation_rules: {allow_envoy: true}", ..sc("envoy_headers_allowed", envoy_header) },
        Scenario { filter: "mutation_rules: {disallow_all: true}", ..sc("disallow_all", set_remove) },
        Scenario { filter: "mutation_rules: {disallow_system: true}", ..sc("disallow_system", path_rewrite) },
        Scenario { filter: "mutation_rules: {disallow_expression: {regex: \"x-o.*\"}}", ..sc("disallow_expression", envoy_header) },
        Scenario { filter: "mutation_rules: {disallow_expression: {regex: \"x-o.*\"}, disallow_is_error: true}", ..sc("disallow_expression_is_error", envoy_header) },
        sc("invalid_name_on_response", bad_name),
        sc("immediate_response", deny),
        sc("immediate_bad_status", deny_bad_status),
        sc("immediate_on_response", deny_on_response),
        Scenario { filter: "processing_mode: {request_body_mode: BUFFERED}", ..sc("immediate_on_body", deny_on_body) },
        Scenario { filter: "disable_immediate_response: true", ..sc("immediate_disabled", deny) },
        Scenario {
            filter: "processing_mode: {response_body_mode: BUFFERED}",
            ..sc("immediate_on_response_body", deny_on_response_body)
        },
        sc("empty_message_spurious", empty_message),
        sc("metadata_only_spurious", metadata_only),
        Scenario { filter: "failure_mode_allow: true", ..sc("spurious_fail_open", empty_message) },
        sc("wrong_reply_kind", wrong_reply),
        // Whether the request reaches the upstream before the second reply is a race.
        Scenario { skip: Expect { skip_upstream: true, ..Default::default() }, ..sc("double_reply", double_reply) },
        sc("grpc_error", grpc_error),
        Scenario { filter: "status_on_error: {code: 503}", ..sc("grpc_error_status_on_error", grpc_error) },
        Scenario { filter: "failure_mode_allow: true", ..sc("grpc_error_fail_open", grpc_error) },
        sc("grpc_error_on_response", grpc_error_on_response),
        sc("close_ok", close_ok),
        // Mid-body faults with STREAMED: the chunk the processor held is forwarded (Envoy too).
        // How much of the body that first chunk holds depends on timing, so the processor's
        // log is not compared (status, body, upstream and counters are).
        Scenario { filter: "failure_mode_allow: true\nprocessing_mode: {request_body_mode: STREAMED}", request: chunked, skip: Expect { chunk_sensitive: true, skip_processor: true, ..Default::default() }, ..sc("grpc_error_mid_body_fail_open", grpc_error_mid_body) },
        Scenario { filter: "processing_mode: {request_body_mode: STREAMED}", request: chunked, skip: Expect { chunk_sensitive: true, skip_processor: true, ..Default::default() }, ..sc("close_ok_mid_body", close_ok_mid_body) },
        Scenario { filter: "message_timeout: 0.2s\nstatus_on_error: {code: 503}", settle_ms: 700, ..sc("timeout", slow) },
        Scenario { filter: "message_timeout: 0.2s\nfailure_mode_allow: true", settle_ms: 700, ..sc("timeout_fail_open", slow) },
        Scenario { filter: "message_timeout: 0s", settle_ms: 900, expect: hcm_closes_unread_request, ..sc("timeout_zero", slow) },
        Scenario { filter: "message_timeout: 0.2s", settle_ms: 700, ..sc("timeout_on_response", slow_response) },
        Scenario { filter: "message_timeout: 0.2s\nmax_message_timeout: 2s", ..sc("override_timeout", override_timeout) },
        Scenario { filter: "message_timeout: 0.2s", ..sc("override_timeout_disabled", override_timeout) },
        Scenario { filter: "processing_mode: {request_body_mode: BUFFERED, response_header_mode: SKIP}", ..sc("buffered_request", buffered_upper) },
        Scenario { filter: "processing_mode: {request_body_mode: BUFFERED}", ..sc("buffered_mismatch", buffered_mismatch) },
        Scenario {
            filter: "processing_mode: {request_body_mode: BUFFERED}",
            buffer_limit: Some(1024),
            request: post_big,
            http1_only: true,
            // Envoy sends its 413 through ext_proc's encode path; extproxy's HCM does not pass a
            // filter's own local reply through that filter (documented difference).
            skip: Expect { skip_processor: true, skip_counters: true, ..Default::default() },
            ..sc("buffered_over_limit", pass)
        },
        Scenario { filter: "processing_mode: {request_body_mode: BUFFERED, request_header_mode: SKIP}", request: get, ..sc("buffered_get_no_body", pass) },
        Scenario { filter: "processing_mode: {response_body_mode: BUFFERED}", ..sc("buffered_response", response_body_and_headers) },
        Scenario { filter: "processing_mode: {request_body_mode: STREAMED}", request: chunked, skip: Expect { chunk_sensitive: true, ..Default::default() }, ..sc("streamed_request", upper_bodies) },
        Scenario { filter: "processing_mode: {request_body_mode: STREAMED, response_header_mode: SKIP}", skip: Expect { chunk_sensitive: true, ..Default::default() }, ..sc("streamed_content_length", upper_bodies) },
        Scenario { filter: "processing_mode: {response_body_mode: STREAMED}", request: resp_chunked, expect: no_transfer_encoding, skip: Expect { chunk_sensitive: true, ..Default::default() }, ..sc("streamed_response", upper_bodies) },
        Scenario { filter: "processing_mode: {request_body_mode: BUFFERED_PARTIAL}", skip: Expect { chunk_sensitive: true, ..Default::default() }, ..sc("buffered_partial", upper_bodies) },
        Scenario {
            filter: "processing_mode: {response_trailer_mode: SEND}",
            request: resp_trailers,
            http2_only: true,
            expect: no_transfer_encoding,
            ..sc("response_trailers", trailers_mutation)
        },
        Scenario { filter: "processing_mode: {request_trailer_mode: SEND, response_trailer_mode: SEND}", ..sc("no_trailers_no_message", pass) },
        Scenario { request: get, ..sc("continue_and_replace", replace_get_to_post) },
        Scenario { filter: "processing_mode: {request_body_mode: BUFFERED}", ..sc("continue_and_replace_no_body", replace_no_body) },
        Scenario { filter: "allow_mode_override: true", ..sc("mode_override_allowed", mode_override) },
        sc("mode_override_disallowed", mode_override),
        Scenario {
            filter: "allow_mode_override: true\nallowed_override_modes: [{request_body_mode: STREAMED}]",
            ..sc("mode_override_not_in_allowed", mode_override)
        },
        Scenario {
            routes: r#"[{match: {prefix: "/", headers: [{name: x-route, string_match: {exact: b}}]}, route: {cluster: upstream, prefix_rewrite: "/routed-b"}}, {match: {prefix: "/"}, route: {cluster: upstream}}]"#,
            request: route_b,
            ..sc("clear_route_cache", route_switch)
        },
        Scenario {
            filter: "route_cache_action: RETAIN",
            routes: r#"[{match: {prefix: "/", headers: [{name: x-route, string_match: {exact: b}}]}, route: {cluster: upstream, prefix_rewrite: "/routed-b"}}, {match: {prefix: "/"}, route: {cluster: upstream}}]"#,
            request: route_b,
            ..sc("route_cache_retain", route_switch)
        },
        sc("clear_route_cache_ignored", clear_without_mutation),
        Scenario {
            filter: "route_cache_action: CLEAR",
            routes: r#"[{match: {prefix: "/", headers: [{name: x-route, string_match: {exact: b}}]}, route: {cluster: upstream, prefix_rewrite: "/routed-b"}}, {match: {prefix: "/"}, route: {cluster: upstream}}]"#,
            request: route_b,
            ..sc("route_cache_clear_action", route_switch_no_flag)
        },
        Scenario { filter: "message_timeout: 0.2s\nfailure_mode_allow: true", settle_ms: 700, ..sc("timeout_on_response_fail_open", slow_response) },
        Scenario {
            filter: "forward_rules: {allowed_headers: {patterns: [{prefix: \":\"}, {exact: x-a}]}, disallowed_headers: {patterns: [{exact: \":scheme\"}]}}",
            ..sc("forward_rules", pass)
        },
        Scenario { filter: "stat_prefix: custom", ..sc("stat_prefix", pass) },
        Scenario {
            routes: r#"[{match: {prefix: "/"}, route: {cluster: upstream}, typed_per_filter_config: {envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, disabled: true}}}]"#,
            ..sc("per_route_disabled", set_remove)
        },
        Scenario {
            routes: r#"[{match: {prefix: "/"}, route: {cluster: upstream}, typed_per_filter_config: {envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, overrides: {processing_mode: {request_body_mode: BUFFERED, response_header_mode: SKIP}}}}}]"#,
            ..sc("per_route_mode", upper_bodies)
        },
        Scenario {
            routes: r#"[{match: {prefix: "/"}, route: {cluster: upstream}, typed_per_filter_config: {envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, overrides: {failure_mode_allow: true}}}}]"#,
            ..sc("per_route_fail_open", grpc_error)
        },
        Scenario {
            filter: "processing_mode: {request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND, response_header_mode: SKIP}",
            request: chunked,
            skip: Expect { chunk_sensitive: true, ..Default::default() }, ..sc("duplex_streamed", duplex_upper)
        },
        Scenario {
            filter: "processing_mode: {request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND}",
            skip: Expect { skip_upstream: true, skip_processor: true, chunk_sensitive: true, ..Default::default() }, ..sc("duplex_out_of_order", duplex_out_of_order)
        },
        Scenario {
            filter: "processing_mode: {request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND}",
            skip: Expect { skip_upstream: true, skip_processor: true, chunk_sensitive: true, ..Default::default() }, ..sc("duplex_normal_body_mutation", normal_body_in_duplex)
        },
        Scenario {
            filter: "observability_mode: true\ndeferred_close_timeout: 0.1s\nprocessing_mode: {request_body_mode: STREAMED}",
            settle_ms: 300,
            skip: Expect { chunk_sensitive: true, ..Default::default() }, ..sc("observability", set_remove)
        },
        // H22: BUFFERED in observability mode sends no body.
        Scenario {
            filter: "observability_mode: true\ndeferred_close_timeout: 0.1s\nprocessing_mode: {request_body_mode: BUFFERED, response_body_mode: BUFFERED}",
            settle_ms: 300,
            ..sc("observability_buffered_sends_no_body", set_remove)
        },
        Scenario {
            filter: "processing_mode: {request_body_mode: STREAMED}\nsend_body_without_waiting_for_header_response: true",
            request: chunked,
            skip: Expect { chunk_sensitive: true, ..Default::default() }, ..sc("send_body_without_waiting", upper_bodies)
        },
        Scenario {
            filter: "request_attributes: [request.path, request.method, request.headers, request.scheme, source.address, connection.id, unknown.attr]\nresponse_attributes: [response.code, response.headers]",
            ..sc("attributes", pass)
        },
        Scenario { filter: "allow_mode_override: true", request: chunked, skip: Expect { chunk_sensitive: true, ..Default::default() }, ..sc("standalone_mode_override", standalone_override) },
        Scenario { filter: "allow_mode_override: true", ..sc("standalone_mode_override_invalid", standalone_override_invalid) },
        Scenario {
            filter: "allow_mode_override: true\nallowed_override_modes: [{request_header_mode: SKIP, response_header_mode: SKIP, request_body_mode: BUFFERED}]",
            ..sc("mode_override_ignores_request_header_mode", mode_override)
        },
        Scenario { request: grpc_req, http2_only: true, ..sc("immediate_grpc_status", deny_grpc) },
        Scenario {
            filter: "processing_mode: {request_body_mode: STREAMED}",
            request: chunked,
            // How much of the body was read (upstream, `connection: close` on HTTP/1) when the
            // reply comes is a race; status and body are compared.
            skip: Expect { chunk_sensitive: true, skip_processor: true, skip_upstream: true, skip_headers: true, ..Default::default() },
            ..sc("immediate_on_streamed_body", deny_on_second_chunk)
        },
        Scenario {
            filter: "processing_mode: {request_body_mode: STREAMED}\nmessage_timeout: 0.2s",
            request: chunked,
            settle_ms: 700,
            skip: Expect { chunk_sensitive: true, skip_processor: true, skip_upstream: true, ..Default::default() },
            ..sc("timeout_on_streamed_body", slow_on_body)
        },
        Scenario { filter: "processing_mode: {request_header_mode: SKIP}", ..sc("request_headers_skipped", pass) },
        Scenario {
            filter: "processing_mode: {request_body_mode: BUFFERED, request_trailer_mode: SEND, response_header_mode: SKIP}",
            request: post_with_trailers,
            http2_only: true,
            ..sc("buffered_with_request_trailers", trailer_tagger)
        },
        sc("non_utf8_header_value", non_utf8),
        Scenario {
            filter: "grpc_service: {envoy_grpc: {cluster_name: proc, max_receive_message_length: 300}, initial_metadata: [{key: x-scenario, value: reply_too_large}]}",
            ..sc("reply_too_large", big_reply)
        },
        sc("close_ok_on_response", close_on_response),
        Scenario { skip: Expect { skip_upstream: true, ..Default::default() }, ..sc("fail_out_of_line", fail_out_of_line) },
        Scenario { filter: "processing_mode: {request_body_mode: BUFFERED}", ..sc("continue_and_replace_buffered", replace_body_buffered) },
        Scenario { filter: "processing_mode: {request_body_mode: BUFFERED, response_body_mode: BUFFERED}", ..sc("buffered_both", upper_bodies) },
        Scenario { filter: "processing_mode: {request_body_mode: BUFFERED}", request: post_empty, ..sc("buffered_empty_post", pass) },
        Scenario { filter: "processing_mode: {response_body_mode: STREAMED}", skip: Expect { chunk_sensitive: true, ..Default::default() }, ..sc("streamed_response_content_length", upper_bodies) },
        Scenario {
            vhost_per_filter: r#"{envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, overrides: {processing_mode: {response_header_mode: SKIP}}}}"#,
            routes: r#"[{match: {prefix: "/"}, route: {cluster: upstream}, typed_per_filter_config: {envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, overrides: {processing_mode: {request_header_mode: SKIP}}}}}]"#,
            ..sc("per_route_beats_virtual_host", pass)
        },
        Scenario {
            vhost_per_filter: r#"{envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, disabled: true}}"#,
            routes: r#"[{match: {prefix: "/"}, route: {cluster: upstream}, typed_per_filter_config: {envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, overrides: {grpc_service: {envoy_grpc: {cluster_name: proc}, initial_metadata: [{key: x-scenario, value: per_route_grpc_service}]}}}}}]"#,
            ..sc("per_route_grpc_service", set_remove)
        },
        // The local response is streamed by Envoy, sent whole by extproxy (documented).
        // Streamed as Envoy: 203, chunked body, no content-type added; the trailers reach an
        // HTTP/2 client (Envoy's HTTP/1 codec drops them without `enable_trailers`, as extproxy).
        Scenario { request: get, ..sc("streamed_immediate_response", streamed_local_response) },
        // H3: Envoy forwards `hel` (truncated) and leaves `lo` on the upstream connection, where
        // it prefixes the next request (`loGET`); extproxy refuses the mismatch with 500. Last,
        // so the polluted upstream connection affects no other scenario.
        Scenario { expect: expect_content_length_refused, skip: Expect { skip_headers: true, ..Default::default() }, ..sc("content_length_mismatch_none", short_content_length) },
    ]
}

fn expect_append_action(o: &mut Obs, _: HttpVersion) {
    // Envoy overwrote x-a and added x-missing; extproxy keeps x-a (ADD_IF_ABSENT) and does not
    // add x-missing (OVERWRITE_IF_EXISTS).
    if let Some(u) = o.upstream.as_mut() {
        u.headers.insert("x-a".into(), "1".into());
        u.headers.remove("x-missing");
    }
}

fn expect_value_only(o: &mut Obs, _: HttpVersion) {
    if let Some(u) = o.upstream.as_mut() {
        u.headers.insert("x-v".into(), "text".into());
    }
}

/// Envoy's HTTP/1 codec leaves `transfer-encoding: chunked` in the response headers it sends to
/// the processor; extproxy's HCM removes hop-by-hop headers before filters run.
fn no_transfer_encoding(o: &mut Obs, _: HttpVersion) {
    for p in &mut o.processor {
        *p = p.replace(",transfer-encoding]", "]");
    }
}

/// The local reply comes before the request body was read: Envoy's HTTP/1 codec then closes the
/// connection (`connection: close`). That is the HCM's behaviour (not ext_proc's); extproxy's HCM
/// drains the unread body instead and keeps the connection.
fn hcm_closes_unread_request(o: &mut Obs, v: HttpVersion) {
    if v == HttpVersion::Http1 {
        o.headers.remove("connection");
    }
}

fn expect_content_length_refused(o: &mut Obs, v: HttpVersion) {
    assert_eq!(
        o.upstream.as_ref().map(|u| u.body.as_str()),
        Some("hel"),
        "Envoy truncates"
    );
    o.status = 500;
    o.body.clear();
    o.upstream = None;
    o.processor.iter_mut().for_each(|p| {
        if let Some(i) = p.find(" sh[") {
            p.truncate(i);
        }
    });
    // Per request: one error reply and no response-headers message (counters accumulate over
    // the HTTP/1.1 run, then the HTTP/2 run).
    let n = if v == HttpVersion::Http1 { 1 } else { 2 };
    for k in [
        "immediate_responses_sent",
        "stream_msgs_received",
        "stream_msgs_sent",
    ] {
        o.counters.insert(k.to_string(), n);
    }
}
