//! Differential tests: the same bootstrap, processor and client script run once through real
//! Envoy 1.40 and once through extproxy's binary; what each side received, how each connection
//! ended (FIN/RST) and the `network_ext_proc.ep.*` counters are compared. Where extproxy
//! deliberately differs (spec §9.1 N1–N7, docs/envoy-differences.md) the test asserts the
//! documented difference explicitly.

#![allow(clippy::unwrap_used)]

mod l4_support;

use envoy_types::pb::envoy::service::network_ext_proc::v3::processing_response::{
    ConnectionStatus, DataProcessedStatus,
};
use envoy_types::pb::envoy::service::network_ext_proc::v3::ProcessingResponse;
use l4_support::differential::*;
use l4_support::*;
use std::collections::BTreeMap;
use std::time::Duration;

const LOG_FORMAT: &str = "flags=%RESPONSE_FLAGS% rx=%BYTES_RECEIVED% tx=%BYTES_SENT% dr=%DOWNSTREAM_LOCAL_CLOSE_REASON% dt=%DOWNSTREAM_DETECTED_CLOSE_TYPE% md=%DYNAMIC_METADATA(epns)%";

/// The access log shows the same close reasons, close types, byte counts and metadata.
#[tokio::test]
async fn access_log_matches() {
    // E: message timeout.
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"hello").await;
            drain(r).await
        })
    };
    let (envoy, ours) = logged(
        "message_timeout: 0.3s",
        LOG_FORMAT,
        handler(|_, _| {}),
        true,
        script,
    )
    .await;
    assert_eq!(
        envoy,
        "flags=- rx=5 tx=0 dr=ext_proc_message_timeout dt=Normal md=-\n"
    );
    assert_eq!(envoy, ours);

    // K2: CLOSE_RST, with metadata in an earlier response (scenario M's namespace).
    let h = handler(|q, r| {
        if req_data(q).1 == b"bye" {
            r.send(ProcessingResponse {
                connection_status: ConnectionStatus::CloseRst as i32,
                ..read_resp(b"", false)
            });
        } else {
            let mut resp = echo(q);
            resp.dynamic_metadata = Some(envoy_types::pb::google::protobuf::Struct {
                fields: [(
                    "epns".to_string(),
                    envoy_types::pb::google::protobuf::Value {
                        kind: Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(envoy_types::pb::google::protobuf::Struct {
                            fields: [
                                ("k".to_string(), envoy_types::pb::google::protobuf::Value { kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue("v1".into())) }),
                                ("n".to_string(), envoy_types::pb::google::protobuf::Value { kind: Some(envoy_types::pb::google::protobuf::value::Kind::NumberValue(3.0)) }),
                            ]
                            .into_iter()
                            .collect(),
                        })),
                    },
                )]
                .into_iter()
                .collect(),
            });
            r.send(resp);
        }
    });
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"hi").await;
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 2).await, b"hi");
            write(&mut r.client, b"bye").await;
            drain(r).await
        })
    };
    let extra = "message_timeout: 1s\nmetadata_options: {receiving_namespaces: {untyped: [epns]}}";
    let (envoy, ours) = logged(extra, LOG_FORMAT, h, true, script).await;
    assert_eq!(
        envoy,
        "flags=- rx=5 tx=0 dr=ext_proc_reset_requested dt=LocalReset md={\"k\":\"v1\",\"n\":3}\n"
    );
    assert_eq!(envoy, ours);
}

// === scenarios ===

#[tokio::test]
async fn scenario_1_upper_casing_round_trip() {
    let script: Script = |mut r| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                r.processor.seen().streams,
                0,
                "no stream before the first byte"
            );
            write(&mut r.client, b"hello").await;
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 5).await, b"HELLO");
            write(u, b"world").await;
            assert_eq!(read_exact(&mut r.client, 5).await, b"WORLD");
            fin(&mut r.client).await;
            let up = read_to_end(u).await;
            fin(u).await;
            let client = read_to_end(&mut r.client).await;
            Obs {
                client,
                upstream: Some(up),
                counters: BTreeMap::new(),
                notes: vec![],
            }
        })
    };
    let (envoy, ours) = both(
        "message_timeout: 1s",
        handler(|q, r| r.send(upper(q))),
        true,
        script,
    )
    .await;
    assert_eq!(
        (&envoy.client, &envoy.upstream),
        (&ours.client, &ours.upstream)
    );
    assert_eq!(envoy.upstream, Some((vec![], Ending::Fin)));
    assert_eq!(
        envoy.counters,
        counters(&[
            ("streams_started", 1),
            ("stream_msgs_sent", 4),
            ("stream_msgs_received", 3),
            ("read_data_sent", 2),
            ("read_data_injected", 2),
            ("write_data_sent", 2),
            ("write_data_injected", 1),
            ("streams_closed", 1),
        ])
    );
    // N4: extproxy waits for the answer to the upstream's FIN before closing.
    let mut want = envoy.counters.clone();
    want.insert("stream_msgs_received".into(), 4);
    want.insert("write_data_injected".into(), 2);
    assert_eq!(ours.counters, want);
}

#[tokio::test]
async fn scenario_a3_unmodified_with_data_and_a_unmodified_empty() {
    let h = handler(|q, r| {
        let (_, d, _) = req_data(q);
        let data: &[u8] = if d == b"xyz" { b"XYZ" } else { b"" };
        r.send(ProcessingResponse {
            data_processing_status: DataProcessedStatus::Unmodified as i32,
            ..same_dir(q, data, req_data(q).2)
        });
    });
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"xyz").await;
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 3).await, b"XYZ");
            write(&mut r.client, b"hello").await;
            r.processor.wait_requests(2).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            finish(r).await
        })
    };
    let (envoy, ours) = both("message_timeout: 1s", h, true, script).await;
    // A: Envoy forwards nothing for UNMODIFIED + empty data; extproxy forwards the original (N1).
    assert_eq!(envoy.upstream, Some((vec![], Ending::Fin)));
    assert_eq!(ours.upstream, Some((b"hello".to_vec(), Ending::Fin)));
    assert_eq!(envoy.client, ours.client);
    assert_eq!(ours.counters, with_n4(&envoy.counters));
}

#[tokio::test]
async fn scenario_b_early_eos_then_more_data() {
    let h = handler(|q, r| r.send(same_dir(q, &req_data(q).1, true)));
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"first").await;
            let u = r.upstream.as_mut().expect("upstream");
            let up = read_to_end(u).await;
            write(&mut r.client, b"second").await;
            r.processor.wait_requests(2).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let u = r.upstream.as_mut().expect("upstream");
            fin(u).await;
            // Let the upstream's FIN be handled first: the upstream socket is then closed both
            // ways, which ends the connection.
            tokio::time::sleep(Duration::from_millis(100)).await;
            fin(&mut r.client).await;
            let client = read_to_end(&mut r.client).await;
            Obs {
                client,
                upstream: Some(up),
                counters: BTreeMap::new(),
                notes: vec![],
            }
        })
    };
    let (envoy, ours) = both("message_timeout: 1s", h, true, script).await;
    assert_eq!(envoy.upstream, Some((b"first".to_vec(), Ending::Fin)));
    assert_eq!(
        (&envoy.client, &envoy.upstream),
        (&ours.client, &ours.upstream)
    );
    assert_eq!(ours.counters, with_n4(&envoy.counters));
}

#[tokio::test]
async fn scenario_c_unsolicited_responses() {
    let h = handler(|q, r| {
        r.send(echo(q));
        if req_data(q).1 == b"hi" {
            r.send(read_resp(b"UNSOLICITED-READ", false));
            r.send(write_resp(b"UNSOLICITED-WRITE", false));
        }
    });
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"hi").await;
            assert_eq!(read_exact(&mut r.client, 17).await, b"UNSOLICITED-WRITE");
            finish(r).await
        })
    };
    let (envoy, ours) = both("message_timeout: 1s", h, true, script).await;
    assert_eq!(
        envoy.upstream,
        Some((b"hiUNSOLICITED-READ".to_vec(), Ending::Fin))
    );
    assert_eq!(envoy.counters.get("read_data_injected"), Some(&3));
    assert_eq!(
        (&envoy.client, &envoy.upstream),
        (&ours.client, &ours.upstream)
    );
    assert_eq!(ours.counters, with_n4(&envoy.counters));
}

#[tokio::test]
async fn scenario_d_pipelined_chunks_answered_in_order() {
    let h = handler(|q, r| r.send_later(Duration::from_millis(150), upper(q)));
    let script: Script = |mut r| {
        Box::pin(async move {
            for chunk in [&b"one"[..], b"two", b"three"] {
                write(&mut r.client, chunk).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 11).await, b"ONETWOTHREE");
            finish(r).await
        })
    };
    let (envoy, ours) = both("message_timeout: 1s", h, true, script).await;
    assert_eq!(
        (&envoy.client, &envoy.upstream),
        (&ours.client, &ours.upstream)
    );
    assert_eq!(ours.counters, with_n4(&envoy.counters));
}

#[tokio::test]
async fn scenario_e_timeout_fail_closed() {
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"hello").await;
            drain(r).await
        })
    };
    let (envoy, ours) = both("message_timeout: 0.3s", handler(|_, _| {}), true, script).await;
    assert_eq!(envoy.client, (vec![], Ending::Fin));
    assert_eq!(
        envoy.counters,
        counters(&[
            ("streams_started", 1),
            ("stream_msgs_sent", 1),
            ("read_data_sent", 1),
            ("message_timeouts", 1),
            ("streams_closed", 1),
            ("connections_closed", 1),
        ])
    );
    assert_eq!(envoy, ours);
}

#[tokio::test]
async fn scenario_f2_zero_timeout_never_fires() {
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"hello").await;
            tokio::time::sleep(Duration::from_millis(600)).await;
            // Still open after 3× the default timeout (nothing forwarded, nothing closed); then
            // the upstream resets.
            let Run {
                mut client,
                upstream,
                processor,
            } = r;
            assert_eq!(processor.seen().requests.len(), 1);
            reset(upstream.expect("upstream"));
            let client = read_to_end(&mut client).await;
            Obs {
                client,
                upstream: None,
                counters: BTreeMap::new(),
                notes: vec![],
            }
        })
    };
    let (envoy, ours) = both("message_timeout: 0s", handler(|_, _| {}), true, script).await;
    assert_eq!(envoy.counters.get("message_timeouts"), None);
    assert_eq!(envoy.counters, ours.counters);
    // extproxy always propagates the upstream's RST. Envoy 1.40 with network ext_proc in the
    // chain was seen to close the client with RST in some runs and FIN in others.
    assert!(envoy.client.0.is_empty());
    assert_eq!(ours.client, (vec![], Ending::Rst));
}

/// V, done better (N5): only the first of two pipelined chunks is answered. Envoy's first answer
/// stops the timer, so the second chunk never times out (until the client's FIN re-arms it);
/// extproxy keeps the timer running and times out 1 s after the answer.
#[tokio::test]
async fn scenario_v_unanswered_pipelined_chunk() {
    // The answer to `first` is sent once `second` has arrived, so both are in flight.
    let h = handler(|q, r| {
        if req_data(q).1 == b"second" {
            r.send(read_resp(b"first", false));
        }
    });
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"first").await;
            r.processor.wait_requests(1).await;
            write(&mut r.client, b"second").await;
            tokio::time::sleep(Duration::from_millis(1600)).await;
            let mut probe = [0u8; 1];
            let open = tokio::time::timeout(
                Duration::from_millis(50),
                tokio::io::AsyncReadExt::read(&mut r.client, &mut probe),
            )
            .await
            .is_err();
            let notes = vec![if open {
                "open after 1.6 s"
            } else {
                "closed by 1.6 s"
            }];
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut r.client).await;
            let mut obs = drain(r).await;
            obs.notes = notes;
            obs
        })
    };
    let (envoy, ours) = both("message_timeout: 1s", h, true, script).await;
    assert_eq!(envoy.notes, ["open after 1.6 s"]);
    assert_eq!(ours.notes, ["closed by 1.6 s"]);
    assert_eq!(
        (&envoy.client, &envoy.upstream),
        (&ours.client, &ours.upstream)
    );
    assert_eq!(envoy.upstream, Some((b"first".to_vec(), Ending::Fin)));
    // Envoy's timeout only comes after the client's FIN re-armed the timer.
    assert_eq!(envoy.counters.get("read_data_sent"), Some(&3));
    assert_eq!(ours.counters.get("read_data_sent"), Some(&2));
    for o in [&envoy, &ours] {
        assert_eq!(o.counters.get("message_timeouts"), Some(&1), "{o:?}");
        assert_eq!(o.counters.get("connections_closed"), Some(&1), "{o:?}");
    }
}

#[tokio::test]
async fn scenario_g_grpc_error_fail_closed() {
    let h = handler(|_, r| r.fail(tonic::Status::permission_denied("denied")));
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"hello").await;
            drain(r).await
        })
    };
    let (envoy, ours) = both("message_timeout: 1s", h, true, script).await;
    assert_eq!(envoy.client, (vec![], Ending::Fin));
    assert_eq!(envoy.counters.get("streams_grpc_error"), Some(&1));
    assert_eq!(envoy, ours);
}

#[tokio::test]
async fn scenario_h_ok_close_passes_through() {
    let h = handler(|q, r| {
        r.send(echo(q));
        r.finish();
    });
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"hello").await;
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 5).await, b"hello");
            tokio::time::sleep(Duration::from_millis(100)).await;
            write(&mut r.client, b"after").await;
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 5).await, b"after");
            write(u, b"down").await;
            assert_eq!(read_exact(&mut r.client, 4).await, b"down");
            finish(r).await
        })
    };
    let (envoy, ours) = both("message_timeout: 1s", h, true, script).await;
    assert_eq!(envoy.counters.get("streams_grpc_close"), Some(&1));
    assert_eq!(envoy, ours);
}

#[tokio::test]
async fn scenario_i_processor_unreachable() {
    let script: Script = |mut r| {
        Box::pin(async move {
            r.processor.kill();
            write(&mut r.client, b"hello").await;
            drain(r).await
        })
    };
    let (envoy, ours) = both("message_timeout: 1s", handler(|_, _| {}), true, script).await;
    assert_eq!(envoy.client.1, Ending::Fin);
    assert_eq!(
        envoy.counters,
        counters(&[
            ("streams_started", 1),
            ("stream_msgs_sent", 1),
            ("read_data_sent", 1),
            ("streams_grpc_error", 1),
            ("connections_closed", 1),
        ])
    );
    assert_eq!(envoy, ours);
}

fn closing(status: ConnectionStatus) -> Handler {
    handler(move |q, r| {
        if req_data(q).1 == b"bye" {
            r.send(ProcessingResponse {
                connection_status: status as i32,
                ..read_resp(b"SHOULD-NOT-ARRIVE", false)
            });
        } else {
            r.send(echo(q));
        }
    })
}

fn closing_script() -> Script {
    |mut r| {
        Box::pin(async move {
            let u = r.upstream.as_mut().expect("upstream");
            write(u, b"early").await;
            assert_eq!(read_exact(&mut r.client, 5).await, b"early");
            write(&mut r.client, b"bye").await;
            drain(r).await
        })
    }
}

#[tokio::test]
async fn scenario_k_close_with_data() {
    let (envoy, ours) = both(
        "message_timeout: 1s",
        closing(ConnectionStatus::Close),
        true,
        closing_script(),
    )
    .await;
    assert_eq!(envoy.client, (vec![], Ending::Fin));
    assert_eq!(envoy.upstream, Some((vec![], Ending::Fin)));
    // N6: extproxy injects the CLOSE's data before closing (and counts the injection).
    assert_eq!(
        ours.upstream,
        Some((b"SHOULD-NOT-ARRIVE".to_vec(), Ending::Fin))
    );
    assert_eq!(ours.client, envoy.client);
    let mut want = envoy.counters.clone();
    *want.entry("read_data_injected".into()).or_default() += 1;
    assert_eq!(ours.counters, want);
}

#[tokio::test]
async fn scenario_k2_close_rst() {
    let (envoy, ours) = both(
        "message_timeout: 1s",
        closing(ConnectionStatus::CloseRst),
        true,
        closing_script(),
    )
    .await;
    assert_eq!(envoy.client, (vec![], Ending::Rst));
    assert_eq!(envoy.counters.get("connections_reset"), Some(&1));
    assert_eq!(envoy, ours);
}

#[tokio::test]
async fn scenario_l_close_stream_to_ext_proc_server() {
    let h = handler(|q, r| {
        if req_data(q).1 == b"hello" {
            r.send(ProcessingResponse {
                close_stream_to_ext_proc_server: true,
                ..read_resp(b"[hello]", false)
            });
        }
    });
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"hello").await;
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 7).await, b"[hello]");
            write(&mut r.client, b"after").await;
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 5).await, b"after");
            finish(r).await
        })
    };
    let (envoy, ours) = both("message_timeout: 1s", h, true, script).await;
    assert_eq!(envoy, ours);
}

#[tokio::test]
async fn scenario_r_server_first() {
    let script: Script = |mut r| {
        Box::pin(async move {
            let u = r.upstream.as_mut().expect("upstream");
            write(u, b"220 ready").await;
            assert_eq!(read_exact(&mut r.client, 9).await, b"220 READY");
            write(&mut r.client, b"quit").await;
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 4).await, b"QUIT");
            let reqs = r.processor.seen().requests;
            assert!(reqs[0].write_data.is_some(), "write_data first");
            finish(r).await
        })
    };
    let (envoy, ours) = both(
        "message_timeout: 1s",
        handler(|q, r| r.send(upper(q))),
        true,
        script,
    )
    .await;
    assert_eq!(
        (&envoy.client, &envoy.upstream),
        (&ours.client, &ours.upstream)
    );
    assert_eq!(ours.counters, with_n4(&envoy.counters));
}

#[tokio::test]
async fn scenario_s_read_skip() {
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"raw").await;
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 3).await, b"raw");
            write(u, b"processed").await;
            assert_eq!(read_exact(&mut r.client, 9).await, b"PROCESSED");
            finish(r).await
        })
    };
    let (envoy, ours) = both(
        "message_timeout: 1s\nprocessing_mode: {process_read: SKIP}",
        handler(|q, r| r.send(upper(q))),
        true,
        script,
    )
    .await;
    assert_eq!(envoy.counters.get("read_data_sent"), None);
    assert_eq!(
        (&envoy.client, &envoy.upstream),
        (&ours.client, &ours.upstream)
    );
    assert_eq!(ours.counters, with_n4(&envoy.counters));
}

/// Uploads 4 MiB and FIN through an echoing processor; the upstream then FINs.
fn upload_4mib() -> Script {
    |r| {
        Box::pin(async move {
            let data = vec![b'q'; 4 * 1024 * 1024];
            let Run {
                client,
                upstream,
                processor: _,
            } = r;
            let (mut cr, mut cw) = client.into_split();
            let writer = tokio::spawn(async move {
                tokio::io::AsyncWriteExt::write_all(&mut cw, &data).await?;
                tokio::io::AsyncWriteExt::shutdown(&mut cw).await
            });
            let mut u = upstream.expect("upstream");
            let up = read_to_end(&mut u).await;
            fin(&mut u).await;
            let mut got = Vec::new();
            let end = match tokio::io::AsyncReadExt::read_to_end(&mut cr, &mut got).await {
                Ok(_) => Ending::Fin,
                Err(_) => Ending::Rst,
            };
            // The upstream's byte count proves delivery; the writer's own result can race with
            // the proxy's close (a late ECONNRESET after everything was sent).
            let _ = writer.await.expect("writer task");
            Obs {
                client: (got, end),
                upstream: Some(up),
                counters: BTreeMap::new(),
                notes: vec![],
            }
        })
    }
}

#[tokio::test]
async fn scenario_q_four_mib_upload() {
    let (envoy, ours) = both(
        "message_timeout: 5s",
        handler(|q, r| r.send(echo(q))),
        true,
        upload_4mib(),
    )
    .await;
    assert_eq!(
        envoy.upstream.as_ref().map(|(d, e)| (d.len(), *e)),
        Some((4 * 1024 * 1024, Ending::Fin)),
        "{:?}",
        envoy.counters
    );
    assert_eq!(
        (&envoy.client, &envoy.upstream),
        (&ours.client, &ours.upstream)
    );
    for o in [&envoy, &ours] {
        assert_eq!(
            o.counters.get("read_data_sent"),
            o.counters.get("read_data_injected"),
            "{o:?}"
        );
    }
}

#[tokio::test]
async fn scenario_q4_four_mib_upload() {
    let (envoy, ours) = both_with(
        "    per_connection_buffer_limit_bytes: 32768\n",
        "message_timeout: 5s",
        handler(|q, r| r.send(echo(q))),
        true,
        upload_4mib(),
    )
    .await;
    // Byte totals match; chunk counts follow each proxy's socket reads.
    assert_eq!(
        envoy.upstream.as_ref().map(|(d, e)| (d.len(), *e)),
        Some((4 * 1024 * 1024, Ending::Fin)),
        "{:?}",
        envoy.counters
    );
    assert_eq!(
        (&envoy.client, &envoy.upstream),
        (&ours.client, &ours.upstream)
    );
    for o in [&envoy, &ours] {
        assert_eq!(
            o.counters.get("read_data_sent"),
            o.counters.get("read_data_injected"),
            "{o:?}"
        );
        assert_eq!(o.counters.get("streams_started"), Some(&1));
    }
}

#[tokio::test]
async fn scenario_t1_upstream_refused() {
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"hello").await;
            drain(r).await
        })
    };
    let (envoy, ours) = both(
        "message_timeout: 1s",
        handler(|q, r| r.send(echo(q))),
        false,
        script,
    )
    .await;
    // FIN or RST depends on whether the client's bytes reached the proxy's socket before the
    // refusal (RST when they did, as in the spec's T1); both proxies just close the socket.
    assert_eq!((envoy.client.0.len(), ours.client.0.len()), (0, 0));
    assert_eq!(envoy.counters, BTreeMap::new(), "ext_proc is never called");
    assert_eq!(envoy.counters, ours.counters);
}

/// `--mode validate`: both reject the same configs, and extproxy's message contains Envoy's.
#[tokio::test]
async fn validate_messages_match() {
    let dir = testenv::TempDir::new("l4-validate").expect("tempdir");
    let cases: [(&str, &str); 5] = [
        ("stat_prefix: ep\nprocessing_mode: {process_read: SKIP, process_write: SKIP}", "both read and write paths are skipped, at least one must be enabled."),
        ("stat_prefix: ep\nmessage_timeout: 3601s", "NetworkExternalProcessorValidationError.MessageTimeout: value must be inside range [0s, 1h0m0s]"),
        ("stat_prefix: ''", "NetworkExternalProcessorValidationError.StatPrefix: value length must be at least 1 characters"),
        ("stat_prefix: ep\ngrpc_service: null", "A grpc_service must be configured"),
        ("stat_prefix: ep", ""),
    ];
    for (i, (cfg, want)) in cases.iter().enumerate() {
        let filter = format!(
            "      - name: envoy.filters.network.ext_proc\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.ext_proc.v3.NetworkExternalProcessor\n{}",
            cfg.lines()
                .chain(if cfg.contains("grpc_service") { None } else { Some("grpc_service: {envoy_grpc: {cluster_name: processor}}") })
                .map(|l| format!("          {l}\n"))
                .collect::<String>()
        );
        let yaml = bootstrap(&[filter], 1, 2, "", "");
        let path = dir.join(&format!("c{i}.yaml"));
        std::fs::write(&path, &yaml).expect("write");
        let out = |bin: &std::path::Path| {
            let o = std::process::Command::new(bin)
                .args(["--mode", "validate", "-c"])
                .arg(&path)
                .args(["-l", "error", "--disable-hot-restart"])
                .output()
                .expect("run");
            (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            )
        };
        let (envoy_ok, envoy_text) = out(&testenv::envoy_binary());
        let (ours_ok, ours_text) = out(env!("CARGO_BIN_EXE_extproxy").as_ref());
        assert_eq!(envoy_ok, want.is_empty(), "envoy on case {i}: {envoy_text}");
        assert_eq!(
            ours_ok, envoy_ok,
            "case {i}: envoy said {envoy_text}\nextproxy said {ours_text}"
        );
        if want.is_empty() {
            assert!(
                envoy_text.contains("OK") && ours_text.contains("OK"),
                "{envoy_text} / {ours_text}"
            );
        } else {
            assert!(envoy_text.contains(want), "envoy on case {i}: {envoy_text}");
            assert!(
                ours_text.contains(want),
                "extproxy on case {i}: {ours_text}"
            );
        }
    }
}

/// The side stream's request headers (pseudo-headers included, as the processor's gRPC server
/// sees them) are Envoy's, name and value.
#[tokio::test]
async fn side_stream_request_headers_match() {
    let script: Script = |mut r| {
        Box::pin(async move {
            write(&mut r.client, b"x").await;
            let u = r.upstream.as_mut().expect("upstream");
            assert_eq!(read_exact(u, 1).await, b"X");
            let counters = r
                .processor
                .seen()
                .headers
                .into_iter()
                .map(|(k, v)| (format!("{k}: {v}"), 1))
                .collect();
            // Only the headers are compared: the connections stay open.
            Obs {
                client: (Vec::new(), Ending::Fin),
                upstream: None,
                counters,
                notes: vec![],
            }
        })
    };
    let (envoy, ours) = both(
        "message_timeout: 2s",
        handler(|q, r| r.send(upper(q))),
        true,
        script,
    )
    .await;
    assert_eq!(envoy.counters, ours.counters);
}
